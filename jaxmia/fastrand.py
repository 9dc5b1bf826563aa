"""Fast counter-based random numbers for draws that are not privacy-critical: dropout masks and
the Gaussian perturbations of the sensitivity feature.

Why: on CPU, JAX's default generator (threefry, 20 rounds) makes about 50 M normals/s and
a dropout mask of 4 M entries costs ~90 ms, which dominated the SAMIA attack's training step and
the sensitivity feature (numbers in BUILD_NOTES.md). Here element ``i`` of a draw is
``h(h(i ^ s0) + s1)`` with ``h`` Wellons' "lowbias32" integer hash and ``(s0, s1)`` two words
drawn from the caller's typed key by threefry, so every key still gives its own stream and the
results are reproducible. Measured on one core: 2,000 M words/s against threefry's ~150 M;
normals (inverse CDF of a 24-bit uniform via ``lax.erf_inv``, so tails stop at |z| ~ 5.4)
250 M/s against ``jax.random.normal``'s 36 M/s.

Element ``i`` of a draw depends only on the key and ``offset + i``, so a large draw can be made in
chunks (pass each chunk's ``offset``) and gives the same numbers whatever the chunk size.

Not for DP noise: DP-SGD's Gaussian noise keeps JAX's own generator. Draws of more than 2^32
elements would repeat the counter and are refused.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

_M1, _M2 = 0x7FEB352D, 0x846CA68B
_SCALE = 1.0 / (1 << 24)


def _hash(x: jax.Array) -> jax.Array:
    x = x ^ (x >> 16)
    x = x * jnp.uint32(_M1)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(_M2)
    return x ^ (x >> 16)


def bits(key: jax.Array, shape, offset=0) -> jax.Array:
    """uint32 words, one per element of ``shape``; element ``i`` is word ``offset + i`` of the
    key's stream."""
    shape = tuple(shape)
    size = math.prod(shape)
    if size > 2**32:
        raise ValueError(f"fastrand draws at most 2**32 elements, asked for {size}")
    seed = seed_words(key)
    counter = jax.lax.iota(jnp.uint32, size).reshape(shape) + jnp.asarray(offset, jnp.uint32)
    return _hash(_hash(counter ^ seed[0]) + seed[1])


def seed_words(key: jax.Array) -> jax.Array:
    """The two uint32 words ``(s0, s1)`` of a key's stream (``jaxmia/kernels/attention.cc``
    draws its dropout masks from them with the same hash)."""
    return jax.random.bits(key, (2,), jnp.uint32)


def uniform(key: jax.Array, shape, dtype=jnp.float32, offset=0) -> jax.Array:
    """U[0, 1) with 24-bit resolution."""
    return ((bits(key, shape, offset) >> 8).astype(dtype) * _SCALE).astype(dtype)


def bernoulli(key: jax.Array, p: float, shape, offset=0) -> jax.Array:
    """True with probability ``p`` (to 2^-24)."""
    return uniform(key, shape, offset=offset) < p


def dropout(key: jax.Array, rate: float, x: jax.Array) -> jax.Array:
    """Inverted dropout (PyTorch's semantics): each entry of ``x`` is zeroed with probability
    ``rate`` (mask ``bernoulli(key, 1 - rate, x.shape)``) and the kept ones are scaled by
    ``1 / (1 - rate)``. The CPU kernels of :mod:`jaxmia.kernels` draw this same mask."""
    keep = bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def normal(key: jax.Array, shape, dtype=jnp.float32, offset=0) -> jax.Array:
    """Standard normals: sqrt(2) erf^-1(2u - 1) with u the 24-bit uniform shifted to (0, 1).

    2u - 1 = (k - 2^23 + 1/2) / 2^23 for the word's top 24 bits k, formed in that order: every
    step is exact in float32, so the 2^24 values are symmetric and stay inside (-1, 1).
    (Forming (k + 1/2) first rounds k = 2^24 - 1 up to 2^24, and erf^-1(1) is inf.)"""
    k = (bits(key, shape, offset) >> 8).astype(jnp.int32)
    centred = ((k - (1 << 23)).astype(jnp.float32) + 0.5) * (2.0 * _SCALE)
    return (jnp.sqrt(2.0) * jax.lax.erf_inv(centred)).astype(dtype)
