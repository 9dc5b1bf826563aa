"""Architectures: parameter counts against the published models, shapes, norm switch, errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmia import models
from jaxmia.errors import UserError


def _count(model):
    params, _ = jax.eval_shape(model.init, jax.random.key(0))
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


# Published counts, 10 classes, trainable parameters (BatchNorm gamma/beta included, running
# statistics not), adjusted from torchvision's ImageNet models where the CIFAR variant differs:
RESNET18 = 11_689_512 - 3 * 64 * 49 + 3 * 64 * 9 - (512 * 1000 + 1000) + (512 * 10 + 10)
VGG16_BN = 138_365_992 - (25088 - 512) * 4096 - (4096 * 1000 + 1000) + (4096 * 10 + 10)
DENSENET121 = 7_978_856 - 3 * 64 * 49 + 3 * 64 * 9 - (1024 * 1000 + 1000) + (1024 * 10 + 10)


@pytest.mark.parametrize("name,expected", [
    ("resnet20", 272_474),  # He et al. 2016, with 1x1-conv projection shortcuts.
    ("resnet18", RESNET18),  # = 11,173,962
    ("vgg16", VGG16_BN),  # = 33,646,666 (mia_prune's 512 -> 4096 -> 4096 -> 10 head)
    ("densenet121", DENSENET121),  # = 6,956,426
    ("small_cnn", 3 * 3 * 3 * 32 + 32 + 3 * 3 * 32 * 64 + 64 + 8 * 8 * 64 * 128 + 128 + 1290),
])
def test_parameter_counts(name, expected):
    assert _count(models.make(name, 10, (32, 32, 3))) == expected


def test_mlp_is_columnfc():
    m = models.make("mlp", 30, (446,))
    assert _count(m) == 446 * 256 + 256 + 256 * 128 + 128 + 128 * 30 + 30
    assert not m.has_batchnorm


@pytest.mark.parametrize("name", ["resnet18", "resnet20", "vgg16", "densenet121", "small_cnn"])
def test_output_shapes(name):
    m = models.make(name, 7, (32, 32, 3))
    params, state = jax.eval_shape(m.init, jax.random.key(0))
    out, _ = jax.eval_shape(lambda p, s, x: m.apply(p, s, x, train=False), params, state,
                            jnp.zeros((2, 32, 32, 3)))
    chex.assert_shape(out, (2, 7))


def test_batchnorm_state_updates_in_training_only():
    m = models.make("resnet20", 10, (8, 8, 3))
    params, state = m.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
    _, new_state = m.apply(params, state, x, train=True)
    _, same_state = m.apply(params, state, x, train=False)
    assert not np.allclose(jax.tree.leaves(new_state)[0], jax.tree.leaves(state)[0])
    jax.tree.map(np.testing.assert_array_equal, same_state, state)


def _torch_batchnorm(x, rows, running_mean, running_var, momentum=0.1, eps=1e-5):
    """PyTorch's ``BatchNorm{1,2}d`` training step as its documentation states it, in NumPy
    (float64): normalize with the biased variance of the real rows' values per channel, update
    the running variance with the unbiased one."""
    x = np.asarray(x, np.float64)
    real = x[np.asarray(rows)].reshape(-1, x.shape[-1])
    mean, var = real.mean(0), real.var(0)
    n = real.shape[0]
    out = (x - mean) / np.sqrt(var + eps)
    return (out, (1 - momentum) * running_mean + momentum * mean,
            (1 - momentum) * running_var + momentum * var * n / (n - 1))


@pytest.mark.parametrize("shape,real", [((6, 3), 4), ((3, 2, 2, 5), 2)])
def test_batchnorm_is_pytorchs_unbiased_running_variance_included(shape, real):
    from flax import linen as nn

    from jaxmia.models import layers

    x = 2.0 + 3.0 * jax.random.normal(jax.random.key(0), shape)
    rows = np.arange(shape[0]) < real
    bn = layers.BatchNorm()
    variables = bn.init(jax.random.key(1), x, False)
    mask = jnp.asarray(rows).reshape((-1,) + (1,) * (len(shape) - 1))
    out, new = bn.apply(variables, x, True, mask=mask, mutable=["batch_stats"])
    ref_out, ref_mean, ref_var = _torch_batchnorm(x, rows, np.zeros(shape[-1]),
                                                  np.ones(shape[-1]))
    np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new["batch_stats"]["mean"], ref_mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(new["batch_stats"]["var"], ref_var, rtol=1e-6)
    # Flax's own BatchNorm normalizes the same but keeps the biased variance: its running
    # variance is ours without the n / (n - 1).
    flax_bn = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
    flax_out, flax_new = flax_bn.apply(flax_bn.init(jax.random.key(1), x), x, mask=mask,
                                       mutable=["batch_stats"])
    np.testing.assert_allclose(out, flax_out, rtol=1e-4, atol=1e-5)
    n = real * int(np.prod(shape[1:-1]))
    np.testing.assert_allclose(np.asarray(new["batch_stats"]["var"]) - 0.9,
                               (np.asarray(flax_new["batch_stats"]["var"]) - 0.9) * n / (n - 1),
                               rtol=1e-5)
    # Evaluation normalizes with the running statistics.
    evaluated = bn.apply({**variables, "batch_stats": new["batch_stats"]}, x, False)
    np.testing.assert_allclose(evaluated, (np.asarray(x) - ref_mean) / np.sqrt(ref_var + 1e-5),
                               rtol=1e-4, atol=1e-5)


def test_group_norm_variant_has_no_batch_stats():
    m = models.make("resnet20", 10, (8, 8, 3), norm="group")
    params, state = m.init(jax.random.key(0))
    assert not m.has_batchnorm and state == {}
    assert any("GroupNorm" in "/".join(str(k) for k in path)
               for path, _ in jax.tree_util.tree_flatten_with_path(params)[0])


def test_dropout_needs_a_key_in_training_and_is_random():
    m = models.make("mlp", 3, (5,))
    params, state = m.init(jax.random.key(0))
    x = jnp.ones((2, 5))
    a, _ = m.apply(params, state, x, train=True, key=jax.random.key(1))
    b, _ = m.apply(params, state, x, train=True, key=jax.random.key(2))
    c, _ = m.apply(params, state, x, train=False)
    d, _ = m.apply(params, state, x, train=False)
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(c, d)


def test_bad_names():
    with pytest.raises(UserError, match="unknown model"):
        models.make("resnet50", 10, (32, 32, 3))
    with pytest.raises(UserError, match="unknown norm"):
        models.make("resnet20", 10, (32, 32, 3), norm="layer")
    with pytest.raises(UserError, match="image inputs"):
        models.make("resnet20", 10, (446,))
