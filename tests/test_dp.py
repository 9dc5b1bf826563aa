"""DP-SGD: noise law, Poisson sampling with padding, micro-batching, masks, the training loop."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmia import dp, pruning, training
from jaxmia.dp import DPConfig
from jaxmia.errors import UserError
from jaxmia.models import mlp


@pytest.mark.parametrize("rng", dp.NOISE_RNGS)
def test_noise_has_the_right_standard_deviation_and_spares_pruned_weights(rng):
    params = {"w": jnp.zeros((400, 500)), "b": jnp.zeros((500,))}
    masks = {"w": (jnp.arange(400 * 500).reshape(400, 500) % 4 != 0).astype(jnp.float32),
             "b": jnp.ones((500,))}
    noise = dp.gaussian_noise(jax.random.key(0), params, masks, 0.3, rng)
    w = np.asarray(noise["w"])
    live = w[np.asarray(masks["w"]) == 1]  # 150,000 draws: std error of the std ~0.2%
    assert abs(live.std() / 0.3 - 1) < 0.01
    assert abs(live.mean()) < 0.3 * 0.01
    assert np.all(w[np.asarray(masks["w"]) == 0] == 0)
    # Leaves get independent noise.
    assert abs(np.corrcoef(w[0, :500], np.asarray(noise["b"]))[0, 1]) < 0.15


def _model_and_batch(n=8):
    model = mlp.make(4, (6,), dropout=0.0)
    params, state = model.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (n, 6))
    y = jnp.arange(n) % 4
    return model, params, state, x, y


def _ce(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y)


@pytest.mark.parametrize("clipping", ["vmap", "ghost"])
def test_micro_batching_does_not_change_the_gradient(clipping):
    model, params, state, x, y = _model_and_batch(8)
    masks = pruning.ones_like(params)
    w = jnp.array([1, 1, 1, 0, 1, 1, 0, 0], jnp.float32)
    grads = []
    for physical in (8, 4, 2):
        cfg = DPConfig(noise_multiplier=0.0, clip_norm=0.3, clipping=clipping,
                       physical_batch=physical)
        g, m = jax.jit(dp.make_gradient(model, _ce, training.predicted_class, cfg, 5))(
            params, masks, state, x, y, w, jax.random.key(2))
        grads.append(g)
        assert float(m["n"]) == 5
    chex.assert_trees_all_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)
    chex.assert_trees_all_close(grads[0], grads[2], rtol=1e-5, atol=1e-7)


def test_empty_batch_is_a_noise_only_step_divided_by_the_expected_batch():
    model, params, state, x, y = _model_and_batch(8)
    masks = pruning.ones_like(params)
    cfg = DPConfig(noise_multiplier=2.0, clip_norm=0.5)
    g, _ = jax.jit(dp.make_gradient(model, _ce, training.predicted_class, cfg, 4))(
        params, masks, state, x, y, jnp.zeros(8), jax.random.key(2))
    flat = np.concatenate([np.ravel(v) for v in jax.tree.leaves(g)])
    # sigma C / expected batch = 2 * 0.5 / 4 = 0.25
    assert abs(flat.std() / 0.25 - 1) < 0.05


def test_poisson_sampling_rate_padding_and_stopped_models():
    n_max, n, batch = 400, 300, 30
    chosen = np.asarray(training._poisson_chosen(jnp.bool_(False), jnp.int32(n), n_max,
                                                 jax.random.key(0), batch))
    steps = -(-n_max // batch)
    assert chosen.shape == (steps, n_max)
    assert not chosen[:, n:].any()  # padding rows of the index matrix are never sampled
    rate = chosen[:, :n].mean()  # q = 30 / 300; 14 x 300 draws, std error ~0.005
    assert abs(rate - 0.1) < 0.02
    idx = jnp.arange(n_max) + 1000
    capacity = 64
    rows, valid, live, _ = training._poisson_plan(jnp.bool_(False), idx, jnp.int32(n),
                                                  jax.random.key(0), batch, capacity)
    rows, valid = np.asarray(rows), np.asarray(valid)
    for s in range(steps):  # the sampled rows come first, each once, then weight-0 padding
        k = int(chosen[s].sum())
        assert valid[s].sum() == k and np.all(valid[s, :k] == 1)
        assert set(rows[s, :k]) == set(np.flatnonzero(chosen[s]) + 1000)
    assert np.all(np.asarray(live))
    _, valid_done, live_done, _ = training._poisson_plan(
        jnp.bool_(True), idx, jnp.int32(n), jax.random.key(0), batch, capacity)
    assert float(jnp.sum(valid_done)) == 0 and not np.any(np.asarray(live_done))


def _ensemble(num_models=2):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6)).astype(np.float32)
    y = ((x[:, 0] > 0) + 2 * (x[:, 1] > 0)).astype(np.int32)
    train = [rng.permutation(240)[:200 - 10 * k] for k in range(num_models)]
    dev = [np.arange(240, 300)] * num_models
    model = mlp.make(4, (6,))
    params, state = training.init_ensemble(model, jax.random.split(jax.random.key(3), num_models))
    return model, params, state, training.make_ensemble_data(x, y, train, dev)


def test_dp_fit_learns_keeps_masks_and_fused_equals_stepwise():
    model, params, state, data = _ensemble()
    masks = pruning.make_masks("l1_unstructured", params, 0.5, ensemble=True)
    params = pruning.apply_masks(params, masks)
    keys = jax.random.split(jax.random.key(4), 2)
    results = {}
    for mode in ("fused", "looped", "stepwise"):
        cfg = training.TrainConfig(epochs=6, batch_size=32, lr=1e-2, patience=None, keep="last",
                                   ensemble_mode=mode,
                                   dp=DPConfig(noise_multiplier=0.5, clip_norm=1.0,
                                               physical_batch=16))
        results[mode] = training.fit(model, params, state, masks, data, cfg, keys)
    for mode in ("looped", "stepwise"):
        chex.assert_trees_all_close(results["fused"].params, results[mode].params,
                                    rtol=1e-5, atol=1e-6)
    res = results["fused"]
    for p, m in zip(jax.tree.leaves(res.params), jax.tree.leaves(masks)):
        assert np.all(np.asarray(p)[np.asarray(m) == 0] == 0)
    assert np.all(res.steps == 6 * 7)  # ceil(200 / 32) steps an epoch, empty ones included
    assert np.all(res.best_dev_acc > 0.45)  # 4 classes: chance is 0.25


def test_dp_fit_is_reproducible_and_batchnorm_is_refused():
    model, params, state, data = _ensemble(1)
    cfg = training.TrainConfig(epochs=2, batch_size=32, dp=DPConfig(noise_multiplier=1.0))
    keys = jax.random.split(jax.random.key(4), 1)
    a = training.fit(model, params, state, pruning.ones_like(params), data, cfg, keys)
    b = training.fit(model, params, state, pruning.ones_like(params), data, cfg, keys)
    chex.assert_trees_all_equal(a.params, b.params)
    from jaxmia import models
    bn = models.make("resnet20", 4, (8, 8, 3))
    with pytest.raises(UserError, match="GroupNorm"):
        training.fit(bn, params, state, pruning.ones_like(params), data, cfg, keys)
    with pytest.raises(UserError, match="dp_microbatch"):
        DPConfig(noise_multiplier=1.0, clipping="microbatch", microbatch_size=5).validate(32)


def test_dp_fit_killed_and_resumed_equals_uninterrupted(tmp_path):
    model, params, state, data = _ensemble(2)
    cfg = training.TrainConfig(epochs=3, batch_size=32, patience=None,
                               dp=DPConfig(noise_multiplier=1.0, physical_batch=16))
    keys = jax.random.split(jax.random.key(4), 2)
    ones = pruning.ones_like(params)
    whole = training.fit(model, params, state, ones, data, cfg, keys)
    with pytest.raises(KeyboardInterrupt):
        training.fit(model, params, state, ones, data, cfg, keys,
                     checkpoint_dir=str(tmp_path / "ck"), stop_after=1)
    resumed = training.fit(model, params, state, ones, data, cfg, keys,
                           checkpoint_dir=str(tmp_path / "ck"))
    chex.assert_trees_all_close(resumed.params, whole.params, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(resumed.steps, whole.steps)
