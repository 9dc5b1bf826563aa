r"""SAMIA's training step (issue #3 §4, end to end) with the hand-written CPU kernels
(``jaxmia/kernels/attention.cc``, ``layernorm.cc``, ``gelu.cc``) against the same model in pure
JAX.

  .venv/bin/python benchmarks/samia_step.py --classes=30 --rounds=8

Builds both jitted steps in one process (the model of ``jaxmia/attacks/samia.py``, batch 128, SGD
with momentum as the attack trains; the pure version traced with the kernels switched off), then
times them round-robin (median and minimum over ``--rounds`` rounds of ``--steps`` steps, so
both see the same machine load), and each kernel's work alone, forward + backward of one layer:
the attention core (B = 128, 4 heads of 16, dropout 0.2), the residual LayerNorm
(``LayerNorm(h + dropout(branch))``, 128 x 30 rows of 64) and the feed-forward activation
(``dropout(GELU(z + bias))``, 128 x 30 rows of 128). Prints milliseconds and the pure / kernel
ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmia.attacks import samia
from jaxmia.kernels import attention, gelu, layernorm, library

BATCH = 128


def samia_step(classes: int):
    model = samia.SAMIA(num_classes=classes)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((BATCH, 3 * classes)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 2, BATCH))
    variables = model.init({"params": jax.random.key(0)}, x, train=False)
    tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(1e-3, momentum=0.9))

    def loss(params, stats, key):
        logits, new = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                                  rngs={"dropout": key}, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new

    @jax.jit
    def step(params, opt_state, stats, key):
        key, sub = jax.random.split(key)
        (_, new), grads = jax.value_and_grad(loss, has_aux=True)(params, stats, sub)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, new["batch_stats"], key

    state = (variables["params"], tx.init(variables["params"]), variables["batch_stats"],
             jax.random.key(1))
    jax.block_until_ready(step(*state))  # compile
    return lambda: step(*state)


def core(fn, *shapes):
    """Forward + backward of ``fn(*arrays, key, 0.2)`` (dropout 0.2) on random arrays of
    ``shapes``, jitted and compiled; returns a call."""
    keys = jax.random.split(jax.random.key(len(shapes)), len(shapes) + 1)
    arrays = [jax.random.normal(key, shape) for key, shape in zip(keys, shapes)]
    g = jax.random.normal(keys[-1], jax.eval_shape(lambda *a: fn(*a, None, 0.2), *arrays).shape)
    grad = jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a, jax.random.key(3), 0.2) * g),
                            tuple(range(len(arrays)))))
    jax.block_until_ready(grad(*arrays))
    return lambda: grad(*arrays)


# One layer's work of each kernel at SAMIA's shapes (C = 30 tokens, batch 128).
CORES = {
    "core": (attention.attention, attention.reference, [(BATCH, 30, 4, 16)] * 3),
    "addnorm": (layernorm.add_layernorm, layernorm.reference, [(BATCH, 30, 64)] * 2 + [(64,)] * 2),
    "ffn": (gelu.bias_gelu_dropout, gelu.reference, [(BATCH, 30, 128), (128,)]),
}


def round_robin(calls: dict, rounds: int, steps: int) -> dict:
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            for _ in range(steps):
                out = call()
            jax.block_until_ready(out)
            times[name].append((time.perf_counter() - start) / steps * 1e3)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=30, help="C: tokens (Location: 30)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    if not library.available():
        raise SystemExit("the CPU kernels are not built here (they need a C++ compiler)")
    calls = {"step kernel": samia_step(args.classes)}
    with mock.patch.object(library, "available", lambda: False):
        calls["step pure"] = samia_step(args.classes)
    for name, (kernel, reference, shapes) in CORES.items():
        calls[f"{name} kernel"] = core(kernel, *shapes)
        calls[f"{name} pure"] = core(reference, *shapes)
    times = round_robin(calls, args.rounds, args.steps)
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, C = {args.classes}, "
          f"batch {BATCH}; ms per call, {args.rounds} rounds of {args.steps}")
    for name, ts in times.items():
        print(f"  {name:14s} median {statistics.median(ts):7.2f}  min {min(ts):7.2f}")
    for what in ("step", *CORES):
        ratio = statistics.median(times[f"{what} pure"]) / statistics.median(times[f"{what} kernel"])
        print(f"  {what}: pure / kernel = {ratio:.2f}x")


if __name__ == "__main__":
    main()
