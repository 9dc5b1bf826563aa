"""The membership matrix's balance and memorization scores with a planted memorized example."""

import jax
import numpy as np

from jaxmia import shadow


def test_membership_matrix_balance():
    in_mask = shadow.membership_matrix(jax.random.key(0), 16, 1000)
    assert in_mask.shape == (16, 1000) and in_mask.dtype == bool
    assert np.all(in_mask.sum(0) == 8)  # every example IN for exactly half the models
    assert np.all(np.abs(in_mask.sum(1) - 500) < 60)  # each model trains on about half the pool
    other = shadow.membership_matrix(jax.random.key(1), 16, 1000)
    assert (other != in_mask).mean() > 0.3  # another key, another matrix


def test_memorization_finds_the_planted_example():
    in_mask = shadow.membership_matrix(jax.random.key(0), 8, 5)
    correct = np.ones((8, 5), bool)
    correct[:, 0] = in_mask[:, 0]  # example 0: right only when trained on (memorized)
    correct[:, 1] = False  # example 1: always wrong (mislabeled, never learned)
    mem = shadow.memorization(correct, in_mask)
    np.testing.assert_allclose(mem["memorization"], [1.0, 0.0, 0.0, 0.0, 0.0])
    assert np.all(mem["num_in"] == 4) and np.all(mem["num_out"] == 4)
