"""RMIA, the relative membership inference attack (Zarifzadeh, Liu, Mittal & Shokri, ICML 2024,
"Low-cost high-power membership inference attacks").

With Pr(x | theta) the target model's probability of x's true label and Pr(x) its average over
reference models, the likelihood ratio of x is LR(x) = Pr(x | theta) / Pr(x). RMIA compares it
pairwise with population samples z (data no model trained on):

    score(x) = fraction of z with LR(x) / LR(z) >= gamma.

Online, Pr(x) averages all references (IN and OUT). Offline (OUT references only), Pr(x) is
approximated from the OUT average as ((1 + a) Pr_OUT(x) + (1 - a)) / 2, with ``a`` tuned on the
references (the paper's offline approximation parameter; a = 1 uses Pr_OUT as is). Population
samples are OUT for every model, so Pr(z) is their plain average in both modes (offline: through
the same approximation). Higher = member.
"""

from __future__ import annotations

import numpy as np


def _prior(p_refs, ref_in, online: bool, a: float):
    """Pr(x) from reference probabilities ``[R, N]``."""
    if online:
        return p_refs.mean(0)
    out = np.where(~ref_in, p_refs, np.nan)
    p_out = np.nanmean(out, axis=0)
    return 0.5 * ((1.0 + a) * p_out + (1.0 - a))


def scores(target_px: np.ndarray, refs_px: np.ndarray, ref_in: np.ndarray,
           target_pz: np.ndarray, refs_pz: np.ndarray, *, gamma: float = 1.0,
           online: bool = True, a: float = 1.0) -> np.ndarray:
    """RMIA scores of one target model.

    Args:
      target_px: ``[N]`` the target's true-label probability on the audited examples.
      refs_px: ``[R, N]`` the references' probabilities on them; ``ref_in`` bool ``[R, N]``.
      target_pz: ``[Z]`` the target's probability on population samples.
      refs_pz: ``[R, Z]`` the references' probabilities on them (no reference trained on them).
      gamma: the pairwise threshold.
      online: Pr(x) from all references; False: the offline approximation with ``a``.

    Returns:
      float64 ``[N]`` in [0, 1], higher = member.
    """
    target_px, refs_px = np.asarray(target_px, np.float64), np.asarray(refs_px, np.float64)
    target_pz, refs_pz = np.asarray(target_pz, np.float64), np.asarray(refs_pz, np.float64)
    ref_in = np.asarray(ref_in, bool)
    lr_x = target_px / np.maximum(_prior(refs_px, ref_in, online, a), 1e-30)
    lr_z = target_pz / np.maximum(_prior(refs_pz, np.zeros_like(refs_pz, bool), online, a),
                                  1e-30)
    # fraction of z with lr_x / lr_z >= gamma  <=>  lr_z <= lr_x / gamma (sorted search)
    sorted_z = np.sort(lr_z)
    return np.searchsorted(sorted_z, lr_x / gamma, side="right") / len(sorted_z)
