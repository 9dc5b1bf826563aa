"""LiRA, the likelihood-ratio attack (Carlini et al., S&P 2022, "Membership inference attacks from
first principles"; reference code tensorflow/privacy research/mi_lira_2021).

The statistic is the logit-scaled confidence log p_y - log sum_{y' != y} p_y'
(``features.extract(...)["logit_scaled"]``), one value per augmented query. For each example,
Gaussians are fit to the statistic of the reference models that trained on it (IN) and of those
that did not (OUT):

- online: score = log N(s; mu_in, sigma_in^2) - log N(s; mu_out, sigma_out^2), averaged over
  queries;
- offline (OUT models only): the paper's one-sided test, score = log Phi((s - mu_out) / sigma_out)
  (high confidence = member), averaged over queries; ``two_sided=True`` gives the released
  code's ``-log N(s; mu_out, sigma_out^2)`` instead;
- ``fixed_variance``: one sigma_in and one sigma_out over all examples (the paper's choice for
  few reference models) instead of per-example ones;
- ``center='median'`` centres the Gaussians on the median, as the released code does; the
  paper's (and the default) is the mean.

Every score follows higher = member.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from jaxmia.errors import UserError


def _masked_moments(values, mask, center):
    """Per-example centre and std over the reference axis 0 of ``values [R, N, A]`` where
    ``mask [R, N]``; the std pools the queries."""
    v = np.where(mask[..., None], values, np.nan)
    mid = np.nanmedian(v, axis=0) if center == "median" else np.nanmean(v, axis=0)  # [N, A]
    std = np.nanstd(v, axis=(0, 2))  # [N]
    return mid, std


def scores(target: np.ndarray, refs: np.ndarray, ref_in: np.ndarray, *, online: bool = True,
           fixed_variance: bool = False, center: str = "mean", two_sided: bool = False):
    """LiRA scores of one target model.

    Args:
      target: ``[N]`` or ``[N, A]`` statistic of the target model (A augmented queries).
      refs: ``[R, N]`` or ``[R, N, A]`` the same statistic from R reference models.
      ref_in: bool ``[R, N]``: reference r trained on example i.
      online: use IN and OUT references; False: OUT only (offline).
      fixed_variance, center, two_sided: see the module docstring.

    Returns:
      float64 ``[N]``, higher = member.
    """
    if center not in ("mean", "median"):
        raise UserError(f"unknown LiRA centre '{center}'; choose mean or median")
    target = np.asarray(target, np.float64)
    refs = np.asarray(refs, np.float64)
    if target.ndim == 1:
        target, refs = target[:, None], refs[..., None]
    ref_in = np.asarray(ref_in, bool)
    mid_out, std_out = _masked_moments(refs, ~ref_in, center)
    if fixed_variance:
        std_out = np.full_like(std_out, np.nanstd(np.where(~ref_in[..., None], refs, np.nan)))
    std_out = std_out[:, None] + 1e-30
    if not online:
        if two_sided:
            return -stats.norm.logpdf(target, mid_out, std_out).mean(1)
        return stats.norm.logcdf(target, mid_out, std_out).mean(1)
    mid_in, std_in = _masked_moments(refs, ref_in, center)
    if fixed_variance:
        std_in = np.full_like(std_in, np.nanstd(np.where(ref_in[..., None], refs, np.nan)))
    std_in = std_in[:, None] + 1e-30
    return (stats.norm.logpdf(target, mid_in, std_in)
            - stats.norm.logpdf(target, mid_out, std_out)).mean(1)
