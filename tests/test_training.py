"""The training loop: ensemble == each alone, resume == uninterrupted, early stopping, no retrace."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmia import models, pruning, training
from jaxmia.errors import UserError


def _setup(num_models=3, n=240, sizes=None, model_name="mlp"):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    y = ((x[:, 0] > 0).astype(np.int32) + 2 * (x[:, 1] > 0)).astype(np.int32)
    sizes = sizes or [150 - 7 * k for k in range(num_models)]  # Different sizes: padding used.
    train = [rng.permutation(180)[:s] for s in sizes]
    dev = [np.arange(180, 240 - 5 * k) for k in range(num_models)]
    model = models.make(model_name, 4, (8,))
    keys = jax.random.split(jax.random.key(42), num_models)
    params, state = training.init_ensemble(model, keys)
    return model, params, state, x, y, train, dev, keys


def _slice(tree, k):
    return jax.tree.map(lambda a: a[k: k + 1], tree)


CFG = training.TrainConfig(epochs=6, batch_size=32, patience=2)


def test_ensemble_equals_each_model_alone():
    model, params, state, x, y, train, dev, keys = _setup()
    ens = training.make_ensemble_data(x, y, train, dev)
    together = training.fit(model, params, state, pruning.ones_like(params), ens, CFG, keys)
    for k in range(3):
        alone_data = training.make_ensemble_data(x, y, [train[k]], [dev[k]])
        p = _slice(params, k)
        alone = training.fit(model, p, _slice(state, k), pruning.ones_like(p), alone_data, CFG,
                             keys[k: k + 1])
        chex.assert_trees_all_close(jax.tree.map(lambda a: a[k], together.params),
                                    jax.tree.map(lambda a: a[0], alone.params),
                                    rtol=2e-5, atol=2e-6)
        assert together.best_epoch[k] == alone.best_epoch[0]


def test_resume_after_kill_gives_the_same_result(tmp_path):
    model, params, state, x, y, train, dev, keys = _setup(num_models=2)
    ens = training.make_ensemble_data(x, y, train[:2], dev[:2])
    cfg = training.TrainConfig(epochs=5, batch_size=32, patience=None)
    ones = pruning.ones_like(params)
    full = training.fit(model, params, state, ones, ens, cfg, keys)
    ckpt = str(tmp_path / "ckpt")
    with pytest.raises(KeyboardInterrupt):
        training.fit(model, params, state, ones, ens, cfg, keys, checkpoint_dir=ckpt, stop_after=2)
    log = tmp_path / "m.jsonl"
    resumed = training.fit(model, params, state, ones, ens, cfg, keys, checkpoint_dir=ckpt,
                           metrics_path=str(log))
    chex.assert_trees_all_equal(full.params, resumed.params)
    epochs = [json.loads(l)["epoch"] for l in log.read_text().splitlines()]
    assert epochs == [2, 3, 4]  # Only the epochs after the last checkpoint were run again.


def test_checkpoint_interval_loses_at_most_one_interval(tmp_path):
    model, params, state, x, y, train, dev, keys = _setup(num_models=1)
    ens = training.make_ensemble_data(x, y, train[:1], dev[:1])
    cfg = training.TrainConfig(epochs=6, batch_size=32, patience=None, checkpoint_every=2)
    ones = pruning.ones_like(params)
    ckpt = str(tmp_path / "ckpt")
    with pytest.raises(KeyboardInterrupt):
        training.fit(model, params, state, ones, ens, cfg, keys, checkpoint_dir=ckpt, stop_after=3)
    log = tmp_path / "m.jsonl"
    training.fit(model, params, state, ones, ens, cfg, keys, checkpoint_dir=ckpt,
                 metrics_path=str(log))
    assert [json.loads(l)["epoch"] for l in log.read_text().splitlines()] == [2, 3, 4, 5]


def test_checkpoint_of_another_model_is_refused(tmp_path):
    from jaxmia.errors import UserError

    model, params, state, x, y, train, dev, keys = _setup(num_models=1)
    ens = training.make_ensemble_data(x, y, train[:1], dev[:1])
    ckpt = str(tmp_path / "ckpt")
    training.fit(model, params, state, pruning.ones_like(params), ens,
                 training.TrainConfig(epochs=1, batch_size=32), keys, checkpoint_dir=ckpt)
    other = models.make("mlp", 5, (8,))  # Another head size.
    p2, s2 = training.init_ensemble(other, keys)
    with pytest.raises(UserError, match="does not fit this run"):
        training.fit(other, p2, s2, pruning.ones_like(p2), ens,
                     training.TrainConfig(epochs=2, batch_size=32), keys, checkpoint_dir=ckpt)


def test_early_stopping_keeps_best_and_stops_after_patience():
    # A learning rate so large that dev accuracy stalls: the model must stop once more than
    # `patience` epochs fail to improve, and return the params of its best epoch.
    model, params, state, x, y, train, dev, keys = _setup(num_models=1)
    ens = training.make_ensemble_data(x, y, train[:1], dev[:1])
    cfg = training.TrainConfig(epochs=40, batch_size=32, patience=1, lr=1e-3)
    res = training.fit(model, params, state, pruning.ones_like(params), ens, cfg, keys)
    assert res.epochs_run < 40
    assert res.epochs_run == res.best_epoch[0] + 1 + 2  # best, then patience+1 bad epochs
    logits = training.predict_logits(model, res.params, res.model_state,
                                     pruning.ones_like(res.params), ens.x, ens.dev_idx)
    acc = training.accuracy(logits, ens.y[ens.dev_idx], ens.dev_n)
    np.testing.assert_allclose(acc, res.best_dev_acc, rtol=1e-6)


def test_epochs_after_the_first_do_not_retrace():
    model, params, state, x, y, train, dev, keys = _setup(num_models=2)
    traces = []
    base_apply = model.apply

    def counting_apply(*a, **k):
        if k.get("train"):
            traces.append(1)
        return base_apply(*a, **k)

    counting = model._replace(apply=counting_apply)
    ens = training.make_ensemble_data(x, y, train[:2], dev[:2])
    cfg = training.TrainConfig(epochs=1, batch_size=32, patience=None)
    training.fit(counting, params, state, pruning.ones_like(params), ens, cfg, keys)
    after_one = len(traces)
    training.fit(counting, params, state, pruning.ones_like(params), ens,
                 training.TrainConfig(epochs=5, batch_size=32, patience=None), keys)
    assert after_one >= 1 and len(traces) == after_one  # 4 more epochs, no new trace.


def test_same_seed_same_result_other_seed_other_result():
    model, params, state, x, y, train, dev, keys = _setup(num_models=1)
    ens = training.make_ensemble_data(x, y, train[:1], dev[:1])
    cfg = training.TrainConfig(epochs=2, batch_size=32, patience=None)
    ones = pruning.ones_like(params)
    a = training.fit(model, params, state, ones, ens, cfg, keys)
    b = training.fit(model, params, state, ones, ens, cfg, keys)
    c = training.fit(model, params, state, ones, ens, cfg, jax.random.split(jax.random.key(1), 1))
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
    assert not np.allclose(jax.tree.leaves(a.params)[0], jax.tree.leaves(c.params)[0])


def test_padded_rows_carry_no_weight():
    # Model 0 trains on 40 rows; duplicating them (80 rows with half the batch count as padding
    # elsewhere) must not matter: a batch of 32 over 40 rows uses 2 steps, the 2nd with 8 real rows.
    model, params, state, x, y, train, dev, keys = _setup(num_models=2, sizes=[40, 70])
    ens = training.make_ensemble_data(x, y, train, dev[:2])
    cfg = training.TrainConfig(epochs=1, batch_size=32, patience=None)
    two = training.fit(model, params, state, pruning.ones_like(params), ens, cfg, keys)
    p0 = _slice(params, 0)
    one = training.fit(model, p0, _slice(state, 0), pruning.ones_like(p0),
                       training.make_ensemble_data(x, y, train[:1], dev[:1]), cfg, keys[:1])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[0], b[0], rtol=2e-5, atol=2e-6),
                 two.params, one.params)
    np.testing.assert_array_equal(two.params["Dense_0"]["kernel"][0].shape, (8, 256))


def test_train_step_weighted_loss_matches_unpadded_mean():
    model = models.make("mlp", 3, (4,), )
    params, state = model.init(jax.random.key(0))
    tx = training.make_optimizer(training.TrainConfig())
    st = training.TrainState(step=jnp.int32(0), params=params, masks=pruning.ones_like(params),
                             model_state=state, opt_state=tx.init(params))
    step = training.make_train_step(model._replace(
        apply=lambda p, s, x, train, key=None, rows=None: model.apply(p, s, x, train=False)),
        tx)
    x = jax.random.normal(jax.random.key(1), (5, 4))
    y = jnp.array([0, 1, 2, 0, 1])
    padded, m1 = step(st, jnp.concatenate([x, x[:3]]), jnp.concatenate([y, y[:3]]),
                      jnp.array([1.0] * 5 + [0.0] * 3), jax.random.key(2))
    plain, m2 = step(st, x, y, jnp.ones(5), jax.random.key(2))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), padded.params,
                 plain.params)
    np.testing.assert_allclose(m1["loss_sum"], m2["loss_sum"], rtol=1e-6)
    empty, _ = step(st, x, y, jnp.zeros(5), jax.random.key(2))  # No real rows: no update.
    jax.tree.map(np.testing.assert_array_equal, empty.params, st.params)


def test_fused_looped_and_stepwise_ensemble_modes_agree():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 8, 8, 1)).astype(np.float32)
    y = (x[:, :4].mean((1, 2, 3)) > 0).astype(np.int32)
    model = models.make("small_cnn", 2, (8, 8, 1))
    keys = jax.random.split(jax.random.key(3), 2)
    params, state = training.init_ensemble(model, keys)
    ens = training.make_ensemble_data(x, y, [np.arange(60), np.arange(10, 64)],
                                      [np.arange(64, 96)] * 2)
    out = {}
    for mode in ("fused", "looped", "stepwise"):
        cfg = training.TrainConfig(epochs=2, batch_size=16, patience=None, ensemble_mode=mode)
        out[mode] = training.fit(model, params, state, pruning.ones_like(params), ens, cfg, keys)
    for mode in ("looped", "stepwise"):
        chex.assert_trees_all_close(out["fused"].params, out[mode].params, rtol=1e-4, atol=1e-5)
    assert training.resolve_ensemble_mode("auto", params) == "stepwise"  # conv model on CPU
    assert training.resolve_ensemble_mode("auto", {"k": jnp.zeros((2, 3, 4))}) == "looped"


def test_looped_mode_skips_stopped_models_like_fused():
    """Early stopping at different epochs: 'looped' (stopped models skipped by a branch) and
    'fused' (vmapped, stopped models masked) give the same models, epochs and metrics."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 6)).astype(np.float32)
    y = (x[:, 0] + 0.5 * rng.normal(size=300) > 0).astype(np.int32)
    model = models.make("mlp", 2, (6,))
    keys = jax.random.split(jax.random.key(5), 3)
    params, state = training.init_ensemble(model, keys)
    ens = training.make_ensemble_data(x, y, [np.arange(200)] * 3, [np.arange(200, 300)] * 3)
    out = {}
    for mode in ("fused", "looped"):
        cfg = training.TrainConfig(epochs=12, batch_size=32, lr=3e-2, patience=0,
                                   ensemble_mode=mode)
        out[mode] = training.fit(model, params, state, pruning.ones_like(params), ens, cfg, keys)
    assert len(set(out["looped"].steps.tolist())) > 1  # the models stopped at different epochs
    np.testing.assert_array_equal(out["looped"].steps, out["fused"].steps)
    np.testing.assert_array_equal(out["looped"].best_epoch, out["fused"].best_epoch)
    chex.assert_trees_all_close(out["fused"].params, out["looped"].params, rtol=1e-4, atol=1e-5)


def test_lr_milestones_decay_like_multisteplr():
    # Adam's update for a constant gradient is -lr (bias-corrected), so the update size shows the
    # lr: milestones at epoch 2 with 3 steps an epoch -> steps 0..5 at 1e-3, from step 6 at 1e-4.
    cfg = training.TrainConfig(lr=1e-3, weight_decay=0.0, lr_milestones=(2,))
    tx = training.make_optimizer(cfg, steps_per_epoch=3)
    params = {"w": jnp.ones(2)}
    state = tx.init(params)
    sizes = []
    for _ in range(8):
        upd, state = tx.update({"w": jnp.ones(2)}, state, params)
        sizes.append(float(-upd["w"][0]))
    np.testing.assert_allclose(sizes, [1e-3] * 6 + [1e-4] * 2, rtol=1e-4)


def test_keep_last_returns_final_params():
    model, params, state, x, y, train, dev, keys = _setup(num_models=1)
    ens = training.make_ensemble_data(x, y, train[:1], dev[:1])
    ones = pruning.ones_like(params)
    base = dict(epochs=3, batch_size=32, patience=None)
    last = training.fit(model, params, state, ones, ens, training.TrainConfig(**base, keep="last"),
                        keys)
    longer = training.fit(model, params, state, ones, ens,
                          training.TrainConfig(**{**base, "epochs": 4}, keep="last"), keys)
    assert last.epochs_run == 3 and last.best_epoch[0] == 2
    assert not np.allclose(jax.tree.leaves(last.params)[0], jax.tree.leaves(longer.params)[0])


def test_batchnorm_statistics_skip_padded_rows():
    # A BatchNorm CNN's step on 5 real rows padded to 8 (the padding far off the data, so it
    # would drag the batch mean and variance) must equal its step on the 5 rows alone, as
    # PyTorch's on a DataLoader's shorter last batch: the same update and running statistics.
    # SGD, not Adam: a conv bias before a BatchNorm has a gradient of exactly zero in exact
    # arithmetic, and Adam's first step (g / (|g| + eps)) blows its rounding noise, ~1e-8, up to
    # ~lr, so two ways of summing the same rows (8 padded vs 5) gave different Adam steps on an
    # AVX2 CPU (session 14), not different gradients.
    model = models.make("small_cnn", 3, (8, 8, 1), norm="batch")
    params, state = model.init(jax.random.key(0))
    tx = training.make_optimizer(training.TrainConfig(optimizer="sgd", lr=0.1))
    st = training.TrainState(step=jnp.int32(0), params=params, masks=pruning.ones_like(params),
                             model_state=state, opt_state=tx.init(params))
    step = jax.jit(training.make_train_step(model, tx))
    x = jax.random.normal(jax.random.key(1), (5, 8, 8, 1))
    y = jnp.array([0, 1, 2, 0, 1])
    pad = 50.0 + jax.random.normal(jax.random.key(3), (3, 8, 8, 1))
    padded, m1 = step(st, jnp.concatenate([x, pad]), jnp.concatenate([y, y[:3]]),
                      jnp.array([1.0] * 5 + [0.0] * 3), jax.random.key(2))
    plain, m2 = step(st, x, y, jnp.ones(5), jax.random.key(2))
    for a, b in ((padded.params, plain.params), (padded.model_state, plain.model_state)):
        jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-6), a, b)
    np.testing.assert_allclose(m1["loss_sum"], m2["loss_sum"], rtol=1e-5)
    # Without the row mask the padding does move the statistics (what the mask prevents).
    _, unmasked = model.apply(params, state, jnp.concatenate([x, pad]), train=True)
    assert not np.allclose(unmasked["batch_stats"]["Norm_0"]["BatchNorm"]["mean"],
                           plain.model_state["batch_stats"]["Norm_0"]["BatchNorm"]["mean"],
                           atol=1e-3)


def test_a_batchnorm_module_without_rows_still_trains():
    # A user's own Flax module with BatchNorm and the plain ``(x, train)`` call: wrapped and
    # trained on a padded batch, it is not handed ``rows`` (its statistics see the padding).
    from flax import linen as nn

    from jaxmia.models.wrap import from_linen

    class Mine(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool):
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
            return nn.Dense(3)(x)

    model = from_linen(Mine(), (4,), "mine")
    assert model.has_batchnorm
    params, state = model.init(jax.random.key(0))
    tx = training.make_optimizer(training.TrainConfig())
    st = training.TrainState(step=jnp.int32(0), params=params, masks=pruning.ones_like(params),
                             model_state=state, opt_state=tx.init(params))
    x = jax.random.normal(jax.random.key(1), (6, 4))
    new, m = training.make_train_step(model, tx)(st, x, jnp.arange(6) % 3,
                                                 jnp.array([1.0] * 4 + [0.0] * 2),
                                                 jax.random.key(2))
    assert float(m["n"]) == 4
    _, direct = model.apply(params, state, x, train=True)  # statistics over all 6 rows
    jax.tree.map(np.testing.assert_allclose, new.model_state, direct)


def test_sigmoid_mse_loss_hand_worked():
    # One-logit model z = 0 for every input: sigmoid 0.5, so the loss is 0.25 whatever y in {0, 1};
    # z >= 0 predicts class 1, so accuracy counts the y = 1 rows.
    model = models.make("mlp", 1, (2,))
    params, state = model.init(jax.random.key(0))
    params = jax.tree.map(jnp.zeros_like, params)
    tx = training.make_optimizer(training.TrainConfig())
    st = training.TrainState(step=jnp.int32(0), params=params, masks=pruning.ones_like(params),
                             model_state=state, opt_state=tx.init(params))
    step = training.make_train_step(model._replace(
        apply=lambda p, s, x, train, key=None, rows=None: model.apply(p, s, x, train=False)),
        tx,
        loss="sigmoid_mse")
    _, m = step(st, jnp.ones((4, 2)), jnp.array([1, 0, 1, 1]), jnp.ones(4), jax.random.key(1))
    np.testing.assert_allclose(m["loss_sum"], 4 * 0.25, rtol=1e-6)
    assert int(m["correct"]) == 3
    with pytest.raises(Exception, match="unknown loss"):
        training.make_train_step(model, tx, loss="hinge")


def test_a_fit_continues_from_anothers_last_state_with_its_optimizer():
    # IMP's next round with --imp_continue: the last params, pruned further, train on with the
    # optimizer state of the fit before (a hand-threaded epoch loop is the oracle).
    import dataclasses

    model, params, state, x, y, train, dev, keys = _setup(num_models=2)
    ens = training.make_ensemble_data(x, y, train[:2], dev[:2])
    cfg = training.TrainConfig(epochs=2, batch_size=32, patience=None, ensemble_mode="looped")
    first = training.fit(model, params, state, pruning.ones_like(params), ens, cfg, keys,
                         return_last=True)
    assert training.fit(model, params, state, pruning.ones_like(params), ens, cfg,
                        keys).last is None  # not kept unless asked for
    masks = pruning.make_masks("l1_unstructured", first.last.params, 0.5, ensemble=True)
    pruned = pruning.apply_masks(first.last.params, masks)
    keys2 = jax.random.split(jax.random.key(7), 2)
    second = training.fit(model, pruned, first.last.model_state, masks, ens, cfg, keys2,
                          start=first.last, return_last=True)
    np.testing.assert_array_equal(second.steps, first.steps)  # counted per fit
    epoch = training.make_epoch_fn(model, training.make_optimizer(cfg), 32, mode="looped",
                                   masked=pruning.masked_paths(masks))
    states = dataclasses.replace(first.last, params=pruned, masks=masks,
                                 step=jnp.zeros(2, jnp.int32))
    es = training.EarlyStopState(best_acc=jnp.zeros(2), best_epoch=jnp.zeros(2, jnp.int32),
                                 best_params=pruned, best_model_state=state,
                                 bad_epochs=jnp.zeros(2, jnp.int32), done=jnp.zeros(2, bool))
    for e in range(2):
        states, _ = epoch(states, es, ens, training._epoch_keys(keys2, jnp.int32(e)), e)
    jax.tree.map(np.testing.assert_array_equal, second.last.params, states.params)
    jax.tree.map(np.testing.assert_array_equal, second.last.opt_state, states.opt_state)
    # A fresh optimizer trains other models.
    fresh = training.fit(model, pruned, first.last.model_state, masks, ens, cfg, keys2,
                         return_last=True)
    assert not np.allclose(fresh.last.params["Dense_0"]["kernel"],
                           second.last.params["Dense_0"]["kernel"])
    # Another optimizer's state is refused.
    with pytest.raises(UserError, match="holds another optimizer state"):
        training.fit(model, pruned, state, masks, ens,
                     dataclasses.replace(cfg, optimizer="sgd"), keys2, start=first.last)


def test_a_fit_keeps_the_params_of_an_epoch_through_a_kill(tmp_path):
    # IMP's late rewinding: the params after epoch 2 of a 5-epoch fit are those a 2-epoch fit
    # ends with; a fit killed before or after that epoch and resumed keeps the same.
    import dataclasses

    model, params, state, x, y, train, dev, keys = _setup(num_models=2)
    ens = training.make_ensemble_data(x, y, train[:2], dev[:2])
    cfg = training.TrainConfig(epochs=5, batch_size=32, patience=None)
    ones = pruning.ones_like(params)
    full = training.fit(model, params, state, ones, ens, cfg, keys, keep_epoch=2,
                        return_last=True)
    two = training.fit(model, params, state, ones, ens,
                       dataclasses.replace(cfg, epochs=2, keep="last"), keys)
    chex.assert_trees_all_equal(full.kept_params, two.params)
    assert not np.allclose(full.kept_params["Dense_0"]["kernel"],
                           full.last.params["Dense_0"]["kernel"])
    assert training.fit(model, params, state, ones, ens, cfg, keys).kept_params is None
    for stop in (1, 3):
        ckpt = str(tmp_path / f"ckpt{stop}")
        with pytest.raises(KeyboardInterrupt):
            training.fit(model, params, state, ones, ens, cfg, keys, checkpoint_dir=ckpt,
                         stop_after=stop, keep_epoch=2)
        resumed = training.fit(model, params, state, ones, ens, cfg, keys, checkpoint_dir=ckpt,
                               keep_epoch=2)
        chex.assert_trees_all_equal(full.kept_params, resumed.kept_params)
    with pytest.raises(UserError, match="after one of the fit's epochs"):
        training.fit(model, params, state, ones, ens, cfg, keys, keep_epoch=6)


def test_a_model_stopped_before_the_kept_epoch_keeps_its_last_params():
    model, params, state, x, y, train, dev, keys = _setup(num_models=1)
    ens = training.make_ensemble_data(x, y, train[:1], dev[:1])
    cfg = training.TrainConfig(epochs=40, batch_size=32, patience=1, lr=1e-3)
    res = training.fit(model, params, state, pruning.ones_like(params), ens, cfg, keys,
                       keep_epoch=40, return_last=True)
    assert res.epochs_run < 40  # early stopping ended the fit (as in the test above)
    chex.assert_trees_all_equal(res.kept_params, res.last.params)
    assert not np.allclose(res.kept_params["Dense_0"]["kernel"], params["Dense_0"]["kernel"])
