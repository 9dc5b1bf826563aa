r"""SAMIA's training step (issue #3 §4, end to end) with the hand-written CPU kernels
(``jaxmia/kernels/attention.cc``, ``layernorm.cc``) against the same model in pure JAX.

  .venv/bin/python benchmarks/samia_step.py --classes=30 --rounds=8

Builds both jitted steps in one process (the model of ``jaxmia/attacks/samia.py``, batch 128, SGD
with momentum as the attack trains; the pure version traced with the kernels switched off), then
times them round-robin (median and minimum over ``--rounds`` rounds of ``--steps`` steps, so
both see the same machine load), and each kernel's work alone, forward + backward of one layer:
the attention core (B = 128, 4 heads of 16, dropout 0.2) and the residual LayerNorm
(``LayerNorm(h + dropout(branch))``, 128 x 30 rows of 64). Prints milliseconds and the pure /
kernel ratios.
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
from jaxmia.kernels import attention, layernorm, library

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


def attention_core(fn):
    q, k, v, g = (jax.random.normal(key, (BATCH, 30, 4, 16))
                  for key in jax.random.split(jax.random.key(2), 4))
    grad = jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v, jax.random.key(3), 0.2) * g),
                            (0, 1, 2)))
    jax.block_until_ready(grad(q, k, v))
    return lambda: grad(q, k, v)


def addnorm_core(fn):
    h, branch, g = (jax.random.normal(key, (BATCH, 30, 64))
                    for key in jax.random.split(jax.random.key(4), 3))
    scale, bias = jnp.ones(64), jnp.zeros(64)
    grad = jax.jit(jax.grad(
        lambda h, b, s, c: jnp.sum(fn(h, b, s, c, jax.random.key(5), 0.2) * g), (0, 1, 2, 3)))
    jax.block_until_ready(grad(h, branch, scale, bias))
    return lambda: grad(h, branch, scale, bias)


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
    calls["core kernel"] = attention_core(attention.attention)
    calls["core pure"] = attention_core(attention.reference)
    calls["addnorm kernel"] = addnorm_core(layernorm.add_layernorm)
    calls["addnorm pure"] = addnorm_core(layernorm.reference)
    times = round_robin(calls, args.rounds, args.steps)
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, C = {args.classes}, "
          f"batch {BATCH}; ms per call, {args.rounds} rounds of {args.steps}")
    for name, ts in times.items():
        print(f"  {name:14s} median {statistics.median(ts):7.2f}  min {min(ts):7.2f}")
    for what in ("step", "core", "addnorm"):
        ratio = statistics.median(times[f"{what} pure"]) / statistics.median(times[f"{what} kernel"])
        print(f"  {what}: pure / kernel = {ratio:.2f}x")


if __name__ == "__main__":
    main()
