"""RMIA: hand-checked pairwise likelihood-ratio scores, online and offline."""

import numpy as np
import pytest

from jaxmia.attacks import rmia


def test_online_scores_by_hand():
    # Pr(x) = mean of the references = 0.4 for both x -> LR(x) = 0.8 / 0.4 = 2, 0.2 / 0.4 = 0.5.
    # Population: Pr(z) = 0.3 -> LR(z) = 1, 2, 3.
    # gamma = 1: x1 beats z with LR(z) <= 2 (2 of 3); x2 beats none.
    px, refs_px = np.array([0.8, 0.2]), np.full((2, 2), 0.4)
    ref_in = np.array([[True, False], [False, True]])
    pz, refs_pz = np.array([0.3, 0.6, 0.9]), np.full((2, 3), 0.3)
    got = rmia.scores(px, refs_px, ref_in, pz, refs_pz)
    np.testing.assert_allclose(got, [2 / 3, 0.0])
    # gamma = 2: x1 needs LR(z) <= 1 (1 of 3).
    got = rmia.scores(px, refs_px, ref_in, pz, refs_pz, gamma=2.0)
    np.testing.assert_allclose(got, [1 / 3, 0.0])


def test_offline_approximation_uses_out_references_only():
    # x1: OUT reference says 0.2 (IN says 0.9, ignored offline). a = 0.5:
    # Pr(x1) = ((1 + 0.5) 0.2 + 0.5) / 2 = 0.4 -> LR = 0.8 / 0.4 = 2.
    # Population: Pr(z) = ((1.5)(0.3) + 0.5) / 2 = 0.475 -> LR(z) = 0.3/0.475, 0.6/0.475, 0.9/0.475
    #   = 0.63, 1.26, 1.89: all <= 2 -> score 1.
    px, refs_px = np.array([0.8]), np.array([[0.9], [0.2]])
    ref_in = np.array([[True], [False]])
    pz, refs_pz = np.array([0.3, 0.6, 0.9]), np.full((2, 3), 0.3)
    got = rmia.scores(px, refs_px, ref_in, pz, refs_pz, online=False, a=0.5)
    assert got[0] == pytest.approx(1.0)
    # Online the IN reference counts: Pr(x1) = 0.55 -> LR = 1.4545; LR(z) = 1, 2, 3 -> 1 / 3.
    got = rmia.scores(px, refs_px, ref_in, pz, refs_pz, online=True)
    assert got[0] == pytest.approx(1 / 3)
