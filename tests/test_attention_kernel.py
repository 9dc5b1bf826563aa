"""The hand-written CPU attention kernel against the pure-JAX attention: values, gradients,
dropout masks, vmapped models with their own keys, models sharded over devices, the SAMIA model
(with both of its kernels) end to end, and the fallback for other shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmia.attacks import samia
from jaxmia.kernels import attention, library
from tests.kernel_checks import assert_matches_reference, cpu_kernels, run_on_cpu_devices

pytestmark = pytest.mark.usefixtures(cpu_kernels.__name__)


def _inputs(shape, seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    return [jax.random.normal(k, shape) for k in keys]


@pytest.mark.parametrize("tokens", [1, 5, 16, 30, 33, 64, 100, 128])
@pytest.mark.parametrize("dropout", [False, True])
def test_values_and_gradients_match_the_reference(tokens, dropout):
    q, k, v, cotangent = _inputs((6, tokens, 4, 16), seed=tokens)
    key = jax.random.key(7) if dropout else None
    # A different dropout mask would change outputs by O(1), not by float rounding.
    assert_matches_reference(lambda q, k, v: attention.attention(q, k, v, key, 0.2),
                             lambda q, k, v: attention.reference(q, k, v, key, 0.2), (q, k, v),
                             cotangent, atol=2e-6, grad_rtol=1e-5, grad_atol=1e-5)


def test_dropout_drops_the_stated_fraction_and_rescales():
    # With V = identity-like rows, O = W V sums the dropped-out weights of each row: the mean of
    # a row's weights is 1/T whatever the mask, and each kept weight is P / (1 - rate).
    q, k, _, _ = _inputs((64, 30, 4, 16))
    v = jnp.broadcast_to(jnp.eye(30, 16)[None, :, None, :], (64, 30, 4, 16))
    rate = 0.2
    out = attention.attention(q, k, v, jax.random.key(1), rate)
    plain = attention.attention(q, k, v, None, rate)
    ratio = np.asarray(out / plain)[..., :16]
    dropped = np.isclose(ratio, 0.0)
    assert abs(dropped.mean() - rate) < 0.01
    np.testing.assert_allclose(ratio[~dropped], 1.0 / (1.0 - rate), rtol=1e-5)


def test_vmapped_models_draw_their_own_masks():
    x = jnp.stack(_inputs((8, 30, 4, 16))[:3])  # three models
    keys = jax.random.split(jax.random.key(3), 3)

    def one(fn):
        return jax.vmap(lambda z, key: fn(z, z, z, key, 0.2))

    got = jax.jit(one(attention.attention))(x, keys)
    np.testing.assert_allclose(got, one(attention.reference)(x, keys), rtol=1e-5, atol=2e-6)
    assert not np.allclose(got[0], jax.jit(one(attention.attention))(x, keys[::-1])[2])


def test_unsupported_shapes_use_the_reference():
    assert not attention.supported(jnp.zeros((2, 129, 4, 16)))  # more tokens than the kernel's
    # A dropout draw past 2^32 weights (fastrand's counter) is the reference's to refuse.
    assert attention.supported(jax.ShapeDtypeStruct((2**16, 128, 4, 16), jnp.float32))
    assert not attention.supported(jax.ShapeDtypeStruct((2**16 + 1, 128, 4, 16), jnp.float32))
    q, k, v, _ = _inputs((2, 6, 4, 8))  # head size 8: not the kernel's
    assert not attention.supported(q)
    np.testing.assert_array_equal(attention.attention(q, k, v), attention.reference(q, k, v))


def test_samia_with_the_kernel_equals_samia_without(monkeypatch):
    c = 30
    model = samia.SAMIA(num_classes=c)
    x = jax.random.normal(jax.random.key(1), (16, 3 * c))
    y = jnp.arange(16) % 2
    variables = model.init({"params": jax.random.key(0)}, x, train=False)

    def loss(params):
        logits, _ = model.apply({**variables, "params": params}, x, train=True,
                                rngs={"dropout": jax.random.key(2)}, mutable=["batch_stats"])
        return jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(16), y]), logits

    (_, with_kernel), grads_kernel = jax.jit(jax.value_and_grad(loss, has_aux=True))(
        variables["params"])
    monkeypatch.setattr(library, "available", lambda: False)  # both kernels off
    (_, pure), grads_pure = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
    np.testing.assert_allclose(with_kernel, pure, rtol=1e-4, atol=1e-5)
    for g, w in zip(jax.tree.leaves(grads_kernel), jax.tree.leaves(grads_pure)):
        np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-6)


SHARDED = r'''
import json
import jax, jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
from jaxmia.kernels import attention, library

assert jax.device_count() == 4 and library.available()
mesh = jax.make_mesh((4,), ("model",))
x = jax.random.normal(jax.random.key(0), (4, 8, 30, 4, 16))  # four models
keys = jax.random.split(jax.random.key(1), 4)
on_mesh = [jax.device_put(a, NamedSharding(mesh, P("model"))) for a in (x, keys)]
per_model = jax.vmap(lambda z, key: attention.attention(z, z, z, key, 0.2))
want = jax.vmap(lambda z, key: attention.reference(z, z, z, key, 0.2))(x, keys)
partitioned = jax.jit(per_model)(*on_mesh)
explicit = jax.jit(jax.shard_map(per_model, mesh=mesh, in_specs=(P("model"), P("model")),
                                 out_specs=P("model")))(*on_mesh)
print(json.dumps({name: float(jnp.max(jnp.abs(got - want)))
                  for name, got in (("jit", partitioned), ("shard_map", explicit))}))
'''


def test_sharded_over_models_equals_the_reference():
    errors = run_on_cpu_devices(SHARDED)
    assert set(errors) == {"jit", "shard_map"}
    assert max(errors.values()) < 1e-5, errors
