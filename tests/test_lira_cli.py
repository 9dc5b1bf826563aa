"""End to end: experiments/lira.py on digits, its outputs, and one-line errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, require_minilm
from tests.toys import write_toy_sst2

SCRIPT = os.path.join(ROOT, "experiments", "lira.py")


def _run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=900)


def test_lira_study_on_digits(tmp_path):
    work = tmp_path / "lira"
    r = _run("--dataset=digits", "--num_models=4", "--epochs=2", "--num_targets=2",
             f"--workdir={work}")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((work / "results.json").read_text())
    assert res["num_models"] == 4 and res["targets"] == 2
    assert res["queries_per_example"] == 18  # digits are 8x8 images: mirror x 3 x 3 shifts
    config = json.loads((work / "config.json").read_text())["config"]
    assert config["batch_size"] == 128 and config["finetune_epochs"] == 15  # not text's
    assert set(res["attacks"]) == {"lira_online", "lira_online_fixed_var", "lira_offline",
                                   "lira_offline_fixed_var", "rmia_online", "rmia_offline",
                                   "loss_threshold"}
    for r_ in res["attacks"].values():
        for k in ("auc", "tpr@1%fpr", "tpr@0.1%fpr", "tpr@0%fpr", "balanced_accuracy"):
            assert 0 <= r_["mean_over_targets"][k] <= 1
        assert len(r_["pooled"]["tpr@0.1%fpr_ci95"]) == 2
    mem = np.load(work / "memorization.npz")
    assert mem["memorization"].shape == (res["pool_size"],)
    assert np.all(mem["num_in"] == 2) and np.all(mem["num_out"] == 2)
    scores = np.load(work / "scores.npz")
    # Two targets: every pool row scored twice, half of them members each time.
    assert scores["lira_online/scores"].shape == (2 * res["pool_size"],)
    in_mask = scores["in_mask"]
    assert scores["lira_online/is_member"].sum() == in_mask[0].sum() + in_mask[1].sum()
    assert in_mask.sum(0).tolist() == [2] * res["pool_size"]
    assert (work / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    other = _run("--dataset=digits", "--num_models=6", "--epochs=2", f"--workdir={work}")
    assert other.returncode == 2 and "holds another study" in other.stderr


def test_lira_study_on_text(tmp_path):
    """SST-2-format files the test writes, BERT-Tiny: one query per row (text has no image
    augmentations), the pool drawn by --pool_size, the default lr the from-scratch one."""
    require_minilm()
    data_dir = write_toy_sst2(tmp_path / "data")
    work = tmp_path / "lira"
    r = _run("--dataset=sst2", f"--data_dir={data_dir}", "--model=bert_tiny", "--num_models=4",
             "--epochs=3", "--num_targets=1", "--pool_size=120", f"--workdir={work}")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((work / "results.json").read_text())
    assert res["queries_per_example"] == 1
    assert res["pool_size"] + res["population_size"] == 120
    config = json.loads((work / "config.json").read_text())["config"]
    assert config["lr"] == 1e-3 and config["model"] == "bert_tiny"
    assert config["batch_size"] == 32 and config["finetune_epochs"] == 2  # the text defaults
    mem = np.load(work / "memorization.npz")
    assert mem["memorization"].shape == (res["pool_size"],)
    assert np.all(mem["num_in"] + mem["num_out"] == 4)


@pytest.mark.parametrize("args,expect", [
    (["--num_models=2"], "--num_models must be >= 4"),
    (["--dataset=sst2", "--model=mlp"], "sst2 is text (token ids); model 'mlp' cannot read it"),
    (["--pool_size=7"], "--pool_size must be >= 2 x --num_models = 32"),
    (["--population_fraction=0.5"], "--population_fraction must be in [0, 0.5)"),
    (["--dataset=mnist"], "unknown dataset 'mnist'"),
    (["--seed=-1"], "--seed must be an integer in [0, 2**32), got -1"),
    (["--lr=-1"], "--lr must be a finite number > 0, got -1.0"),
    (["--weight_decay=nan"], "--weight_decay must be a finite number >= 0, got nan"),
    (["--pruning=l1_unstructured", "--finetune_epochs=-1"], "--finetune_epochs must be >= 0"),
    (["--rmia_gamma=0"], "--rmia_gamma (RMIA's pairwise threshold) must be a finite number > 0"),
    (["--rmia_offline_a=2"], "--rmia_offline_a (RMIA's offline approximation) must be in [0, 1]"),
    (["--norm=bogus"], "unknown norm layer 'bogus'"),
    (["--pruning=magic"], "unknown pruning method 'magic'"),
    (["--dataset=digits", "--pruning=slim"], "network slimming needs BatchNorm, and model 'mlp'"),
    (["--dataset=digits", "--pruning=l2_structured"],
     "l2_structured removes conv filters, and model 'mlp' has no"),
    (["--query_shift=3"], "--query_shift must be >= 0 and a multiple of --query_stride"),
])
def test_lira_bad_input(tmp_path, args, expect):
    r = _run(*args, f"--workdir={tmp_path / 'w'}")
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and expect in err[0], r.stderr
    assert not (tmp_path / "w").exists()


def test_scores_for_every_row_feed_wemem_schedules(tmp_path):
    """--population_fraction=0: every row gets a memorization score (RMIA, which needs
    population rows, is left out), and the audit's WeMem schedule takes the file."""
    work = tmp_path / "lira"
    r = _run("--dataset=digits", "--num_models=4", "--epochs=1", "--num_targets=1",
             "--population_fraction=0", f"--workdir={work}")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((work / "results.json").read_text())
    assert res["population_size"] == 0 and not any(a.startswith("rmia") for a in res["attacks"])
    mem = np.load(work / "memorization.npz")
    assert str(mem["dataset"]) == "digits" and int(mem["num_rows"]) == res["pool_size"]
    assert sorted(mem["row"].tolist()) == list(range(res["pool_size"]))
    audit = subprocess.run(
        [sys.executable, os.path.join(ROOT, "experiments", "audit.py"), "--epochs=1",
         "--finetune_epochs=1", "--num_shadows=1", "--attacks=loss", "--defense=swmr",
         f"--memorization_scores={work / 'memorization.npz'}", "--wemem_threshold=0.5",
         f"--workdir={tmp_path / 'audit'}"], capture_output=True, text=True, cwd=ROOT,
        timeout=900)
    assert audit.returncode == 0, audit.stderr[-2000:]
    d = json.loads((tmp_path / "audit" / "results.json").read_text())["defense"]
    assert d["name"] == "swmr" and d["order"] == "high_first"
