"""Loss-term defenses: PPB's value by hand and against the research code's formula, padding,
its place in the training step, defending some models of a fit only, and the refusals."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmia import defenses, dp, models, pruning, training
from jaxmia.defenses import ppb
from jaxmia.errors import UserError
from tests.toys import toy_ensemble


def _research_code_ppb(logits, strength):
    """mia_prune's ``train_defend_ppb`` term, transcribed in NumPy: rank each row, pair the first
    even_size // 2 rows with the next ones, ``F.kl_div(log_softmax(first), softmax(second),
    reduction='batchmean')``."""
    ranked = -np.sort(-np.asarray(logits, np.float64), axis=-1)
    even = len(ranked) // 2 * 2
    first, second = ranked[: even // 2], ranked[even // 2: even]

    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    p = np.exp(log_softmax(second))
    return strength * np.sum(p * (log_softmax(second) - log_softmax(first))) / (even // 2)


def test_ppb_hand_worked():
    # Row 0 is uniform (0.5, 0.5); row 1 ranks to (log 3, 0), i.e. (0.75, 0.25). One pair:
    # KL = 0.75 ln(0.75 / 0.5) + 0.25 ln(0.25 / 0.5) = 0.130812; times lambda = 4.
    logits = jnp.array([[0.0, 0.0], [0.0, math.log(3.0)]])
    d = ppb.make(4.0)
    value = d.penalty(logits, jnp.zeros(2, jnp.int32), jnp.ones(2), 0)
    np.testing.assert_allclose(value, 4 * (0.75 * math.log(1.5) + 0.25 * math.log(0.5)),
                               rtol=1e-6)
    assert d.per_example is False and d.name == "ppb"


@pytest.mark.parametrize("n", [2, 7, 8, 33])
def test_ppb_matches_the_research_code_formula(n):
    logits = 3.0 * jax.random.normal(jax.random.key(n), (n, 10))
    value = ppb.make(2.5).penalty(logits, jnp.zeros(n, jnp.int32), jnp.ones(n), 0)
    np.testing.assert_allclose(value, _research_code_ppb(logits, 2.5), rtol=2e-5)


def test_ppb_pairs_only_the_real_rows_of_a_padded_batch():
    real = 2.0 * jax.random.normal(jax.random.key(0), (5, 6))
    pad = 100.0 * jax.random.normal(jax.random.key(1), (3, 6))
    # Padding interleaved with the real rows, which keep their order: the pairs are those of
    # the 5 real rows alone (the odd last one left out), as PyTorch's on a batch of 5.
    logits = jnp.concatenate([real[:2], pad[:1], real[2:4], pad[1:], real[4:]])
    weight = jnp.array([1.0, 1, 0, 1, 1, 0, 0, 1])
    term = ppb.make(4.0).penalty
    np.testing.assert_allclose(term(logits, jnp.zeros(8, jnp.int32), weight, 0),
                               _research_code_ppb(real, 4.0), rtol=2e-5)
    assert float(term(logits, jnp.zeros(8, jnp.int32), jnp.array([0.0] * 7 + [1.0]), 0)) == 0.0


def test_ppb_sees_only_ranked_posteriors():
    logits = jax.random.normal(jax.random.key(2), (6, 4))
    labels = jnp.zeros(6, jnp.int32)
    term = ppb.make(4.0).penalty
    shuffled = jnp.stack([jax.random.permutation(jax.random.key(10 + i), row)
                          for i, row in enumerate(logits)])
    np.testing.assert_allclose(term(shuffled, labels, jnp.ones(6), 0),
                               term(logits, labels, jnp.ones(6), 0), rtol=1e-6)
    # Each pair the same posterior up to the class order: nothing to balance.
    same = jnp.concatenate([logits[:3], logits[:3, ::-1]])
    np.testing.assert_allclose(term(same, labels, jnp.ones(6), 0), 0.0, atol=1e-6)


@pytest.mark.parametrize("strength", [0.0, -1.0, float("nan")])
def test_ppb_refuses_a_strength_that_is_not_positive(strength):
    with pytest.raises(UserError, match="--defense_strength must be > 0"):
        ppb.make(strength)


def _step_setup():
    model = models.make("mlp", 4, (6,))
    params, state = model.init(jax.random.key(0))
    # SGD: its first update is -lr * gradient, so the params compare the gradients themselves
    # (Adam's first step, g / (|g| + eps), would blow float rounding of tiny gradients up).
    tx = training.make_optimizer(training.TrainConfig(optimizer="sgd", weight_decay=0.0))
    st = training.TrainState(step=jnp.int32(0), params=params, masks=pruning.ones_like(params),
                             model_state=state, opt_state=tx.init(params))
    x = jax.random.normal(jax.random.key(1), (10, 6))
    y = jnp.arange(10) % 4
    return model, tx, st, x, y


def test_train_step_adds_the_defense_term():
    # Dropout off (train=False inside), so the step's loss is a plain function of the params:
    # its metrics and its update are those of CE + PPB computed here directly.
    model, tx, st, x, y = _step_setup()
    frozen = model._replace(apply=lambda p, s, x, train, key=None, rows=None:
                            model.apply(p, s, x, train=False))
    weight = jnp.array([1.0] * 7 + [0.0] * 3)
    defense = defenses.REGISTRY["ppb"](strength=4.0)
    step = training.make_train_step(frozen, tx, defense=defense)
    plain = training.make_train_step(frozen, tx)

    def total(p):
        logits = frozen.apply(p, {}, x, train=True)[0]
        ce = jnp.sum(weight * training.LOSSES["cross_entropy"](logits, y)) / 7
        return ce + defense.penalty(logits, y, weight, 0)

    new, m = step(st, x, y, weight, jax.random.key(2))
    np.testing.assert_allclose(m["loss_sum"], 7 * total(st.params), rtol=1e-5)
    updates, _ = tx.update(jax.grad(total)(st.params), st.opt_state, st.params)
    expect = jax.tree.map(jnp.add, st.params, updates)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 new.params, expect)
    base, _ = plain(st, x, y, weight, jax.random.key(2))
    assert not np.allclose(base.params["Dense_0"]["kernel"], new.params["Dense_0"]["kernel"])


def test_dp_refuses_a_defense_that_couples_examples():
    model, tx, *_ = _step_setup()
    with pytest.raises(UserError, match="ppb defense cannot be combined with DP-SGD"):
        training.make_train_step(model, tx, dp=dp.DPConfig(noise_multiplier=1.0),
                                 batch_size=10, defense=ppb.make())


@pytest.mark.parametrize("name", ["ppb", "adv"])
def test_a_defense_can_train_some_models_only(name):
    # Non-adaptive shadows: the defended models equal those of a fit that defends all, the
    # others those of a fit that defends none (each model's training is its own).
    model, params, state, data, keys = toy_ensemble(3)
    ones = pruning.ones_like(params)
    cfg = training.TrainConfig(epochs=2, batch_size=32, patience=None)
    d = defenses.REGISTRY[name](1.0)
    some = training.fit(model, params, state, ones, data, cfg, keys, defense=d,
                        defended=np.array([True, False, True]))
    every = training.fit(model, params, state, ones, data, cfg, keys, defense=d)
    none = training.fit(model, params, state, ones, data, cfg, keys)
    for k, ref in ((0, every), (1, none), (2, every)):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6),
                     some.params, ref.params)
    with pytest.raises(UserError, match="one flag per model"):
        training.fit(model, params, state, ones, data, cfg, keys, defense=d,
                     defended=np.array([True, False]))
    with pytest.raises(UserError, match="defended needs a defense"):
        training.fit(model, params, state, ones, data, cfg, keys,
                     defended=np.array([True, False, True]))
