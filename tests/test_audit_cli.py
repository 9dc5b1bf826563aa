"""End to end: the audit CLI on digits, its outputs, resume, and one-line errors on bad input."""

import fcntl
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxmia import attacks, io
from tests.conftest import ROOT, require_minilm
from tests.toys import write_toy_sst2, write_toy_wordnet

SCRIPT = os.path.join(ROOT, "experiments", "audit.py")
FAST = ["--epochs=3", "--num_shadows=2", "--patience=5", "--attack_epochs=2",
        "--label_only_examples=40", "--blindmi_reference=40", "--sensitivity_samples=3"]


def _run(*args, env=None):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, timeout=900)


def test_audit_on_digits_end_to_end(tmp_path):
    work = tmp_path / "run"
    r = _run(f"--workdir={work}", *FAST)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((work / "results.json").read_text())
    for key in ("dataset", "model", "pruning", "sparsity", "seed", "target_train_acc",
                "target_test_acc", "pruned_target_train_acc", "pruned_target_test_acc"):
        assert key in res
    assert res["dataset"] == "digits" and res["model"] == "mlp" and res["seed"] == 7
    assert res["target_train_acc"] > 0.5  # 3 epochs on digits already learn (chance: 0.1)
    assert abs(res["achieved_sparsity"]["target_overall"] - 0.7) < 1e-3
    for stage in ("unpruned", "pruned"):
        # Digits are images: every attack runs, label-only ones included.
        assert list(res["attacks"][stage]) == list(attacks.ALL)
        for m in res["attacks"][stage].values():
            assert 0 <= m["balanced_accuracy"] <= 1 and 0 <= m["auc"] <= 1
            for k in ("tpr@1%fpr", "tpr@0.1%fpr", "tpr@0%fpr", "auc_ci95"):
                assert k in m
        assert res["attacks"][stage]["label_aug"]["num_examples"] == 80
        g = res["gaps"][stage]
        for k in ("generalization_gap", "confidence_gap", "sensitivity_gap", "js_divergence"):
            assert isinstance(g[k], float)
        assert len(g["per_class"]["confidence_gap"]) == 10
    splits = json.loads((work / "splits.json").read_text())
    assert len(splits["shadows"]) == 2
    assert not set(splits["target"]["train"]) & set(splits["target"]["test"])
    scores = np.load(work / "scores.npz")
    assert scores["pruned/is_member"].sum() == len(splits["target"]["train"])
    lines = (work / "metrics.jsonl").read_text().splitlines()
    assert {json.loads(l)["stage"] for l in lines} == {"pretrain", "finetune"}
    assert "confidence" in r.stdout and "results:" in r.stdout
    for png in ("roc_unpruned", "roc_pruned", "histograms", "per_class"):
        assert (work / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Same settings again: resumes from the checkpoints (no epoch retrained), same results.
    again = _run(f"--workdir={work}", *FAST)
    assert again.returncode == 0, again.stderr[-2000:]
    assert len((work / "metrics.jsonl").read_text().splitlines()) == len(lines)
    res2 = json.loads((work / "results.json").read_text())
    assert res2["attacks"] == res["attacks"]

    # Another run's settings in the same workdir: refused, nothing changed.
    other = _run(f"--workdir={work}", "--epochs=3", "--num_shadows=2", "--sparsity=0.5")
    assert other.returncode == 2
    assert other.stderr.strip().splitlines()[-1].startswith("error: workdir")
    assert "sparsity" in other.stderr
    assert json.loads((work / "results.json").read_text()) == res2


@pytest.mark.parametrize("args,expect", [
    (["--dataset=mnist"], "unknown dataset 'mnist'"),
    (["--model=resnet50"], "unknown model 'resnet50'"),
    (["--sparsity=1.5"], "sparsity must be in [0, 1), got 1.5"),
    (["--pruning=magic"], "unknown pruning method 'magic'"),
    (["--dataset=location", "--data_dir=/nonexistent"], "dataset_location.tgz not found"),
    (["--num_shadows=0"], "--num_shadows must be >= 1"),
    (["--num_models=1"], "--num_models must be >= 2"),
    (["--num_models=4", "--num_shadows=2"], "--num_models must be >= 2"),
    (["--pruning=slim"], "network slimming needs BatchNorm"),
    (["--pruning=l1_structured"], "l1_structured removes conv filters, and model 'mlp' has no "
                                  "conv layer; use l1_unstructured"),
    (["--shadow_pruning=l2_structured"], "l2_structured removes conv filters"),
    (["--pruning=imp", "--imp_method=l1_structured"], "l1_structured removes conv filters"),
    (["--attacks=lira"], "unknown attack 'lira'"),
    (["--dataset=location", "--attacks=label_aug"], "need an image or text dataset"),
    (["--attacks=label_synonym"], "label_synonym replace words of a text; digits is not a text"),
    (["--dataset=sst2", "--attacks=loss,label_synonym", "--wordnet_dir=/nonexistent"],
     "WordNet: data.noun is not in /nonexistent; install Debian's wordnet-base"),
    (["--attacks=samia", "--sensitivity_samples=0"], "need the sensitivity feature"),
    (["--shadow_pruning=magic"], "unknown --shadow_pruning 'magic'"),
    (["--defense=dp"], "needs exactly one of --noise_multiplier or --target_epsilon"),
    (["--defense=dp", "--noise_multiplier=1", "--delta=2"], "--delta must be in (0, 1)"),
    (["--defense=dp", "--noise_multiplier=1", "--dp_clipping=magic"], "unknown --dp_clipping"),
    (["--defense=dp", "--noise_multiplier=1", "--model=resnet20"], "with --norm=group (GroupNorm)"),
    (["--noise_multiplier=1"], "need --defense=dp"),
    (["--defense=magic"], "unknown --defense 'magic'"),
    (["--defense=ppb", "--pruning=none"], "with --defense_stages=finetune is applied while"),
    (["--defense=ppb", "--finetune_epochs=0"], "needs a --pruning method and --finetune_epochs"),
    (["--defense=relaxloss", "--pruning=none", "--defense_stages=finetune"],
     "--defense=relaxloss with --defense_stages=finetune"),
    (["--defense=ppb", "--defense_strength=-1"], "--defense_strength must be > 0 for ppb"),
    (["--defense=relaxloss", "--defense_strength=0"], "RelaxLoss's alpha, a target loss level"),
    (["--defense=relaxloss", "--relaxloss_upper=1.5"], "--relaxloss_upper must be in (0, 1]"),
    (["--defense=label_smoothing", "--defense_strength=1"], "epsilon) must be in (0, 1)"),
    (["--defense=ppb", "--defense_stages=late"], "unknown --defense_stages 'late'"),
    (["--defense_strength=2"], "--defense_strength sets a loss-term defense (ppb, adv, relaxl"),
    (["--defense=dp", "--noise_multiplier=1", "--defense_stages=all"],
     "--defense_stages sets a loss-term defense"),
    (["--relaxloss_upper=0.3"], "--relaxloss_upper sets --defense=relaxloss"),
    (["--relaxloss_variant=image"], "--relaxloss_variant sets --defense=relaxloss"),
    (["--defense=relaxloss", "--relaxloss_variant=cifar"], "unknown --relaxloss_variant 'cifar'"),
    (["--seed=-1"], "--seed must be an integer in [0, 2**32), got -1"),
    (["--lr=inf"], "--lr must be a finite number > 0, got inf"),
    (["--weight_decay=nan"], "--weight_decay must be a finite number >= 0, got nan"),
    (["--slim_l1=-1"], "--slim_l1 must be a finite number >= 0, got -1.0"),
    (["--defense=dp", "--noise_multiplier=1", "--physical_batch=0"],
     "--physical_batch must be >= 1, got 0"),
    (["--imp_continue"], "--imp_continue sets the rounds of --pruning=imp"),
    (["--pruning=imp", "--imp_continue", "--imp_rewind"], "--imp_rewind resets them"),
    (["--imp_rewind_epoch=2"], "--imp_rewind_epoch sets where --imp_rewind goes back to"),
    (["--pruning=imp", "--imp_rewind", "--epochs=3", "--imp_rewind_epoch=4"],
     "--imp_rewind_epoch must be in [0, --epochs=3]"),
    (["--pruning=imp", "--imp_rewind", "--imp_rewind_epoch=-1"],
     "--imp_rewind_epoch must be in [0, --epochs=50]"),
    (["--adv_target_steps=one_per_epoch"], "--adv_target_steps sets --defense=adv"),
    (["--defense=adv", "--adv_target_steps=daily"], "unknown --adv_target_steps 'daily'"),
    (["--defense=dp", "--noise_multiplier=1", "--nodefense_shadows"],
     "--nodefense_shadows leaves the shadows without a loss-term defense"),
    (["--defense=rsw"], "ranks rows by memorization: pass --memorization_scores="),
    (["--defense=rmr", "--memorization_scores=/nonexistent.npz"], "does not exist"),
    (["--defense=rmr", "--memorization_scores=README.md"], "cannot read memorization scores"),
    (["--defense=rmr", "--memorization_scores=README.md", "--wemem_order=low_first"],
     "--wemem_order sets RSW's and SWMR's windows"),
    (["--defense=rsw", "--memorization_scores=README.md", "--wemem_order=up"],
     "unknown --wemem_order 'up'"),
    (["--defense=rsw", "--memorization_scores=README.md", "--wemem_width=0"],
     "--wemem_width must be >= 1"),
    (["--defense=swmr", "--memorization_scores=README.md", "--pruning=none"],
     "--defense=swmr with --defense_stages=finetune"),
    (["--wemem_width=5"], "--wemem_width sets WeMem's schedules"),
    (["--attack_stages=final"], "--attack_stages must name one or both of unpruned, pruned"),
    (["--dataset=sst2", "--model=mlp"], "sst2 is text (token ids); model 'mlp' cannot read it"),
    (["--dataset=location", "--model=bert_tiny"], "model 'bert_tiny' reads token ids"),
    (["--dataset=sst2", "--norm=group"], "model 'minilm' has BERT's LayerNorms and takes no"),
    (["--dataset=sst2", "--data_dir=/nonexistent"], "sst2: train.tsv not found"),
    (["--pool_size=10"], "--pool_size must be >= 40 rows"),
    (["--pool_size=5000"], "--pool_size=5000 exceeds digits's 1797 rows"),
    (["--defense=rmr", "--memorization_scores=README.md", "--pool_size=100"],
     "ranks the rows experiments/lira.py scored over the whole pool; drop --pool_size"),
    (["--attack_stages=unpruned", "--shadow_sparsity=0.5"], "add 'pruned' to --attack_stages"),
])
def test_bad_input_one_line_nonzero_nothing_written(tmp_path, args, expect):
    work = tmp_path / "w"
    r = _run(f"--workdir={work}", *args)
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expect in err[0], r.stderr
    assert not work.exists()


def test_audit_on_text_end_to_end(tmp_path):
    """GLUE-format SST-2 files the test writes (the sentiment is one word), BERT-Tiny: every
    attack runs, the sensitivity attacks on noise in the word embeddings and the label-only ones
    (asked for by name: 'all' leaves them out on text) on edits of the token ids, synonyms from
    a WordNet the test writes included."""
    require_minilm()
    data_dir = write_toy_sst2(tmp_path / "data")
    wordnet_dir = write_toy_wordnet(tmp_path / "wordnet", {
        "noun": [["film", "movie", "motion_picture"], ["story", "narrative"]],
        "adj": [["great", "outstanding", "bang-up"], ["awful", "dreadful", "terrible"]]})
    work = tmp_path / "run"
    r = _run(f"--workdir={work}", "--dataset=sst2", f"--data_dir={data_dir}",
             "--model=bert_tiny", "--pool_size=160", "--epochs=12", "--num_shadows=1",
             "--attack_epochs=2", "--blindmi_reference=40",
             "--attacks=all,label_aug,label_noise,label_boundary,label_synonym",
             "--label_only_examples=20", f"--wordnet_dir={wordnet_dir}")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((work / "results.json").read_text())
    assert res["dataset"] == "sst2" and res["model"] == "bert_tiny"
    expected = [a for a in attacks.ALL if a not in attacks.LABEL_ONLY] + list(attacks.LABEL_ONLY)
    for stage in ("unpruned", "pruned"):
        assert list(res["attacks"][stage]) == expected
        for a in attacks.LABEL_ONLY:
            assert res["attacks"][stage][a]["num_examples"] == 40  # 20 per split
        for a in attacks.NEEDS_SENSITIVITY:
            assert 0 <= res["attacks"][stage][a]["auc"] <= 1
        assert np.isfinite(res["gaps"][stage]["sensitivity_gap"])
    assert res["sensitivity"] == {"samples": 5, "epsilon": 1e-3, "noise": "fast"}
    config = json.loads((work / "config.json").read_text())["config"]
    assert config["lr"] == 1e-3 and config["batch_size"] == 32 and config["pool_size"] == 160
    splits = json.loads((work / "splits.json").read_text())
    rows_used = set(splits["target"]["train"]) | set(splits["target"]["test"]) | set(
        splits["target"]["dev"]) | {i for s in splits["shadows"] for v in s.values() for i in v}
    assert max(rows_used) < 160  # indices into the 160-row pool
    # The one word is easy: the models separate the classes within 12 epochs (by epoch 5 here).
    assert res["target_test_acc"] > 0.7, res["target_test_acc"]


def test_corrupt_wordnet_is_refused_before_training(tmp_path):
    folder = write_toy_wordnet(tmp_path / "wordnet", {"adj": [["great", "outstanding"]]})
    with open(os.path.join(folder, "data.adj"), "a") as f:
        f.write("00009999 00 a 01\n")
    r = _run(f"--workdir={tmp_path / 'w'}", "--dataset=sst2", "--attacks=label_synonym",
             f"--wordnet_dir={folder}")
    assert r.returncode == 2 and "WordNet: data.adj line 4 is not a synset line" in r.stderr
    assert not (tmp_path / "w").exists()


def test_corrupt_data_file_is_one_line(tmp_path):
    bad = tmp_path / "data" / "location"
    bad.mkdir(parents=True)
    (bad / "dataset_location.tgz").write_bytes(b"\x1f\x8b garbage")
    r = _run(f"--workdir={tmp_path / 'w'}", "--dataset=location", f"--data_dir={tmp_path / 'data'}")
    assert r.returncode == 2 and "not a readable .tgz" in r.stderr
    assert not (tmp_path / "w").exists()


def test_foreign_checkpoint_without_config_is_refused(tmp_path):
    work = tmp_path / "w"
    (work / "ckpt" / "pretrain").mkdir(parents=True)
    r = _run(f"--workdir={work}", *FAST)
    assert r.returncode == 2 and "holds a checkpoint but no config.json" in r.stderr
    assert sorted(os.listdir(work)) == ["ckpt"]


def test_workdir_in_use_by_another_run_is_refused(tmp_path):
    # This test process plays the running audit: it holds the workdir's lock, as a run does.
    work = tmp_path / "w"
    work.mkdir()
    with open(work / io.LOCK_NAME, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        r = _run(f"--workdir={work}", *FAST)
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and f"workdir {work} is in use by another run" in err[0], r.stderr
    assert sorted(os.listdir(work)) == [io.LOCK_NAME]  # nothing written


def test_unknown_pruning_knowledge_reports_the_attack_accuracy_loss(tmp_path):
    work = tmp_path / "u"
    r = _run(f"--workdir={work}", "--epochs=3", "--num_shadows=2", "--attacks=threshold",
             "--shadow_pruning=l1_unstructured_global", "--shadow_sparsity=0.5")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((work / "results.json").read_text())
    u = res["unknown_pruning_knowledge"]
    assert u["shadow_sparsity"] == 0.5 and u["shadow_pruning"] == "l1_unstructured_global"
    known, unknown = res["attacks"]["pruned"], res["attacks"]["pruned_unknown_knowledge"]
    for a, loss in u["attack_accuracy_loss"].items():
        k, x = known[a]["balanced_accuracy"], unknown[a]["balanced_accuracy"]
        assert loss == pytest.approx((k - x) / k)
    # The target is the same model in both stages: only the shadows differ.
    assert res["accuracy"]["pruned"]["target_test_acc"] == \
        res["accuracy"]["pruned_unknown_knowledge"]["target_test_acc"]
    assert "unknown pruning knowledge" in r.stdout


def test_dp_audit_reports_epsilon_and_calibrates_to_a_target(tmp_path):
    work = tmp_path / "dp"
    r = _run(f"--workdir={work}", "--epochs=3", "--num_shadows=1", "--attacks=threshold",
             "--defense=dp", "--target_epsilon=4", "--delta=1e-4")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((work / "results.json").read_text())
    d = res["dp"]
    for key in ("epsilon", "delta", "noise_multiplier", "sampling_rate", "steps", "clip_norm",
                "accountant"):
        assert key in d
    assert d["accountant"] == "dp_accounting rdp" and d["delta"] == 1e-4
    # digits: target train 797 rows, batch 128 -> q = 128 / 797; at most 3 + 1 epochs of
    # ceil(n_max / 128) steps; the calibrated sigma spends at most epsilon = 4 over those.
    assert d["sampling_rate"] == pytest.approx(128 / res["split_sizes"]["target_train"])
    assert 0 < d["epsilon"] <= 4 * 1.001
    assert d["epsilon_unpruned"] < d["epsilon"]
    assert d["steps"]["pretrain"] > 0 and d["steps"]["finetune"] > 0
    from jaxmia import accounting
    assert d["epsilon"] == pytest.approx(accounting.epsilon(
        d["noise_multiplier"], [(d["sampling_rate"], sum(d["steps"].values()))], 1e-4))
    assert "DP-SGD" in r.stdout and "epsilon" in r.stdout


def test_dp_finetune_only_is_the_pruning_papers_baseline(tmp_path):
    work = tmp_path / "dpft"
    r = _run(f"--workdir={work}", "--epochs=2", "--num_shadows=1", "--attacks=loss",
             "--defense=dp", "--noise_multiplier=1.0", "--dp_stages=finetune",
             "--dp_clipping=microbatch", "--accountant=pld")
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.loads((work / "results.json").read_text())["dp"]
    assert d["steps"]["pretrain"] == 0 and d["steps"]["finetune"] > 0
    assert d["epsilon_unpruned"] is None and "not differentially private" in d["covers"]
    # mia_prune's micro-batch clipping doubles the sensitivity: accounted as sigma / 2.
    assert d["sensitivity_factor"] == 2.0 and d["accountant"] == "dp_accounting pld"
    from jaxmia import accounting
    assert d["epsilon"] == pytest.approx(accounting.epsilon(
        0.5, [(d["sampling_rate"], d["steps"]["finetune"])], d["delta"], "pld"))


DEFENSE_RUN = ["--epochs=2", "--finetune_epochs=1", "--num_shadows=2", "--attacks=loss"]


@pytest.fixture(scope="module")
def undefended(tmp_path_factory):
    """The workdir of a short audit without a defense, which the defended runs compare with."""
    work = tmp_path_factory.mktemp("undefended") / "run"
    r = _run(f"--workdir={work}", *DEFENSE_RUN)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "defense" not in json.loads((work / "results.json").read_text())
    return work


def _defended(tmp_path, *args):
    work = tmp_path / "defended"
    r = _run(f"--workdir={work}", *DEFENSE_RUN, *args)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout, work, json.loads((work / "results.json").read_text())["defense"]


def _stage_lines(work, stage):
    lines = (work / "metrics.jsonl").read_text().splitlines()
    return [line for line in lines if json.loads(line)["stage"] == stage]


def _first_loss(work, stage):
    """Each model's ``train/loss`` in the first epoch of ``stage``."""
    return json.loads(_stage_lines(work, stage)[0])["train/loss"]


def test_ppb_defends_the_fine_tuning_of_target_and_shadows(tmp_path, undefended):
    out, work, d = _defended(tmp_path, "--defense=ppb", "--defense_strength=8")
    assert d == {"name": "ppb", "strength": 8.0, "stages": ["finetune"],
                 "models": "target and shadows"}
    assert "defense ppb (strength 8) while finetune" in out
    # The same pretraining; the fine-tuning loss of every model now carries the PPB term.
    assert _stage_lines(work, "pretrain") == _stage_lines(undefended, "pretrain")
    assert all(a > b for a, b in zip(_first_loss(work, "finetune"),
                                     _first_loss(undefended, "finetune")))


def test_a_non_adaptive_defense_leaves_the_shadows_alone(tmp_path, undefended):
    _, work, d = _defended(tmp_path, "--defense=ppb", "--nodefense_shadows")
    assert d["models"] == "target only (shadows undefended)"
    # Model 0 (the target) carries the PPB term; the shadows train exactly as without it.
    defended, plain = _first_loss(work, "finetune"), _first_loss(undefended, "finetune")
    assert defended[0] > plain[0] and defended[1:] == plain[1:]


def test_adv_defends_the_fine_tuning_with_an_inference_model(tmp_path, undefended):
    out, work, d = _defended(tmp_path, "--defense=adv")
    # A step per batch of the target's training rows in its one fine-tuning epoch.
    rows = len(json.loads((work / "splits.json").read_text())["target"]["train"])
    batch = json.loads((work / "config.json").read_text())["config"]["batch_size"]
    assert d == {"name": "adv", "strength": 1.0, "stages": ["finetune"],
                 "models": "target and shadows", "target_steps": "every_batch",
                 "target_steps_taken": {"finetune": -(-rows // batch)}}
    assert -(-rows // batch) > 1
    assert "defense adv (strength 1) while finetune" in out
    # The same pretraining, then CE - theta * the inference model's member loss (about ln 2
    # at first): below the plain fine-tuning's CE for every model.
    assert all(a < b - 0.3 for a, b in zip(_first_loss(work, "finetune"),
                                           _first_loss(undefended, "finetune")))


def test_adv_as_the_released_code_runs_it_takes_one_target_step_an_epoch(tmp_path,
                                                                          undefended):
    out, work, d = _defended(tmp_path, "--defense=adv", "--adv_target_steps=one_per_epoch",
                             "--nodefense_shadows")
    assert d["target_steps"] == "one_per_epoch" and d["target_steps_taken"] == {"finetune": 1}
    assert "defense adv (strength 1), one target step an epoch while finetune" in out
    # The target's fine-tuning epoch is one batch; the undefended shadows fine-tune as without
    # the defense.
    line = json.loads(_stage_lines(work, "finetune")[0])
    plain = json.loads(_stage_lines(undefended, "finetune")[0])
    assert line["train/loss"][1:] == plain["train/loss"][1:]
    assert line["train/loss"][0] != plain["train/loss"][0]


def test_relaxloss_trains_target_and_shadows_from_scratch(tmp_path, undefended):
    # RelaxLoss is a training-from-scratch defense: it defends pretraining and fine-tuning. A
    # target loss level above the first epoch's loss makes epoch 0 a gradient *ascent*: the
    # models' loss rises where plain training's falls.
    out, work, d = _defended(tmp_path, "--defense=relaxloss", "--defense_strength=5",
                             "--relaxloss_upper=0.5")
    assert d == {"name": "relaxloss", "strength": 5.0, "stages": ["pretrain", "finetune"],
                 "models": "target and shadows", "upper": 0.5, "variant": "tabular"}
    assert "defense relaxloss (strength 5) while pretrain and finetune" in out
    # train/loss logs the objective: |L - 5| in epoch 0, so L = 5 - logged (L < 5 here).
    relax = [5 - v for v in _first_loss(work, "pretrain")]
    assert all(a > b for a, b in zip(relax, _first_loss(undefended, "pretrain")))


def test_imp_rounds_fresh_continued_or_rewound(tmp_path):
    # Two IMP rounds to 0.7; with --imp_continue the second round starts from the first one's
    # last epoch and optimizer, so the first round is the same and the second is not. Rewinding
    # to the initialization or to pretraining epoch 1 starts even the first round elsewhere,
    # and keeping epoch 1's weights leaves the pretraining as it was.
    runs = {}
    for name, extra in (("fresh", []), ("continued", ["--imp_continue"]),
                        ("rewound", ["--imp_rewind"]),
                        ("rewound1", ["--imp_rewind", "--imp_rewind_epoch=1"])):
        work = tmp_path / name
        r = _run(f"--workdir={work}", "--epochs=2", "--finetune_epochs=2", "--num_shadows=2",
                 "--attacks=loss", "--pruning=imp", "--imp_rounds=2", "--patience=5", *extra)
        assert r.returncode == 0, r.stderr[-2000:]
        res = json.loads((work / "results.json").read_text())
        assert abs(res["achieved_sparsity"]["target_overall"] - 0.7) < 0.01
        assert json.loads((work / "config.json").read_text())["config"]["imp_continue"] == (
            name == "continued")
        assert res["imp"] == {"rounds": 2, "method": "l1_unstructured",
                              "rounds_start_from": {"fresh": "best_model",
                                                    "continued": "last_epoch"}.get(name, "rewind"),
                              "rewind_epoch": {"rewound": 0, "rewound1": 1}.get(name)}
        how = {"continued": " continued", "rewound": " rewound to epoch 0",
               "rewound1": " rewound to epoch 1"}.get(name, "")
        assert f"@ 0.7, 2 rounds{how} (achieved" in r.stdout
        runs[name] = work
    assert len(_stage_lines(runs["fresh"], "imp_round1")) == 2
    assert _stage_lines(runs["fresh"], "imp_round0") == _stage_lines(runs["continued"],
                                                                     "imp_round0")
    assert _stage_lines(runs["fresh"], "imp_round1") != _stage_lines(runs["continued"],
                                                                     "imp_round1")
    assert json.loads((runs["rewound1"] / "config.json").read_text())["config"][
        "imp_rewind_epoch"] == 1
    assert _stage_lines(runs["rewound1"], "pretrain") == _stage_lines(runs["fresh"], "pretrain")
    first = [_stage_lines(runs[name], "imp_round0") for name in ("fresh", "rewound", "rewound1")]
    assert first[0] != first[1] != first[2] != first[0]


def test_attack_stages_pruned_attacks_only_the_pruned_target(tmp_path):
    # The pruning paper's protocol: only the released (pruned) model is attacked.
    work = tmp_path / "run"
    r = _run(f"--workdir={work}", *FAST, "--attacks=threshold,nn", "--attack_stages=pruned")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((work / "results.json").read_text())
    assert list(res["attacks"]) == ["pruned"] and res["attack_stages"] == ["pruned"]
    assert set(res["attacks"]["pruned"]) == set(attacks.THRESHOLD) | {"nn"}
    assert "target_train_acc" not in res and 0 < res["pruned_target_test_acc"] <= 1
    assert list(res["attack_timing_s"]) == ["pruned"]
    assert "bal.acc (pruned)" in r.stdout and "bal.acc (unpruned)" not in r.stdout
    assert not (work / "roc_unpruned.png").exists()
    for png in ("roc_pruned", "histograms", "per_class"):
        assert (work / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def digits_scores(tmp_path_factory):
    """A memorization.npz as experiments/lira.py writes it, for every digits row."""
    from jaxmia import data
    n = len(data.load("digits"))
    path = tmp_path_factory.mktemp("mem") / "memorization.npz"
    rng = np.random.default_rng(0)
    io.write_npz(str(path), row=np.arange(n), memorization=rng.uniform(-1, 1, n),
                 num_in=np.full(n, 8), num_out=np.full(n, 8), dataset=np.asarray("digits"),
                 num_rows=np.asarray(n))
    return path


def test_rmr_trains_the_risky_rows_with_their_own_optimizer(tmp_path, undefended,
                                                            digits_scores):
    out, work, d = _defended(tmp_path, "--defense=rmr", f"--memorization_scores={digits_scores}",
                             "--wemem_threshold=0.5")
    splits = json.loads((work / "splits.json").read_text())
    scores = np.load(digits_scores)["memorization"]
    assert d == {"name": "rmr", "strength": None, "stages": ["finetune"],
                 "models": "target and shadows",
                 "memorization_scores": str(digits_scores),
                 "target_mean_memorization": pytest.approx(
                     float(scores[splits["target"]["train"]].mean())),
                 "threshold": 0.5, "weight_decay": 0.1,
                 "target_risky_rows": int((scores[splits["target"]["train"]] >= 0.5).sum())}
    assert "defense rmr while finetune, target and shadows" in out
    assert _stage_lines(work, "pretrain") == _stage_lines(undefended, "pretrain")
    assert _stage_lines(work, "finetune") != _stage_lines(undefended, "finetune")


def test_rmr_without_risky_rows_fine_tunes_as_without_it(tmp_path, undefended, digits_scores):
    _, work, d = _defended(tmp_path, "--defense=rmr", f"--memorization_scores={digits_scores}",
                           "--wemem_threshold=1.5")
    assert d["target_risky_rows"] == 0
    assert _stage_lines(work, "finetune") == _stage_lines(undefended, "finetune")


def test_rsw_fine_tunes_on_sliding_windows(tmp_path, undefended, digits_scores):
    out, work, d = _defended(tmp_path, "--defense=rsw", f"--memorization_scores={digits_scores}",
                             "--wemem_width=4", "--nodefense_shadows")
    assert {k: d[k] for k in ("name", "stages", "models", "width", "stride", "order",
                              "windows")} == {
        "name": "rsw", "stages": ["finetune"], "models": "target only (shadows undefended)",
        "width": 4, "stride": 1, "order": "low_first", "windows": "per_class"}
    # 4 rows of each of the 10 classes: the target's first fine-tuning epoch is 40 rows, one
    # step; the shadows fine-tune as without the schedule.
    defended, plain = _first_loss(work, "finetune"), _first_loss(undefended, "finetune")
    assert defended[0] != plain[0] and defended[1:] == plain[1:]


def test_a_window_that_runs_out_is_refused_before_anything_is_written(tmp_path, digits_scores):
    work = tmp_path / "w"
    r = _run(f"--workdir={work}", *DEFENSE_RUN, "--finetune_epochs=3", "--defense=rsw",
             f"--memorization_scores={digits_scores}", "--wemem_stride=100")
    assert r.returncode == 2 and "leaves model 0 no rows from epoch 1 of 3" in r.stderr, r.stderr
    assert not work.exists()


def test_scores_of_another_dataset_are_refused(tmp_path, digits_scores):
    other = tmp_path / "other.npz"
    with np.load(digits_scores) as f:
        io.write_npz(str(other), **{**dict(f), "dataset": np.asarray("location")})
    work = tmp_path / "w"
    r = _run(f"--workdir={work}", *DEFENSE_RUN, "--defense=rmr", f"--memorization_scores={other}")
    assert r.returncode == 2 and "are of another dataset (location" in r.stderr, r.stderr
    assert not work.exists()
