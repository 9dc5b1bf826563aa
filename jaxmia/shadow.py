"""The membership-matrix protocol of LiRA and RMIA, and Feldman's memorization estimate.

M models each train on a random half of a pool: ``in_mask[m, i]`` says whether example i is in
model m's training set. Every example is IN for exactly ``M // 2`` models (Carlini et al.'s
``keep = argsort(uniform(M, N), axis=0) < M / 2``), so any model can be the target and the others
its references, with in- and out-references for every example.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from jaxmia.errors import UserError


def membership_matrix(key: jax.Array, num_models: int, num_examples: int) -> np.ndarray:
    """bool ``[M, N]``; column i has exactly ``M // 2`` True entries, in random rows."""
    if num_models < 2:
        raise UserError(f"the membership-matrix protocol needs >= 2 models, got {num_models}")
    u = np.asarray(jax.random.uniform(key, (num_models, num_examples)))
    return np.argsort(np.argsort(u, axis=0), axis=0) < num_models // 2


def memorization(correct: np.ndarray, in_mask: np.ndarray) -> dict:
    """Feldman's estimate mem(x) = P[correct on x | x in] - P[correct on x | x out].

    Args:
      correct: bool/0-1 ``[M, N]``, whether model m classifies example i correctly.
      in_mask: bool ``[M, N]``.

    Returns:
      ``{"memorization": [N], "num_in": [N], "num_out": [N]}``; NaN where a side is empty.
    """
    correct = np.asarray(correct, np.float64)
    in_mask = np.asarray(in_mask, bool)
    n_in, n_out = in_mask.sum(0), (~in_mask).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        p_in = np.where(n_in > 0, (correct * in_mask).sum(0) / n_in, np.nan)
        p_out = np.where(n_out > 0, (correct * ~in_mask).sum(0) / n_out, np.nan)
    return {"memorization": p_in - p_out, "num_in": n_in, "num_out": n_out}


def leave_one_out(score_fn: Callable, in_mask: np.ndarray, targets=None):
    """Runs ``score_fn(target, references, ref_in) -> scores [N]`` with each model in turn as
    the target (``references`` = the indices of all other models) and yields
    ``(target, scores, is_member)``."""
    num_models = in_mask.shape[0]
    for t in range(num_models) if targets is None else targets:
        refs = np.asarray([m for m in range(num_models) if m != t])
        yield t, np.asarray(score_fn(t, refs, in_mask[refs])), in_mask[t]
