"""ADV (adversarial regularization): the inference model learns to tell members from references,
the training step updates it before its term and differentiates only the target, the target's
step works against it, its batches come from each model's own rows, modes agree, a killed fit
resumes exactly, the released code's one-target-step-an-epoch schedule, and the refusals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmia import defenses, dp, models, pruning, training
from jaxmia.defenses import adv
from jaxmia.errors import UserError
from tests.toys import toy_ensemble


def _separable(c=4, b=32, steps=7, seed=0):
    """Members: confident and correct; references: flat posteriors."""
    k = jax.random.split(jax.random.key(seed), 3)
    labels = jax.random.randint(k[0], (steps, b), 0, c)
    members = 8.0 * jax.nn.one_hot(labels, c) + jax.random.normal(k[1], (steps, b, c))
    references = 0.3 * jax.random.normal(k[2], (steps, b, c))
    return members, labels, references, labels


def test_the_inference_model_learns_to_tell_members_from_references():
    members, m_labels, refs, r_labels = _separable()
    state = adv.init(jax.random.key(1), 4)
    ones = jnp.ones(members.shape[1])
    before = adv.member_loss(state, members[0], m_labels[0], ones)
    train = jax.jit(adv.train)
    for i in range(10):
        state = train(state, members, m_labels, refs, r_labels, jax.random.key(10 + i))
    # On members its cross-entropy (for "member") falls; on references it rises.
    assert float(adv.member_loss(state, members[0], m_labels[0], ones)) < 0.2 < float(before)
    assert float(adv.member_loss(state, refs[0], r_labels[0], ones)) > 2.0


def _setup(strength=1.0):
    model = models.make("mlp", 4, (6,))
    params, state = model.init(jax.random.key(0))
    frozen = model._replace(apply=lambda p, s, x, train, key=None, rows=None:
                            model.apply(p, s, x, train=False))  # no dropout: a plain function
    tx = training.make_optimizer(training.TrainConfig(optimizer="sgd", weight_decay=0.0))
    d = defenses.REGISTRY["adv"](strength=strength)
    st = training.TrainState(step=jnp.int32(0), params=params, masks=pruning.ones_like(params),
                             model_state=state, opt_state=tx.init(params),
                             defense_state=adv.init(jax.random.key(3), 4))
    x = jax.random.normal(jax.random.key(1), (10, 6))
    y = jnp.arange(10) % 4
    bx = jax.random.normal(jax.random.key(4), (2, adv.ATTACK_STEPS, 10, 6))
    by = jax.random.randint(jax.random.key(5), (2, adv.ATTACK_STEPS, 10), 0, 4)
    return frozen, tx, d, st, x, y, (bx, by)


def test_the_step_updates_the_adversary_first_and_differentiates_only_the_target():
    model, tx, d, st, x, y, batches = _setup(strength=2.0)
    weight = jnp.array([1.0] * 8 + [0.0] * 2)
    key = jax.random.key(2)
    new, m = training.make_train_step(model, tx, defense=d)(st, x, y, weight, key,
                                                            adversary_batches=batches)
    # The adversary's updates, by hand: on the target's logits of the member and reference
    # batches, with the step key's fold-in 1.
    logits = model.apply(st.params, {}, batches[0].reshape(-1, 6), train=False)[0]
    logits = logits.reshape(2, adv.ATTACK_STEPS, 10, 4)
    expect_adv = adv.train(st.defense_state, logits[0], batches[1][0], logits[1], batches[1][1],
                           jax.random.fold_in(key, 1))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 new.defense_state, expect_adv)

    def total(p):  # CE - 2 * the *updated* inference model's member loss, real rows only
        out = model.apply(p, {}, x, train=True)[0]
        ce = jnp.sum(weight * training.LOSSES["cross_entropy"](out, y)) / 8
        return ce - 2.0 * adv.member_loss(expect_adv, out, y, weight)

    np.testing.assert_allclose(m["loss_sum"], 8 * total(st.params), rtol=1e-5)
    updates, _ = tx.update(jax.grad(total)(st.params), st.opt_state, st.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 new.params, jax.tree.map(jnp.add, st.params, updates))


def test_the_target_step_works_against_the_inference_model():
    model, tx, d, st, x, y, batches = _setup(strength=50.0)
    weight = jnp.ones(10)
    new, _ = training.make_train_step(model, tx, defense=d)(st, x, y, weight, jax.random.key(2),
                                                            adversary_batches=batches)

    def member_loss(p):
        return float(adv.member_loss(new.defense_state, model.apply(p, {}, x, train=False)[0],
                                     y, weight))

    assert member_loss(new.params) > member_loss(st.params)


def test_adversary_batches_come_from_each_models_own_rows():
    idx = jnp.array([5, 9, 11, 0, 0])  # 3 real train rows, then padding
    dev_idx = jnp.array([20, 21, 0])  # 2 real dev rows
    rows = training._adversary_plan(idx, jnp.int32(3), dev_idx, jnp.int32(2),
                                    jax.random.key(0), 3, batch_size=2, steps=7)
    assert rows.shape == (3, 2, 7, 2)  # ceil(5 / 2) steps, members / references
    assert set(np.asarray(rows[:, 0]).ravel()) == {5, 9, 11}
    assert set(np.asarray(rows[:, 1]).ravel()) == {20, 21}


def test_modes_agree_and_a_killed_fit_resumes_exactly(tmp_path):
    model, params, state, data, keys = toy_ensemble(2)
    ones = pruning.ones_like(params)
    cfg = training.TrainConfig(epochs=3, batch_size=32, patience=None)
    d = adv.make(1.0)
    fits = {mode: training.fit(model, params, state, ones, data,
                               training.dataclasses.replace(cfg, ensemble_mode=mode), keys,
                               defense=d) for mode in ("fused", "stepwise")}
    # The two layouts round differently (batched against unrolled products): to 1e-5.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 fits["fused"].params, fits["stepwise"].params)
    plain = training.fit(model, params, state, ones, data, cfg, keys)
    assert not np.allclose(plain.params["Dense_0"]["kernel"],
                           fits["fused"].params["Dense_0"]["kernel"])
    ckpt = str(tmp_path / "ckpt")
    with pytest.raises(KeyboardInterrupt):
        training.fit(model, params, state, ones, data, cfg, keys, checkpoint_dir=ckpt,
                     stop_after=2, defense=d)
    resumed = training.fit(model, params, state, ones, data, cfg, keys, checkpoint_dir=ckpt,
                           defense=d)
    # The checkpoint holds the inference models too: resuming gives the uninterrupted result.
    jax.tree.map(np.testing.assert_array_equal, resumed.params,
                 training.fit(model, params, state, ones, data, cfg, keys, defense=d).params)


def test_refusals():
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(UserError, match="ADV's theta"):
            adv.make(bad)
    model, tx, d, *_ = _setup()
    with pytest.raises(UserError, match="adv defense cannot be combined with DP-SGD"):
        training.make_train_step(model, tx, dp=dp.DPConfig(noise_multiplier=1.0),
                                 batch_size=10, defense=d)
    m, params, state, data, keys = toy_ensemble(2)
    no_dev = training.make_ensemble_data(data.x, data.y, [np.arange(50), np.arange(60)],
                                         [np.arange(100, 110), np.arange(0)])
    with pytest.raises(UserError, match="every model needs at least one dev row"):
        training.fit(m, params, state, pruning.ones_like(params), no_dev,
                     training.TrainConfig(epochs=1), keys, defense=d)


def test_one_step_per_epoch_draws_one_batch_of_each_models_own_rows():
    lists = [np.arange(100, 150), np.arange(200, 210), np.arange(300, 340)]
    sched = adv.one_step_per_epoch(lists, 16, defended=[True, True, False], seed=3)
    assert sched.name == "adv_one_per_epoch" and len(sched.phases) == 1
    phase = sched.phases[0]
    assert phase.weight_decay is None
    # One batch for a defended model (all 10 rows of the short one), every row for the
    # undefended one: the pass's capacity is the largest.
    assert phase.capacity == 40
    e0, e1 = phase.rows(0), phase.rows(1)
    assert len(e0[0]) == 16 and len(set(e0[0].tolist())) == 16  # without replacement
    assert set(e0[0].tolist()) <= set(lists[0].tolist())
    np.testing.assert_array_equal(e0[1], lists[1])
    np.testing.assert_array_equal(e0[2], lists[2])
    assert set(e0[0].tolist()) != set(e1[0].tolist())  # a fresh batch every epoch
    np.testing.assert_array_equal(e0[0], phase.rows(0)[0])  # the same seed, the same batch
    again = adv.one_step_per_epoch(lists, 16, defended=[True, True, False], seed=3, stream=1)
    assert set(again.phases[0].rows(0)[0].tolist()) != set(e0[0].tolist())
    # Over many epochs each row is drawn at the rate batch / rows.
    counts = np.zeros(50)
    for e in range(400):
        counts[phase.rows(e)[0] - 100] += 1
    np.testing.assert_allclose(counts / 400, 16 / 50, atol=0.08)
    with pytest.raises(UserError, match="--batch_size must be >= 1"):
        adv.one_step_per_epoch(lists, 0)
    with pytest.raises(UserError, match="unknown --adv_target_steps 'sometimes'"):
        adv.check_target_steps("sometimes")


def test_a_schedule_of_every_row_trains_exactly_the_unscheduled_adv_models():
    # The adversary of a scheduled pass draws its members from the model's rows as before.
    model, params, state, data, keys = toy_ensemble(2)
    ones = pruning.ones_like(params)
    cfg = training.TrainConfig(epochs=2, batch_size=32, patience=None)
    lists = [np.asarray(data.train_idx[k, :int(data.train_n[k])]) for k in range(2)]
    every = adv.one_step_per_epoch(lists, 10**6)  # a "batch" larger than any model's rows
    d = adv.make(1.0)
    plain = training.fit(model, params, state, ones, data, cfg, keys, defense=d)
    sched = training.fit(model, params, state, ones, data, cfg, keys, defense=d,
                         schedule=every)
    jax.tree.map(np.testing.assert_array_equal, sched.params, plain.params)


def _recording_model():
    """Logits = the one-hot input (a zero-gradient bias keeps the optimizer busy), and an
    adversary that counts how often each row was drawn as a member and as a reference."""
    from jaxmia.base import Adversary, Defense, Model

    def apply(p, s, x, train, key=None, rows=None):
        return x + 0.0 * p["b"], s

    model = Model(init=lambda key: ({"b": jnp.zeros(())}, {}), apply=apply, name="ident",
                  has_batchnorm=False)

    def train(state, m_logits, m_labels, r_logits, r_labels, key):
        return {"members": state["members"] + m_logits.sum((0, 1)),
                "references": state["references"] + r_logits.sum((0, 1))}

    adversary = Adversary(init=lambda key, c: {"members": jnp.zeros(c),
                                               "references": jnp.zeros(c)},
                          train=train, steps=adv.ATTACK_STEPS)
    defense = Defense(penalty=lambda logits, labels, weight, epoch, state: 0.0 * logits.sum(),
                      per_example=True, name="recording", adversary=adversary)
    return model, defense


def test_one_step_per_epoch_takes_one_target_step_an_epoch_against_every_member():
    n = 120
    x = np.eye(n, dtype=np.float32)
    y = np.zeros(n, np.int32)
    train = [np.arange(0, 60), np.arange(60, 100)]
    dev = [np.arange(100, 110), np.arange(110, 120)]
    data = training.make_ensemble_data(x, y, train, dev)
    model, defense = _recording_model()
    keys = jax.random.split(jax.random.key(0), 2)
    params, state = training.init_ensemble(model, keys)
    cfg = training.TrainConfig(epochs=5, batch_size=8, patience=None, optimizer="sgd",
                               keep="last")
    sched = adv.one_step_per_epoch(train, 8, defended=[True, False], seed=1)
    fit = training.fit(model, params, state, pruning.ones_like(params), data, cfg, keys,
                       defense=defense, defended=np.array([True, False]), schedule=sched)
    # The defended model: one target step an epoch; the undefended one a whole epoch's
    # (40 rows / 8), its skipped steps drawing nothing.
    np.testing.assert_array_equal(fit.steps, [5, 5 * 5])
    # The adversary state after the fit is not returned; rerun its updates' record through
    # the epoch function's plan instead: members come from all 60 rows, not only the 5
    # batches' 40, and references from the dev rows.
    epoch_fn = training.make_epoch_fn(model, training.make_optimizer(cfg), 8, defense=defense,
                                      mode="looped")
    states = training.TrainState(
        step=jnp.zeros(2, jnp.int32), params=params, masks=pruning.ones_like(params),
        model_state=state, opt_state=jax.vmap(training.make_optimizer(cfg).init)(params),
        defense_state=jax.vmap(defense.adversary.init, in_axes=(0, None))(keys, n),
        defended=jnp.array([True, False]))
    es = training.EarlyStopState(best_acc=jnp.zeros(2), best_epoch=jnp.zeros(2, jnp.int32),
                                 best_params=params, best_model_state=state,
                                 bad_epochs=jnp.zeros(2, jnp.int32),
                                 done=jnp.zeros(2, bool))
    epoch_keys = training._epoch_keys(keys, jnp.int32(0))
    states, _ = training._scheduled_epoch(sched, [epoch_fn], states, es, data, epoch_keys, 0,
                                          2, None)
    members = np.asarray(states.defense_state["members"][0])
    references = np.asarray(states.defense_state["references"][0])
    assert members.sum() == adv.ATTACK_STEPS * 8  # one target step's updates
    drawn = set(np.flatnonzero(members).tolist())
    assert drawn <= set(range(60)) and not drawn <= set(sched.phases[0].rows(0)[0].tolist())
    assert set(np.flatnonzero(references).tolist()) <= set(range(100, 110))
