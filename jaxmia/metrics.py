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
