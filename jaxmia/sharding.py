"""Sharding the ensemble's model axis over devices (``jax.jit`` + ``NamedSharding``, no ``pmap``).

Every per-model leaf of a training run (params, masks, optimizer and early-stopping state, index
matrices, keys) has the model axis first, so one ``NamedSharding(mesh, P('model'))`` lays the
ensemble out over a 1-D device mesh; the pool of examples is replicated. The jitted epoch (a
``vmap`` over models) is then partitioned along that axis by XLA: each device trains its own
models and nothing crosses devices except the replicated data. K need not divide the device
count: :func:`pad` appends copies of model 0 that are marked stopped from the start (they take no
step) and are dropped again at the end.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "model"


def model_mesh(devices=None) -> Mesh:
    """A 1-D mesh named 'model' over ``devices`` (default: every visible device)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (AXIS,))


def padded_size(num_models: int, mesh: Mesh) -> int:
    """The smallest multiple of the mesh size that holds ``num_models``."""
    d = mesh.devices.size
    return -(-num_models // d) * d


def pad(tree, num_models: int, padded: int):
    """Appends ``padded - num_models`` copies of model 0 along the leading axis of every leaf."""
    if padded == num_models:
        return tree
    extra = padded - num_models
    return jax.tree.map(
        lambda a: jnp.concatenate([a, jnp.repeat(a[:1], extra, axis=0)]), tree)


def unpad(tree, num_models: int):
    return jax.tree.map(lambda a: a[:num_models], tree)


def shard_models(tree, mesh: Mesh):
    """Places every leaf with its leading (model) axis split over the mesh."""
    return jax.device_put(tree, NamedSharding(mesh, P(AXIS)))


def replicate(tree, mesh: Mesh):
    return jax.device_put(tree, NamedSharding(mesh, P()))
