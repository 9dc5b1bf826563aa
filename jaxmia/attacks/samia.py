"""SAMIA: the self-attention membership inference attack of the pruning paper (Yuan & Zhang,
USENIX Security 2022), as the authors' code builds it.

Input: [p (C), sensitivity (C), one-hot y (C)] -> BatchNorm over the 3C values -> C tokens, token
c being the triple (p_c, sens_c, onehot_c) (the three blocks stacked along a last axis of size 3,
not a row-major reshape of the 3C vector) -> Linear(3 -> 64) + GELU -> 3 post-LayerNorm
Transformer encoder layers (d = 64, 4 heads, feed-forward 128, dropout 0.2, GELU, no positional
encoding) -> flatten C * 64 -> Linear(64) + ReLU -> Linear(2).
Training: SGD (momentum 0.9, lr 1e-3, weight decay 5e-4), batch 128, 100 epochs, lr x0.1 at epochs
50 and 75, cross-entropy, last epoch kept. Score: logit(member) - logit(non-member).

The released code's Xavier init skips the attention projections, so its three encoder layers
start with identical attention weights; that is an init quirk, not part of the method, and here
every layer draws its own weights (Xavier-uniform, PyTorch's own default for attention).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import linen as nn

from jaxmia.attacks import classifier
from jaxmia.attacks.base import Attack, Features
from jaxmia.kernels import attention, gelu, layernorm
from jaxmia.models import layers

D_MODEL, HEADS, FEED_FORWARD, LAYERS, DROPOUT = 64, 4, 128, 3, 0.2
_dense = nn.initializers.xavier_uniform()


def _gelu(x):
    return nn.gelu(x, approximate=False)  # PyTorch's default GELU is the exact one.


class SelfAttention(nn.Module):
    """PyTorch ``MultiheadAttention`` (dropout on the attention weights) as self-attention. The
    attention core is :func:`jaxmia.kernels.attention.attention` (a hand-written CPU kernel that
    reads the projections' own layout; pure JAX elsewhere)."""

    @nn.compact
    def __call__(self, h, train: bool):
        b, t, _ = h.shape

        def heads(name):  # [B, T, D] -> [B, T, heads, d_head]: a free reshape, no transpose
            z = nn.Dense(D_MODEL, kernel_init=_dense, name=name)(h)
            return z.reshape(b, t, HEADS, D_MODEL // HEADS)

        key = self.make_rng("dropout") if train else None
        out = attention.attention(heads("query"), heads("key"), heads("value"), key, DROPOUT)
        return nn.Dense(D_MODEL, kernel_init=_dense, name="out")(out.reshape(b, t, D_MODEL))


class AddNorm(nn.Module):
    """``LayerNorm(h + Dropout(branch))`` (PyTorch's ``nn.LayerNorm``, eps 1e-5, and inverted
    dropout), through :func:`jaxmia.kernels.layernorm.add_layernorm` (a hand-written CPU kernel;
    pure JAX elsewhere)."""

    @nn.compact
    def __call__(self, h, branch, train: bool):
        d = h.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (d,))
        bias = self.param("bias", nn.initializers.zeros, (d,))
        key = self.make_rng("dropout") if train else None
        return layernorm.add_layernorm(h, branch, scale, bias, key, DROPOUT, eps=1e-5)


class FeedForwardIn(nn.Module):
    """``Dropout(GELU(Linear(h)))``, the feed-forward block's first half (exact GELU, as
    PyTorch's default), with the bias, GELU and dropout in
    :func:`jaxmia.kernels.gelu.bias_gelu_dropout` (a hand-written CPU kernel; pure JAX
    elsewhere). Parameters as ``nn.Dense``'s: ``kernel`` ``[d_in, features]``, ``bias``."""

    features: int

    @nn.compact
    def __call__(self, h, train: bool):
        kernel = self.param("kernel", _dense, (h.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        key = self.make_rng("dropout") if train else None
        return gelu.bias_gelu_dropout(h @ kernel, bias, key, DROPOUT)


class EncoderLayer(nn.Module):
    """PyTorch ``TransformerEncoderLayer(norm_first=False, activation='gelu')``."""

    @nn.compact
    def __call__(self, h, train: bool):
        h = AddNorm(name="LayerNorm_0")(h, SelfAttention()(h, train), train)
        ff = FeedForwardIn(FEED_FORWARD, name="Dense_0")(h, train)
        ff = nn.Dense(D_MODEL, kernel_init=_dense, name="Dense_1")(ff)
        return AddNorm(name="LayerNorm_1")(h, ff, train)


def to_tokens(x: jax.Array, num_classes: int) -> jax.Array:
    """[B, 3C] = [p, sens, onehot] -> [B, C, 3], token c = (p_c, sens_c, onehot_c)."""
    return x.reshape(x.shape[0], 3, num_classes).transpose(0, 2, 1)


class SAMIA(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool, rows=None):
        c = self.num_classes
        x = layers.batch_norm(x, train, rows)
        h = _gelu(nn.Dense(D_MODEL, kernel_init=_dense)(to_tokens(x, c)))
        for _ in range(LAYERS):
            h = EncoderLayer()(h, train)
        h = nn.relu(nn.Dense(D_MODEL, kernel_init=_dense)(h.reshape(h.shape[0], c * D_MODEL)))
        return nn.Dense(2, kernel_init=_dense)(h)


def num_parameters(num_classes: int) -> int:
    """PyTorch's count for the same layers (hand-derived; the test checks the Flax model)."""
    bn = 2 * 3 * num_classes
    embed = 3 * D_MODEL + D_MODEL
    attention = 4 * (D_MODEL * D_MODEL + D_MODEL)  # q, k, v and output projections
    feed_forward = (D_MODEL * FEED_FORWARD + FEED_FORWARD) + (FEED_FORWARD * D_MODEL + D_MODEL)
    layer = attention + feed_forward + 2 * 2 * D_MODEL
    head = (num_classes * D_MODEL * D_MODEL + D_MODEL) + (D_MODEL * 2 + 2)
    return bn + embed + LAYERS * layer + head


def attack_inputs(f: Features) -> np.ndarray:
    """[p, sensitivity, one-hot y] as one ``[n, 3C]`` array."""
    return np.concatenate([np.asarray(f["probs"], np.float32),
                           np.asarray(f["sensitivity"], np.float32), classifier.onehot(f)], axis=-1)


# The classifier attacks' training, as one model in the 'fused' layout: for a single model every
# layout computes the same function, and on XLA:CPU the 'looped' default (a lax.map around the
# epoch's scan, which suits the MLP attacks) made SAMIA's epoch 25-35% slower (BUILD_NOTES.md).
TRAIN = dataclasses.replace(classifier.TRAIN, ensemble_mode="fused")


def make(seed: int = 0, config=TRAIN, epochs: int | None = None) -> Attack:
    config = classifier.with_epochs(config, epochs)
    def fit(shadow: Features, is_member: np.ndarray):
        module = SAMIA(num_classes=shadow["probs"].shape[-1])
        return classifier.train(module, attack_inputs(shadow), is_member, config, seed,
                                "attack_samia")

    def score(state, target: Features) -> np.ndarray:
        return classifier.margin(state, attack_inputs(target))

    return Attack(fit=fit, score=score, name="samia")


REGISTRY = {"samia": make}
