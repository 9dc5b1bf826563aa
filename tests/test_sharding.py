"""Sharding the model axis: with 8 simulated CPU devices, sharded training = one-device training."""

import json
import os
import subprocess
import sys

from tests.conftest import ROOT

SCRIPT = r'''
import json
import jax, jax.numpy as jnp, numpy as np
from jaxmia import models, pruning, sharding, training
from jaxmia.dp import DPConfig

assert jax.device_count() == 8, jax.devices()
rng = np.random.default_rng(0)
x = rng.normal(size=(240, 8)).astype(np.float32)
y = ((x[:, 0] > 0).astype(np.int32) + 2 * (x[:, 1] > 0)).astype(np.int32)
K = 3
train = [rng.permutation(180)[:150 - 7 * k] for k in range(K)]
dev = [np.arange(180, 240 - 5 * k) for k in range(K)]
model = models.make("mlp", 4, (8,))
keys = jax.random.split(jax.random.key(42), K)
params, state = training.init_ensemble(model, keys)
data = training.make_ensemble_data(x, y, train, dev)
out = {}
for name, cfg in {"adam": training.TrainConfig(epochs=4, batch_size=32, patience=1),
                  "dp": training.TrainConfig(epochs=3, batch_size=32,
                                             dp=DPConfig(noise_multiplier=1.0))}.items():
    ref = training.fit(model, params, state, pruning.ones_like(params), data, cfg, keys)
    for devices in (8, 2):
        mesh = sharding.model_mesh(jax.devices()[:devices])
        got = training.fit(model, params, state, pruning.ones_like(params), data, cfg, keys,
                           mesh=mesh)
        diff = max(float(jnp.max(jnp.abs(a - b)))
                   for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(ref.params)))
        out[f"{name}/{devices}"] = {
            "max_abs_diff": diff, "num_models": int(jax.tree.leaves(got.params)[0].shape[0]),
            "best_epoch_equal": bool(np.array_equal(got.best_epoch, ref.best_epoch)),
            "steps_equal": bool(np.array_equal(got.steps, ref.steps)),
            "devices_used": len(jax.tree.leaves(got.params)[0].sharding.device_set)}
print(json.dumps(out))
'''


def test_sharded_training_equals_single_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "PYTHONPATH": ROOT}
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=ROOT,
                       env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    for key, res in out.items():
        # K = 3 on 8 and on 2 devices: padded to 8 / 4 models, unpadded back to 3.
        assert res["num_models"] == 3, key
        assert res["max_abs_diff"] < 1e-5, (key, res)
        assert res["best_epoch_equal"] and res["steps_equal"], (key, res)


def test_audit_uses_every_device_with_the_same_results(tmp_path):
    args = ["--epochs=2", "--num_shadows=2", "--attacks=loss,confidence"]
    runs = {}
    for devices in (1, 8):
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
        work = tmp_path / f"d{devices}"
        r = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "audit.py"),
                            f"--workdir={work}", *args], capture_output=True, text=True,
                           cwd=ROOT, env=env, timeout=900)
        assert r.returncode == 0, r.stderr[-2000:]
        runs[devices] = json.loads((work / "results.json").read_text())
    assert runs[8]["jax"]["devices"] == 8 and runs[1]["jax"]["devices"] == 1
    assert runs[8]["attacks"] == runs[1]["attacks"]
    assert runs[8]["accuracy"] == runs[1]["accuracy"]
