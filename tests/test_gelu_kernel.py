"""The hand-written CPU kernel for ``dropout(GELU(z + bias))`` against its pure-JAX reference:
values and gradients, GELU by hand, the dropout mask and rescaling, vmapped models with their
own biases and keys, a bias shared under vmap, models sharded over devices, and the fallback for
other shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmia.kernels import gelu
from tests.kernel_checks import (
    assert_matches_reference,
    assert_sharded_matches_reference,
    cpu_kernels,
)

pytestmark = pytest.mark.usefixtures(cpu_kernels.__name__)


def _inputs(shape, seed=0):
    k = jax.random.split(jax.random.key(seed), 3)
    z = 3.0 * jax.random.normal(k[0], shape)  # well into both tails of erf's range (|u| > 4)
    return z, jax.random.normal(k[1], shape[-1:]), jax.random.normal(k[2], shape)


# 300 rows: not a multiple of the kernel's 128-row partial sums; 1 row; 3-D inputs.
@pytest.mark.parametrize("shape", [(300, 128), (1, 16), (4, 30, 64), (7, 5, 48)])
@pytest.mark.parametrize("dropout", [False, True])
def test_values_and_gradients_match_the_reference(shape, dropout):
    z, bias, cotangent = _inputs(shape, seed=len(shape) + shape[-1])
    key = jax.random.key(7) if dropout else None
    # A different dropout mask would change outputs by O(1), not by float rounding.
    assert_matches_reference(lambda *a: gelu.bias_gelu_dropout(*a, key, 0.2),
                             lambda *a: gelu.reference(*a, key, 0.2), (z, bias), cotangent)


def test_gelu_by_hand():
    # GELU(u) = u Phi(u): Phi(1) = 0.8413447, Phi(-1) = 0.1586553, Phi(2) = 0.9772499; the
    # derivative Phi(u) + u phi(u) is 1.0833155 at 1 and 0.5 at 0.
    u = jnp.asarray([0.0, 1.0, -1.0, 2.0, -10.0, 10.0] + [0.0] * 10)[None]
    y, grad = jax.value_and_grad(lambda z: jnp.sum(gelu.bias_gelu_dropout(z, jnp.zeros(16))))(u)
    np.testing.assert_allclose(np.asarray(gelu.bias_gelu_dropout(u, jnp.zeros(16)))[0, :6],
                               [0.0, 0.8413447, -0.1586553, 1.9544998, 0.0, 10.0], atol=1e-6)
    np.testing.assert_allclose(np.asarray(grad)[0, :3], [0.5, 1.0833155, 1 - 1.0833155],
                               atol=1e-6)
    assert np.isfinite(float(y))


def test_dropout_zeroes_the_stated_fraction_and_rescales():
    z, bias, cotangent = _inputs((2000, 64))
    rate = 0.2

    def grad(key):
        return jax.grad(lambda z: jnp.sum(gelu.bias_gelu_dropout(z, bias, key, rate)
                                          * cotangent))(z)

    plain = np.asarray(grad(None))
    live = np.abs(plain) > 1e-3  # GELU's slope vanishes far out in the left tail
    ratio = np.asarray(grad(jax.random.key(1)))[live] / plain[live]  # 0 or 1 / (1 - rate)
    dropped = np.isclose(ratio, 0.0)
    assert abs(dropped.mean() - rate) < 0.005
    np.testing.assert_allclose(ratio[~dropped], 1.0 / (1.0 - rate), rtol=1e-4)


def test_vmapped_models_have_their_own_biases_and_masks():
    z, bias, cotangent = _inputs((3, 40, 64), seed=3)  # three models
    args = (z, jnp.stack([bias, -bias, 2 * bias]))
    keys = jax.random.split(jax.random.key(3), 3)

    def per_model(fn, keys):
        return lambda *a: jax.vmap(lambda z, b, k: fn(z, b, k, 0.2))(*a, keys)

    assert_matches_reference(per_model(gelu.bias_gelu_dropout, keys),
                             per_model(gelu.reference, keys), args, cotangent)
    swapped = per_model(gelu.bias_gelu_dropout, keys[::-1])(*args)
    assert not np.allclose(swapped[0], per_model(gelu.reference, keys)(*args)[0])


def test_a_bias_shared_under_vmap_gets_the_summed_gradient():
    z, bias, cotangent = _inputs((4, 30, 32), seed=5)
    keys = jax.random.split(jax.random.key(4), 4)

    def loss(fn):
        return lambda b: jnp.sum(jax.vmap(lambda z, k: fn(z, b, k, 0.2))(z, keys) * cotangent)

    got = jax.jit(jax.grad(loss(gelu.bias_gelu_dropout)))(bias)
    assert got.shape == (32,)
    np.testing.assert_allclose(got, jax.grad(loss(gelu.reference))(bias), rtol=1e-4, atol=1e-4)


def test_unsupported_shapes_use_the_reference():
    for shape in [(5, 8), (5, 24), (5, 144)]:  # D not a multiple of 16, or above 128
        z, bias, _ = _inputs(shape)
        assert not gelu.supported(z, bias)
        np.testing.assert_array_equal(gelu.bias_gelu_dropout(z, bias), gelu.reference(z, bias))
    z, bias, _ = _inputs((5, 64))
    assert not gelu.supported(z, bias[None])  # a bias per row is not the kernel's


def test_draws_past_the_32_bit_counter_are_left_to_the_reference():
    bias = jax.ShapeDtypeStruct((64,), jnp.float32)
    assert gelu.supported(jax.ShapeDtypeStruct((2**26, 64), jnp.float32), bias)
    assert not gelu.supported(jax.ShapeDtypeStruct((2**26 + 1, 64), jnp.float32), bias)


def test_sharded_over_models_equals_the_reference():
    assert_sharded_matches_reference("gelu", "bias_gelu_dropout", """
    k = jax.random.split(jax.random.key(0), 2)
    z, bias = 3 * jax.random.normal(k[0], (4, 8, 30, 64)), jax.random.normal(k[1], (4, 64))
    args = (z, bias, jax.random.split(jax.random.key(1), 4))
    """, grad_arg=1)
