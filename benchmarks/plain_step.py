r"""Yardstick for benchmarks/ensemble.py: the same K MLPs (600 -> 256 -> 128 -> 100, batch 128,
Adam) trained by a minimal hand-written jitted step (plain ``jnp``, optax, pre-gathered batches;
no masks, early stopping or metrics), in three layouts: one model after another ('seq'), a
``lax.map`` over models ('map') and a ``vmap`` over stacked models ('vmap'). It shows what the
library's step costs over the bare arithmetic and which layout XLA runs fastest.

  taskset -c 0 env XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
      .venv/bin/python benchmarks/plain_step.py --models=8

Prints model-steps per CPU-second (best of 3 epochs of ``--steps`` steps after a warm-up), then
the throughput of one dense product's forward and backward at the step's and at a wider shape
(the arithmetic ceiling the layouts are measured against). ``--trace`` also profiles one model's
epoch with ``jax.profiler`` and prints where a step's time goes, op by op (XLA:CPU names its
thunks after the optimized HLO's instructions: ``ynn_fusion`` / ``dot`` are the products,
``multiply_add_fusion`` the Adam update).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

SIZES = (600, 256, 128, 100)
BATCH = 128


def init(key):
    params = []
    for fan_in, fan_out in zip(SIZES[:-1], SIZES[1:]):
        key, sub = jax.random.split(key)
        params.append({"w": jax.random.normal(sub, (fan_in, fan_out)) * fan_in ** -0.5,
                       "b": jnp.zeros(fan_out)})
    return params


def forward(params, x):
    for i, p in enumerate(params):
        x = x @ p["w"] + p["b"]
        if i < len(params) - 1:
            x = jax.nn.relu(x)
    return x


TX = optax.adam(1e-3)


def epoch(params, opt_state, xs, ys):
    def step(carry, batch):
        params, opt_state = carry
        grads = jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
            forward(p, batch[0]), batch[1]).mean())(params)
        updates, opt_state = TX.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    return jax.lax.scan(step, (params, opt_state), (xs, ys))[0]


def trace_ops(run, steps, top=16):
    """Per-step time of each XLA:CPU op over 5 calls of ``run`` (each ``steps`` steps)."""
    with tempfile.TemporaryDirectory() as folder:
        jax.profiler.start_trace(folder)
        for _ in range(5):
            jax.block_until_ready(run())
        jax.profiler.stop_trace()
        path = sorted(glob.glob(f"{folder}/**/*.trace.json.gz", recursive=True))[-1]
        with gzip.open(path) as f:
            events = json.load(f)["traceEvents"]
    per_op = collections.Counter()
    for e in events:
        name = e.get("name", "")
        if e.get("ph") == "X" and not name.startswith(("$", "end:", "while")) and \
                "Thunk" not in name and "Pjit" not in name and "PjRt" not in name:
            per_op[name] += e["dur"] / (5 * steps)
    print(f"one model's step, op by op (us per step; all ops: {sum(per_op.values()):.0f} us)")
    for name, us in per_op.most_common(top):
        print(f"{us:8.1f} us  {name}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--trace", action="store_true", help="also print a step's time op by op")
    args = ap.parse_args()
    k, n = args.models, args.steps * BATCH
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((n, SIZES[0])).astype(np.float32))
    y = jnp.asarray(rng.integers(0, SIZES[-1], n).astype(np.int32))
    keys = jax.random.split(jax.random.key(0), k)
    params = jax.vmap(init)(keys)
    opt_state = jax.vmap(TX.init)(params)
    idx = jnp.stack([jax.random.permutation(key, n) for key in keys]).reshape(k, -1, BATCH)
    xs, ys = x[idx], y[idx]
    one = jax.jit(epoch)
    mapped = jax.jit(lambda *a: jax.lax.map(lambda b: epoch(*b), a))
    vmapped = jax.jit(jax.vmap(epoch))
    per_model = [jax.tree.map(lambda a: a[m], (params, opt_state, xs, ys)) for m in range(k)]
    layouts = {"seq": lambda: [one(*args) for args in per_model],
               "map": lambda: mapped(params, opt_state, xs, ys),
               "vmap": lambda: vmapped(params, opt_state, xs, ys)}
    for name, run in layouts.items():
        jax.block_until_ready(run())
        best = float("inf")
        for _ in range(3):
            t = time.process_time()
            jax.block_until_ready(run())
            best = min(best, time.process_time() - t)
        print(f"{name:<6}{k * args.steps / best:8.0f} model-steps/s", flush=True)
    if args.trace:
        trace_ops(lambda: one(*per_model[0]), args.steps)
    for m, kk, n in ((BATCH, 600, 256), (3840, 64, 192)):
        a = jnp.asarray(rng.standard_normal((m, kk)).astype(np.float32))
        b = jnp.asarray(rng.standard_normal((kk, n)).astype(np.float32))
        grad = jax.jit(jax.grad(lambda a, b: jnp.sum((a @ b) ** 2), argnums=(0, 1)))
        jax.block_until_ready(grad(a, b))
        t = time.process_time()
        for _ in range(50):
            jax.block_until_ready(grad(a, b))
        seconds = (time.process_time() - t) / 50
        print(f"dense {m}x{kk} @ {kk}x{n}, forward + backward: "
              f"{3 * 2 * m * kk * n / seconds / 1e9:.1f} GFLOP/s", flush=True)


if __name__ == "__main__":
    main()
