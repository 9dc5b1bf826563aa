"""Multi-head attention core (``softmax(Q K^T / sqrt(d)) V`` with dropout on the weights) for the
short sequences of the attack models, with a hand-written XLA:CPU kernel.

Why: SAMIA (C tokens of d = 64, 4 heads of 16) spends about 45% of its training step in the
attention core on XLA:CPU: the transposes to a head-major layout, 512 batched 30x16-by-16x30
products per layer at ~13 GFLOP/s, the dropout mask, and their backward. ``attention.cc``
computes each (example, head) block straight from the projections' ``[..., T, H, 16]`` layout,
forward and backward, draws the dropout mask inside the kernel, and spreads the blocks over
XLA's intra-op thread pool (numbers in BUILD_NOTES.md).

:func:`attention` uses the kernel on CPU when it is available and :func:`supported`, and the
pure-JAX :func:`reference` otherwise (other platforms, other head sizes, or no kernels: see
:mod:`jaxmia.kernels.library`). Both draw the same dropout mask from the key (``fastrand``'s
hash, reimplemented in the kernel), so they compute the same function; tests compare values and
gradients.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxmia import fastrand
from jaxmia.kernels import library

_FORWARD, _BACKWARD = "jaxmia_attention_forward", "jaxmia_attention_backward"


def reference(q, k, v, dropout_key=None, rate: float = 0.0):
    """Pure JAX. ``q, k, v``: ``[..., T, H, Dh]``; dropout on the attention weights with
    probability ``rate`` from ``dropout_key`` (None: none), kept weights scaled by
    ``1 / (1 - rate)``. Returns ``[..., T, H, Dh]``."""
    *lead, t, h, d = q.shape

    def heads(z):  # [..., T, H, Dh] -> [prod(...) * H, T, Dh]
        return jnp.moveaxis(z, -2, -3).reshape(-1, t, d)

    logits = jax.lax.batch_matmul(heads(q), heads(k).swapaxes(-1, -2)) / jnp.sqrt(float(d))
    weights = jax.nn.softmax(logits, axis=-1)
    if dropout_key is not None:  # the mask of the [..., H, T, T] weights, flattened alike
        weights = fastrand.dropout(dropout_key, rate, weights)
    out = jax.lax.batch_matmul(weights, heads(v)).reshape(*lead, h, t, d)
    return jnp.moveaxis(out, -3, -2)


def _attrs(q, rate, use_dropout):
    return dict(scale=np.float32(1.0 / np.sqrt(q.shape[-1])),
                **library.dropout_attrs(rate, use_dropout))


def _forward_call(q, k, v, seeds, rate, use_dropout):
    *lead, t, h, _ = q.shape
    padded = -(-t // 16) * 16  # the kernel keeps P's rows as whole 16-float vectors
    out_types = (library.result(q.shape, q), library.result((*lead, h, t, padded), q))
    return jax.ffi.ffi_call(_FORWARD, out_types, vmap_method="broadcast_all")(
        q, k, v, seeds, **_attrs(q, rate, use_dropout))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _kernel(q, k, v, seeds, rate, use_dropout):
    return _forward_call(q, k, v, seeds, rate, use_dropout)[0]


def _kernel_fwd(q, k, v, seeds, rate, use_dropout):
    out, probs = _forward_call(q, k, v, seeds, rate, use_dropout)
    return out, (q, k, v, seeds, probs)


def _kernel_bwd(rate, use_dropout, residuals, g):
    q, k, v, seeds, probs = residuals
    types = tuple(library.result(q.shape, q) for _ in range(3))
    dq, dk, dv = jax.ffi.ffi_call(_BACKWARD, types, vmap_method="broadcast_all")(
        q, k, v, seeds, probs, g.astype(jnp.float32), **_attrs(q, rate, use_dropout))
    return dq, dk, dv, None


_kernel.defvjp(_kernel_fwd, _kernel_bwd)


def supported(q) -> bool:
    """Whether the kernel handles these inputs: float32, head size 16, 1 to 128 tokens, and a
    dropout draw of at most 2^32 weights (beyond that :func:`reference` refuses, as ``fastrand``
    does, instead of repeating the kernel's 32-bit counter)."""
    *lead, t, h, _ = q.shape
    return (q.dtype == jnp.float32 and q.shape[-1] == 16 and 1 <= t <= 128
            and math.prod(lead) * h * t * t <= 2**32)


def attention(q, k, v, dropout_key=None, rate: float = 0.0):
    """Same contract and result as :func:`reference`; the CPU kernel where it is available
    and :func:`supported`."""
    if not supported(q):
        return reference(q, k, v, dropout_key, rate)
    return library.call(_kernel, reference, (q, k, v), dropout_key, rate)
