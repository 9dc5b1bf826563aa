"""Sharding the ensemble's model axis over devices (``jax.jit`` + ``NamedSharding``, no ``pmap``).

Every per-model leaf of a training run (params, masks, optimizer and early-stopping state, index
matrices, keys) has the model axis first, so one ``NamedSharding(mesh, P('model'))`` lays the
ensemble out over a 1-D device mesh; the pool of examples is replicated. The jitted epoch (a
``vmap`` over models) is then partitioned along that axis by XLA: each device trains its own
models and nothing crosses devices except the replicated data. K need not divide the device
count: :func:`pad` appends copies of model 0 that are marked stopped from the start (they take no
step) and are dropped again at the end.

:func:`over_models` makes the per-device program explicit (``jax.shard_map``): each device runs
the model-mapped function on its own block of models only, so a program that handles the models
one by one (the 'stepwise' mode's unrolled models, for convolutions on CPU) is split by device
instead of being left to the partitioner, and nothing is communicated. :func:`call` pads, shards,
runs and unpads in one go (feature extraction and attack scoring use it).

On CPU, ``jax_num_cpu_devices`` (the scripts' ``--cpu_devices``) turns each core into a device, so
the same code runs a share of the models per core (numbers in BUILD_NOTES.md).

Several processes (hosts) join through :func:`start_processes` (``jax.distributed``): the mesh
then spans every process's devices, each process feeds its own shards from the same host data
(:func:`shard_models`), and ``training.fit`` all-gathers the trained models so that every process
continues with all of them (tested with two processes on localhost).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxmia.errors import UserError

AXIS = "model"


def set_cpu_devices(count: int | None) -> None:
    """Makes the CPU platform expose ``count`` devices (one per core: each trains a share of the
    models). Call before any JAX computation; ``None`` keeps JAX's default (one, or what
    ``XLA_FLAGS=--xla_force_host_platform_device_count`` says). No effect on GPU/TPU devices."""
    if count is None:
        return
    if count < 1:
        raise UserError(f"--cpu_devices must be >= 1, got {count}")
    try:
        jax.config.update("jax_num_cpu_devices", int(count))
    except RuntimeError:
        raise UserError("--cpu_devices must be set before JAX starts computing; set it at "
                        "start-up (the experiments' flag does)") from None


def start_processes(coordinator: str | None, num_processes: int | None,
                    process_id: int | None) -> None:
    """Joins a multi-process (multi-host) run through JAX's own runtime,
    ``jax.distributed.initialize``: every process runs the same command with its own
    ``process_id``; ``coordinator`` is process 0's ``host:port`` ('auto': let JAX read the
    cluster environment, e.g. SLURM or a TPU pod). On CPU the processes talk through gloo.
    None: a single process. Call before any JAX computation."""
    if coordinator is None:
        if num_processes is not None or process_id is not None:
            raise UserError("--num_processes and --process_id need --coordinator=HOST:PORT (or "
                            "--coordinator=auto)")
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator == "auto":
        jax.distributed.initialize()
        return
    if num_processes is None or process_id is None or not 0 <= process_id < num_processes:
        raise UserError(f"--coordinator={coordinator} needs --num_processes=N and "
                        f"--process_id in [0, N), got {num_processes} and {process_id}")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)


def training_mesh() -> Mesh | None:
    """Every device of every process (None when there is only one): the models train spread
    over all of them."""
    return model_mesh() if jax.device_count() > 1 else None


def local_mesh() -> Mesh | None:
    """This process's devices (None when it has one): after training every process holds every
    model (``training.fit`` gathers them), so features and attacks run host by host."""
    return model_mesh(jax.local_devices()) if jax.local_device_count() > 1 else None


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


def _place(a, target: NamedSharding):
    """One leaf on ``target``. A mesh over several processes (multi-host) cannot be fed by
    ``device_put``: every process holds the same full value and builds its own shards."""
    if target.is_fully_addressable:
        return jax.device_put(a, target)
    if isinstance(a, jax.Array) and not a.is_fully_addressable:  # already global: reshard
        return a if a.sharding == target else jax.jit(lambda v: v, out_shardings=target)(a)
    if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(_place(jax.random.key_data(a), target),
                                        impl=jax.random.key_impl(a))
    host = np.asarray(a)
    return jax.make_array_from_callback(host.shape, target, lambda index: host[index])


def shard_models(tree, mesh: Mesh):
    """Places every leaf with its leading (model) axis split over the mesh."""
    target = NamedSharding(mesh, P(AXIS))
    return jax.tree.map(lambda a: _place(a, target), tree)


def replicate(tree, mesh: Mesh):
    target = NamedSharding(mesh, P())
    return jax.tree.map(lambda a: _place(a, target), tree)


def to_host(tree):
    """Numpy copies of every leaf, on every process: leaves spread over other hosts' devices
    (multi-host training) are all-gathered first."""
    def one(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            from jax.experimental import multihost_utils
            return np.asarray(multihost_utils.process_allgather(a, tiled=True))
        return np.asarray(a)

    return jax.tree.map(one, tree)


def over_models(fn, mesh: Mesh | None, in_axes):
    """``fn`` (already mapped over the leading model axis of the args whose ``in_axes`` is 0) run
    per device on its block of models; the outputs keep the model axis first. ``mesh=None``:
    ``fn`` itself."""
    if mesh is None:
        return fn
    specs = tuple(P(AXIS) if axis == 0 else P() for axis in in_axes)
    return jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=P(AXIS), check_vma=False)


def call(fn, mesh: Mesh | None, in_axes, *args):
    """Calls a jitted ``over_models(..., mesh, in_axes)`` function on args whose model axis is
    not yet padded or placed: pads it to a multiple of the mesh, shards it, calls, unpads."""
    if mesh is None:
        return fn(*args)
    num_models = next(jax.tree.leaves(a)[0].shape[0] for a, axis in zip(args, in_axes)
                      if axis == 0)
    padded = padded_size(num_models, mesh)
    args = [shard_models(pad(a, num_models, padded), mesh) if axis == 0 else replicate(a, mesh)
            for a, axis in zip(args, in_axes)]
    return unpad(fn(*args), num_models)
