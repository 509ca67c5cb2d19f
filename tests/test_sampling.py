"""Sampling filters against a direct NumPy computation, and sampled frequencies against the distribution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dspark_jax.sampling import CHUNK, SamplingConfig, argmax, categorical, probabilities, sample, sample_from


def reference_probs(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    x = logits.astype(np.float64) / temperature
    order = np.argsort(-x)
    keep = np.zeros_like(x, dtype=bool)
    candidates = order[:top_k] if top_k else order
    p = np.exp(x[candidates] - x[candidates].max())
    p /= p.sum()
    mass_before = np.cumsum(p) - p
    keep[candidates[mass_before < top_p]] = True
    out = np.where(keep, np.exp(x - x.max()), 0.0)
    return out / out.sum()


@pytest.mark.parametrize(
    "temperature, top_k, top_p",
    [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.8), (0.9, 12, 0.6), (2.0, 1, 1.0), (1.0, 0, 0.05)],
)
def test_probabilities_match_reference(temperature, top_k, top_p):
    logits = np.random.default_rng(0).normal(size=(3, 50)).astype(np.float32) * 2
    got = probabilities(jnp.asarray(logits), SamplingConfig(temperature, top_k, top_p))
    for row in range(3):
        np.testing.assert_allclose(got[row], reference_probs(logits[row], temperature, top_k, top_p), atol=1e-6)


def test_greedy_is_one_hot_argmax():
    logits = jnp.asarray([[0.1, 3.0, -1.0], [2.0, 0.0, 1.9]])
    np.testing.assert_array_equal(probabilities(logits, SamplingConfig()), [[0, 1, 0], [1, 0, 0]])
    np.testing.assert_array_equal(sample(logits, jax.random.split(jax.random.key(0), 2), SamplingConfig()), [1, 0])


@pytest.mark.parametrize("vocab", [300, 4096, 5000])  # one padded chunk, whole chunks, chunks plus padding
def test_argmax_matches_numpy_on_ties_and_infinities(vocab):
    rows = np.random.default_rng(2).integers(-3, 4, size=(64, vocab)).astype(np.float32)  # ties in many chunks
    rows[6, :] = -np.inf
    rows[7, [3, vocab - 1]] = np.inf
    rows[8, :] = 0.0
    rows[8, vocab - 1] = 5.0  # the maximum in the last, padded chunk
    rows[9:16] = np.random.default_rng(3).normal(size=(7, vocab))  # one maximum, anywhere in the row
    got = argmax(jnp.asarray(rows.reshape(8, 8, vocab)))
    assert got.dtype == jnp.int32 and got.shape == (8, 8)
    np.testing.assert_array_equal(got.reshape(-1), np.argmax(rows, axis=-1))


def test_argmax_of_a_row_with_nan_stays_inside_the_row():
    row = np.asarray([[-2.0, 3.0, np.nan, 1.0, 3.0]], np.float32)
    assert int(argmax(jnp.asarray(row))[0]) in (1, 2)  # the first maximum or the NaN, never out of range
    assert 0 <= int(argmax(jnp.full((1, 3000), jnp.nan))[0]) < 3000


def test_sample_from_skips_zero_probability_tokens():
    probs = jnp.asarray([[0.0, 0.5, 0.0, 0.5], [0.0, 0.0, 1.0, 0.0]])
    for u in [0.0, 0.25, 0.49, 0.5, 0.99, np.nextafter(np.float32(1), np.float32(0))]:
        token = sample_from(probs, jnp.full((2,), u, jnp.float32))
        assert int(token[0]) == (1 if u < 0.5 else 3)
        assert int(token[1]) == 2


def test_sample_from_is_the_inverse_cdf_across_chunks():
    vocab = 3 * CHUNK + 100  # whole chunks plus a padded one
    weights = np.random.default_rng(5).exponential(size=vocab).astype(np.float32)
    weights[np.random.default_rng(6).random(vocab) < 0.3] = 0.0  # zero runs inside and across chunks
    weights[:CHUNK] = 0.0  # whole chunks without mass, the first one included (u = 0 must skip it)
    weights[2 * CHUNK : 3 * CHUNK] = 0.0
    uniforms = np.random.default_rng(7).random(512).astype(np.float32)
    uniforms[:2] = [0.0, np.nextafter(np.float32(1), np.float32(0))]
    got = np.asarray(sample_from(jnp.asarray(np.tile(weights, (512, 1))), jnp.asarray(uniforms)))
    cdf = np.cumsum(weights.astype(np.float64))
    expected = np.searchsorted(cdf, uniforms * cdf[-1], side="right")
    assert np.all(weights[got] > 0)
    # float32 sums differ from float64 ones only for thresholds within rounding of a boundary.
    assert np.mean(got == np.minimum(expected, vocab - 1)) > 0.99


def test_categorical_frequencies_follow_softmax_over_a_wide_vocabulary():
    vocab = 5000
    logits = np.full((1, vocab), -np.inf, np.float32)
    support = np.asarray([3, 1023, 1024, 2500, 4999])  # chunk edges and the padded last chunk
    logits[0, support] = [0.5, -1.0, 1.2, 0.0, 0.3]
    n = 40_000
    draws = categorical(jax.random.split(jax.random.key(0), n), jnp.repeat(jnp.asarray(logits), n, axis=0))
    observed = np.bincount(np.asarray(draws), minlength=vocab) / n
    expected = np.asarray(jax.nn.softmax(jnp.asarray(logits[0])))
    assert observed[expected == 0].sum() == 0
    np.testing.assert_array_less(np.abs(observed - expected), 4.5 * np.sqrt(expected * (1 - expected) / n) + 1e-9)


def test_sampled_frequencies_follow_the_filtered_distribution():
    config = SamplingConfig(temperature=0.8, top_k=6, top_p=0.9)
    logits = jnp.asarray(np.random.default_rng(1).normal(size=(1, 10)), jnp.float32)
    n = 40_000
    draws = sample(jnp.repeat(logits, n, axis=0), jax.random.split(jax.random.key(0), n), config)
    observed = np.bincount(np.asarray(draws), minlength=10) / n
    expected = np.asarray(probabilities(logits, config)[0])
    assert observed[expected == 0].sum() == 0  # filtered tokens never appear
    # 4.5 standard errors per token: a wrong temperature or filter moves some token far more than this.
    np.testing.assert_array_less(np.abs(observed - expected), 4.5 * np.sqrt(expected * (1 - expected) / n) + 1e-9)
