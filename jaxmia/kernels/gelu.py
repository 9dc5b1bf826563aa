"""``dropout(GELU(z + bias))`` (exact, erf-based GELU: a Transformer's feed-forward activation)
with a hand-written XLA:CPU kernel.

Why: after the attention core and the residual LayerNorms moved into kernels, XLA's own fused
loops were still about a quarter of SAMIA's training epoch, most of them the feed-forward
activation: the bias add, erf, the dropout mask and their backward over 3,840 x 128 values per
layer and step. ``gelu.cc`` does them in one pass over the rows each way, and the bias gradient
as per-128-row partial sums (numbers in BUILD_NOTES.md).

:func:`bias_gelu_dropout` uses the kernel on CPU when it is available and :func:`supported`, and
the pure-JAX :func:`reference` otherwise (other platforms or shapes, or no kernels: see
:mod:`jaxmia.kernels.library`). Both draw the same dropout mask from the key
(``fastrand.bernoulli`` of ``z``'s shape, reimplemented in the kernel), so they compute the same
function; tests compare values and gradients.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxmia import fastrand
from jaxmia.kernels import library

_FORWARD, _BACKWARD = "jaxmia_bias_gelu_dropout_forward", "jaxmia_bias_gelu_dropout_backward"
CHUNK = 128  # rows per partial sum of the bias gradient


def reference(z, bias, dropout_key=None, rate: float = 0.0):
    """Pure JAX: ``GELU(z + bias)`` (``0.5 u (1 + erf(u / sqrt 2))``, PyTorch's default GELU),
    then dropout with probability ``rate`` (mask ``fastrand.bernoulli(dropout_key, 1 - rate,
    z.shape)``, kept values scaled by ``1 / (1 - rate)``); no dropout when ``dropout_key`` is
    None."""
    y = jax.nn.gelu(z + bias, approximate=False)
    return y if dropout_key is None else fastrand.dropout(dropout_key, rate, y)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _kernel(z, bias, seeds, rate, use_dropout):
    return jax.ffi.ffi_call(_FORWARD, library.result(z.shape, z), vmap_method="broadcast_all")(
        z, bias, seeds, **library.dropout_attrs(rate, use_dropout))


def _kernel_fwd(z, bias, seeds, rate, use_dropout):
    return _kernel(z, bias, seeds, rate, use_dropout), (z, bias, seeds)


def _kernel_bwd(rate, use_dropout, residuals, g):
    z, bias, seeds = residuals
    parts = -(-math.prod(z.shape[:-1]) // CHUNK)
    types = (library.result(z.shape, z), library.result((parts, z.shape[-1]), z))
    dz, dbias = jax.ffi.ffi_call(_BACKWARD, types, vmap_method="broadcast_all")(
        g.astype(jnp.float32), z, bias, seeds, chunk=np.int64(CHUNK),
        **library.dropout_attrs(rate, use_dropout))
    return dz, jnp.sum(dbias, axis=0), None


_kernel.defvjp(_kernel_fwd, _kernel_bwd)


def supported(z, bias) -> bool:
    """Whether the kernel handles these inputs: float32, ``bias`` ``[D]`` with D one of 16, 32,
    ..., 128, and 1 to 2^32 elements (beyond that :func:`reference`'s ``fastrand`` draw refuses
    instead of repeating a 32-bit counter)."""
    d = z.shape[-1] if z.ndim else 0
    return (z.dtype == bias.dtype == jnp.float32 and bias.shape == (d,) and d % 16 == 0
            and 16 <= d <= 128 and 0 < z.size <= 2**32)


def bias_gelu_dropout(z, bias, dropout_key=None, rate: float = 0.0):
    """Same contract and result as :func:`reference`; the CPU kernel where it is available and
    :func:`supported`."""
    if not supported(z, bias):
        return reference(z, bias, dropout_key, rate)
    return library.call(_kernel, reference, (z, bias), dropout_key, rate)
