r"""Throughput of the ensemble training modes (fused, looped, stepwise) for an MLP and a small CNN.

  .venv/bin/python benchmarks/ensemble_modes.py [--models=6] [--mlp_steps=20] [--cnn_steps=3]

Prints training examples/s (model-steps x batch / wall second) for K models trained together in
each mode, after compilation, on synthetic data of the shapes of Location (446 binary features, 30
classes) and CIFAR-10 (32x32x3, 10 classes). 'fused' runs one jitted call an epoch (vmap over
models, lax.scan over batches); 'looped' the same with lax.map over models instead of vmap;
'stepwise' one jitted call a batch with the models unrolled.
"""

from __future__ import annotations

import time

import jax
import numpy as np
from absl import app, flags

from jaxmia import models, pruning, training

flags.DEFINE_integer("models", 6, "ensemble size K")
flags.DEFINE_integer("mlp_steps", 20, "batches of 128 per model in the timed MLP epoch")
flags.DEFINE_integer("cnn_steps", 3, "batches of 128 per model in the timed CNN epoch (fused "
                     "mode runs at tens of examples/s on CPU: keep it small)")
FLAGS = flags.FLAGS


def bench(name, input_shape, classes, mode, k, steps):
    rng = np.random.default_rng(0)
    n = steps * 128
    x = rng.normal(size=(n + 256,) + input_shape).astype(np.float32)
    y = rng.integers(0, classes, n + 256).astype(np.int32)
    model = models.make(name, classes, input_shape)
    keys = jax.random.split(jax.random.key(0), k)
    params, state = training.init_ensemble(model, keys)
    data = training.make_ensemble_data(x, y, [np.arange(n)] * k, [np.arange(n, n + 256)] * k)
    tx = training.make_optimizer(training.TrainConfig())
    epoch = training.make_epoch_fn(model, tx, 128, mode=mode)
    states = training.TrainState(step=jax.numpy.zeros((k,), jax.numpy.int32), params=params,
                                 masks=pruning.ones_like(params), model_state=state,
                                 opt_state=jax.vmap(tx.init)(params))
    es = training.EarlyStopState(best_acc=jax.numpy.zeros(k), best_epoch=jax.numpy.zeros(k, int),
                                 best_params=params, best_model_state=state,
                                 bad_epochs=jax.numpy.zeros(k, int),
                                 done=jax.numpy.zeros(k, bool))
    jax.block_until_ready(epoch(states, es, data, keys))  # compile
    t = time.perf_counter()
    jax.block_until_ready(epoch(states, es, data, keys))
    dt = time.perf_counter() - t
    return k * n / dt


def main(_):
    print(f"jax {jax.__version__} on {jax.default_backend()}, K={FLAGS.models}, batch 128")
    print(f"{'model':<10}{'mode':<10}{'examples/s':>12}")
    for name, shape, classes, steps in (("mlp", (446,), 30, FLAGS.mlp_steps),
                                        ("small_cnn", (32, 32, 3), 10, FLAGS.cnn_steps)):
        for mode in ("fused", "looped", "stepwise"):
            rate = bench(name, shape, classes, mode, FLAGS.models, steps)
            print(f"{name:<10}{mode:<10}{rate:>12.0f}", flush=True)


if __name__ == "__main__":
    app.run(main)
