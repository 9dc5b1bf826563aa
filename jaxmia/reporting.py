"""Figures a person reads (host side, matplotlib, no display, PNG written atomically): log-log
ROC curves of attacks, member/non-member histograms (pruning paper Fig. 1), per-class gap
bars (its Fig. 4) and a defense study's privacy-utility scatter."""

from __future__ import annotations

import io as _io  # noqa: I001  (jaxmia.io is the atomic writer)

import numpy as np
from sklearn import metrics as skm

from jaxmia import io


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def _save(fig, path: str) -> None:
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    _pyplot().close(fig)
    io.write_bytes(path, buf.getvalue())


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str, title: str) -> None:
    """Draws log-log ROC curves, one line per attack, with the chance diagonal; writes a PNG.

    Args:
      curves: attack name -> (scores, is_member).
      path: the PNG to write (atomically).
      title: figure title.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=120)
    floor = 1e-4
    colors = plt.cm.tab20(np.linspace(0, 1, 20))
    for i, (name, (scores, is_member)) in enumerate(curves.items()):
        fpr, tpr, _ = skm.roc_curve(np.asarray(is_member, bool), np.asarray(scores, np.float64))
        auc = skm.auc(fpr, tpr)
        ax.plot(np.maximum(fpr, floor), np.maximum(tpr, floor), color=colors[i % 20],
                ls=("-", "--", ":")[i // 20 % 3], label=f"{name} (AUC {auc:.3f})")
    ax.plot([floor, 1], [floor, 1], "k--", lw=0.8, label="chance")
    ax.set(xscale="log", yscale="log", xlim=(floor, 1), ylim=(floor, 1),
           xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    ax.grid(True, which="both", lw=0.3)
    _save(fig, path)


def plot_histograms(stages: dict[str, tuple[dict, dict]], path: str, title: str) -> None:
    """Histograms of the true-class confidence and (when present) the sensitivity of members and
    non-members, one column per stage (unpruned beside pruned).

    Args:
      stages: stage name -> (member features, non-member features) of the target.
    """
    rows = ["confidence"] + (["sensitivity"] if "sensitivity" in next(iter(stages.values()))[0]
                             else [])
    fig, axes = _pyplot().subplots(len(rows), len(stages), figsize=(4.5 * len(stages),
                                                                     3.2 * len(rows)),
                                   dpi=110, squeeze=False)
    for j, (stage, (mem, non)) in enumerate(stages.items()):
        for i, feature in enumerate(rows):
            a = np.asarray(mem[feature], np.float64)
            b = np.asarray(non[feature], np.float64)
            if feature == "sensitivity":  # an example's total: sum over classes, log scale
                a, b = np.log10(a.sum(-1) + 1e-12), np.log10(b.sum(-1) + 1e-12)
            edges = np.histogram_bin_edges(np.r_[a, b], bins=40)
            ax = axes[i, j]
            ax.hist(a, edges, alpha=0.6, density=True, label="members")
            ax.hist(b, edges, alpha=0.6, density=True, label="non-members")
            ax.set(title=f"{stage}", xlabel="log10 sensitivity" if feature == "sensitivity"
                   else "true-class confidence", ylabel="density")
            ax.legend(fontsize=7)
    fig.suptitle(title)
    _save(fig, path)


def plot_per_class(stages: dict[str, dict[str, list]], path: str, title: str) -> None:
    """Per-class bars of the generalization, confidence and sensitivity gaps, stages side by side.

    Args:
      stages: stage name -> ``metrics.gaps(...)["per_class"]``.
    """
    names = [k for k in ("generalization_gap", "confidence_gap", "sensitivity_gap")
             if any(v is not None for st in stages.values() for v in st[k])]
    num_classes = len(next(iter(stages.values()))["confidence_gap"])
    fig, axes = _pyplot().subplots(len(names), 1, figsize=(max(6, 0.25 * num_classes + 2),
                                                           2.6 * len(names)),
                                   dpi=110, squeeze=False)
    width = 0.8 / len(stages)
    for i, name in enumerate(names):
        ax = axes[i, 0]
        for j, (stage, per_class) in enumerate(stages.items()):
            v = np.array([np.nan if g is None else g for g in per_class[name]], np.float64)
            ax.bar(np.arange(num_classes) + (j - (len(stages) - 1) / 2) * width, v, width,
                   label=stage)
        ax.set(ylabel=name.replace("_", " "), xlabel="class")
        ax.axhline(0, color="k", lw=0.5)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    _save(fig, path)


def plot_tradeoff(rows: list[dict], path: str, title: str) -> None:
    """Privacy against utility across the settings of a defense study: the attacked target's
    test accuracy (x) against each attack's balanced accuracy (y), one colour per attack, each
    setting named beside its strongest attack; writes a PNG.

    Args:
      rows: ``jaxmia.defense_study.rows`` of every setting (``setting``, ``test_acc``,
        ``attack``, ``balanced_accuracy``).
      path: the PNG to write (atomically).
      title: figure title.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=120)
    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    colors = plt.cm.tab20(np.linspace(0, 1, 20))
    for i, attack in enumerate(attacks):
        mine = [r for r in rows if r["attack"] == attack]
        ax.scatter([r["test_acc"] for r in mine], [r["balanced_accuracy"] for r in mine],
                   color=colors[i % 20], s=22, label=attack)
    labels: dict[tuple, list[str]] = {}  # settings whose strongest attacks coincide share one
    for setting in dict.fromkeys(r["setting"] for r in rows):
        best = max((r for r in rows if r["setting"] == setting),
                   key=lambda r: r["balanced_accuracy"])
        labels.setdefault((best["test_acc"], best["balanced_accuracy"]), []).append(setting)
    for xy, names in labels.items():
        ax.annotate(", ".join(names), xy, fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.axhline(0.5, color="k", ls="--", lw=0.8, label="chance")
    ax.set(xlabel="target test accuracy", ylabel="attack balanced accuracy", title=title)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    ax.grid(True, lw=0.3)
    _save(fig, path)
