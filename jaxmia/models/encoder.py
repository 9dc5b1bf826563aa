"""A BERT-shaped text classifier: token + position embeddings, post-LayerNorm Transformer encoder
blocks (BERT's layout: attention, add & LayerNorm, GELU feed-forward, add & LayerNorm), the first
token's state into a dense classifier.

``EncoderBlock`` is the block of the text models' BERT (:mod:`jaxmia.models.bert`, which adds
segments, the padding mask, the pooler and the pretrained weights). ``TextEncoder`` is the
simpler stack that the DP tests and ``benchmarks/dp.py`` use (ghost clipping of embeddings,
attention projections and LayerNorm at BERT-like shapes), kept as it is because the benchmark's
PyTorch/Opacus model is its twin; the defaults are all-MiniLM-L6-v2's widths (hidden 384, 12
heads, feed-forward 1536). Inputs are int token ids ``[B, T]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxmia.base import Model
from jaxmia.models import layers
from jaxmia.models.wrap import from_linen

_init = nn.initializers.normal(0.02)  # BERT's initializer range


class EncoderBlock(nn.Module):
    hidden: int = 384
    heads: int = 12
    feed_forward: int = 1536
    dropout: float = 0.1
    attention_dropout: float = 0.0  # on the attention weights (BERT: 0.1)
    epsilon: float = 1e-12  # the LayerNorms'

    @nn.compact
    def __call__(self, h, train: bool, mask=None):
        """``h`` ``[B, T, hidden]``; ``mask`` ``[B, T]`` (True: a real token) keeps padding out of
        every token's attention."""
        b, t, _ = h.shape
        head_dim = self.hidden // self.heads

        def project(name):
            z = nn.Dense(self.hidden, kernel_init=_init, name=name)(h)
            return z.reshape(b, t, self.heads, head_dim)

        q, k, v = project("query"), project("key"), project("value")
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(head_dim)
        if mask is not None:
            scores = jnp.where(mask[:, None, None, :], scores, jnp.finfo(scores.dtype).min)
        weights = layers.Dropout(self.attention_dropout, name="attention_dropout")(
            jax.nn.softmax(scores, -1), train)
        attn = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, t, self.hidden)
        attn = nn.Dense(self.hidden, kernel_init=_init, name="attention_out")(attn)
        h = nn.LayerNorm(epsilon=self.epsilon, name="attention_norm")(
            h + layers.Dropout(self.dropout)(attn, train))
        ff = nn.gelu(nn.Dense(self.feed_forward, kernel_init=_init, name="intermediate")(h),
                     approximate=False)
        ff = nn.Dense(self.hidden, kernel_init=_init, name="output")(ff)
        return nn.LayerNorm(epsilon=self.epsilon, name="output_norm")(
            h + layers.Dropout(self.dropout)(ff, train))


class TextEncoder(nn.Module):
    num_classes: int
    vocab_size: int = 30522
    max_len: int = 512
    hidden: int = 384
    heads: int = 12
    feed_forward: int = 1536
    num_layers: int = 1
    dropout: float = 0.1

    @nn.compact
    def __call__(self, ids, train: bool):
        ids = ids.astype(jnp.int32)
        h = nn.Embed(self.vocab_size, self.hidden, embedding_init=_init, name="word")(ids)
        h = h + nn.Embed(self.max_len, self.hidden, embedding_init=_init, name="position")(
            jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape))
        h = nn.LayerNorm(epsilon=1e-12, name="embedding_norm")(h)
        for i in range(self.num_layers):
            h = EncoderBlock(self.hidden, self.heads, self.feed_forward, self.dropout,
                             name=f"block_{i}")(h, train)
        return nn.Dense(self.num_classes, kernel_init=_init, name="classifier")(h[:, 0])


def make(num_classes: int, seq_len: int, **kwargs) -> Model:
    """``TextEncoder(num_classes, **kwargs)`` on ``[B, seq_len]`` token ids."""
    return from_linen(TextEncoder(num_classes, **kwargs), (seq_len,), "text_encoder")
