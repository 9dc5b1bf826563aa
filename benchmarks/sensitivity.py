r"""Confidence + prediction-sensitivity extraction: jaxmia against the PyTorch research-code loop.

Same inputs and weights on both sides: the tabular MLP 600 -> 256 -> 128 -> 100 (eval mode),
N inputs, m Gaussian perturbations of size eps per input. PyTorch runs the way mia_prune's
``predict_target_sensitivity`` does (a loop over batches of 128; per batch: softmax of the batch,
the batch repeated m times plus eps * randn, softmax, mean |difference| / eps). jaxmia runs
``features.ensemble_sensitivity`` (one jitted call per chunk, returning the clean logits for the
confidence from the same pass) with each of its noise sources:
'fast' (independent input-space normals), 'projected' (the same law drawn after the first dense
layer), 'shared' (one set of m directions for all examples) and 'threefry' (JAX's generator).
Every measurement is its own subprocess, once with one thread (examples per CPU-second: the
stable figure on a shared machine) and once with all cores (wall clock).

PyTorch lives in a separate environment, never in the package's:
  python3 -m venv /tmp/torch-venv && /tmp/torch-venv/bin/pip install torch==2.13.0 numpy
  .venv/bin/python benchmarks/sensitivity.py --torch_python=/tmp/torch-venv/bin/python
(``pip install torch==2.13.0`` takes the CPU wheel; other torch specs pull a multi-GB CUDA build.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

SIZES = (600, 256, 128, 100)
ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                  "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false "
                               "intra_op_parallelism_threads=1"}


def make_data(path: str, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    arrays = {"x": rng.standard_normal((n, SIZES[0])).astype(np.float32),
              "y": rng.integers(0, SIZES[-1], n)}
    for i, (a, b) in enumerate(zip(SIZES[:-1], SIZES[1:])):
        arrays[f"w{i}"] = (rng.standard_normal((a, b)) * np.sqrt(2.0 / (a + b))).astype(np.float32)
        arrays[f"b{i}"] = np.zeros(b, np.float32)
    np.savez(path, **arrays)


def worker_torch(d, m, eps, repeats):
    import torch

    layers = []
    for i in range(len(SIZES) - 1):
        lin = torch.nn.Linear(SIZES[i], SIZES[i + 1])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(d[f"w{i}"].T.copy()))
            lin.bias.copy_(torch.from_numpy(d[f"b{i}"]))
        layers += [lin, torch.nn.ReLU()] if i < len(SIZES) - 2 else [lin]
    model = torch.nn.Sequential(*layers).eval()
    x_all, y_all = torch.from_numpy(d["x"]), torch.from_numpy(d["y"])
    torch.manual_seed(0)

    def run():
        confs, sens = [], []
        with torch.no_grad():
            for i in range(0, len(x_all), 128):  # the research code's DataLoader loop
                x, y = x_all[i:i + 128], y_all[i:i + 128]
                p = torch.softmax(model(x), dim=1)
                confs.append(p[torch.arange(len(y)), y])
                rep = x.repeat(m, 1)
                q = torch.softmax(model(rep + eps * torch.randn_like(rep)), dim=1)
                diff = (q - p.repeat(m, 1)).abs().reshape(m, len(x), -1)
                sens.append(diff.mean(0) / eps)
        return torch.cat(confs).numpy(), torch.cat(sens).numpy()

    run()  # warm-up
    return [run for _ in range(repeats)]


def worker_jax(d, m, eps, repeats, noise):
    import jax
    import jax.numpy as jnp

    from jaxmia import features
    from jaxmia.models import mlp
    from jaxmia.models.wrap import from_linen

    model = from_linen(mlp.MLP(SIZES[-1], hidden=SIZES[1:-1], dropout=0.0), (SIZES[0],), "mlp")
    params = {f"Dense_{i}": {"kernel": jnp.asarray(d[f"w{i}"])[None],
                             "bias": jnp.asarray(d[f"b{i}"])[None]}
              for i in range(len(SIZES) - 1)}
    masks = jax.tree.map(jnp.ones_like, params)
    x_all, y_all = jnp.asarray(d["x"]), jnp.asarray(d["y"])
    idx = jnp.arange(len(x_all))[None]
    key = jax.random.key(0)

    # Only the confidence of the feature set (the PyTorch loop computes nothing else).
    confidence = jax.jit(lambda logits, y: features.extract(logits, y)["confidence"])

    def run():
        # One pass gives the clean logits and the sensitivity (as the PyTorch loop reuses p).
        sens, logits = features.ensemble_sensitivity(model, params, {}, masks, x_all, idx, key,
                                                     num_samples=m, epsilon=eps, noise=noise,
                                                     return_logits=True)
        conf = confidence(logits, y_all[None])
        return jax.block_until_ready((conf, sens))

    run()  # compile
    return [run for _ in range(repeats)]


def worker(args):
    d = dict(np.load(args.data))
    fns = (worker_torch(d, args.m, args.eps, args.repeats) if args.worker == "torch"
           else worker_jax(d, args.m, args.eps, args.repeats, args.worker.split(":")[1]))
    wall, cpu = [], []
    for fn in fns:
        c0, w0 = time.process_time(), time.perf_counter()
        conf, sens = fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    n = len(d["x"])
    i = int(np.argmin(wall))
    print(json.dumps({"examples_per_wall_s": n / wall[i], "examples_per_cpu_s": n / cpu[i],
                      "mean_confidence": float(np.mean(conf)),
                      "mean_sensitivity": float(np.mean(sens))}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--torch_python", default=None, help="python of an env with torch==2.13.0")
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--m", type=int, default=10)
    ap.add_argument("--eps", type=float, default=1e-3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--worker", default=None)
    ap.add_argument("--data", default=None)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    impls = ["jax:fast", "jax:projected", "jax:shared", "jax:threefry"]
    impls += ["torch"] if args.torch_python else []
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data.npz")
        make_data(data, args.n)
        rows = {}
        for threads in ("1 thread", "all cores"):
            for impl in impls:
                python = args.torch_python if impl == "torch" else sys.executable
                env = {**os.environ, "PYTHONPATH": root,
                       **(ONE_THREAD_ENV if threads == "1 thread" else {})}
                cmd = [python, os.path.abspath(__file__), f"--worker={impl}", f"--data={data}",
                       f"--m={args.m}", f"--eps={args.eps}", f"--repeats={args.repeats}"]
                if threads == "1 thread":
                    cmd = ["taskset", "-c", "0"] + cmd
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                rows[(threads, impl)] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"confidence + sensitivity, MLP {'-'.join(map(str, SIZES))}, N={args.n}, m={args.m}, "
          f"eps={args.eps}")
    print(f"{'setting':<11}{'implementation':<15}{'ex/s':>10}{'ex/CPU-s':>10}"
          f"{'vs torch':>10}{'mean sens':>11}")
    for (threads, impl), r in rows.items():
        key = "examples_per_cpu_s" if threads == "1 thread" else "examples_per_wall_s"
        torch_row = rows.get((threads, "torch"))
        ratio = r[key] / torch_row[key] if torch_row else float("nan")
        print(f"{threads:<11}{impl:<15}{r['examples_per_wall_s']:>10.0f}"
              f"{r['examples_per_cpu_s']:>10.0f}{ratio:>10.2f}{r['mean_sensitivity']:>11.4f}")


if __name__ == "__main__":
    main()
