r"""DP-SGD throughput and memory: jaxmia (vmap clipping, ghost clipping, non-private) against
Opacus 1.6 (hooks and ghost modes) on torch 2.13.0 CPU, in one run, same shapes and batch.

Workloads (issue #4): the tabular MLP 600 -> 256 -> 128 -> 100 at batch 256; a small CNN on
32x32x3 at batch 128 (conv32-pool-conv64-pool-fc128-fc10, 3x3 'same' convolutions, 2x2 max
pools); a BERT-shaped encoder (embeddings of a 1,000-token vocabulary, one block with hidden 384,
12 heads, feed-forward 1,536) at batch 32 x 128 tokens, jaxmia only (ghost vs vmap memory).
Every step is one full DP-SGD step: per-example clipping to C = 1, Gaussian noise (sigma = 1),
plain SGD update. The batch is fixed (no Poisson sampling on either side), so both sides do the
same work per step.

Each measurement runs in its own subprocess, once pinned to one core with one thread (examples
per CPU-second: the stable figure on a shared machine) and once with all cores (wall clock).
Memory: the peak resident set of the worker process above its size just before the first step
(both frameworks), and for jaxmia XLA's own plan of the compiled step (temporaries + arguments +
outputs), which does not depend on the allocator.

PyTorch and Opacus live in a separate environment, never in the package's:
  python3 -m venv /tmp/torch-venv && /tmp/torch-venv/bin/pip install torch==2.13.0 numpy \
      && /tmp/torch-venv/bin/pip install --no-deps opacus==1.6.0 && \
      /tmp/torch-venv/bin/pip install opt_einsum scipy
  .venv/bin/python benchmarks/dp.py --torch_python=/tmp/torch-venv/bin/python
(``pip install torch==2.13.0`` takes the CPU wheel; other torch specs pull a multi-GB CUDA build;
``--no-deps`` keeps Opacus from asking for another torch.) Allocator settings change
per-example-gradient speed 2-3x in both frameworks; this script leaves the environment as it is
for both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                  "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false "
                               "intra_op_parallelism_threads=1"}
WORKLOADS = {"mlp": 256, "cnn": 128, "encoder": 32}  # name -> batch size
JAX_MODES = ("nonprivate", "vmap", "ghost", "ghost_fastnoise")
TORCH_MODES = ("torch_nonprivate", "opacus_hooks", "opacus_ghost")
SIGMA, CLIP, LR = 1.0, 1.0, 0.01


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _measure(step, steps: int, batch: int, blocks: int = 5) -> dict:
    """The best of ``blocks`` timed blocks of ``steps`` steps (the machine is shared: the best
    block is the least disturbed one)."""
    for _ in range(3):
        step()  # compile / warm up
    best = None
    for _ in range(blocks):
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(steps):
            step()
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        best = (wall, cpu) if best is None or wall < best[0] else best
    wall, cpu = best
    return {"examples_per_wall_s": steps * batch / wall,
            "examples_per_cpu_s": steps * batch / cpu, "ms_per_step": 1000 * wall / steps}


def worker_jax(workload: str, mode: str, steps: int) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    from jaxmia import pruning, training
    from jaxmia.dp import DPConfig
    from jaxmia.models import cnn, encoder, mlp
    from jaxmia.models.wrap import from_linen

    batch = WORKLOADS[workload]
    kx, ky, kp = jax.random.split(jax.random.key(0), 3)
    if workload == "mlp":
        model = from_linen(mlp.MLP(100, hidden=(256, 128), dropout=0.0), (600,), "mlp")
        x, y = jax.random.normal(kx, (batch, 600)), jax.random.randint(ky, (batch,), 0, 100)
    elif workload == "cnn":
        model = cnn.make(10, (32, 32, 3))
        x, y = jax.random.normal(kx, (batch, 32, 32, 3)), jax.random.randint(ky, (batch,), 0, 10)
    else:
        model = encoder.make(2, 128, vocab_size=1000, max_len=128, hidden=384, heads=12,
                             feed_forward=1536, num_layers=1, dropout=0.0)
        x, y = jax.random.randint(kx, (batch, 128), 0, 1000), jax.random.randint(ky, (batch,), 0, 2)
    params, model_state = model.init(kp)
    tx = optax.sgd(LR)
    dp = None
    if mode != "nonprivate":
        dp = DPConfig(noise_multiplier=SIGMA, clip_norm=CLIP, clipping=mode.split("_")[0],
                      noise_rng="fast" if mode.endswith("fastnoise") else "threefry")
    step_fn = training.make_train_step(model, tx, dp=dp, batch_size=batch, masked=frozenset())
    state = training.TrainState(step=jnp.int32(0), params=params,
                                masks=pruning.ones_like(params), model_state=model_state,
                                opt_state=tx.init(params))
    weight = jnp.ones((batch,))
    jitted = jax.jit(step_fn, donate_argnums=0)
    compiled = jax.jit(step_fn).lower(state, x, y, weight, jax.random.key(1)).compile()
    mem = compiled.memory_analysis()
    xla_bytes = None if mem is None else (mem.temp_size_in_bytes + mem.argument_size_in_bytes
                                          + mem.output_size_in_bytes)
    holder = {"state": state, "i": 0}

    def one():
        holder["i"] += 1
        holder["state"], metrics = jitted(holder["state"], x, y, weight,
                                          jax.random.key(holder["i"]))
        jax.block_until_ready(metrics)

    rss0 = _rss_kib()
    out = _measure(one, steps, batch)
    out["peak_rss_increase_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                    - rss0) / 1024
    out["xla_step_mib"] = None if xla_bytes is None else xla_bytes / 2**20
    return out


def worker_torch(workload: str, mode: str, steps: int) -> dict:
    import torch
    from torch import nn

    torch.manual_seed(0)
    batch = WORKLOADS[workload]
    if workload == "mlp":
        model = nn.Sequential(nn.Linear(600, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                              nn.Linear(128, 100))
        x, y = torch.randn(batch, 600), torch.randint(0, 100, (batch,))
    elif workload == "cnn":
        model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Flatten(), nn.Linear(64 * 8 * 8, 128), nn.ReLU(),
                              nn.Linear(128, 10))
        x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    else:
        raise SystemExit("the encoder workload is jaxmia only")
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    criterion = nn.CrossEntropyLoss()
    if mode != "torch_nonprivate":
        from opacus import PrivacyEngine

        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(x.repeat(4, *[1] * (x.ndim - 1)), y.repeat(4)),
            batch_size=batch)
        engine = PrivacyEngine()
        kwargs = dict(module=model, optimizer=optimizer, data_loader=loader,
                      noise_multiplier=SIGMA, max_grad_norm=CLIP, poisson_sampling=False,
                      grad_sample_mode=mode.split("_")[1])
        if mode == "opacus_ghost":
            model, optimizer, criterion, _ = engine.make_private(criterion=criterion, **kwargs)
        else:
            model, optimizer, _ = engine.make_private(**kwargs)

    def one():
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()

    rss0 = _rss_kib()
    out = _measure(one, steps, batch)
    out["peak_rss_increase_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                    - rss0) / 1024
    out["xla_step_mib"] = None
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--torch_python", default=None, help="python of an env with torch==2.13.0 "
                    "and opacus==1.6.0")
    ap.add_argument("--workloads", default="mlp,cnn,encoder")
    ap.add_argument("--steps", default="mlp=100,cnn=5,encoder=2",
                    help="steps per timed block (best of 5 blocks) per workload; the per-example "
                    "gradient modes (vmap, opacus_hooks) are capped at 5 steps a block")
    ap.add_argument("--threads", default="1,all", help="'1', 'all' or both")
    ap.add_argument("--worker", default=None)
    args = ap.parse_args()
    steps = dict(kv.split("=") for kv in args.steps.split(","))
    if args.worker:
        workload, mode = args.worker.split(":")
        fn = worker_jax if mode in JAX_MODES else worker_torch
        n = int(steps[workload])
        if mode in ("vmap", "opacus_hooks"):
            n = min(n, 5)  # ~0.4 s a step on the MLP: 5 steps are plenty
        print(json.dumps(fn(workload, mode, n)))
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rows = []
    for threads in args.threads.split(","):
        for workload in args.workloads.split(","):
            modes = list(JAX_MODES)
            if args.torch_python and workload != "encoder":
                modes += list(TORCH_MODES)
            # The memory-hungry per-example modes last: on this VM a worker that follows one of
            # them was measured up to 30% slower (the kernel reclaiming their memory).
            modes = ([m for m in modes if m not in ("vmap", "opacus_hooks")]
                     + [m for m in modes if m in ("vmap", "opacus_hooks")])
            for mode in modes:
                python = sys.executable if mode in JAX_MODES else args.torch_python
                env = {**os.environ, "PYTHONPATH": root,
                       **(ONE_THREAD_ENV if threads == "1" else {})}
                cmd = [python, os.path.abspath(__file__), f"--worker={workload}:{mode}",
                       f"--steps={args.steps}"]
                if threads == "1":
                    cmd = ["taskset", "-c", "0"] + cmd
                out = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if out.returncode != 0:
                    print(f"{workload}:{mode} failed: {out.stderr.strip()[-500:]}",
                          file=sys.stderr)
                    continue
                row = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append({"threads": threads, "workload": workload, "mode": mode, **row})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    _table(rows)


def _table(rows):
    key = {"1": "examples_per_cpu_s", "all": "examples_per_wall_s"}
    print(f"{'threads':<8}{'workload':<9}{'mode':<18}{'ex/s':>9}{'ex/CPU-s':>10}{'ms/step':>9}"
          f"{'vs best Opacus':>15}{'vs nonpriv':>11}{'RSS+ MiB':>10}{'XLA MiB':>9}")
    for r in rows:
        same = [o for o in rows if o["threads"] == r["threads"]
                and o["workload"] == r["workload"]]
        opacus = [o[key[r["threads"]]] for o in same if o["mode"].startswith("opacus")]
        nonpriv = [o for o in same if o["mode"] == "nonprivate"]
        k = key[r["threads"]]
        vs_opacus = f"{r[k] / max(opacus):.2f}" if opacus else "-"
        vs_nonpriv = (f"{nonpriv[0]['ms_per_step'] and r['ms_per_step'] / nonpriv[0]['ms_per_step']:.2f}x"
                      if nonpriv else "-")
        xla = "-" if r["xla_step_mib"] is None else f"{r['xla_step_mib']:.1f}"
        print(f"{r['threads']:<8}{r['workload']:<9}{r['mode']:<18}{r['examples_per_wall_s']:>9.0f}"
              f"{r['examples_per_cpu_s']:>10.0f}{r['ms_per_step']:>9.2f}{vs_opacus:>15}"
              f"{vs_nonpriv:>11}{r['peak_rss_increase_mib']:>10.1f}{xla:>9}")
    print("vs best Opacus: throughput ratio against the faster Opacus mode (same threads); "
          "vs nonpriv: step time relative to jaxmia's non-private step.")


if __name__ == "__main__":
    main()
