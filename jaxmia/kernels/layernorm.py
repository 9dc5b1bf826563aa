"""``LayerNorm(x + dropout(branch))`` over the last axis (a post-LayerNorm Transformer's residual
step) with a hand-written XLA:CPU kernel.

Why: in SAMIA's training step (C = 30 tokens of d = 64) XLA:CPU spent about a fifth of the epoch
in the six LayerNorms and their backward (their row statistics, and the column sums over all
3,840 rows of a batch for the scale and bias gradients); ``layernorm.cc`` does the residual sum,
the branch's dropout, the normalization and their backward in one pass over each row, and the
scale / bias gradients as per-block partial sums (numbers in BUILD_NOTES.md).

:func:`add_layernorm` uses the kernel on CPU when it is available and :func:`supported`, and the
pure-JAX :func:`reference` otherwise (other platforms or shapes, or no kernels: see
:mod:`jaxmia.kernels.library`). Both draw the same dropout mask from the key
(``fastrand.bernoulli`` of ``branch``'s shape, reimplemented in the kernel), so they compute the
same function; tests compare values and gradients.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxmia import fastrand
from jaxmia.kernels import library

_FORWARD, _BACKWARD = "jaxmia_add_layernorm_forward", "jaxmia_add_layernorm_backward"
CHUNK = 128  # rows per partial sum of the scale / bias gradients


def reference(x, branch, scale, bias, dropout_key=None, rate: float = 0.0, eps: float = 1e-5):
    """Pure JAX: ``LayerNorm(x + dropout(branch)) * scale + bias`` over the last axis (biased
    variance, as PyTorch's ``nn.LayerNorm``); dropout zeroes entries of ``branch`` with
    probability ``rate`` (mask ``fastrand.bernoulli(dropout_key, 1 - rate, branch.shape)``) and
    scales the kept ones by ``1 / (1 - rate)``; no dropout when ``dropout_key`` is None."""
    if dropout_key is not None:
        branch = fastrand.dropout(dropout_key, rate, branch)
    z = x + branch
    mean = jnp.mean(z, axis=-1, keepdims=True)
    centred = z - mean
    var = jnp.mean(centred * centred, axis=-1, keepdims=True)
    return centred * jax.lax.rsqrt(var + eps) * scale + bias


def _forward_call(x, branch, scale, bias, seeds, rate, use_dropout, eps):
    types = (library.result(x.shape, x), library.result(x.shape, x),
             library.result(x.shape[:-1], x))
    return jax.ffi.ffi_call(_FORWARD, types, vmap_method="broadcast_all")(
        x, branch, scale, bias, seeds, eps=np.float32(eps),
        **library.dropout_attrs(rate, use_dropout))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _kernel(x, branch, scale, bias, seeds, rate, use_dropout, eps):
    return _forward_call(x, branch, scale, bias, seeds, rate, use_dropout, eps)[0]


def _kernel_fwd(x, branch, scale, bias, seeds, rate, use_dropout, eps):
    y, xhat, rstd = _forward_call(x, branch, scale, bias, seeds, rate, use_dropout, eps)
    return y, (xhat, rstd, scale, seeds)


def _kernel_bwd(rate, use_dropout, eps, residuals, g):
    xhat, rstd, scale, seeds = residuals
    parts = -(-math.prod(xhat.shape[:-1]) // CHUNK)
    types = (library.result(xhat.shape, xhat), library.result(xhat.shape, xhat),
             library.result((parts, xhat.shape[-1]), xhat),
             library.result((parts, xhat.shape[-1]), xhat))
    dx, dbranch, dscale, dbias = jax.ffi.ffi_call(_BACKWARD, types, vmap_method="broadcast_all")(
        g.astype(jnp.float32), xhat, rstd, scale, seeds, chunk=np.int64(CHUNK),
        **library.dropout_attrs(rate, use_dropout))
    return dx, dbranch, jnp.sum(dscale, axis=0), jnp.sum(dbias, axis=0), None


_kernel.defvjp(_kernel_fwd, _kernel_bwd)


def supported(x, branch, scale, bias) -> bool:
    """Whether the kernel handles these inputs: float32, ``branch`` shaped like ``x``, ``scale``
    and ``bias`` ``[D]`` with D one of 16, 32, ..., 128, and 1 to 2^32 elements (beyond that
    :func:`reference`'s ``fastrand`` draw refuses instead of repeating a 32-bit counter)."""
    d = x.shape[-1] if x.ndim else 0
    return (all(a.dtype == jnp.float32 for a in (x, branch, scale, bias))
            and x.shape == branch.shape and scale.shape == bias.shape == (d,)
            and d % 16 == 0 and 16 <= d <= 128 and 0 < x.size <= 2**32)


def add_layernorm(x, branch, scale, bias, dropout_key=None, rate: float = 0.0,
                  eps: float = 1e-5):
    """Same contract and result as :func:`reference`; the CPU kernel where it is available
    and :func:`supported`."""
    if not supported(x, branch, scale, bias):
        return reference(x, branch, scale, bias, dropout_key, rate, eps)
    return library.call(_kernel, reference, (x, branch, scale, bias), dropout_key, rate,
                        float(eps))
