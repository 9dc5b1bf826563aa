"""Label smoothing: a hand-worked value, optax's smoothed labels as the oracle, padding, the
training step, and the refusals."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmia import defenses, models, pruning, training
from jaxmia.defenses import label_smoothing
from jaxmia.errors import UserError


def test_label_smoothing_hand_worked():
    # Logits (0, ln 3), label 0: p = (0.25, 0.75). NLL = ln 4 = 1.386294; the uniform term
    # -(ln 0.25 + ln 0.75) / 2 = 0.836988; 0.9 * 1.386294 + 0.1 * 0.836988 = 1.331364.
    d = label_smoothing.make(0.1)
    value = d.penalty(jnp.array([[0.0, math.log(3.0)]]), jnp.zeros(1, jnp.int32), jnp.ones(1), 0)
    np.testing.assert_allclose(value, 0.9 * math.log(4.0) - 0.05 * math.log(0.1875), rtol=1e-6)
    assert d.replaces_loss and d.per_example and d.name == "label_smoothing"


@pytest.mark.parametrize("epsilon", [0.05, 0.3])
def test_label_smoothing_matches_optax_on_the_real_rows(epsilon):
    logits = 3.0 * jax.random.normal(jax.random.key(0), (12, 5))
    labels = jax.random.randint(jax.random.key(1), (12,), 0, 5)
    weight = jnp.array([1.0, 0.0] * 6)
    smoothed = optax.smooth_labels(jax.nn.one_hot(labels, 5), epsilon)
    rows = optax.softmax_cross_entropy(logits, smoothed)
    value = label_smoothing.make(epsilon).penalty(logits, labels, weight, 0)
    np.testing.assert_allclose(value, jnp.mean(rows[::2]), rtol=1e-5)


def test_the_step_trains_on_the_smoothed_loss():
    model = models.make("mlp", 4, (6,))
    params, state = model.init(jax.random.key(0))
    frozen = model._replace(apply=lambda p, s, x, train, key=None, rows=None:
                            model.apply(p, s, x, train=False))
    tx = training.make_optimizer(training.TrainConfig(optimizer="sgd", weight_decay=0.0))
    st = training.TrainState(step=jnp.int32(0), params=params, masks=pruning.ones_like(params),
                             model_state=state, opt_state=tx.init(params))
    x = jax.random.normal(jax.random.key(1), (8, 6))
    y = jnp.arange(8) % 4
    d = defenses.REGISTRY["label_smoothing"](strength=0.2)

    def loss(p):
        return jnp.mean(optax.softmax_cross_entropy(frozen.apply(p, {}, x, train=True)[0],
                                                    optax.smooth_labels(jax.nn.one_hot(y, 4),
                                                                        0.2)))

    new, m = training.make_train_step(frozen, tx, defense=d)(st, x, y, jnp.ones(8),
                                                             jax.random.key(2))
    np.testing.assert_allclose(m["loss_sum"], 8 * loss(st.params), rtol=1e-5)
    updates, _ = tx.update(jax.grad(loss)(st.params), st.opt_state, st.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8),
                 new.params, optax.apply_updates(st.params, updates))


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, float("nan")])
def test_refuses_an_epsilon_outside_the_unit_interval(bad):
    with pytest.raises(UserError, match="label smoothing's epsilon"):
        label_smoothing.make(bad)
