"""Pruning masks: hand-worked counts and ties, structured filters, slimming, IMP, persistence."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmia import models, pruning, training
from jaxmia.errors import UserError


def _params():
    # Dense kernel |w| = 1..12 (3x4), a conv kernel with 4 filters of L1 norms 4, 8, 12, 16
    # (L2 norms 2, 4, 6, 8) and a bias per filter, and a BatchNorm with scales.
    dense = jnp.arange(1.0, 13.0).reshape(3, 4) * jnp.array([1, -1, 1, -1])
    conv = jnp.ones((1, 2, 2, 4)) * jnp.array([1.0, 2.0, 3.0, 4.0])  # each filter: 4 entries
    return {"Dense_0": {"kernel": dense, "bias": jnp.ones(4)},
            "Conv_0": {"kernel": conv, "bias": jnp.arange(4.0)},
            "Norm_0": {"BatchNorm": {"scale": jnp.array([0.5, -0.1, 2.0, 0.05]),
                                     "bias": jnp.ones(4)}}}


def test_l1_unstructured_per_layer_counts():
    masks = pruning.l1_unstructured(_params(), 0.5)
    # Dense: int(12 * .5) = 6 smallest |w| (1..6) go.
    np.testing.assert_array_equal(masks["Dense_0"]["kernel"].ravel(), [0] * 6 + [1] * 6)
    # Conv: int(16 * .5) = 8; the 8th smallest |w| is 2, and every |w| <= 2 goes (ties too).
    np.testing.assert_array_equal(masks["Conv_0"]["kernel"][0, 0, 0], [0, 0, 1, 1])
    np.testing.assert_array_equal(masks["Dense_0"]["bias"], 1)  # Biases are never pruned.


def test_l1_unstructured_keeps_all_at_zero_sparsity():
    masks = pruning.l1_unstructured(_params(), 0.0)
    assert all(bool(jnp.all(m == 1)) for m in jax.tree.leaves(masks))


def test_global_threshold_spans_layers():
    masks = pruning.l1_unstructured_global(_params(), 0.25)
    # 28 kernel entries, k = 7: the 7th smallest pooled |w| is 2 (1,1,1,1,2,2,2,...).
    # Dense keeps |w| > 2 (10 of 12); conv keeps filters 3 and 4.
    assert int(masks["Dense_0"]["kernel"].sum()) == 10
    np.testing.assert_array_equal(masks["Conv_0"]["kernel"][0, 0, 0], [0, 0, 1, 1])


@pytest.mark.parametrize("method", ["l1_structured", "l2_structured"])
def test_structured_prunes_whole_filters_and_their_bias(method):
    masks = getattr(pruning, method)(_params(), 0.5)  # int(4 * .5) = 2 filters go.
    np.testing.assert_array_equal(masks["Conv_0"]["kernel"][..., :2], 0)
    np.testing.assert_array_equal(masks["Conv_0"]["kernel"][..., 2:], 1)
    np.testing.assert_array_equal(masks["Conv_0"]["bias"], [0, 0, 1, 1])
    np.testing.assert_array_equal(masks["Dense_0"]["kernel"], 1)  # Dense layers untouched.


def test_slim_masks_gamma_and_beta_by_global_threshold():
    masks = pruning.slim(_params(), 0.5)  # int(4 * .5) = 2: |gamma| in {0.05, 0.1} go.
    np.testing.assert_array_equal(masks["Norm_0"]["BatchNorm"]["scale"], [1, 0, 1, 0])
    np.testing.assert_array_equal(masks["Norm_0"]["BatchNorm"]["bias"], [1, 0, 1, 0])


def test_slim_refuses_models_without_batchnorm():
    p = _params()
    del p["Norm_0"]
    with pytest.raises(UserError, match="BatchNorm"):
        pruning.slim(p, 0.5)


@pytest.mark.parametrize("method", ["l1_structured", "l2_structured"])
def test_filter_pruners_refuse_models_without_conv_filters(method):
    """They would leave a dense model unpruned; a conv model (shapes only) is accepted."""
    for name, shape in (("mlp", (12,)), ("bert_tiny", (16,))):
        shapes, _ = jax.eval_shape(models.make(name, 3, shape).init, jax.random.key(0))
        with pytest.raises(UserError, match=f"{method} removes conv filters, and model '{name}'"):
            pruning.check_model(method, shapes, name)
        pruning.check_model("l1_unstructured", shapes, name)
    shapes, _ = jax.eval_shape(models.make("small_cnn", 3, (8, 8, 3)).init, jax.random.key(0))
    pruning.check_model(method, shapes, "small_cnn")
    with pytest.raises(UserError, match="network slimming needs BatchNorm, and model 'small_cnn'"):
        pruning.check_model("slim", shapes, "small_cnn")  # its default norm is none
    shapes, _ = jax.eval_shape(models.make("small_cnn", 3, (8, 8, 3), norm="batch").init,
                               jax.random.key(0))
    pruning.check_model("slim", shapes, "small_cnn")


def test_slim_penalty_is_l1_of_scales():
    np.testing.assert_allclose(pruning.slim_penalty(_params(), 2.0), 2.0 * 2.65, rtol=1e-6)


@pytest.mark.parametrize("bad", [1.5, 1.0, -0.1, float("nan")])
def test_sparsity_out_of_range_is_refused(bad):
    with pytest.raises(UserError, match=r"sparsity must be in \[0, 1\)"):
        pruning.make_masks("l1_unstructured", _params(), bad)


def test_unknown_method():
    with pytest.raises(UserError, match="unknown pruning method"):
        pruning.make_masks("random", _params(), 0.5)


@pytest.mark.parametrize("method", list(pruning.METHODS))
def test_report_matches_requested_sparsity_on_resnet(method):
    m = models.make("resnet20", 10, (8, 8, 3))
    params, _ = m.init(jax.random.key(0))
    params = jax.tree.map(  # Random BN scales so slimming has no ties.
        lambda p: p * jax.random.uniform(jax.random.key(1), p.shape, minval=.1), params)
    rep = pruning.report(pruning.make_masks(method, params, 0.6))
    if method == "slim":
        assert abs(rep["overall_bn_scales"] - 0.6) < 0.01
    elif method.endswith("structured") and not method.startswith("l1_unstructured"):
        # int(16*.6)=9 of 16, int(32*.6)=19 of 32, int(64*.6)=38 of 64 filters per layer.
        assert 0.55 < rep["overall"] < 0.6
    else:
        assert abs(rep["overall"] - 0.6) < 1e-3


def test_ensemble_pruning_is_per_model():
    p = jax.tree.map(lambda a: jnp.stack([a, -2 * a[::-1] if a.ndim == 1 else 2 * a]), _params())
    masks = pruning.make_masks("l1_unstructured", p, 0.5, ensemble=True)
    single = pruning.l1_unstructured(_params(), 0.5)
    chex.assert_trees_all_equal(jax.tree.map(lambda m: m[0], masks), single)
    chex.assert_trees_all_equal_structs(masks, p)


def _tiny_training_setup(num_models=2):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32) + 2 * (x[:, 1] > 0)
    model = models.make("mlp", 4, (6,))
    keys = jax.random.split(jax.random.key(0), num_models)
    params, state = training.init_ensemble(model, keys)
    idx = [rng.permutation(200)[:150] for _ in range(num_models)]
    ens = training.make_ensemble_data(x, y, idx, [np.arange(150, 200)] * num_models)
    return model, params, state, ens, keys


def test_pruned_weights_stay_exactly_zero_through_finetuning():
    model, params, state, ens, keys = _tiny_training_setup()
    masks = pruning.make_masks("l1_unstructured", params, 0.7, ensemble=True)
    res = training.fit(model, pruning.apply_masks(params, masks), state, masks, ens,
                       training.TrainConfig(epochs=4, batch_size=32, patience=None), keys)
    for p, m in zip(jax.tree.leaves(res.params), jax.tree.leaves(masks)):
        assert bool(jnp.all(jnp.where(m == 0, p == 0, True)))
        assert float(jnp.abs(jnp.where(m == 1, p, 0)).sum()) > 0  # survivors did train
    assert abs(pruning.report(jax.tree.map(lambda m: m[0], masks))["overall"] - 0.7) < 1e-3


def test_iterative_magnitude_reaches_target_and_rewinds():
    model, params, state, ens, keys = _tiny_training_setup()
    seen = []

    def retrain(p, m, r):
        seen.append((r, pruning.report(jax.tree.map(lambda a: a[0], m))["overall"]))
        res = training.fit(model, p, state, m, ens, training.TrainConfig(epochs=2, batch_size=50),
                           jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, r))
        return res.params

    final, masks = pruning.iterative_magnitude(params, 0.875, 3, retrain, ensemble=True,
                                               rewind_params=params)
    # Cumulative sparsities 1 - .125^(r/3) = 0.5, 0.75, 0.875.
    np.testing.assert_allclose([s for _, s in seen], [0.5, 0.75, 0.875], atol=2e-3)
    assert bool(jnp.all(jnp.where(jax.tree.leaves(masks)[1] == 0,
                                  jax.tree.leaves(final)[1] == 0, True)))
    np.testing.assert_allclose(pruning.round_sparsities(0.875, 3), [0.5, 0.75, 0.875])


def test_masked_paths_name_only_leaves_with_zeros_and_skip_the_rest_exactly():
    params = _params()
    masks = pruning.ones_like(params)
    masks["Dense_0"]["kernel"] = pruning.l1_unstructured(params, 0.5)["Dense_0"]["kernel"]
    stacked = jax.tree.map(lambda m: jnp.stack([jnp.ones_like(m), m]), masks)  # zero in model 1
    assert pruning.masked_paths(stacked) == {("Dense_0", "kernel")}
    assert pruning.masked_paths(pruning.ones_like(params)) == frozenset()
    chex.assert_trees_all_equal(pruning.apply_masks(params, masks, pruning.masked_paths(masks)),
                                pruning.apply_masks(params, masks))


def test_train_step_with_masked_leaves_equals_masking_every_leaf():
    # The step fit builds multiplies only the leaves that have zeros; it must train the same
    # model as multiplying every leaf (to float rounding: XLA fuses the two programs
    # differently), and the pruned weights stay exactly zero.
    model = models.make("mlp", 3, (6,))
    params, state = model.init(jax.random.key(0))
    masks = pruning.ones_like(params)
    masks["Dense_0"]["kernel"] = pruning.l1_unstructured(params, 0.5)["Dense_0"]["kernel"]
    params = pruning.apply_masks(params, masks)
    tx = training.make_optimizer(training.TrainConfig())
    st = training.TrainState(step=jnp.int32(0), params=params, masks=masks, model_state=state,
                             opt_state=tx.init(params))
    x, y = jax.random.normal(jax.random.key(1), (16, 6)), jnp.arange(16) % 3
    out = []
    for masked in (None, pruning.masked_paths(masks)):
        step = jax.jit(training.make_train_step(model, tx, masked=masked))
        s = st
        for i in range(3):
            s, _ = step(s, x, y, jnp.ones(16), jax.random.key(2 + i))
        out.append(s.params)
    chex.assert_trees_all_close(*out, rtol=1e-5, atol=1e-8)
    np.testing.assert_array_equal(out[1]["Dense_0"]["kernel"][masks["Dense_0"]["kernel"] == 0], 0)
