"""Threshold attacks (Song & Mittal 2021, and mia_prune's use of their code).

A statistic v (higher = member; entropy-like values are negated) is compared with a threshold
chosen on the shadow models to maximize balanced accuracy (TPR on shadow members + TNR on shadow
non-members) / 2, among the observed values, keeping the first maximum in the order
[members..., non-members...] as their code does. Class-wise attacks pick one threshold per true
class. The score is ``v - threshold`` (>= 0: member).

Attacks here:
- ``confidence``: p_y, class-wise thresholds (their "Conf").
- ``entropy``: -entropy, class-wise (mia_prune's "Xent" is this prediction entropy).
- ``modified_entropy``: -Mentr, class-wise.
- ``top1``: max_c p_c with one global threshold (the paper's top-1 confidence).
- ``top1_code``: p_y with one global threshold: what mia_prune's code calls "Top1-conf"
  (it equals the loss attack's ranking); offered as a named option.
- ``loss``: -loss with one global threshold (Yeom et al. 2018).
- ``correctness``: the "gap" attack (Yeom et al. 2018): member iff the prediction is correct; its
  threshold is fixed, not fit (score +0.5 / -0.5).
"""

from __future__ import annotations

import functools

import numpy as np

from jaxmia.attacks.base import Attack, Features

STATISTICS = {  # attack name -> (feature, sign, class-wise)
    "confidence": ("confidence", 1.0, True),
    "entropy": ("entropy", -1.0, True),
    "modified_entropy": ("modified_entropy", -1.0, True),
    "top1": ("top1", 1.0, False),
    "top1_code": ("confidence", 1.0, False),
    "loss": ("loss", -1.0, False),
    "correctness": ("correct", 1.0, False),
}
FIXED = {"correctness": 0.5}  # attacks whose threshold is part of the rule


def best_threshold(member_values: np.ndarray, nonmember_values: np.ndarray) -> float:
    """The observed value t maximizing (P[member >= t] + P[non-member < t]) / 2; first maximum.

    Returns 0.0 when either side is empty, as the reference code leaves its initial value.
    """
    if len(member_values) == 0 or len(nonmember_values) == 0:
        return 0.0
    candidates = np.concatenate([member_values, nonmember_values])
    mem = np.sort(member_values)
    non = np.sort(nonmember_values)
    tpr = 1.0 - np.searchsorted(mem, candidates, side="left") / len(mem)  # member >= t
    tnr = np.searchsorted(non, candidates, side="left") / len(non)  # non-member < t
    return float(candidates[np.argmax(0.5 * (tpr + tnr))])


def make(name: str, seed: int = 0, statistic: tuple | None = None) -> Attack:
    """The threshold attack ``name`` on ``STATISTICS[name]`` or on ``statistic`` = (feature,
    sign, class-wise) (deterministic: ``seed`` is unused)."""
    del seed  # Unused: threshold search draws nothing at random.
    feature, sign, classwise = statistic or STATISTICS[name]

    def fit(shadow: Features, is_member: np.ndarray):
        v = sign * np.asarray(shadow[feature], np.float64)
        mem = np.asarray(is_member, bool)
        if name in FIXED:
            return {"global": FIXED[name]}
        if not classwise:
            return {"global": best_threshold(v[mem], v[~mem])}
        labels = np.asarray(shadow["labels"])
        num_classes = shadow["probs"].shape[-1]
        return {"classwise": np.asarray([best_threshold(v[mem & (labels == c)],
                                                        v[~mem & (labels == c)])
                                         for c in range(num_classes)])}

    def score(state, target: Features) -> np.ndarray:
        v = sign * np.asarray(target[feature], np.float64)
        if "global" in state:
            return v - state["global"]
        return v - state["classwise"][np.asarray(target["labels"])]

    return Attack(fit=fit, score=score, name=name)


def make_global(feature: str, seed: int = 0) -> Attack:
    """A one-threshold attack on any feature where higher means member (label-only features)."""
    return make(feature, seed, statistic=(feature, 1.0, False))


REGISTRY = {name: functools.partial(make, name) for name in STATISTICS}
