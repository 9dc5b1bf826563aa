"""Per-example clipping: vmap = a batch-size-1 loop, ghost = vmap, norms <= C, masks respected."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmia import clipping, models, pruning, training
from jaxmia.errors import UserError
from jaxmia.models import bert, cnn, encoder, mlp
from jaxmia.models.wrap import from_linen


def _ce(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y)


def _fixture(name, batch=5):
    key = jax.random.key(0)
    if name == "mlp":
        model = mlp.make(10, (12,), dropout=0.0)
        x = jax.random.normal(key, (batch, 12))
    elif name in ("cnn", "cnn_group"):
        model = cnn.make(10, (8, 8, 3), norm="group" if name == "cnn_group" else "none")
        x = jax.random.normal(key, (batch, 8, 8, 3))
    elif name == "bert":  # the text models' BERT, one narrow block: padding masked out, pairs
        enc = bert.BertEncoder(vocab_size=110, max_len=8, hidden=16, heads=2, feed_forward=24,
                               num_layers=1, dropout=0.0)
        model = from_linen(bert.Bert(3, enc), (8,), "bert")
        x = jnp.asarray([[101, 7, 7, 102, 0, 0, 0, 0], [101, 9, 102, 7, 8, 102, 0, 0],
                         [101, 5, 6, 7, 8, 9, 10, 102], [101, 102, 0, 0, 0, 0, 0, 0],
                         [101, 7, 102, 7, 102, 0, 0, 0]][:batch], jnp.float32)
    else:  # a one-block BERT-shaped encoder: embeddings, attention, LayerNorm
        model = encoder.make(3, 6, vocab_size=9, max_len=6, hidden=16, heads=2, feed_forward=24,
                             dropout=0.0)
        x = jax.random.randint(key, (batch, 6), 0, 9)  # few ids: repeated tokens
    y = jnp.arange(batch) % 3
    params, state = model.init(jax.random.key(1))
    return model, params, state, x, y


def _random_masks(params, keep=0.6):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(5), len(leaves))
    return jax.tree.unflatten(tree, [(jax.random.uniform(k, p.shape) < keep).astype(p.dtype)
                                     for k, p in zip(keys, leaves)])


def _clip(model, method, clip_norm, masks, form="auto"):
    return jax.jit(clipping.make(model, _ce, training.predicted_class, method,
                                 clip_norm=clip_norm, ghost_form=form,
                                 pruned=clipping.pruned_layers(masks)))


def _loop_oracle(model, params, state, masks, x, y, weight, clip_norm):
    """Clipped sum from one example at a time: grad of a batch-size-1 loss, norm, scale."""
    total = jax.tree.map(jnp.zeros_like, params)
    norms = []

    @jax.jit
    def grad_one(p, xi, yi):
        def loss(p):
            logits, _ = model.apply(pruning.apply_masks(p, masks), state, xi, train=True,
                                    key=jax.random.key(9))
            return _ce(logits, yi)[0]
        return jax.grad(loss)(p)

    for i in range(x.shape[0]):
        g = grad_one(params, x[i:i + 1], y[i:i + 1])
        norm = float(jnp.sqrt(sum(jnp.sum(jnp.square(v)) for v in jax.tree.leaves(g))))
        norms.append(norm)
        scale = float(weight[i]) * min(1.0, clip_norm / norm)
        total = jax.tree.map(lambda t, v, s=scale: t + s * v, total, g)
    return total, np.asarray(norms)


@pytest.mark.parametrize("name", ["mlp", "cnn", "encoder", "bert"])
@pytest.mark.parametrize("pruned", [False, True])
def test_vmap_equals_batch_size_one_loop(name, pruned):
    model, params, state, x, y = _fixture(name)
    masks = _random_masks(params) if pruned else pruning.ones_like(params)
    weight = jnp.array([1.0, 1.0, 0.0, 1.0, 1.0])  # row 2 is padding
    got = _clip(model, "vmap", 0.7, masks)(params, masks, state, x, y, weight, jax.random.key(3))
    want, norms = _loop_oracle(model, params, state, masks, x, y, weight, 0.7)
    chex.assert_trees_all_close(got.grad_sum, want, rtol=1e-5, atol=1e-6)
    live = np.asarray(weight) > 0
    np.testing.assert_allclose(np.asarray(got.norms)[live], norms[live], rtol=1e-5)


@pytest.mark.parametrize("name,pruned,form", [
    (name, pruned, "auto") for name in ("mlp", "cnn", "cnn_group", "encoder", "bert")
    for pruned in (False, True)] + [
    (name, False, form) for name in ("cnn", "encoder") for form in ("gram", "direct")])
def test_ghost_equals_vmap(name, pruned, form):
    model, params, state, x, y = _fixture(name)
    masks = _random_masks(params) if pruned else pruning.ones_like(params)
    weight = jnp.array([1.0, 0.0, 1.0, 1.0, 1.0])
    args = (params, masks, state, x, y, weight, jax.random.key(3))
    ref = _clip(model, "vmap", 0.5, masks)(*args)
    got = _clip(model, "ghost", 0.5, masks, form)(*args)
    chex.assert_trees_all_close(got.grad_sum, ref.grad_sum, rtol=1e-5, atol=1e-6)
    live = np.asarray(weight) > 0
    np.testing.assert_allclose(np.asarray(got.norms)[live], np.asarray(ref.norms)[live],
                               rtol=1e-5)
    np.testing.assert_allclose(float(got.loss_sum), float(ref.loss_sum), rtol=1e-5)


@pytest.mark.parametrize("clip_norm", [1e-3, 0.1, 1.0, 100.0])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("shape", [(4,), (3, 5), (2, 3, 4)])
def test_every_clipped_gradient_has_norm_at_most_c(clip_norm, dtype, shape):
    key = jax.random.key(int(clip_norm * 1000) + len(shape))
    k1, k2 = jax.random.split(key)
    grads = {"a": (10 * jax.random.normal(k1, (6,) + shape)).astype(dtype),
             "b": jax.random.normal(k2, (6, 7)).astype(dtype) * jnp.arange(6)[:, None].astype(
                 dtype)}  # row 0 is all zeros
    norms = jnp.sqrt(clipping.tree_sq_norms(jax.tree.map(lambda g: g.astype(jnp.float32),
                                                         grads)))
    factors = clipping.clip_factors(norms, jnp.ones(6), clip_norm)
    clipped = jax.tree.map(lambda g: g.astype(jnp.float32) * factors.reshape(
        (-1,) + (1,) * (g.ndim - 1)), grads)
    clipped_norms = np.asarray(jnp.sqrt(clipping.tree_sq_norms(clipped)))
    assert np.all(clipped_norms <= clip_norm * (1 + 1e-5)), clipped_norms
    # Gradients already inside the ball are left alone.
    small = np.asarray(norms) <= clip_norm
    np.testing.assert_allclose(np.asarray(factors)[small], 1.0)


@pytest.mark.parametrize("method", ["vmap", "ghost"])
def test_model_clipped_norms_at_most_c(method):
    model, params, state, x, y = _fixture("cnn", batch=4)
    masks = pruning.ones_like(params)
    out = _clip(model, method, 0.01, masks)(params, masks, state, x, y, jnp.ones(4),
                                            jax.random.key(3))
    # Every per-example norm exceeds C here, so the sum has norm <= 4 C and each term == C.
    assert np.all(np.asarray(out.norms) > 0.01)
    total = float(jnp.sqrt(clipping.tree_sq_norms(jax.tree.map(lambda g: g[None],
                                                                out.grad_sum))[0]))
    assert total <= 4 * 0.01 * (1 + 1e-5)


def test_pruned_weights_get_zero_clipped_gradient():
    model, params, state, x, y = _fixture("mlp")
    masks = _random_masks(params, keep=0.5)
    for method in ("vmap", "ghost"):
        out = _clip(model, method, 1.0, masks)(params, masks, state, x, y, jnp.ones(5),
                                               jax.random.key(3))
        for g, m in zip(jax.tree.leaves(out.grad_sum), jax.tree.leaves(masks)):
            assert np.all(np.asarray(g)[np.asarray(m) == 0] == 0)


def test_microbatch_of_one_is_per_example_and_groups_clip_their_mean():
    model, params, state, x, y = _fixture("mlp", batch=6)
    masks = pruning.ones_like(params)
    weight = jnp.ones(6)
    args = (params, masks, state, x, y, weight, jax.random.key(3))
    per_example = _clip(model, "vmap", 0.5, masks)(*args)
    one = jax.jit(clipping.make(model, _ce, training.predicted_class, "microbatch",
                                clip_norm=0.5, group_size=1))(*args)
    chex.assert_trees_all_close(one.grad_sum, per_example.grad_sum, rtol=1e-6)
    # Groups of 3: the mean gradient of each group, clipped to C (mia_prune's pyvacy DP).
    three = jax.jit(clipping.make(model, _ce, training.predicted_class, "microbatch",
                                  clip_norm=0.5, group_size=3))(*args)
    want = None
    for rows in (slice(0, 3), slice(3, 6)):
        def loss(p, rows=rows):
            logits, _ = model.apply(p, state, x[rows], train=True, key=jax.random.key(0))
            return jnp.mean(_ce(logits, y[rows]))
        g = jax.grad(loss)(params)
        norm = float(jnp.sqrt(sum(jnp.sum(v * v) for v in jax.tree.leaves(g))))
        scale = min(1.0, 0.5 / norm)
        g = jax.tree.map(lambda v, s=scale: s * v, g)
        want = g if want is None else jax.tree.map(jnp.add, want, g)
    chex.assert_trees_all_close(three.grad_sum, want, rtol=1e-5, atol=1e-7)
    assert three.norms.shape == (2,)


def test_batchnorm_is_refused_with_groupnorm_named():
    model = models.make("resnet20", 10, (8, 8, 3))
    with pytest.raises(UserError, match="GroupNorm"):
        clipping.make(model, _ce, training.predicted_class, "vmap", clip_norm=1.0)


def test_ghost_names_unsupported_layers():
    from flax import linen as nn

    from jaxmia.models.wrap import from_linen

    class Scaled(nn.Module):
        @nn.compact
        def __call__(self, x, train):
            del train  # Unused.
            return nn.Dense(3)(x) * self.param("temperature", nn.initializers.ones, ())

    model = from_linen(Scaled(), (4,), "scaled")
    params, state = model.init(jax.random.key(0))
    args = (params, pruning.ones_like(params), state, jnp.ones((2, 4)), jnp.zeros(2, jnp.int32),
            jnp.ones(2), jax.random.key(0))
    clip = clipping.make(model, _ce, training.predicted_class, "ghost", clip_norm=1.0)
    with pytest.raises(UserError, match="temperature.*vmap"):
        clip(*args)
    # 'auto' falls back to the vmap path for such a model.
    auto = clipping.make(model, _ce, training.predicted_class, "auto", clip_norm=1.0)(*args)
    ref = clipping.make(model, _ce, training.predicted_class, "vmap", clip_norm=1.0)(*args)
    chex.assert_trees_all_close(auto.grad_sum, ref.grad_sum)
