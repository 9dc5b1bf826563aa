"""The defense study: its settings syntax, an end-to-end study on digits whose table is its
audits' results, a resumed study, and one-line refusals that write nothing."""

import csv
import json
import os
import subprocess
import sys

import pytest

from jaxmia import audit, defense_study
from jaxmia.errors import UserError
from tests.conftest import ROOT

SCRIPT = os.path.join(ROOT, "experiments", "defenses.py")
FAST = ["--dataset=digits", "--epochs=2", "--finetune_epochs=1", "--num_shadows=1",
        "--attacks=loss,confidence"]


def _run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=900)


def test_parse_settings():
    got = defense_study.parse_settings("none, ppb:4,adv,dp:1.5,label_smoothing:0.2")
    assert [(s.defense, s.strength, s.name) for s in got] == [
        ("none", None, "none"), ("ppb", 4.0, "ppb_4"), ("adv", None, "adv"),
        ("dp", 1.5, "dp_1.5"), ("label_smoothing", 0.2, "label_smoothing_0.2")]


def test_only_wemem_settings_keep_the_scores_and_window():
    base = audit.AuditConfig(dataset="digits", memorization_scores="README.md", wemem_width=4)
    ppb, rsw = (defense_study.audit_config(base, s, "/tmp/study")
                for s in defense_study.parse_settings("ppb,rsw"))
    assert (ppb.memorization_scores, ppb.wemem_width) == (None, audit.AuditConfig.wemem_width)
    assert (rsw.defense, rsw.memorization_scores, rsw.wemem_width) == ("rsw", "README.md", 4)
    assert rsw.workdir == "/tmp/study/rsw"
    audit.validate(ppb)  # a loss-term setting is not refused for the base's WeMem fields


def test_only_its_own_defense_keeps_a_defenses_options():
    base = audit.AuditConfig(dataset="digits", adv_target_steps="one_per_epoch",
                             relaxloss_upper=0.5)
    none, adv, relax = (defense_study.audit_config(base, s, "/tmp/study")
                        for s in defense_study.parse_settings("none,adv,relaxloss"))
    assert (adv.adv_target_steps, adv.relaxloss_upper) == ("one_per_epoch", 1.0)
    assert (relax.adv_target_steps, relax.relaxloss_upper) == ("every_batch", 0.5)
    assert (none.adv_target_steps, none.relaxloss_upper) == ("every_batch", 1.0)
    for cfg in (none, adv, relax):
        audit.validate(cfg)


@pytest.mark.parametrize("text,expect", [
    ("none,magic", "unknown defense 'magic'"), ("ppb:four", "'four' is not a number"),
    ("dp", "needs its noise multiplier"), ("none:1", "'none' takes no strength"),
    ("rmr:0.1", "'rmr' takes no strength \\(its settings are the --wemem_\\* flags"),
    ("ppb:4,ppb:4.0", "names a setting twice")])
def test_parse_settings_refuses(text, expect):
    with pytest.raises(UserError, match=expect):
        defense_study.parse_settings(text)


def test_study_on_digits_tabulates_its_audits_and_resumes(tmp_path):
    work = tmp_path / "study"
    r = _run(*FAST, "--settings=none,ppb:4", f"--workdir={work}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ppb_4" in r.stdout and f"results: {work}/study.json" in r.stdout
    with open(work / "study.csv") as f:
        table = list(csv.DictReader(f))
    assert [(t["setting"], t["attack"]) for t in table] == [
        ("none", "loss"), ("none", "confidence"), ("ppb_4", "loss"), ("ppb_4", "confidence")]
    for t in table:  # each row is its setting's own audit, attacked pruned target
        res = json.loads((work / t["setting"] / "results.json").read_text())
        assert float(t["test_acc"]) == pytest.approx(res["pruned_target_test_acc"])
        assert float(t["balanced_accuracy"]) == pytest.approx(
            res["attacks"]["pruned"][t["attack"]]["balanced_accuracy"])
        assert ("defense" in res) == (t["setting"] == "ppb_4")
    study = json.loads((work / "study.json").read_text())
    assert [s["setting"] for s in study["settings"]] == ["none", "ppb_4"]
    assert (work / "tradeoff.png").stat().st_size > 1000
    # Run again: every audit resumes from its finished checkpoints, the same table comes out.
    again = _run(*FAST, "--settings=none,ppb:4", f"--workdir={work}")
    assert again.returncode == 0, again.stderr[-2000:]
    with open(work / "study.csv") as f:
        assert list(csv.DictReader(f)) == table


@pytest.mark.parametrize("args,expect", [
    (["--settings=none,magic"], "unknown defense 'magic'"),
    # The second setting's audit refuses its strength: the first must not have run either.
    (["--settings=none,ppb:-1"], "--defense_strength must be > 0 for ppb"),
    # A defense's own flags reach its settings (and only those: 'none' is not refused).
    (["--settings=none,adv", "--adv_target_steps=sometimes"],
     "unknown --adv_target_steps 'sometimes'"),
    (["--settings=none,relaxloss", "--relaxloss_upper=2"], "--relaxloss_upper must be in (0, 1]"),
    (["--settings=none,relaxloss", "--pruning=none", "--attack_stages=unpruned",
      "--sparsity=1.5"], "sparsity"),
])
def test_bad_input_one_line_nonzero_nothing_written(tmp_path, args, expect):
    work = tmp_path / "w"
    r = _run(*FAST, *args, f"--workdir={work}")
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expect in err[0], r.stderr
    assert not work.exists()
