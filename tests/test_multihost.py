"""Multi-host through JAX's own runtime: two processes on this machine (CPU, localhost, gloo)
train and audit exactly like one process."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

from tests.conftest import ROOT

FIT_SCRIPT = r'''
import json, os, sys
import numpy as np
from jaxmia import sharding
num, pid, port, out, stop = sys.argv[1:6]
num, pid = int(num), int(pid)
if num > 1:
    sharding.start_processes(f"localhost:{port}", num, pid)
import jax
from jaxmia import pruning, training
from jaxmia.dp import DPConfig

from tests.toys import toy_ensemble
K = 3
model, params, state, data, keys = toy_ensemble(K)
configs = {"adam": training.TrainConfig(epochs=4, batch_size=32, patience=1),
           "dp": training.TrainConfig(epochs=3, batch_size=32, dp=DPConfig(noise_multiplier=1.0))}
for name, cfg in configs.items():
    kwargs = dict(checkpoint_dir=os.path.join(out, name, "ckpt"),
                  metrics_path=os.path.join(out, name, "metrics.jsonl"),
                  mesh=sharding.training_mesh())
    if stop == "1":  # killed after 2 epochs, then resumed from the checkpoint
        try:
            training.fit(model, params, state, pruning.ones_like(params), data, cfg, keys,
                         stop_after=2, **kwargs)
        except KeyboardInterrupt:
            pass
    res = training.fit(model, params, state, pruning.ones_like(params), data, cfg, keys, **kwargs)
    leaves = {f"p{i}": np.asarray(v) for i, v in enumerate(jax.tree.leaves(res.params))}
    np.savez(os.path.join(out, name, f"result_{pid}.npz"), best_epoch=res.best_epoch,
             steps=res.steps, **leaves)
print(json.dumps({"processes": jax.process_count(), "devices": jax.device_count()}))
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _processes(argv_of, count, cwd):
    """Starts ``count`` processes (argv_of(rank)) at once; returns their CompletedProcess-like
    (returncode, stdout, stderr) after all exit."""
    env = {**os.environ, "PYTHONPATH": ROOT}
    procs = [subprocess.Popen(argv_of(rank), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=cwd, env=env) for rank in range(count)]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=900)
        out.append((p.returncode, stdout, stderr))
    return out


def _load(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def test_two_processes_train_and_resume_like_one(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    for d in (one, two):
        for name in ("adam", "dp"):
            (d / name).mkdir(parents=True)
    [(rc, _, err)] = _processes(
        lambda r: [sys.executable, "-c", FIT_SCRIPT, "1", "0", "0", str(one), "0"], 1, ROOT)
    assert rc == 0, err[-3000:]
    port = _free_port()
    runs = _processes(lambda r: [sys.executable, "-c", FIT_SCRIPT, "2", str(r), str(port),
                                 str(two), "1"], 2, ROOT)
    for rc, stdout, err in runs:
        assert rc == 0, err[-3000:]
        assert json.loads(stdout.strip().splitlines()[-1]) == {"processes": 2, "devices": 2}
    for name in ("adam", "dp"):
        ref = _load(one / name / "result_0.npz")
        for rank in (0, 1):  # every process ends with every model
            got = _load(two / name / f"result_{rank}.npz")
            assert got.keys() == ref.keys()
            for k in ref:
                np.testing.assert_allclose(got[k], ref[k], rtol=0, atol=1e-6, err_msg=k)
        # One metrics line per epoch (the resumed run does not repeat epochs 0-1), the same.
        assert (two / name / "metrics.jsonl").read_text() == \
            (one / name / "metrics.jsonl").read_text()


def test_audit_on_two_processes_equals_one(tmp_path):
    args = [os.path.join(ROOT, "experiments", "audit.py"), "--epochs=2", "--num_shadows=2",
            "--attacks=loss,confidence"]
    [(rc, _, err)] = _processes(lambda r: [sys.executable, *args, f"--workdir={tmp_path / 'one'}"],
                                1, ROOT)
    assert rc == 0, err[-2000:]
    port = _free_port()
    runs = _processes(lambda r: [sys.executable, *args, f"--workdir={tmp_path / 'two'}",
                                 f"--coordinator=localhost:{port}", "--num_processes=2",
                                 f"--process_id={r}"], 2, ROOT)
    for rc, _, err in runs:
        assert rc == 0, err[-2000:]
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["jax"]["processes"] == 2 and two["jax"]["devices"] == 2
    assert one["jax"]["processes"] == 1
    assert two["attacks"] == one["attacks"] and two["accuracy"] == one["accuracy"]


def test_process_flags_without_a_coordinator_are_refused(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "audit.py"),
                        "--num_processes=2", f"--workdir={tmp_path / 'w'}"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "--num_processes and --process_id need --coordinator" in err[0]
    assert not (tmp_path / "w").exists()
