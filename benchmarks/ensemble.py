r"""Training many shadow models: together in one jaxmia ensemble, one after another in jaxmia, and
one after another in PyTorch the way the research code does (a DataLoader loop per model, as
mia_prune's ``BaseModel.train``).

Workload (issue #5 §4): K tabular MLPs 600 -> 256 -> 128 -> 100 (ReLU, no dropout), batch 128,
Adam lr 1e-3, each model on its own shuffle of the same synthetic rows, ``--steps`` steps per
model. Prints model-steps per second (one thread: per CPU-second; all cores: wall clock), the
ratios ensemble / PyTorch and ensemble / sequential jaxmia (the ensemble's better layout), for each
K. 'ensemble' is the default layout ('auto': on CPU the 'looped' mode, models one after another
inside one jitted epoch), 'vmap' the 'fused' mode (vmap over models). With all cores, the
ensemble also runs split over one CPU device per core ('per core': ``jax_num_cpu_devices``, the
scripts' ``--cpu_devices``), each core training its share of the models. Every measurement runs
in its own process; each figure is the best of 3 timed epochs after a warm-up epoch. 'fit K' /
'fit seq.' time the whole ``training.fit`` (dev evaluation and early-stopping bookkeeping every
epoch, as the audit trains its shadows) of the K models at once / of one model K times.

PyTorch lives in a separate environment, never in the package's:
  python3 -m venv /tmp/torch-venv && /tmp/torch-venv/bin/pip install torch==2.13.0 numpy
  .venv/bin/python benchmarks/ensemble.py --torch_python=/tmp/torch-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                  "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false "
                               "intra_op_parallelism_threads=1"}
SIZES = (600, 256, 128, 100)
BATCH = 128


def _best_of(run, repeats=3):
    run()  # warm-up / compile
    best = None
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        run()
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        best = (wall, cpu) if best is None or wall < best[0] else best
    return best


def worker_jax(k: int, steps: int, together: bool, devices: int = 1,
               mode: str = "auto") -> tuple[float, float]:
    import jax

    if devices > 1:
        jax.config.update("jax_num_cpu_devices", devices)
    import jax.numpy as jnp
    import numpy as np

    from jaxmia import pruning, sharding, training
    from jaxmia.models import mlp
    from jaxmia.models.wrap import from_linen

    n = steps * BATCH
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, SIZES[0])).astype(np.float32)
    y = rng.integers(0, SIZES[-1], n).astype(np.int32)
    model = from_linen(mlp.MLP(SIZES[-1], hidden=SIZES[1:-1], dropout=0.0), (SIZES[0],), "mlp")
    cfg = training.TrainConfig(weight_decay=0.0)
    tx = training.make_optimizer(cfg)
    size = k if together else 1
    mesh = sharding.model_mesh() if devices > 1 else None
    mode = training.resolve_ensemble_mode(mode, {"kernel": jnp.zeros((1, 1, 1))})
    # As fit does: masks of all ones multiply nothing (no masked leaves).
    epoch = training.make_epoch_fn(model, tx, BATCH, mode=mode, masked=frozenset(), mesh=mesh)
    data = training.make_ensemble_data(x, y, [np.arange(n)] * size, [np.arange(BATCH)] * size)
    if mesh is not None:
        data = training.EnsembleData(*sharding.replicate((data.x, data.y), mesh),
                                     *sharding.shard_models((data.train_idx, data.train_n,
                                                             data.dev_idx, data.dev_n), mesh))

    def fresh(seed):
        keys = jax.random.split(jax.random.key(seed), size)
        params, state = training.init_ensemble(model, keys)
        states = training.TrainState(step=jnp.zeros((size,), jnp.int32), params=params,
                                     masks=pruning.ones_like(params), model_state=state,
                                     opt_state=jax.vmap(tx.init)(params))
        es = training.EarlyStopState(best_acc=jnp.zeros(size), best_epoch=jnp.zeros(size, int),
                                     best_params=params, best_model_state=state,
                                     bad_epochs=jnp.zeros(size, int),
                                     done=jnp.zeros(size, bool))
        if mesh is not None:
            return sharding.shard_models((states, es, keys), mesh)
        return states, es, keys

    runs = [fresh(s) for s in range(1 if together else k)]

    def run():
        for states, es, keys in runs:
            jax.block_until_ready(epoch(states, es, data, keys))

    return _best_of(run)


FIT_EPOCHS = 3


def worker_fit(k: int, steps: int, together: bool,
               epochs: int = FIT_EPOCHS) -> tuple[float, float]:
    """The whole ``training.fit`` (dev evaluation, early-stopping bookkeeping and metrics after
    every epoch, as the audit trains its shadows; no checkpoints): one call for the K models, or
    K calls of one model each. ``epochs`` epochs of ``steps`` steps per model."""
    import jax
    import numpy as np

    from jaxmia import pruning, training
    from jaxmia.models import mlp
    from jaxmia.models.wrap import from_linen

    n = steps * BATCH
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n + BATCH, SIZES[0])).astype(np.float32)
    y = rng.integers(0, SIZES[-1], n + BATCH).astype(np.int32)
    model = from_linen(mlp.MLP(SIZES[-1], hidden=SIZES[1:-1], dropout=0.0), (SIZES[0],), "mlp")
    cfg = training.TrainConfig(epochs=epochs, weight_decay=0.0, patience=None)
    size = k if together else 1
    data = training.make_ensemble_data(x, y, [np.arange(n)] * size,
                                       [np.arange(n, n + BATCH)] * size)
    keys = jax.random.split(jax.random.key(0), size)
    params, state = training.init_ensemble(model, keys)
    masks = pruning.ones_like(params)

    def run():
        for _ in range(1 if together else k):
            res = training.fit(model, params, state, masks, data, cfg, keys)
            jax.block_until_ready(res.params)

    return _best_of(run)


def worker_torch(k: int, steps: int) -> tuple[float, float]:
    import numpy as np
    import torch

    n = steps * BATCH
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((n, SIZES[0])).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, SIZES[-1], n))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y),
                                         batch_size=BATCH, shuffle=True)
    torch.manual_seed(0)
    nets = []
    for _ in range(k):
        net = torch.nn.Sequential(torch.nn.Linear(600, 256), torch.nn.ReLU(),
                                  torch.nn.Linear(256, 128), torch.nn.ReLU(),
                                  torch.nn.Linear(128, 100))
        nets.append((net, torch.optim.Adam(net.parameters(), lr=1e-3)))
    loss_fn = torch.nn.CrossEntropyLoss()

    def run():
        # mia_prune's BaseModel.train, one model after another: each step also keeps the
        # epoch's loss and accuracy (jaxmia's epoch sums the same two inside its step).
        for net, opt in nets:
            net.train()
            total_loss, correct, total = 0.0, 0, 0
            for xb, yb in loader:
                xb, yb = xb.to("cpu"), yb.to("cpu")
                opt.zero_grad()
                out = net(xb)
                loss = loss_fn(out, yb)
                loss.backward()
                opt.step()
                total_loss += loss.item() * yb.size(0)
                total += yb.size(0)
                correct += out.max(1)[1].eq(yb).sum().item()

    return _best_of(run)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--torch_python", default=None)
    ap.add_argument("--models", default="8,16,64")
    ap.add_argument("--steps", type=int, default=20, help="steps per model per timed epoch")
    ap.add_argument("--threads", default="1,all")
    ap.add_argument("--worker", default=None)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    if args.worker:
        kind, k = args.worker.split(":")
        k = int(k)
        if kind == "torch":
            wall, cpu = worker_torch(k, args.steps)
        elif kind.startswith("fit_"):
            wall, cpu = worker_fit(k, args.steps, kind == "fit_together")
        else:
            wall, cpu = worker_jax(k, args.steps, kind != "sequential",
                                   cores if kind == "per_core" else 1,
                                   "fused" if kind == "vmap" else "auto")
        print(json.dumps({"wall": wall, "cpu": cpu}))
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    print(f"K MLPs {'-'.join(map(str, SIZES))}, batch {BATCH}, Adam, {args.steps} steps each; "
          "model-steps per second; 'per core': the ensemble split over one CPU device per core "
          f"({cores})")
    print(f"{'threads':<8}{'K':>4}{'ensemble':>10}{'vmap':>8}{'per core':>10}{'jax seq.':>10}"
          f"{'torch':>8}{'ens/torch':>11}{'ens/seq':>9}{'fit K':>8}{'fit seq.':>10}"
          f"{'fit K/seq':>11}{'fit K/torch':>13}")
    for threads in args.threads.split(","):
        for k in map(int, args.models.split(",")):
            kinds = ["together", "vmap", "sequential", "fit_together", "fit_sequential"] + (
                ["torch"] if args.torch_python else [])
            if threads != "1" and cores > 1 and k % cores == 0:
                kinds.append("per_core")
            rate = {}
            for kind in kinds:
                python = args.torch_python if kind == "torch" else sys.executable
                env = {**os.environ, "PYTHONPATH": root,
                       **(ONE_THREAD_ENV if threads == "1" else {})}
                cmd = [python, os.path.abspath(__file__), f"--worker={kind}:{k}",
                       f"--steps={args.steps}"]
                if threads == "1":
                    cmd = ["taskset", "-c", "0"] + cmd
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                steps = k * args.steps * (FIT_EPOCHS if kind.startswith("fit_") else 1)
                rate[kind] = steps / (r["cpu"] if threads == "1" else r["wall"])
            best = max(rate["together"], rate.get("per_core", 0.0))
            torch_rate = rate.get("torch", float("nan"))
            per_core = f"{rate['per_core']:>10.0f}" if "per_core" in rate else f"{'-':>10}"
            print(f"{threads:<8}{k:>4}{rate['together']:>10.0f}{rate['vmap']:>8.0f}{per_core}"
                  f"{rate['sequential']:>10.0f}{torch_rate:>8.0f}{best / torch_rate:>11.2f}"
                  f"{best / rate['sequential']:>9.2f}{rate['fit_together']:>8.0f}"
                  f"{rate['fit_sequential']:>10.0f}"
                  f"{rate['fit_together'] / rate['fit_sequential']:>11.2f}"
                  f"{rate['fit_together'] / torch_rate:>13.2f}", flush=True)


if __name__ == "__main__":
    main()
