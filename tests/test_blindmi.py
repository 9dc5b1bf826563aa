"""BlindMI-Diff-W: the MMD by hand, the generator, and differential comparison separating members."""

import numpy as np
import pytest

from jaxmia.attacks import blindmi


def test_mmd_hand_worked():
    # Sides {0, 1}, {2, 3}; k within a side = .5 off the diagonal, across = .1:
    # unbiased within terms .5 + .5, cross mean .1 -> MMD^2 = .5 + .5 - 2 * .1 = .8.
    k = np.full((4, 4), 0.1)
    k[:2, :2] = k[2:, 2:] = 0.5
    np.fill_diagonal(k, 1.0)  # the diagonal does not count
    a, b = np.array([1, 1, 0, 0.]), np.array([0, 0, 1, 1.])
    assert blindmi.mmd2(k, a, b) == pytest.approx(0.8)
    # All-ones kernel: every point looks alike -> 0; a one-element side is not allowed.
    assert blindmi.mmd2(np.ones((4, 4)), a, b) == pytest.approx(0)
    assert blindmi.mmd2(k, np.array([1, 0, 0, 0.]), np.array([0, 1, 1, 1.])) == -np.inf


def test_diff_w_moves_reference_like_examples_to_the_non_member_side():
    rng = np.random.default_rng(0)
    members = 0.95 + 0.02 * rng.standard_normal((30, 3))
    nonmembers = 0.3 + 0.05 * rng.standard_normal((30, 3))
    reference = 0.3 + 0.05 * rng.standard_normal((40, 3))
    s = blindmi.diff_w(np.r_[members, nonmembers], reference, seed=1)
    assert (s[:30] >= 0).mean() > 0.9 and (s[30:] < 0).mean() > 0.9


def test_generated_inputs():
    src = np.array([[0, 1, 5], [1, 0, 6], [1, 1, 7]], np.float32)
    gen = blindmi.generate_inputs(src, 50, seed=0)
    assert gen.shape == (50, 3)
    for j in range(3):  # every generated value is one the attacker saw in that column
        assert set(gen[:, j]) <= set(src[:, j])
    flat = np.ones((2, 6, 6, 1), np.float32)  # Sobel of a constant image is 0 everywhere
    np.testing.assert_allclose(blindmi.generate_inputs(flat, 3, seed=0), 0.0)


def test_no_batch_is_left_with_a_single_row():
    # 41 rows in batches of 20 -> 20 + 21 (not 20 + 20 + 1): every row gets a finite score.
    rng = np.random.default_rng(2)
    s = blindmi.diff_w(rng.random((41, 3)), rng.random((30, 3)), batch_size=20)
    assert np.all(np.isfinite(s)) and s.shape == (41,)
