"""The fast counter-based generator: right distributions, key-separated streams, chunk-invariance."""

import jax
import numpy as np
from scipy import stats

from jaxmia import fastrand


def test_normal_matches_the_standard_normal():
    z = np.asarray(fastrand.normal(jax.random.key(0), (200_000,)), np.float64)
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    assert stats.kstest(z, "norm").pvalue > 0.01
    assert abs(stats.skew(z)) < 0.03 and abs(stats.kurtosis(z)) < 0.06


def test_uniform_and_bernoulli_rates():
    u = np.asarray(fastrand.uniform(jax.random.key(1), (100_000,)))
    assert u.min() >= 0 and u.max() < 1 and stats.kstest(u, "uniform").pvalue > 0.01
    b = np.asarray(fastrand.bernoulli(jax.random.key(2), 0.8, (100_000,)))
    assert abs(b.mean() - 0.8) < 0.005


def test_streams_of_different_keys_are_uncorrelated_and_reproducible():
    a = np.asarray(fastrand.normal(jax.random.key(3), (50_000,)))
    b = np.asarray(fastrand.normal(jax.random.key(4), (50_000,)))
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.02
    # Neighbouring elements of one stream are uncorrelated too.
    assert abs(np.corrcoef(a[:-1], a[1:])[0, 1]) < 0.02
    np.testing.assert_array_equal(a, fastrand.normal(jax.random.key(3), (50_000,)))


def test_offset_draws_continue_the_stream():
    key = jax.random.key(5)
    whole = fastrand.normal(key, (10, 6))
    parts = [fastrand.normal(key, (4, 6)), fastrand.normal(key, (6, 6), offset=24)]
    np.testing.assert_array_equal(whole, np.concatenate(parts))
