"""Membership-inference metrics on (scores, is_member); host-side NumPy.

Scores follow one convention across the library: higher = more likely a member, and an attack
predicts "member" where its score is >= 0 (threshold attacks return value - threshold).
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


def balanced_accuracy(predicted_member, is_member) -> float:
    """(TPR + TNR) / 2: the attack accuracy the pruning papers report on balanced sets."""
    pred = np.asarray(predicted_member, bool)
    mem = np.asarray(is_member, bool)
    return 0.5 * (pred[mem].mean() + (~pred[~mem]).mean())


def roc_auc(scores, is_member) -> float:
    return float(skm.roc_auc_score(np.asarray(is_member, bool), np.asarray(scores, np.float64)))


def tpr_at_fpr(scores, is_member, fpr_target: float) -> float:
    """Highest TPR among ROC points with FPR <= ``fpr_target`` (0 allowed: no false positive)."""
    fpr, tpr, _ = skm.roc_curve(np.asarray(is_member, bool), np.asarray(scores, np.float64))
    ok = fpr <= fpr_target
    return float(tpr[ok].max()) if ok.any() else 0.0


def summarize(scores, is_member) -> dict[str, float]:
    """All metrics of one attack under the stable names results.json uses."""
    scores = np.asarray(scores, np.float64)
    return {
        "balanced_accuracy": float(balanced_accuracy(scores >= 0, is_member)),
        "auc": roc_auc(scores, is_member),
        "tpr@1%fpr": tpr_at_fpr(scores, is_member, 0.01),
        "tpr@0.1%fpr": tpr_at_fpr(scores, is_member, 0.001),
        "tpr@0%fpr": tpr_at_fpr(scores, is_member, 0.0),
    }


def bootstrap_ci(scores, is_member, num_resamples: int = 200, level: float = 0.95,
                 seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap confidence intervals of every ``summarize`` metric.

    Members and non-members are resampled separately (stratified), so every resample keeps the
    original class balance. ``seed`` fixes the resamples: same inputs, same intervals.
    """
    scores = np.asarray(scores, np.float64)
    mem = np.asarray(is_member, bool)
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(mem), np.flatnonzero(~mem)
    draws = []
    for _ in range(num_resamples):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        draws.append(summarize(scores[idx], mem[idx]))
    q = [(1 - level) / 2, (1 + level) / 2]
    return {k: tuple(float(v) for v in np.quantile([d[k] for d in draws], q)) for k in draws[0]}


def summarize_with_ci(scores, is_member, num_resamples: int = 200, seed: int = 0) -> dict:
    """``summarize`` plus ``<metric>_ci95`` intervals from a stratified bootstrap."""
    out = summarize(scores, is_member)
    for k, v in bootstrap_ci(scores, is_member, num_resamples, 0.95, seed).items():
        out[f"{k}_ci95"] = list(v)
    return out


def _mean_or_none(v) -> float | None:
    return float(np.mean(v)) if len(v) else None


def js_divergence(member_values, nonmember_values, bins: int = 50,
                  value_range: tuple[float, float] = (0.0, 1.0)) -> float:
    """Jensen-Shannon divergence (bits, in [0, 1]) between the histograms of a statistic on
    members and non-members (``bins`` equal bins over ``value_range``), the plug-in estimate of
    the GRIP paper's §4 distance between member and non-member output distributions."""
    p, _ = np.histogram(np.asarray(member_values, np.float64), bins, value_range)
    q, _ = np.histogram(np.asarray(nonmember_values, np.float64), bins, value_range)
    p = p / max(p.sum(), 1)
    q = q / max(q.sum(), 1)
    m = 0.5 * (p + q)

    def kl(a):
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return 0.5 * kl(p) + 0.5 * kl(q)


def gaps(member: dict, nonmember: dict, num_classes: int) -> dict:
    """The pruning paper's gaps (Yuan & Zhang 2022, eq. 3-4) between a model's members and
    non-members, overall and per true class, plus the JS divergence of their confidences.

    - ``generalization_gap``: accuracy on members - accuracy on non-members.
    - ``confidence_gap``: mean true-class probability on members - on non-members.
    - ``sensitivity_gap``: mean sensitivity on non-members - on members, an example's
      sensitivity being the sum over classes of its per-class sensitivity (the L1 change of the
      probability vector per unit of perturbation); None when no sensitivity was computed.
    - ``js_divergence``: :func:`js_divergence` of the true-class probabilities.

    Args:
      member, nonmember: feature dicts with ``confidence``, ``correct``, ``labels`` and optionally
        ``sensitivity`` ``[n, C]``.
      num_classes: C; per-class lists have C entries (None for a class absent on either side).
    """
    def stats(f, rows):
        out = {"acc": _mean_or_none(np.asarray(f["correct"])[rows]),
               "conf": _mean_or_none(np.asarray(f["confidence"])[rows])}
        if "sensitivity" in f:
            out["sens"] = _mean_or_none(np.asarray(f["sensitivity"]).sum(-1)[rows])
        return out

    def diff(a, b):
        return None if a is None or b is None else a - b

    def all_gaps(rows_in, rows_out):
        a, b = stats(member, rows_in), stats(nonmember, rows_out)
        return {"generalization_gap": diff(a["acc"], b["acc"]),
                "confidence_gap": diff(a["conf"], b["conf"]),
                "sensitivity_gap": diff(b.get("sens"), a.get("sens"))}

    lab_in, lab_out = np.asarray(member["labels"]), np.asarray(nonmember["labels"])
    out = all_gaps(slice(None), slice(None))
    per_class = [all_gaps(lab_in == c, lab_out == c) for c in range(num_classes)]
    out["per_class"] = {k: [g[k] for g in per_class] for k in out}
    out["js_divergence"] = js_divergence(member["confidence"], nonmember["confidence"])
    return out
