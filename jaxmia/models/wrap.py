"""Turns a Flax Linen module into the library's pure :class:`jaxmia.base.Model`."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxmia.base import Model


def from_linen(module: nn.Module, input_shape, name: str) -> Model:
    """Wraps ``module(x, train)`` as ``Model(init, apply)`` over (params, state) pytrees. A
    module with BatchNorm whose ``__call__`` takes ``rows`` (``module(x, train, rows=None)``, as
    the library's do) gets the real rows of each padded training batch; one without it trains as
    before, its batch statistics seeing the padding."""
    input_shape = tuple(input_shape)
    takes_rows = "rows" in inspect.signature(type(module).__call__).parameters

    def init(key):
        variables = module.init({"params": key}, jnp.zeros((1,) + input_shape), train=False)
        variables = dict(variables)
        params = variables.pop("params")
        return params, variables

    def apply(params, state, x, *, train: bool, key: jax.Array | None = None, rows=None):
        rngs = {} if key is None else {"dropout": key}
        variables = {"params": params, **state}
        extra = {"rows": rows} if takes_rows and has_bn and train and rows is not None else {}
        if train and state:
            logits, new_state = module.apply(variables, x, train=True, rngs=rngs,
                                             mutable=list(state), **extra)
            return logits, dict(new_state)
        return module.apply(variables, x, train=train, rngs=rngs, **extra), state

    has_bn = "batch_stats" in jax.eval_shape(init, jax.random.key(0))[1]
    return Model(init=init, apply=apply, name=name, has_batchnorm=has_bn)
