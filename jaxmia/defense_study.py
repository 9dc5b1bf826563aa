"""A defense study: one audit per (defense, strength) on the same data, splits, seed and
pruning, then the privacy-utility table and figure across them (the comparison of the pruning
paper's §6: PPB against ADV and DP-SGD, here with RelaxLoss and label smoothing too).

Each setting is an ordinary audit (:func:`jaxmia.audit.run`) in its own folder under the
study's workdir, so it checkpoints and resumes on its own; the study writes ``study.json``,
``study.csv`` (one row per setting and attack) and ``tradeoff.png`` (the attacked target's test
accuracy against each attack's balanced accuracy) when all settings are done.
"""

from __future__ import annotations

import csv
import dataclasses
import io as _io
import os

from jaxmia import audit, defenses, io, reporting
from jaxmia.defenses import wemem
from jaxmia.errors import UserError

METRICS = ("balanced_accuracy", "auc", "tpr@1%fpr", "tpr@0.1%fpr")


@dataclasses.dataclass(frozen=True)
class Setting:
    defense: str  # 'none', 'dp', a defenses.REGISTRY name or a WeMem schedule (wemem.KINDS)
    strength: float | None = None  # dp: the noise multiplier; else the defense's strength

    @property
    def name(self) -> str:
        if self.defense == "none":
            return "none"
        return f"{self.defense}{'' if self.strength is None else f'_{self.strength:g}'}"


def parse_settings(text: str) -> tuple[Setting, ...]:
    """``"none,ppb:4,adv:1,dp:1.5,rmr"`` -> settings; a loss-term defense without ``:value``
    takes its default strength, DP needs its noise multiplier, a WeMem schedule takes none (its
    settings are the base audit's ``wemem_*`` fields)."""
    known = ("none", "dp") + tuple(defenses.REGISTRY) + wemem.KINDS
    out = []
    for item in (t.strip() for t in text.split(",")):
        name, _, value = item.partition(":")
        if name not in known:
            raise UserError(f"unknown defense '{name}' in --settings; choose from "
                            f"{', '.join(known)} (as name or name:strength)")
        strength = None
        if value:
            try:
                strength = float(value)
            except ValueError:
                raise UserError(f"--settings item '{item}': '{value}' is not a number") from None
        if name in ("none",) + wemem.KINDS and strength is not None:
            raise UserError(f"--settings item '{name}' takes no strength"
                            + ("" if name == "none" else " (its settings are the --wemem_* "
                               "flags)"))
        if name == "dp" and strength is None:
            raise UserError("--settings item 'dp' needs its noise multiplier, e.g. dp:1.5")
        out.append(Setting(name, strength))
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise UserError(f"--settings names a setting twice: {', '.join(names)}")
    return tuple(out)


def audit_config(base: audit.AuditConfig, setting: Setting, workdir: str) -> audit.AuditConfig:
    """The audit of one setting, in its own folder; a defense's own settings (a WeMem
    setting's memorization scores and ``wemem_*`` fields, RelaxLoss's and ADV's options) are
    kept from the base for that defense only."""
    extra = {}
    if setting.defense not in wemem.KINDS:
        extra.update({f: getattr(audit.AuditConfig, f) for f in audit.WEMEM_FLAGS})
    for owner, own in audit.OWN_FLAGS.items():
        if setting.defense != owner:
            extra.update({f: getattr(audit.AuditConfig, f) for f in own})
    if setting.defense == "dp":
        extra["noise_multiplier"] = setting.strength
    elif setting.defense in defenses.REGISTRY:
        extra["defense_strength"] = setting.strength
    return dataclasses.replace(base, defense=setting.defense,
                               workdir=os.path.join(workdir, setting.name), **extra)


def _attacked(results: dict) -> tuple[str, float]:
    """The stage the study compares (the pruned target when it was attacked) and its test
    accuracy."""
    if "pruned" in results["attacks"]:
        return "pruned", results["pruned_target_test_acc"]
    return "unpruned", results["target_test_acc"]


def rows(setting: Setting, results: dict) -> list[dict]:
    """One row per attack of an audit's attacked stage."""
    stage, test_acc = _attacked(results)
    return [{"setting": setting.name, "defense": setting.defense,
             "strength": "" if setting.strength is None else setting.strength,
             "stage": stage, "test_acc": test_acc, "attack": name,
             **{m: metrics[m] for m in METRICS}}
            for name, metrics in results["attacks"][stage].items()]


def _csv(table: list[dict]) -> bytes:
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(table[0]))
    writer.writeheader()
    writer.writerows(table)
    return buf.getvalue().encode()


def run(base: audit.AuditConfig, settings: tuple[Setting, ...], workdir: str) -> dict:
    """Runs (or resumes) every setting's audit, then writes the study's table and figure."""
    if not settings:
        raise UserError("--settings names no setting")
    configs = [audit.validate(audit_config(base, s, workdir)) for s in settings]
    for cfg in configs:  # every refusal before anything is written
        audit.check_workdir(cfg)
    io.claim_workdir(workdir)
    table, summary = [], []
    for setting, cfg in zip(settings, configs):
        results = audit.run(cfg)
        table += rows(setting, results)
        stage, test_acc = _attacked(results)
        best = max(results["attacks"][stage].items(), key=lambda kv: kv[1]["balanced_accuracy"])
        summary.append({"setting": setting.name, "workdir": cfg.workdir, "stage": stage,
                        "test_acc": test_acc, "best_attack": best[0],
                        "best_balanced_accuracy": best[1]["balanced_accuracy"],
                        "best_tpr@1%fpr": max(m["tpr@1%fpr"]
                                              for m in results["attacks"][stage].values())})
    out = {"dataset": configs[0].dataset, "model": configs[0].model,
           "pruning": configs[0].pruning, "sparsity": configs[0].sparsity,
           "seed": configs[0].seed, "settings": summary}
    io.write_bytes(os.path.join(workdir, "study.csv"), _csv(table))
    reporting.plot_tradeoff(table, os.path.join(workdir, "tradeoff.png"),
                            f"{out['dataset']} / {out['model']} / {out['pruning']} "
                            f"{out['sparsity']}: privacy against utility")
    io.write_json(os.path.join(workdir, "study.json"), out)
    return out


def format_table(study: dict) -> str:
    lines = [f"{study['dataset']} / {study['model']} / {study['pruning']} @ {study['sparsity']}",
             "", f"{'setting':<22}{'test acc':>9}  {'best attack':<18}{'bal.acc':>8}"
             f"{'max TPR@1%':>12}"]
    for s in study["settings"]:
        lines.append(f"{s['setting']:<22}{s['test_acc']:>9.4f}  {s['best_attack']:<18}"
                     f"{s['best_balanced_accuracy']:>8.4f}{s['best_tpr@1%fpr']:>12.4f}")
    return "\n".join(lines)

