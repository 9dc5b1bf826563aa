"""Shared Flax building blocks: the norm-layer switch, initializers, and a fast max-pool."""

from __future__ import annotations

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
    """BatchNorm (PyTorch defaults: momentum 0.1, eps 1e-5), GroupNorm, or identity.

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


def batch_norm(x, train: bool, rows=None, name=None):
    """Flax's BatchNorm with PyTorch's defaults (momentum 0.1, eps 1e-5), created in the calling
    module; in training its batch statistics cover the ``rows`` (``[B]`` bool) of ``x`` that are
    real, all of them when ``rows`` is None."""
    mask = None if rows is None or not train else (
        rows.astype(bool).reshape(rows.shape + (1,) * (x.ndim - 1)))
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                        name=name)(x, mask=mask)


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
