"""Shared Flax building blocks: the norm-layer switch, initializers, and a fast max-pool."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxmia import fastrand
from jaxmia.errors import UserError

NORMS = ("batch", "group", "none")
# mia_prune's ``weight_init``: xavier_normal on conv/linear weights, zero biases.
kernel_init = nn.initializers.xavier_normal()


def check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise UserError(f"unknown norm layer '{norm}'; choose one of {', '.join(NORMS)}")


class Norm(nn.Module):
    """BatchNorm (PyTorch's: momentum 0.1, eps 1e-5, unbiased running variance), GroupNorm,
    or identity.

    BatchNorm statistics couple the examples of a batch, so DP training refuses BatchNorm models;
    GroupNorm (32 groups, fewer when channels are few) is the drop-in replacement Opacus uses.
    ``rows`` (``[B]`` bool, training only): the real rows of a padded batch; BatchNorm's batch
    statistics, and so its running averages, are taken over those rows alone, as PyTorch's over
    a DataLoader's shorter last batch.
    """

    kind: str = "batch"

    @nn.compact
    def __call__(self, x, train: bool, rows=None):
        if self.kind == "batch":
            return batch_norm(x, train, rows, name="BatchNorm")
        if self.kind == "group":
            channels = x.shape[-1]
            groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
            return nn.GroupNorm(num_groups=groups, epsilon=1e-5, name="GroupNorm")(x)
        return x


class BatchNorm(nn.Module):
    """PyTorch's ``BatchNorm`` (momentum 0.1, eps 1e-5) over the last axis: training
    normalizes with the batch's biased variance and updates the running variance with the
    unbiased one (``n / (n - 1)``, n the values per channel), as PyTorch does, where Flax's
    ``nn.BatchNorm`` keeps the biased one. ``mask`` (broadcastable to ``x``, training only)
    names the values the statistics see. Its variables are Flax's (params ``scale``, ``bias``;
    ``batch_stats`` ``mean``, ``var``), so checkpoints and network slimming see the same tree."""

    momentum: float = 0.1
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x, train: bool, mask=None):
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        if not train:
            mean, var = ra_mean.value, ra_var.value
        else:
            axes = tuple(range(x.ndim - 1))
            w = (jnp.ones(x.shape[:-1] + (1,), x.dtype) if mask is None
                 else jnp.broadcast_to(mask, x.shape[:-1] + (1,)).astype(x.dtype))
            n = jnp.sum(w)
            mean = jnp.sum(w * x, axes) / jnp.maximum(n, 1.0)
            var = jnp.sum(w * jnp.square(x - mean), axes) / jnp.maximum(n, 1.0)
            if not self.is_initializing():
                m = self.momentum
                ra_mean.value = (1.0 - m) * ra_mean.value + m * mean
                # One value per channel has no unbiased variance (PyTorch refuses it); keep
                # the biased one there.
                ra_var.value = (1.0 - m) * ra_var.value + m * var * n / jnp.maximum(n - 1.0,
                                                                                    1.0)
        return (x - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias


def batch_norm(x, train: bool, rows=None, name=None):
    """:class:`BatchNorm` created in the calling module; in training its batch statistics
    cover the ``rows`` (``[B]`` bool) of ``x`` that are real, all of them when ``rows`` is
    None."""
    mask = None if rows is None or not train else (
        rows.astype(bool).reshape(rows.shape + (1,) * (x.ndim - 1)))
    return BatchNorm(name=name)(x, train, mask=mask)


def conv(features, kernel=3, stride=1, bias=False, name=None):
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=kernel // 2,
                   use_bias=bias, kernel_init=kernel_init, name=name)


def dense(features, name=None):
    return nn.Dense(features, kernel_init=kernel_init, name=name)


def max_pool_2x2(x):
    """2x2 stride-2 max-pool as reshape-and-max (its backward is ~5x faster on CPU than
    ``nn.max_pool``'s). Odd trailing rows/columns are dropped, as PyTorch's MaxPool2d(2) does."""
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return jnp.max(x.reshape(b, h // 2, 2, w // 2, 2, c), axis=(2, 4))


class Dropout(nn.Module):
    """Inverted dropout (PyTorch semantics) whose mask comes from :mod:`jaxmia.fastrand`:
    the same distribution as ``nn.Dropout`` at a fraction of threefry's cost on CPU."""

    rate: float

    @nn.compact
    def __call__(self, x, train: bool):
        if not train or self.rate == 0.0:
            return x
        return fastrand.dropout(self.make_rng("dropout"), self.rate, x)
