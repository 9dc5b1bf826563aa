"""WeMem's data schedules (jaxmia/defenses/wemem.py) and the training loop's schedules."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmia import pruning, training
from jaxmia.defenses import wemem
from jaxmia.errors import UserError
from tests.toys import toy_ensemble


def test_windows_hand_worked():
    ranked = [np.array([10, 11, 12, 13, 14]), np.array([20, 21])]
    # width 3, stride 1: epoch e takes positions [e, e + 3) of each class.
    assert wemem.window(ranked, 0, 3, 1).tolist() == [10, 11, 12, 20, 21]
    assert wemem.window(ranked, 1, 3, 1).tolist() == [11, 12, 13, 21]
    assert wemem.window(ranked, 2, 3, 1).tolist() == [12, 13, 14]
    assert wemem.window(ranked, 4, 3, 1).tolist() == [14]
    assert wemem.window(ranked, 5, 3, 1).tolist() == []
    # The released code: the short class first clamps ``end`` to 2, which the next class keeps.
    short_first = ranked[::-1]
    assert wemem.window(short_first, 0, 3, 1, "code").tolist() == [20, 21, 10, 11]
    assert wemem.window(short_first, 0, 3, 1).tolist() == [20, 21, 10, 11, 12]


def test_ranking_by_class_and_score_keeps_ties_in_row_order():
    labels = np.array([0, 1, 0, 1, 0, 0])
    scores = np.array([0.5, 0.1, -0.2, 0.9, 0.5, 0.0])
    rows = np.array([4, 0, 1, 2, 3, 5])  # a model's own row order
    low = wemem.ranked_by_class(rows, labels, scores, "low_first")
    high = wemem.ranked_by_class(rows, labels, scores, "high_first")
    # class 0 rows 4, 0, 2, 5 with scores .5, .5, -.2, 0; class 1 rows 1, 3 with .1, .9.
    assert [r.tolist() for r in low] == [[2, 5, 4, 0], [1, 3]]
    assert [r.tolist() for r in high] == [[4, 0, 5, 2], [3, 1]]
    shuffled = wemem.ranked_by_class(rows, labels, scores, "random", seed=3)
    assert [sorted(r.tolist()) for r in shuffled] == [[0, 2, 4, 5], [1, 3]]
    again = wemem.ranked_by_class(rows, labels, scores, "random", seed=3)
    assert [r.tolist() for r in shuffled] == [r.tolist() for r in again]


def _problem(num_models=3):
    model, params, state, data, keys = toy_ensemble(num_models)
    n = int(data.x.shape[0])
    scores = np.asarray(jax.random.uniform(jax.random.key(5), (n,)))
    lists = [np.asarray(data.train_idx[k, : int(data.train_n[k])]) for k in range(num_models)]
    return model, params, state, data, keys, scores, lists


CFG = training.TrainConfig(epochs=3, batch_size=32, patience=None, keep="last",
                           ensemble_mode="looped")


def _fit(problem, cfg=CFG, **kw):
    model, params, state, data, keys, _, _ = problem
    return training.fit(model, params, state, pruning.ones_like(params), data, cfg, keys, **kw)


def _same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _differ(a, b):
    return any(not np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def problem():
    return _problem()


@pytest.fixture(scope="module")
def plain(problem):
    return _fit(problem)


def test_rsw_with_a_window_over_every_row_is_the_unscheduled_fit(problem, plain):
    _, _, _, data, _, scores, lists = problem
    schedule = wemem.make("rsw", lists, np.asarray(data.y), scores, epochs=CFG.epochs,
                          width=10_000, stride=0)
    _same(_fit(problem, schedule=schedule).params, plain.params)


def test_rsw_trains_each_epoch_on_its_window(problem, plain):
    """A window of 5 rows a class moved by 5: every epoch sees other rows, no row twice."""
    _, _, _, data, _, scores, lists = problem
    schedule = wemem.make("rsw", lists, np.asarray(data.y), scores, epochs=CFG.epochs, width=5,
                          stride=5)
    seen = [schedule.phases[0].rows(e) for e in range(CFG.epochs)]
    for k in range(3):
        rows = np.concatenate([s[k] for s in seen])
        assert len(rows) == len(set(rows.tolist())) == 3 * 5 * 4  # 4 classes
        assert set(rows.tolist()) <= set(lists[k].tolist())
    assert schedule.phases[0].capacity == 20
    res = _fit(problem, schedule=schedule)
    assert _differ(res.params, plain.params)
    assert res.steps.tolist() == [CFG.epochs] * 3  # ceil(20 / 32) = 1 step an epoch


def test_rmr_with_no_risky_rows_is_the_unscheduled_fit(problem, plain):
    _, _, _, data, _, scores, lists = problem
    schedule = wemem.make("rmr", lists, np.asarray(data.y), scores, epochs=CFG.epochs,
                          threshold=2.0)
    assert schedule.phases[0].capacity == 0
    _same(_fit(problem, schedule=schedule).params, plain.params)


def _manual_rmr(problem, threshold, weight_decay, epochs):
    """RMR written out from the pieces: per epoch, the risky rows' shuffled pass with an Adam of
    ``weight_decay`` (keys: the epoch key's fold-in of 2), then the other rows' pass with the
    stage's Adam (the epoch key), each optimizer keeping its own state."""
    model, params, state, data, keys, scores, lists = problem
    tx_risk = training.make_optimizer(dataclasses.replace(CFG, weight_decay=weight_decay))
    tx_gen = training.make_optimizer(CFG)
    out = []
    for k in range(len(lists)):
        one = jax.tree.map(lambda a: a[k], (params, state))
        rows = lists[k]
        risk_rows = rows[scores[rows] >= threshold]
        gen_rows = rows[scores[rows] < threshold]
        capacity = [max(len(r[scores[r] >= threshold]) for r in lists),
                    max(len(r[scores[r] < threshold]) for r in lists)]
        st = training.TrainState(step=jnp.int32(0), params=one[0],
                                 masks=pruning.ones_like(one[0]), model_state=one[1],
                                 opt_state=tx_gen.init(one[0]))
        opt = [tx_risk.init(one[0]), tx_gen.init(one[0])]
        for e in range(epochs):
            epoch_key = jax.random.fold_in(keys[k], e)
            for p, (part, tx) in enumerate(((risk_rows, tx_risk), (gen_rows, tx_gen))):
                step = jax.jit(training.make_train_step(model, tx))
                key = jax.random.fold_in(epoch_key, 2) if p == 0 else epoch_key
                idx = np.zeros(capacity[p], np.int32)
                idx[: len(part)] = part
                batch_rows, w, live, step_key = training._shuffle_plan(
                    jnp.bool_(False), jnp.asarray(idx), jnp.int32(len(part)), key,
                    CFG.batch_size)
                st = dataclasses.replace(st, opt_state=opt[p])
                for j in range(w.shape[0]):
                    st, _ = step(st, data.x[batch_rows[j]], data.y[batch_rows[j]], w[j],
                                 jax.random.fold_in(step_key, j), live[j])
                opt[p] = st.opt_state
        out.append(st.params)
    return jax.tree.map(lambda *a: jnp.stack(a), *out)


def test_rmr_trains_risky_rows_first_with_their_own_optimizer(problem, plain):
    _, _, _, data, _, scores, lists = problem
    schedule = wemem.make("rmr", lists, np.asarray(data.y), scores, epochs=CFG.epochs,
                          threshold=0.7, weight_decay=0.1)
    res = _fit(problem, schedule=schedule)
    assert _differ(res.params, plain.params)
    expected = _manual_rmr(problem, 0.7, 0.1, CFG.epochs)
    for a, b in zip(jax.tree.leaves(res.params), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_rmr_resumes_a_killed_fit_exactly(problem, tmp_path):
    _, _, _, data, _, scores, lists = problem
    schedule = wemem.make("rmr", lists, np.asarray(data.y), scores, epochs=CFG.epochs,
                          threshold=0.7)
    whole = _fit(problem, schedule=schedule)
    with pytest.raises(KeyboardInterrupt):
        _fit(problem, schedule=schedule, checkpoint_dir=str(tmp_path), stop_after=1)
    _same(_fit(problem, schedule=schedule, checkpoint_dir=str(tmp_path)).params, whole.params)


@pytest.mark.parametrize("kind", ["rsw", "swmr"])
def test_undefended_models_train_as_without_the_schedule(problem, plain, kind):
    _, _, _, data, _, scores, lists = problem
    defended = np.array([True, False, False])
    schedule = wemem.make(kind, lists, np.asarray(data.y), scores, epochs=CFG.epochs, width=6,
                          stride=2, threshold=0.6, defended=defended)
    res = _fit(problem, schedule=schedule)
    for k in (1, 2):
        _same(jax.tree.map(lambda a: a[k], res.params), jax.tree.map(lambda a: a[k],
                                                                     plain.params))
    assert _differ(jax.tree.map(lambda a: a[0], res.params),
                   jax.tree.map(lambda a: a[0], plain.params))


def test_swmr_splits_each_window_by_the_threshold(problem):
    _, _, _, data, _, scores, lists = problem
    schedule = wemem.make("swmr", lists, np.asarray(data.y), scores, epochs=CFG.epochs,
                          width=6, stride=2, threshold=0.6, order="high_first")
    rsw = wemem.make("rsw", lists, np.asarray(data.y), scores, epochs=CFG.epochs, width=6,
                     stride=2, order="high_first")
    for e in range(CFG.epochs):
        risky, rest = schedule.phases[0].rows(e), schedule.phases[1].rows(e)
        for k in range(3):
            window = rsw.phases[0].rows(e)[k]
            assert sorted(np.r_[risky[k], rest[k]].tolist()) == sorted(window.tolist())
            assert (scores[risky[k]] >= 0.6).all() and (scores[rest[k]] < 0.6).all()
    assert schedule.phases[0].weight_decay == wemem.DEFAULT_WEIGHT_DECAY
    assert schedule.phases[1].weight_decay is None


def test_refusals(problem):
    _, _, _, data, _, scores, lists = problem
    y = np.asarray(data.y)
    only_1 = np.setdiff1d(lists[1], np.r_[lists[0], lists[2]])
    holes = scores.copy()
    holes[only_1[:3]] = np.nan
    with pytest.raises(UserError, match="3 of model 1's .* no memorization score"):
        wemem.make("rmr", lists, y, holes, epochs=3)
    # An undefended model needs no scores.
    wemem.make("rmr", lists, y, holes, epochs=3, defended=np.array([True, False, True]))
    with pytest.raises(UserError, match="leaves model 0 no rows from epoch 2"):
        wemem.make("rsw", lists, y, scores, epochs=3, width=5, stride=30)
    for kw, match in (({"kind": "wmr"}, "unknown WeMem schedule"),
                      ({"order": "sorted"}, "unknown --wemem_order"),
                      ({"windows": "both"}, "unknown --wemem_windows"),
                      ({"width": 0}, "--wemem_width must be >= 1"),
                      ({"weight_decay": -1.0}, "--wemem_weight_decay must be >= 0")):
        args = {"kind": "rsw", **kw}
        with pytest.raises(UserError, match=match):
            wemem.make(args.pop("kind"), lists, y, scores, epochs=3, **args)
    schedule = wemem.make("rsw", lists, y, scores, epochs=3)
    with pytest.raises(UserError, match="cannot be combined with DP-SGD"):
        from jaxmia import dp
        _fit(problem, dataclasses.replace(CFG, dp=dp.DPConfig(noise_multiplier=1.0)),
             schedule=schedule)
    with pytest.raises(UserError, match="lr milestones"):
        _fit(problem, dataclasses.replace(CFG, lr_milestones=(1,)), schedule=schedule)


def test_each_pass_takes_its_own_steps(problem):
    """An epoch of RMR takes ceil(risky / B) + ceil(others / B) steps; a model without risky
    rows skips that pass."""
    _, _, _, data, _, scores, lists = problem
    schedule = wemem.make("rmr", lists, np.asarray(data.y), scores, epochs=CFG.epochs,
                          threshold=0.7)
    res = _fit(problem, schedule=schedule)
    risky = [int((scores[r] >= 0.7).sum()) for r in lists]
    assert res.steps.tolist() == [CFG.epochs * (-(-n // 32) + -(-(len(r) - n) // 32))
                                  for n, r in zip(risky, lists)]
