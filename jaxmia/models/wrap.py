"""Turns a Flax Linen module into the library's pure :class:`jaxmia.base.Model`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxmia.base import Model


def from_linen(module: nn.Module, input_shape, name: str) -> Model:
    """Wraps ``module(x, train)`` as ``Model(init, apply)`` over (params, state) pytrees; a
    module with BatchNorm also takes ``rows`` (``module(x, train, rows=None)``)."""
    input_shape = tuple(input_shape)

    def init(key):
        variables = module.init({"params": key}, jnp.zeros((1,) + input_shape), train=False)
        variables = dict(variables)
        params = variables.pop("params")
        return params, variables

    def apply(params, state, x, *, train: bool, key: jax.Array | None = None, rows=None):
        rngs = {} if key is None else {"dropout": key}
        variables = {"params": params, **state}
        # Only BatchNorm modules take ``rows`` (``module(x, train, rows=None)``).
        extra = {"rows": rows} if has_bn and train and rows is not None else {}
        if train and state:
            logits, new_state = module.apply(variables, x, train=True, rngs=rngs,
                                             mutable=list(state), **extra)
            return logits, dict(new_state)
        return module.apply(variables, x, train=train, rngs=rngs, **extra), state

    has_bn = "batch_stats" in jax.eval_shape(init, jax.random.key(0))[1]
    return Model(init=init, apply=apply, name=name, has_batchnorm=has_bn)
