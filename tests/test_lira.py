"""LiRA: hand-checked Gaussian scores, and per-example calibration beating a global threshold."""

import math

import numpy as np
import pytest
from scipy import stats

from jaxmia import metrics, shadow
from jaxmia.attacks import lira

# One example, four references: IN stats 2, 4 (mean 3, std 1), OUT stats 0, 2 (mean 1, std 1).
REFS = np.array([[2.0], [4.0], [0.0], [2.0]])
REF_IN = np.array([[True], [True], [False], [False]])


def test_online_score_is_the_log_likelihood_ratio():
    # s = 3: log N(3; 3, 1) - log N(3; 1, 1) = 0 - (-(3 - 1)^2 / 2) = 2
    assert lira.scores(np.array([3.0]), REFS, REF_IN)[0] == pytest.approx(2.0)
    # s = 1: -(1 - 3)^2 / 2 - 0 = -2
    assert lira.scores(np.array([1.0]), REFS, REF_IN)[0] == pytest.approx(-2.0)


def test_offline_scores_one_and_two_sided():
    # one-sided (paper): log Phi((3 - 1) / 1) = log Phi(2)
    got = lira.scores(np.array([3.0]), REFS, REF_IN, online=False)[0]
    assert got == pytest.approx(math.log(stats.norm.cdf(2.0)))
    # two-sided (released code): -log N(3; 1, 1) = log(2 pi) / 2 + 2
    got = lira.scores(np.array([3.0]), REFS, REF_IN, online=False, two_sided=True)[0]
    assert got == pytest.approx(0.5 * math.log(2 * math.pi) + 2.0)


def test_augmented_queries_are_averaged_and_median_centre():
    target = np.array([[3.0, 1.0]])  # two queries: scores 2 and -2 -> mean 0
    refs = np.repeat(REFS[..., None], 2, axis=2)
    assert lira.scores(target, refs, REF_IN)[0] == pytest.approx(0.0)
    # IN stats 2, 4, 9: mean 5, median 4; with s = 4 the median centre puts s at the IN centre.
    refs3 = np.array([[2.0], [4.0], [9.0], [0.0], [2.0]])
    in3 = np.array([[True], [True], [True], [False], [False]])
    std_in = np.std([2.0, 4.0, 9.0])
    want = stats.norm.logpdf(4.0, 4.0, std_in) - stats.norm.logpdf(4.0, 1.0, 1.0)
    got = lira.scores(np.array([4.0]), refs3, in3, center="median")[0]
    assert got == pytest.approx(want)


def test_fixed_variance_pools_all_examples():
    refs = np.array([[2.0, 10.0], [4.0, 20.0], [0.0, 0.0], [2.0, 2.0]])
    ref_in = np.array([[True, True], [True, True], [False, False], [False, False]])
    sigma_in = np.std([2.0, 4.0, 10.0, 20.0])
    sigma_out = np.std([0.0, 2.0, 0.0, 2.0])
    want = (stats.norm.logpdf(3.0, 3.0, sigma_in) - stats.norm.logpdf(3.0, 1.0, sigma_out))
    got = lira.scores(np.array([3.0, 0.0]), refs, ref_in, fixed_variance=True)[0]
    assert got == pytest.approx(want)


def test_lira_beats_a_global_threshold_when_examples_differ_in_difficulty():
    # Each example has its own level (difficulty); membership adds +1 to the statistic. A global
    # threshold drowns in the spread of levels; LiRA compares each example with itself.
    rng = np.random.default_rng(0)
    m, n = 16, 600
    in_mask = shadow.membership_matrix(__import__("jax").random.key(0), m, n)
    level = rng.normal(0, 3, n)
    stat = level[None] + 1.0 * in_mask + rng.normal(0, 0.3, (m, n))
    lira_auc, global_auc, lira_tpr = [], [], []
    for t, s, member in shadow.leave_one_out(
            lambda t, refs, ref_in: lira.scores(stat[t], stat[refs], ref_in), in_mask,
            targets=range(4)):
        lira_auc.append(metrics.summarize(s, member)["auc"])
        lira_tpr.append(metrics.summarize(s, member)["tpr@1%fpr"])
        global_auc.append(metrics.summarize(stat[t] - np.median(stat[t]), member)["auc"])
    assert np.mean(lira_auc) > 0.95 and np.mean(global_auc) < 0.7
    assert np.mean(lira_tpr) > 0.5


def test_image_queries_are_mirror_times_shifts():
    from jaxmia import reference_audit

    x = np.arange(2 * 5 * 5 * 1, dtype=np.float32).reshape(2, 5, 5, 1)
    views = reference_audit.query_views(2, 2)
    assert len(views) == 18 and len(set(views)) == 18
    np.testing.assert_array_equal(views[0](x), x)  # the unshifted image comes first
    # Mirror, then shift by (-2, +2): crop at (0, 4) of the image reflect-padded by 2.
    padded = np.pad(x[:, :, ::-1], ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
    got = reference_audit.query_view(True, 0, 4, 2)(x)
    np.testing.assert_array_equal(got, padded[:, 0:5, 4:9])
    # Row 0 of that view is row 2 of the mirrored image (reflection, not wrap-around).
    np.testing.assert_array_equal(got[:, 0, 0], x[:, 2, ::-1][:, 2])
    assert reference_audit.query_view(True, 0, 4, 2) is reference_audit.query_view(True, 0, 4, 2)
    assert len(reference_audit.query_views(0, 1)) == 2  # mirror only

