"""Sharding the model axis: with 8 simulated CPU devices, sharded training = one-device training."""

import json
import os
import subprocess
import sys

from tests.conftest import ROOT

SCRIPT = r'''
import json
import jax, jax.numpy as jnp, numpy as np
from jaxmia import defenses, pruning, sharding, training
from jaxmia.defenses import wemem
from jaxmia.dp import DPConfig

assert jax.device_count() == 8, jax.devices()
from tests.toys import toy_ensemble
K = 3
model, params, state, data, keys = toy_ensemble(K)
out = {}
adam = training.TrainConfig(epochs=4, batch_size=32, patience=1)
# SWMR: per-epoch windows split into two passes, each with its own optimizer state.
lists = [np.asarray(data.train_idx[k, : int(data.train_n[k])]) for k in range(K)]
swmr = wemem.make("swmr", lists, np.asarray(data.y),
                  np.asarray(jax.random.uniform(jax.random.key(5), (data.x.shape[0],))),
                  epochs=2, width=8, stride=2, threshold=0.6)
adv = defenses.REGISTRY["adv"](1.0)
two = training.dataclasses.replace(adam, epochs=2)
# IMP's --imp_continue: a fit continued from another's last state (optimizer and inference
# models), padded and sharded like the rest.
first = training.fit(model, params, state, pruning.ones_like(params), data, two, keys,
                     defense=adv, return_last=True).last
for name, (cfg, defense, schedule, start) in {
        "adam": (adam, None, None, None),
        "dp": (training.TrainConfig(epochs=3, batch_size=32, dp=DPConfig(noise_multiplier=1.0)),
               None, None, None),
        # ADV: each model's inference model is sharded with it.
        "adv": (two, adv, None, None),
        "swmr": (two, None, swmr, None),
        "adv_continued": (two, adv, None, first),
        }.items():
    p0, s0 = (params, state) if start is None else (start.params, start.model_state)
    keep = 2 if name == "adam" else None  # IMP's late rewinding keeps the params of an epoch
    ref = training.fit(model, p0, s0, pruning.ones_like(params), data, cfg, keys,
                       defense=defense, schedule=schedule, start=start, keep_epoch=keep)
    for devices in (8, 2):
        mesh = sharding.model_mesh(jax.devices()[:devices])
        got = training.fit(model, p0, s0, pruning.ones_like(params), data, cfg, keys,
                           mesh=mesh, defense=defense, schedule=schedule, start=start,
                           keep_epoch=keep)
        diff = max(float(jnp.max(jnp.abs(a - b)))
                   for a, b in zip(jax.tree.leaves((got.params, got.kept_params)),
                                   jax.tree.leaves((ref.params, ref.kept_params))))
        out[f"{name}/{devices}"] = {
            "max_abs_diff": diff, "num_models": int(jax.tree.leaves(got.params)[0].shape[0]),
            "kept": len(jax.tree.leaves(got.kept_params)) == len(jax.tree.leaves(got.params)),
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
        assert res["kept"] == key.startswith("adam/"), (key, res)


PER_DEVICE_SCRIPT = r'''
import json
import jax, jax.numpy as jnp, numpy as np
from jaxmia import features, pruning, sharding, training

from tests.toys import toy_ensemble
K = 3
model, params, state, data, keys = toy_ensemble(K)
mesh = sharding.model_mesh()
ones = pruning.ones_like(params)
out = {}

def diff(a, b):
    return max(float(jnp.max(jnp.abs(u - v))) for u, v in zip(jax.tree.leaves(a),
                                                                jax.tree.leaves(b)))

# The stepwise mode (models unrolled inside one call) split by device with shard_map.
cfg = training.TrainConfig(epochs=3, batch_size=32, patience=1, ensemble_mode="stepwise")
ref = training.fit(model, params, state, ones, data, cfg, keys)
got = training.fit(model, params, state, ones, data, cfg, keys, mesh=mesh,
                   metrics_path="metrics.jsonl")
out["stepwise_fit"] = diff(got.params, ref.params)
out["metrics_models"] = [len(json.loads(l)["dev/acc"]) for l in open("metrics.jsonl")]
idx = jnp.asarray(np.stack([np.arange(100) + 20 * k for k in range(K)]))
for mode in ("fused", "stepwise"):
    a = training.predict_logits(model, ref.params, ref.model_state, ones, data.x, idx, 32, mode)
    b = training.predict_logits(model, ref.params, ref.model_state, ones, data.x, idx, 32, mode,
                                mesh=mesh)
    out[f"logits_{mode}"] = [list(b.shape), diff(a, b)]
    a, b = (features.ensemble_sensitivity(model, ref.params, ref.model_state, ones, data.x, idx,
                                          jax.random.key(1), mode=mode, chunk=40, mesh=m)
            for m in (None, mesh))
    out[f"sensitivity_{mode}"] = [list(b.shape), diff(a, b)]
# Each device computes its own models: the compiled program communicates nothing.
fn = training._predict_fn(model, "stepwise", 32, mesh, None)
args = [sharding.shard_models(sharding.pad(t, K, 8), mesh)
        for t in (ref.params, ref.model_state, ones, idx[:, :32])]
text = fn.lower(*args, sharding.replicate(data.x, mesh)).compile().as_text()
out["collectives"] = [c for c in ("all-gather", "all-reduce", "collective-permute", "all-to-all")
                      if c in text]
print(json.dumps(out))
'''


def test_per_device_programs_equal_single_device(tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "PYTHONPATH": ROOT}
    r = subprocess.run([sys.executable, "-c", PER_DEVICE_SCRIPT], capture_output=True, text=True,
                       cwd=tmp_path, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["stepwise_fit"] < 1e-5, out
    assert out["metrics_models"] == [3, 3, 3], out  # padding models are not reported
    for mode in ("fused", "stepwise"):
        assert out[f"logits_{mode}"][0] == [3, 100, 4] and out[f"logits_{mode}"][1] < 1e-5, out
        assert out[f"sensitivity_{mode}"][0] == [3, 100, 4], out
        assert out[f"sensitivity_{mode}"][1] < 1e-3, out
    assert out["collectives"] == [], out


def test_audit_uses_every_device_with_the_same_results(tmp_path):
    """One device vs 8 CPU devices (--cpu_devices), the models given as --num_models."""
    common = ["--epochs=2", "--attacks=loss,confidence"]
    runs = {}
    for devices, extra in ((1, ["--num_shadows=2"]),
                           (8, ["--num_models=3", "--cpu_devices=8"])):
        work = tmp_path / f"d{devices}"
        r = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "audit.py"),
                            f"--workdir={work}", *common, *extra], capture_output=True,
                           text=True, cwd=ROOT, timeout=900)
        assert r.returncode == 0, r.stderr[-2000:]
        runs[devices] = json.loads((work / "results.json").read_text())
    assert runs[8]["jax"]["devices"] == 8 and runs[1]["jax"]["devices"] == 1
    assert runs[8]["num_shadows"] == runs[1]["num_shadows"] == 2
    assert runs[8]["attacks"] == runs[1]["attacks"]
    assert runs[8]["accuracy"] == runs[1]["accuracy"]
