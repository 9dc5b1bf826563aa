"""SAMIA: the authors' token layout, layer shapes and parameter count."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxmia.attacks import samia


def test_tokens_stack_the_three_blocks_per_class():
    c = 4
    p, s, y = jnp.arange(c) + 0.0, jnp.arange(c) + 10.0, jnp.arange(c) + 20.0
    tokens = samia.to_tokens(jnp.concatenate([p, s, y])[None], c)
    # Token 2 is (p_2, s_2, y_2) = (2, 12, 22), not a row-major slice (6, 7, 8) of the 3C vector.
    np.testing.assert_array_equal(tokens[0, 2], [2.0, 12.0, 22.0])
    assert tokens.shape == (1, c, 3)


def test_layer_shapes_and_parameter_count():
    for c in (10, 30, 100):
        model = samia.SAMIA(num_classes=c)
        variables = model.init({"params": jax.random.key(0)}, jnp.zeros((2, 3 * c)), train=False)
        params = variables["params"]
        count = sum(a.size for a in jax.tree.leaves(params))
        assert count == samia.num_parameters(c)
        # Location (C = 30): 6C + 256 + 3 * 33,472 + (64C * 64 + 64) + 130 = 223,926.
        if c == 30:
            assert count == 223_926
        assert params["BatchNorm_0"]["scale"].shape == (3 * c,)
        assert params["Dense_0"]["kernel"].shape == (3, 64)
        layer = params["EncoderLayer_0"]
        assert layer["SelfAttention_0"]["query"]["kernel"].shape == (64, 64)
        assert layer["Dense_0"]["kernel"].shape == (64, 128)
        assert "EncoderLayer_2" in params and "EncoderLayer_3" not in params
        assert params["Dense_1"]["kernel"].shape == (c * 64, 64)
        assert params["Dense_2"]["kernel"].shape == (64, 2)
        out = model.apply(variables, jnp.ones((5, 3 * c)), train=False)
        assert out.shape == (5, 2)


def test_dropout_is_active_in_training_only():
    c = 5
    model = samia.SAMIA(num_classes=c)
    x = jax.random.normal(jax.random.key(1), (8, 3 * c))
    v = model.init({"params": jax.random.key(0)}, x, train=False)
    a = model.apply(v, x, train=False)
    np.testing.assert_array_equal(a, model.apply(v, x, train=False))
    t1, _ = model.apply(v, x, train=True, rngs={"dropout": jax.random.key(2)},
                        mutable=["batch_stats"])
    t2, _ = model.apply(v, x, train=True, rngs={"dropout": jax.random.key(3)},
                        mutable=["batch_stats"])
    assert not np.allclose(t1, t2)
