"""The hand-written CPU kernel for ``LayerNorm(x + dropout(branch))`` against its pure-JAX
reference: values and gradients, the dropout mask and rescaling, vmapped models with their own
parameters and keys, shared parameters under vmap, models sharded over devices, and the fallback
for other shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmia.kernels import layernorm
from tests.kernel_checks import (
    assert_matches_reference,
    assert_sharded_matches_reference,
    cpu_kernels,
)

pytestmark = pytest.mark.usefixtures(cpu_kernels.__name__)


def _inputs(shape, seed=0):
    k = jax.random.split(jax.random.key(seed), 5)
    x, branch, cotangent = (jax.random.normal(key, shape) for key in k[:3])
    d = shape[-1]
    scale = 1.0 + 0.3 * jax.random.normal(k[3], (d,))
    bias = 0.3 * jax.random.normal(k[4], (d,))
    return x, branch, scale, bias, cotangent


def _loss(fn, key, cotangent, rate=0.2):
    return lambda *a: jnp.sum(fn(*a, key, rate) * cotangent)


# 300 rows: not a multiple of the kernel's 128-row partial sums; 1 row; 3-D inputs.
@pytest.mark.parametrize("shape", [(300, 64), (1, 16), (4, 30, 128), (7, 5, 48)])
@pytest.mark.parametrize("dropout", [False, True])
def test_values_and_gradients_match_the_reference(shape, dropout):
    x, branch, scale, bias, cotangent = _inputs(shape, seed=len(shape) + shape[-1])
    key = jax.random.key(7) if dropout else None
    # A different dropout mask would change outputs by O(1), not by float rounding.
    assert_matches_reference(lambda *a: layernorm.add_layernorm(*a, key, 0.2),
                             lambda *a: layernorm.reference(*a, key, 0.2),
                             (x, branch, scale, bias), cotangent)


def test_layer_statistics_by_hand():
    # One row [1, 2, 3, ..., 16]: mean 8.5, biased variance (16^2 - 1) / 12 = 21.25.
    x = jnp.arange(1.0, 17.0)[None]
    y = layernorm.add_layernorm(x, jnp.zeros_like(x), jnp.full((16,), 2.0), jnp.ones(16))
    np.testing.assert_allclose(y[0], 2.0 * (x[0] - 8.5) / np.sqrt(21.25 + 1e-5) + 1.0, rtol=1e-5)


def test_dropout_zeroes_the_stated_fraction_of_the_branch_and_rescales():
    # dbranch = dx * M / keep, so the ratio of the two gradients is the branch's mask.
    x, branch, scale, bias, cotangent = _inputs((2000, 64))
    rate = 0.2
    dx, dbranch = jax.grad(_loss(layernorm.add_layernorm, jax.random.key(1), cotangent, rate),
                           (0, 1))(x, branch, scale, bias)
    ratio = np.asarray(dbranch / dx)
    dropped = np.isclose(ratio, 0.0)
    assert abs(dropped.mean() - rate) < 0.005
    np.testing.assert_allclose(ratio[~dropped], 1.0 / (1.0 - rate), rtol=1e-4)


def test_vmapped_models_have_their_own_parameters_and_masks():
    x, branch, scale, bias, cotangent = _inputs((3, 40, 64), seed=3)  # three models
    args = (x, branch, jnp.stack([scale, 2 * scale, -scale]), jnp.stack([bias, -bias, 0 * bias]))
    keys = jax.random.split(jax.random.key(3), 3)

    def per_model(fn, keys):
        return lambda *a: jax.vmap(lambda x, b, s, c, k: fn(x, b, s, c, k, 0.2))(*a, keys)

    assert_matches_reference(per_model(layernorm.add_layernorm, keys),
                             per_model(layernorm.reference, keys), args, cotangent)
    swapped = per_model(layernorm.add_layernorm, keys[::-1])(*args)
    assert not np.allclose(swapped[0], per_model(layernorm.reference, keys)(*args)[0])


def test_parameters_shared_under_vmap_get_the_summed_gradient():
    x, branch, scale, bias, cotangent = _inputs((4, 30, 32), seed=5)
    keys = jax.random.split(jax.random.key(4), 4)

    def loss(fn):
        return lambda s, c: jnp.sum(jax.vmap(lambda x, b, k: fn(x, b, s, c, k, 0.2))(
            x, branch, keys) * cotangent)

    got = jax.jit(jax.grad(loss(layernorm.add_layernorm), (0, 1)))(scale, bias)
    want = jax.grad(loss(layernorm.reference), (0, 1))(scale, bias)
    for g, w in zip(got, want):
        assert g.shape == (32,)
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_unsupported_shapes_use_the_reference():
    for shape in [(5, 8), (5, 24), (5, 144)]:  # D not a multiple of 16, or above 128
        x, branch, scale, bias, _ = _inputs(shape)
        assert not layernorm.supported(x, branch, scale, bias)
        np.testing.assert_array_equal(layernorm.add_layernorm(x, branch, scale, bias),
                                      layernorm.reference(x, branch, scale, bias))
    x, branch, scale, bias, _ = _inputs((5, 64))
    assert not layernorm.supported(x, branch[:, None], scale, bias)  # broadcast branch


def test_draws_past_the_32_bit_counter_are_left_to_the_reference():
    def rows(n):
        return jax.ShapeDtypeStruct((n, 64), jnp.float32)

    vector = jax.ShapeDtypeStruct((64,), jnp.float32)
    assert layernorm.supported(rows(2**26), rows(2**26), vector, vector)  # 2^32 elements
    assert not layernorm.supported(rows(2**26 + 1), rows(2**26 + 1), vector, vector)


def test_sharded_over_models_equals_the_reference():
    assert_sharded_matches_reference("layernorm", "add_layernorm", """
    k = jax.random.split(jax.random.key(0), 4)
    x, branch = (jax.random.normal(key, (4, 8, 30, 64)) for key in k[:2])  # four models
    scale, bias = 1 + jax.random.normal(k[2], (4, 64)), jax.random.normal(k[3], (4, 64))
    args = (x, branch, scale, bias, jax.random.split(jax.random.key(1), 4))
    """, grad_arg=2)
