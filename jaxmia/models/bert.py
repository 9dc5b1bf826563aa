"""BERT (Devlin et al. 2019) for sequence classification, in Flax, optionally starting from the
pretrained all-MiniLM-L6-v2 weights (:mod:`jaxmia.pretrained`; Hugging Face's ``BertModel``
layout read from safetensors, no PyTorch).

Layout as ``BertForSequenceClassification``: word + position + segment embeddings, LayerNorm,
dropout; post-LayerNorm encoder blocks (:class:`jaxmia.models.encoder.EncoderBlock`: attention
with padding masked out and dropout on its weights, GELU feed-forward); the pooler (``tanh`` of a
dense layer on the [CLS] state), dropout, a dense classifier. The input is one array of token ids
``[B, T]`` as :mod:`jaxmia.data.text` makes them; the attention mask (id != [PAD]) and the
segment ids (1 after the first [SEP] up to the padding, as BERT's tokenizer sets them) are derived from it.

Registry entries:
- ``minilm``: all-MiniLM-L6-v2's 6 pretrained layers (22.7M parameters, 11.7M of them the word
  embeddings), the classifier freshly initialized per model (each key its own head).
- ``minilm_2l``: its embeddings and first 2 layers (a cheaper pretrained model for CPUs).
- ``bert_tiny``: BERT-Tiny's shape (Turc et al. 2019: 2 layers, hidden 128, 2 heads, feed-forward
  512) on the same vocabulary, randomly initialized (fast tests and training from scratch).
Pruning masks the dense kernels (attention, feed-forward, pooler, classifier); the embedding
tables stay dense, as in BERT pruning studies. The sensitivity feature perturbs the word
embeddings (``Model.perturb``), since token ids take no Gaussian noise.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxmia import pretrained
from jaxmia.base import Model
from jaxmia.errors import UserError
from jaxmia.models import layers
from jaxmia.models.encoder import EncoderBlock
from jaxmia.models.wrap import from_linen

_init = nn.initializers.normal(0.02)  # BERT's initializer range
# The uncased WordPiece vocabulary's [PAD], [CLS], [SEP], [MASK], and its first word piece ("!";
# ids 1-998 are [unused] and special tokens).
PAD_ID, CLS_ID, SEP_ID, MASK_ID, FIRST_PIECE_ID = 0, 101, 102, 103, 999


def mask_and_segments(ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The attention mask (True: not [PAD]) and the segment ids (1 after the first [SEP], 0 at
    the padding) of token ids ``[B, T]``: what BERT's tokenizer returns beside the ids."""
    mask = ids != PAD_ID
    sep = (ids == SEP_ID).astype(jnp.int32)
    return mask, ((jnp.cumsum(sep, axis=1) - sep > 0) & mask).astype(jnp.int32)


class BertEncoder(nn.Module):
    """Embeddings, encoder blocks and pooler: ``(hidden states [B, T, H], pooled [B, H])``."""

    vocab_size: int = 30522
    max_len: int = 512
    type_vocab_size: int = 2
    hidden: int = 384
    heads: int = 12
    feed_forward: int = 1536
    num_layers: int = 6
    dropout: float = 0.1
    epsilon: float = 1e-12

    @nn.compact
    def __call__(self, ids, train: bool, word_delta=None):
        ids = ids.astype(jnp.int32)
        if ids.shape[1] > self.max_len:
            raise ValueError(f"{ids.shape[1]} tokens exceed the {self.max_len} positions")
        mask, segment = mask_and_segments(ids)
        words = nn.Embed(self.vocab_size, self.hidden, embedding_init=_init, name="word")(ids)
        if word_delta is not None:  # the sensitivity feature's noise (Model.perturb)
            words = words + word_delta
        h = (words + nn.Embed(self.max_len, self.hidden, embedding_init=_init, name="position")(
                 jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape))
             + nn.Embed(self.type_vocab_size, self.hidden, embedding_init=_init,
                        name="segment")(segment))
        h = layers.Dropout(self.dropout)(
            nn.LayerNorm(epsilon=self.epsilon, name="embedding_norm")(h), train)
        for i in range(self.num_layers):
            h = EncoderBlock(self.hidden, self.heads, self.feed_forward, self.dropout,
                             attention_dropout=self.dropout, epsilon=self.epsilon,
                             name=f"block_{i}")(h, train, mask)
        pooled = jnp.tanh(nn.Dense(self.hidden, kernel_init=_init, name="pooler")(h[:, 0]))
        return h, pooled


class Bert(nn.Module):
    num_classes: int
    encoder: BertEncoder

    @nn.compact
    def __call__(self, ids, train: bool, word_delta=None):
        _, pooled = self.encoder(ids, train, word_delta)
        pooled = layers.Dropout(self.encoder.dropout)(pooled, train)
        return nn.Dense(self.num_classes, kernel_init=_init, name="classifier")(pooled)


def load_minilm(num_layers: int | None = None) -> tuple[BertEncoder, dict]:
    """all-MiniLM-L6-v2 as ``(BertEncoder, its params)``, the first ``num_layers`` layers."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = pretrained.minilm_dir()
    try:
        with open(os.path.join(path, "config.json")) as f:
            config = json.load(f)
        weights = load_file(os.path.join(path, "model.safetensors"))
    except (OSError, ValueError, SafetensorError) as e:
        raise UserError(f"all-MiniLM-L6-v2: its files in {path} do not load ({type(e).__name__}); "
                        f"{pretrained.INSTALL_HINT}") from None
    layers_in_file = int(config["num_hidden_layers"])
    num_layers = layers_in_file if num_layers is None else num_layers
    if not 1 <= num_layers <= layers_in_file:
        raise UserError(f"all-MiniLM-L6-v2 has {layers_in_file} layers, not {num_layers}")
    encoder = BertEncoder(vocab_size=config["vocab_size"],
                          max_len=config["max_position_embeddings"],
                          type_vocab_size=config["type_vocab_size"], hidden=config["hidden_size"],
                          heads=config["num_attention_heads"],
                          feed_forward=config["intermediate_size"], num_layers=num_layers,
                          dropout=config["hidden_dropout_prob"], epsilon=config["layer_norm_eps"])
    try:
        return encoder, hf_to_params(weights, num_layers)
    except KeyError as e:
        raise UserError(f"all-MiniLM-L6-v2: {path}/model.safetensors has no tensor {e}; it is "
                        f"not a BERT checkpoint; {pretrained.INSTALL_HINT}") from None


def hf_to_params(w: dict, num_layers: int) -> dict:
    """Hugging Face ``BertModel`` tensors (``[out, in]`` linear weights) to BertEncoder params."""
    w = {k.removeprefix("bert."): v for k, v in w.items()}

    def dense(prefix):
        return {"kernel": w[f"{prefix}.weight"].T, "bias": w[f"{prefix}.bias"]}

    def norm(prefix):
        return {"scale": w[f"{prefix}.weight"], "bias": w[f"{prefix}.bias"]}

    e = "embeddings"
    out = {"word": {"embedding": w[f"{e}.word_embeddings.weight"]},
           "position": {"embedding": w[f"{e}.position_embeddings.weight"]},
           "segment": {"embedding": w[f"{e}.token_type_embeddings.weight"]},
           "embedding_norm": norm(f"{e}.LayerNorm"), "pooler": dense("pooler.dense")}
    for i in range(num_layers):
        p = f"encoder.layer.{i}"
        out[f"block_{i}"] = {
            "query": dense(f"{p}.attention.self.query"), "key": dense(f"{p}.attention.self.key"),
            "value": dense(f"{p}.attention.self.value"),
            "attention_out": dense(f"{p}.attention.output.dense"),
            "attention_norm": norm(f"{p}.attention.output.LayerNorm"),
            "intermediate": dense(f"{p}.intermediate.dense"), "output": dense(f"{p}.output.dense"),
            "output_norm": norm(f"{p}.output.LayerNorm")}
    return jax.tree.map(lambda a: np.asarray(a, np.float32), out)


def _wrap(module: Bert, input_shape, name: str) -> Model:
    """The module as a :class:`Model` whose sensitivity noise goes to the word embeddings: the
    ``[T, H]`` vectors of the tokens (at [PAD] positions it changes nothing, as attention masks
    them out)."""
    shape = _check_input(input_shape, name, module.encoder.max_len)

    def apply_perturbed(params, state, ids, delta):
        return module.apply({"params": params, **state}, ids, train=False, word_delta=delta)

    return from_linen(module, shape, name)._replace(
        perturb=(shape + (module.encoder.hidden,), apply_perturbed))


def _check_input(input_shape, name: str, max_len: int) -> tuple[int]:
    if len(input_shape) != 1 or input_shape[0] > max_len:
        raise UserError(f"model '{name}' reads token ids [T] with T <= {max_len}, but the data "
                        f"has shape {tuple(input_shape)}; use it with a text dataset "
                        "(sst2, cola, mrpc, rte)")
    return tuple(input_shape)


def _pretrained(name: str, num_layers: int | None):
    def make(num_classes: int, input_shape) -> Model:
        encoder, weights = load_minilm(num_layers)
        base = _wrap(Bert(num_classes, encoder), input_shape, name)
        built = jax.eval_shape(base.init, jax.random.key(0))[0]["encoder"]
        if jax.tree.structure(built) != jax.tree.structure(weights) or any(
                a.shape != b.shape for a, b in zip(jax.tree.leaves(built),
                                                   jax.tree.leaves(weights))):
            raise UserError(f"all-MiniLM-L6-v2: the tensors in {pretrained.minilm_dir()} do not "
                            f"match the BERT its config.json describes; {pretrained.INSTALL_HINT}")

        def init(key):
            params, state = base.init(key)  # the classifier's draw; the rest is overwritten
            return {**params, "encoder": jax.tree.map(jnp.asarray, weights)}, state

        return base._replace(init=init)

    return make


def make_tiny(num_classes: int, input_shape) -> Model:
    """BERT-Tiny's shape, randomly initialized, on the uncased WordPiece vocabulary."""
    encoder = BertEncoder(hidden=128, heads=2, feed_forward=512, num_layers=2)
    return _wrap(Bert(num_classes, encoder), input_shape, "bert_tiny")


REGISTRY = {"minilm": _pretrained("minilm", None), "minilm_2l": _pretrained("minilm_2l", 2),
            "bert_tiny": make_tiny}
