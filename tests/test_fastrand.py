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


def test_every_word_gives_a_finite_normal_and_the_values_are_symmetric(monkeypatch):
    # All 2^24 values of the top 24 bits, in order: none may map to erf^-1(+-1) = +-inf (the
    # top one did, once per 2^24 draws, when (k + 1/2) was formed first and rounded up).
    import jax.numpy as jnp

    words = (jnp.arange(1 << 24, dtype=jnp.uint32) << 8) | jnp.uint32(0xAB)
    monkeypatch.setattr(fastrand, "bits", lambda key, shape, offset=0: words)
    z = np.asarray(fastrand.normal(jax.random.key(0), (1 << 24,)))
    assert np.isfinite(z).all() and 5.0 < z.max() < 5.6
    np.testing.assert_array_equal(z, -z[::-1])
    assert (np.diff(z) > 0).all()


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


def test_dropout_zeroes_at_the_rate_and_rescales_the_rest():
    key, rate = jax.random.key(6), 0.3
    x = np.linspace(1.0, 2.0, 60_000, dtype=np.float32).reshape(200, 300)
    y = np.asarray(fastrand.dropout(key, rate, x))
    kept = np.asarray(fastrand.bernoulli(key, 1.0 - rate, x.shape))
    # The mask is bernoulli's of the same key and shape (the kernels draw the same one) ...
    np.testing.assert_array_equal(y != 0, kept)
    # ... kept entries are x / (1 - rate), exactly as PyTorch's inverted dropout scales them.
    np.testing.assert_allclose(y[kept], x[kept] / 0.7, rtol=1e-6)
    # 60,000 draws: the zero fraction is within 5 standard errors (0.0094) of the rate.
    assert abs((y == 0).mean() - rate) < 5 * np.sqrt(rate * (1 - rate) / x.size)
