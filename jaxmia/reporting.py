"""Figures a person reads: log-log ROC curves of attacks (host side, matplotlib, no display)."""

from __future__ import annotations

import io as _io  # noqa: I001  (jaxmia.io is the atomic writer)

import numpy as np
from sklearn import metrics as skm

from jaxmia import io


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str, title: str) -> None:
    """Draws log-log ROC curves, one line per attack, with the chance diagonal; writes a PNG.

    Args:
      curves: attack name -> (scores, is_member).
      path: the PNG to write (atomically).
      title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    floor = 1e-4
    for name, (scores, is_member) in curves.items():
        fpr, tpr, _ = skm.roc_curve(np.asarray(is_member, bool), np.asarray(scores, np.float64))
        auc = skm.auc(fpr, tpr)
        ax.plot(np.maximum(fpr, floor), np.maximum(tpr, floor), label=f"{name} (AUC {auc:.3f})")
    ax.plot([floor, 1], [floor, 1], "k--", lw=0.8, label="chance")
    ax.set(xscale="log", yscale="log", xlim=(floor, 1), ylim=(floor, 1),
           xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(True, which="both", lw=0.3)
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    io.write_bytes(path, buf.getvalue())
