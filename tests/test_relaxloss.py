"""RelaxLoss: hand-worked values of its three branches, the authors' tabular code transcribed
in NumPy, padding, the training step's ascent below alpha, the epoch reaching the step, and the
refusals."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmia import defenses, dp, models, pruning, training
from jaxmia.defenses import relaxloss
from jaxmia.errors import UserError

# Two classes, label 0. Row 0 (0, 0): p = (0.5, 0.5), CE = ln 2. Row 1 (ln 3, 0): p = (0.75,
# 0.25), CE = ln(4/3). Mean CE = (0.693147 + 0.287682) / 2 = 0.490415.
LOGITS = jnp.array([[0.0, 0.0], [math.log(3.0), 0.0]])
LABELS = jnp.zeros(2, jnp.int32)
CE = (math.log(2.0) + math.log(4.0 / 3.0)) / 2


@pytest.mark.parametrize("alpha,upper,epoch,expect", [
    (1.0, 1.0, 0, 1.0 - CE),  # even epoch: |L - alpha|, below alpha
    (0.3, 1.0, 0, CE - 0.3),  # even epoch, above alpha
    (0.3, 1.0, 1, CE),  # odd epoch, above alpha: plain CE
    # Odd epoch below alpha, flattening: targets (0.5, 0.5) and (0.75, 0.25), so
    # ln 2 and -(0.75 ln 0.75 + 0.25 ln 0.25) = 0.562335.
    (1.0, 1.0, 1, (math.log(2.0) - 0.75 * math.log(0.75) - 0.25 * math.log(0.25)) / 2),
    # upper 0.6 clips row 1's p_y: targets (0.6, 0.4), -(0.6 ln 0.75 + 0.4 ln 0.25) = 0.727132.
    (1.0, 0.6, 1, (math.log(2.0) - 0.6 * math.log(0.75) - 0.4 * math.log(0.25)) / 2),
    (1.0, 1.0, 3, (math.log(2.0) - 0.75 * math.log(0.75) - 0.25 * math.log(0.25)) / 2),
    (1.0, 1.0, 2, 1.0 - CE),
])
def test_relaxloss_hand_worked(alpha, upper, epoch, expect):
    d = relaxloss.make(alpha, upper=upper)
    value = d.penalty(LOGITS, LABELS, jnp.ones(2), jnp.int32(epoch))
    np.testing.assert_allclose(value, expect, rtol=1e-6)
    assert d.replaces_loss and not d.per_example and d.name == "relaxloss"


def test_the_image_variant_hand_worked():
    # Odd epoch below alpha. Both rows of LOGITS are classified correctly (row 0's tie goes to
    # class 0, as torch.argmax's): the image code's flattening is -CE there, -0.490415.
    d = relaxloss.make(1.0, variant="image")
    np.testing.assert_allclose(d.penalty(LOGITS, LABELS, jnp.ones(2), jnp.int32(1)), -CE,
                               rtol=1e-6)
    # (0, ln 3) with label 0 is misclassified: p = (0.25, 0.75), targets (0.25, 0.75),
    # CE(soft) = -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.562335, minus CE = ln 4: -0.823959.
    wrong = jnp.array([[0.0, math.log(3.0)]])
    np.testing.assert_allclose(
        relaxloss.make(5.0, variant="image").penalty(wrong, LABELS[:1], jnp.ones(1),
                                                     jnp.int32(1)),
        -0.25 * math.log(0.25) - 0.75 * math.log(0.75) - math.log(4.0), rtol=1e-6)
    # Even epochs are the same in both variants.
    np.testing.assert_allclose(d.penalty(LOGITS, LABELS, jnp.ones(2), jnp.int32(0)), 1.0 - CE,
                               rtol=1e-6)


def _authors_code(logits, labels, epoch, alpha, upper, variant="tabular"):
    """``source/nonimage/defense/relaxloss.py``'s loss (``variant='image'``: the flattening of
    ``source/cifar/defense/relaxloss.py``), transcribed in NumPy (float64)."""
    z, labels = np.asarray(logits, np.float64), np.asarray(labels)
    z = z - z.max(-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
    n, c = z.shape
    ce = np.mean(-log_p[np.arange(n), labels])
    if epoch % 2 == 0:
        return abs(ce - alpha)
    if ce > alpha:
        return ce
    conf = np.clip(np.exp(log_p)[np.arange(n), labels], 0.0, upper)
    onehot = np.eye(c)[labels]
    soft = onehot * conf[:, None] + (1 - onehot) * ((1 - conf) / (c - 1))[:, None]
    if variant == "image":
        correct = (z.argmax(-1) == labels).astype(np.float64)
        rows = (1 - correct) * np.sum(-(soft * log_p), axis=-1) + log_p[np.arange(n), labels]
        return np.mean(rows)
    return np.sum(-(soft * log_p)) / n


@pytest.mark.parametrize("n,alpha,upper,variant", [(3, 0.5, 1.0, "tabular"),
                                                   (17, 4.0, 0.3, "tabular"),
                                                   (64, 1.0, 0.1, "tabular"),
                                                   (17, 4.0, 0.3, "image"),
                                                   (64, 3.0, 1.0, "image")])
@pytest.mark.parametrize("epoch", [0, 1])
def test_relaxloss_matches_the_authors_code_on_the_real_rows(n, alpha, upper, variant, epoch):
    logits = 2.0 * jax.random.normal(jax.random.key(n), (n, 7))
    labels = jax.random.randint(jax.random.key(n + 1), (n,), 0, 7)
    pad = 50.0 * jax.random.normal(jax.random.key(n + 2), (5, 7))
    padded = jnp.concatenate([logits[:1], pad, logits[1:]])
    padded_labels = jnp.concatenate([labels[:1], jnp.zeros(5, jnp.int32), labels[1:]])
    weight = jnp.array([1.0] + [0.0] * 5 + [1.0] * (n - 1))
    value = relaxloss.make(alpha, upper=upper, variant=variant).penalty(
        padded, padded_labels, weight, jnp.int32(epoch))
    np.testing.assert_allclose(value, _authors_code(logits, labels, epoch, alpha, upper, variant),
                               rtol=2e-5)


def test_the_flattening_gradient_flows_through_the_soft_targets():
    # The authors' code does not detach its soft targets (they are the model's own softmax):
    # the gradient is that of their loss as a whole, checked by central differences of the
    # NumPy transcription.
    logits = jax.random.normal(jax.random.key(5), (4, 3))
    labels = jnp.array([0, 1, 2, 1])
    grad = jax.grad(lambda z: relaxloss.objective(z, labels, jnp.ones(4), jnp.int32(1), 5.0))(
        logits)
    z0, h = np.asarray(logits, np.float64), 1e-5
    numeric = np.zeros_like(z0)
    for idx in np.ndindex(*z0.shape):
        up, down = z0.copy(), z0.copy()
        up[idx] += h
        down[idx] -= h
        numeric[idx] = (_authors_code(up, labels, 1, 5.0, 1.0)
                        - _authors_code(down, labels, 1, 5.0, 1.0)) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=1e-5)


def _sgd_setup():
    model = models.make("mlp", 4, (6,))
    params, state = model.init(jax.random.key(0))
    frozen = model._replace(apply=lambda p, s, x, train, key=None, rows=None:
                            model.apply(p, s, x, train=False))  # no dropout: a plain function
    tx = training.make_optimizer(training.TrainConfig(optimizer="sgd", weight_decay=0.0))
    st = training.TrainState(step=jnp.int32(0), params=params, masks=pruning.ones_like(params),
                             model_state=state, opt_state=tx.init(params))
    x = jax.random.normal(jax.random.key(1), (10, 6))
    return frozen, tx, st, x, jnp.arange(10) % 4


def _delta(new, old):
    return jax.tree.map(jnp.subtract, new.params, old.params)


def test_the_step_ascends_below_alpha_and_descends_above():
    # SGD's first update is -lr * gradient, and |L - alpha|'s gradient is -grad L below alpha:
    # in an even epoch the update is exactly the plain step's, reversed; in an odd epoch above
    # alpha it is the plain step itself.
    model, tx, st, x, y = _sgd_setup()
    weight = jnp.ones(10)
    plain, _ = training.make_train_step(model, tx)(st, x, y, weight, jax.random.key(2))
    ce = float(jnp.mean(training.LOSSES["cross_entropy"](model.apply(
        st.params, {}, x, train=False)[0], y)))
    below = training.make_train_step(model, tx, defense=relaxloss.make(ce + 1.0))
    above = training.make_train_step(model, tx, defense=relaxloss.make(ce / 2))
    ascent, m = below(st, x, y, weight, jax.random.key(2), epoch=0)
    np.testing.assert_allclose(m["loss_sum"], 10 * 1.0, rtol=1e-5)  # |ce - (ce + 1)| per row
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, -b, rtol=1e-5, atol=1e-8),
                 _delta(ascent, st), _delta(plain, st))
    descent, _ = above(st, x, y, weight, jax.random.key(2), epoch=1)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8),
                 _delta(descent, st), _delta(plain, st))
    # Odd epoch below alpha: posterior flattening, neither of the two.
    flat, _ = below(st, x, y, weight, jax.random.key(2), epoch=1)
    k = ("Dense_2", "kernel")
    assert not np.allclose(_delta(flat, st)[k[0]][k[1]], _delta(plain, st)[k[0]][k[1]])
    assert not np.allclose(_delta(flat, st)[k[0]][k[1]], -_delta(plain, st)[k[0]][k[1]])


@pytest.mark.parametrize("mode", ["fused", "stepwise"])
def test_the_epoch_number_reaches_the_defense(mode):
    # One ensemble epoch of two models, the same keys: epoch numbers of equal parity give the
    # same params, a different parity other params.
    model = models.make("mlp", 3, (5,))
    x = jax.random.normal(jax.random.key(0), (40, 5))
    y = jnp.arange(40) % 3
    data = training.make_ensemble_data(x, y, [np.arange(0, 20), np.arange(20, 40)],
                                       [np.arange(0, 4), np.arange(20, 24)])
    params, state = training.init_ensemble(model, jax.random.split(jax.random.key(1), 2))
    tx = training.make_optimizer(training.TrainConfig())
    epoch = training.make_epoch_fn(model, tx, 8, mode=mode, defense=relaxloss.make(10.0))
    states = training.TrainState(step=jnp.zeros(2, jnp.int32), params=params,
                                 masks=pruning.ones_like(params), model_state=state,
                                 opt_state=jax.vmap(tx.init)(params))
    es = training.EarlyStopState(best_acc=jnp.zeros(2), best_epoch=jnp.zeros(2, jnp.int32),
                                 best_params=params, best_model_state=state,
                                 bad_epochs=jnp.zeros(2, jnp.int32), done=jnp.zeros(2, bool))
    keys = jax.random.split(jax.random.key(2), 2)
    out = {e: epoch(states, es, data, keys, e)[0].params["Dense_0"]["kernel"]
           for e in (0, 1, 2)}
    np.testing.assert_array_equal(out[0], out[2])
    assert not np.allclose(out[0], out[1])


def test_refusals():
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(UserError, match="RelaxLoss's alpha"):
            relaxloss.make(bad)
    for bad in (0.0, 1.5):
        with pytest.raises(UserError, match="--relaxloss_upper must be in"):
            relaxloss.make(1.0, upper=bad)
    with pytest.raises(UserError, match="unknown --relaxloss_variant 'cifar'"):
        relaxloss.make(1.0, variant="cifar")
    model, tx, *_ = _sgd_setup()
    with pytest.raises(UserError, match="relaxloss defense cannot be combined with DP-SGD"):
        training.make_train_step(model, tx, dp=dp.DPConfig(noise_multiplier=1.0),
                                 batch_size=10, defense=defenses.REGISTRY["relaxloss"](1.0))
    with pytest.raises(UserError, match="replaces the cross-entropy loss"):
        training.make_train_step(model, tx, loss="sigmoid_mse", defense=relaxloss.make())
