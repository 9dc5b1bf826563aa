"""Jitted features: hand-worked values, a stable logit-scaled confidence, and sensitivity against a
one-perturbation-at-a-time reference loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxmia import fastrand, features, models, training


def test_logit_scaled_and_sorted_probs_hand_worked():
    # probs .7 .2 .1, label 0: log(.7 / .3).
    f = features.extract(jnp.log(jnp.array([[0.7, 0.2, 0.1]])), jnp.array([0]))
    np.testing.assert_allclose(f["logit_scaled"], [np.log(0.7 / 0.3)], rtol=1e-5)
    np.testing.assert_allclose(f["sorted_probs"], [[0.7, 0.2, 0.1]], rtol=1e-6)


def test_logit_scaled_stays_finite_when_the_probability_rounds_to_one():
    # z = (40, 0, 0): p_y is 1.0 in float32, yet the score is 40 - log 2 exactly.
    f = features.extract(jnp.array([[40.0, 0.0, 0.0]]), jnp.array([0]))
    assert float(f["probs"][0, 0]) == 1.0
    np.testing.assert_allclose(f["logit_scaled"], [40 - np.log(2)], rtol=1e-6)


def _mlp():
    model = models.make("mlp", 5, (7,))
    params, state = model.init(jax.random.key(0))
    return model, params, state


def _reference(logits_fn, x, u, eps):
    """mia_prune's definition, one perturbed copy at a time."""
    p = jax.nn.softmax(logits_fn(x))
    m = u.shape[1]
    ref = np.zeros(p.shape)
    for i in range(x.shape[0]):
        for j in range(m):
            q = jax.nn.softmax(logits_fn(x[i:i + 1] + eps * u[i, j][None]))[0]
            ref[i] += np.abs(np.asarray(q - p[i])) / eps / m
    return ref


@pytest.mark.parametrize("num_samples,offset", [(10, 0), (5, 3)])
def test_sensitivity_matches_a_slow_reference_loop(num_samples, offset):
    model, params, state = _mlp()
    x = jax.random.normal(jax.random.key(1), (4, 7))

    def logits_fn(v):
        return model.apply(params, state, v, train=False)[0]

    key = jax.random.key(2)
    fast = features.sensitivity(logits_fn, x, key, num_samples, 1e-3, offset=offset)
    # The same draws: example b draws from fold_in(key, offset + b).
    u = np.stack([fastrand.normal(jax.random.fold_in(key, offset + b), (num_samples, 7))
                  for b in range(4)])
    ref = _reference(logits_fn, x, u, 1e-3)
    np.testing.assert_allclose(fast, ref, rtol=2e-3, atol=1e-4)
    assert fast.shape == (4, 5) and bool(jnp.all(fast >= 0))


def test_shared_noise_gives_the_same_feature_distribution():
    # Shared directions change the joint law across examples, not each example's law: over many
    # keys, the sensitivity of one fixed input has the same distribution either way.
    model, params, state = _mlp()
    x = jnp.tile(jax.random.normal(jax.random.key(1), (1, 7)), (2, 1))

    def logits_fn(v):
        return model.apply(params, state, v, train=False)[0]

    def draw(noise, k):
        return features.sensitivity(logits_fn, x, jax.random.key(k), 5, 1e-3, noise=noise)[0, 0]

    fast = np.array([draw("fast", k) for k in range(300)])
    shared = np.array([draw("shared", k) for k in range(300, 600)])
    assert stats.ks_2samp(fast, shared).pvalue > 0.01
    # And shared noise really is shared: two equal inputs get equal sensitivities.
    s = features.sensitivity(logits_fn, x, jax.random.key(0), 5, 1e-3, noise="shared")
    np.testing.assert_array_equal(s[0], s[1])


@pytest.mark.parametrize("noise", ["fast", "projected"])
def test_ensemble_sensitivity_is_one_model_at_a_time_and_chunk_invariant(noise):
    from jaxmia.models import mlp

    model = models.make("mlp", 5, (7,))
    params, state = training.init_ensemble(model, jax.random.split(jax.random.key(0), 3))
    masks = jax.tree.map(jnp.ones_like, params)
    x_all = jax.random.normal(jax.random.key(1), (20, 7))
    idx = jnp.array([[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11], [19, 18, 17, 16, 15, 14]])
    key = jax.random.key(4)
    whole, logits = features.ensemble_sensitivity(model, params, state, masks, x_all, idx, key,
                                                  chunk=6, noise=noise, return_logits=True)
    chunked = features.ensemble_sensitivity(model, params, state, masks, x_all, idx, key,
                                            chunk=4, noise=noise)
    np.testing.assert_allclose(whole, chunked, rtol=1e-6)
    # The clean logits of the same pass are the model's logits.
    np.testing.assert_allclose(logits, training.predict_logits(model, params, state, masks,
                                                               x_all, idx), rtol=1e-5, atol=1e-6)
    for k in range(3):
        pk = jax.tree.map(lambda a: a[k], params)
        sk = jax.tree.map(lambda a: a[k], state)

        def logits_fn(v):
            return model.apply(pk, sk, v, train=False)[0]

        kk = jax.random.fold_in(key, k)
        if noise == "fast":
            alone = features.sensitivity(logits_fn, x_all[idx[k]], kk)
        else:
            kernel, bias = mlp.first_layer(pk)
            alone = features.sensitivity_projected(
                kernel, bias, lambda z: mlp.from_first_preactivation(pk, z), x_all[idx[k]], kk)
        # Differences of softmaxes divided by eps = 1e-3 amplify float32 rounding.
        np.testing.assert_allclose(whole[k], alone, rtol=1e-3, atol=1e-5)


def test_auto_noise_is_projected_for_the_mlp_only():
    assert features.resolve_noise("auto", "mlp") == "projected"
    assert features.resolve_noise("auto", "small_cnn") == "fast"
    assert features.resolve_noise("shared", "mlp") == "shared"


def test_mlp_rest_from_first_preactivation_equals_the_model():
    from jaxmia.models import mlp

    model, params, state = _mlp()
    x = jax.random.normal(jax.random.key(3), (6, 7))
    kernel, bias = mlp.first_layer(params)
    np.testing.assert_allclose(mlp.from_first_preactivation(params, x @ kernel + bias),
                               model.apply(params, state, x, train=False)[0], rtol=1e-5,
                               atol=1e-6)


def test_projected_noise_gives_the_same_feature_distribution():
    # W^T u with u ~ N(0, I) is N(0, W^T W): drawing it in the hidden space changes nothing in
    # law. Over many keys, one input's sensitivities agree in distribution (KS), and so do their
    # means to within sampling error. A pruned (rank-deficient) first layer is included.
    from jaxmia.models import mlp

    model, params, state = _mlp()
    params = jax.tree.map(lambda a: a, params)
    params["Dense_0"]["kernel"] = params["Dense_0"]["kernel"].at[:, :200].set(0.0)
    x = jax.random.normal(jax.random.key(1), (1, 7))

    def logits_fn(v):
        return model.apply(params, state, v, train=False)[0]

    kernel, bias = mlp.first_layer(params)

    def rest(z):
        return mlp.from_first_preactivation(params, z)

    inputs = np.array([features.sensitivity(logits_fn, x, jax.random.key(k), 5)[0]
                       for k in range(400)])
    projected = np.array([features.sensitivity_projected(kernel, bias, rest, x,
                                                         jax.random.key(k), 5)[0]
                          for k in range(400, 800)])
    for c in range(5):
        assert stats.ks_2samp(inputs[:, c], projected[:, c]).pvalue > 0.001
    np.testing.assert_allclose(inputs.mean(0), projected.mean(0), rtol=0.1)


def test_projected_noise_is_refused_for_models_without_a_dense_first_layer():
    from jaxmia.errors import UserError

    model = models.make("small_cnn", 3, (8, 8, 1))
    params, state = training.init_ensemble(model, jax.random.split(jax.random.key(0), 1))
    masks = jax.tree.map(jnp.ones_like, params)
    with pytest.raises(UserError, match="projected needs the mlp"):
        features.ensemble_sensitivity(model, params, state, masks, jnp.zeros((4, 8, 8, 1)),
                                      jnp.arange(4)[None], jax.random.key(0), noise="projected")
