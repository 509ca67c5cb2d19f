"""Hardware-aware prefix scheduler: hand-computed choices, early stop, and the non-anticipating property."""

import jax.numpy as jnp
import numpy as np
import pytest

from dspark_jax.scheduler import PrefixScheduler
from dspark_jax.temperature_scaling import SequentialTemperatures


def depth(scheduler, confidence, live=None):
    confidence = jnp.asarray(confidence, jnp.float32)
    live = jnp.ones(confidence.shape[0], bool) if live is None else jnp.asarray(live)
    return int(scheduler.verify_depth(confidence, live))


def test_the_papers_counterexample_stops_early():
    """Appendix A: SPS(1) = 1, SPS(2) = 0.5, SPS(3) = 0.45 and a1 = 0.8 give Θ0 = 1.0 > Θ1 = 0.9, so nothing
    is verified, even when c2 = 0.9 would make Θ2 = 1.134 the global maximum."""
    scheduler = PrefixScheduler((1 / 1.0, 1 / 0.5, 1 / 0.45))
    assert depth(scheduler, [[0.8, 0.9]]) == 0
    assert depth(scheduler, [[0.8, 0.0]]) == 0


def test_greedy_decoding_takes_the_best_depth_over_all():
    """Exact-match acceptance is lossless at any depth, so greedy runs look past a dear first step: the
    counterexample above verifies both tokens (Θ2 = 1.134 > Θ0 = 1.0 > Θ1 = 0.9)."""
    scheduler = PrefixScheduler((1 / 1.0, 1 / 0.5, 1 / 0.45), greedy=True)
    assert depth(scheduler, [[0.8, 0.9]]) == 2
    assert depth(scheduler, [[0.8, 0.0]]) == 0  # Θ2 = 0.81 < Θ0: still nothing
    # Where Θ rises to the end, both rules agree.
    assert depth(PrefixScheduler((1.0, 1.0, 1.0, 1.0), greedy=True), [[0.01, 0.01, 0.01]]) == 3


def test_depth_by_hand():
    scheduler = PrefixScheduler((1.0, 1.3, 1.6, 1.9))
    # Θ = (1, 1.9 / 1.3 = 1.46, (1.9 + 0.81) / 1.6 = 1.69, (2.71 + 0.081) / 1.9 = 1.47): depth 2.
    assert depth(scheduler, [[0.9, 0.9, 0.1]]) == 2
    # Θ1 = 1.2 / 1.3 < 1.
    assert depth(scheduler, [[0.2, 1.0, 1.0]]) == 0
    # Free extra tokens: verify everything, even at low confidence.
    assert depth(PrefixScheduler((1.0, 1.0, 1.0, 1.0)), [[0.01, 0.01, 0.01]]) == 3


def test_a_batch_is_scheduled_by_its_total_and_finished_rows_do_not_count():
    scheduler = PrefixScheduler((1.0, 1.5, 2.0))
    # Two rows: Θ0 = 2, Θ1 = (2 + 0.9 + 0.2) / 1.5 = 2.07, Θ2 = (3.1 + 0.81 + 0.02) / 2 = 1.97.
    assert depth(scheduler, [[0.9, 0.9], [0.2, 0.1]]) == 1
    # Only the confident row is live: Θ1 = 1.9 / 1.5 = 1.27, Θ2 = 2.71 / 2 = 1.36.
    assert depth(scheduler, [[0.9, 0.9], [0.2, 0.1]], live=[True, False]) == 2
    # Only the unsure one: Θ1 = 1.2 / 1.5 < 1.
    assert depth(scheduler, [[0.9, 0.9], [0.2, 0.1]], live=[False, True]) == 0


def test_admitting_depth_j_never_looks_at_later_confidences():
    """Lossless sampling needs the decision "verify token j" to depend on c_1..c_j only (c_j is computed
    from token j - 1): replacing every later confidence never changes min(depth, j)."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        gamma, rows = rng.integers(1, 8), rng.integers(1, 4)
        seconds = tuple(np.cumsum(rng.uniform(0.05, 1.0, gamma + 1)))
        scheduler = PrefixScheduler(seconds)
        if rng.uniform() < 0.5:  # STS calibration is per position, so it keeps the property
            scheduler = PrefixScheduler(seconds, SequentialTemperatures(tuple(rng.uniform(0.2, 5.0, gamma))))
        confidence = rng.uniform(0, 1, (rows, gamma))
        chosen = depth(scheduler, confidence)
        for j in range(gamma):
            changed = confidence.copy()
            changed[:, j + 1:] = rng.uniform(0, 1, (rows, gamma - j - 1))
            assert min(depth(scheduler, changed), j + 1) == min(chosen, j + 1)


def test_calibrated_confidences_decide():
    """c = 0.6 and t = (1, 1.55): raw, Θ1 = 1.6 / 1.55 > 1 verifies a token; STS with T = 3 (the head was
    overconfident) makes c = σ(logit(0.6) / 3) = 0.534 and Θ1 = 0.99 < 1, so nothing is verified."""
    assert depth(PrefixScheduler((1.0, 1.55)), [[0.6]]) == 1
    assert depth(PrefixScheduler((1.0, 1.55), SequentialTemperatures((3.0,))), [[0.6]]) == 0
    # A fit deeper than the draft serves it (positions are fitted left to right).
    assert depth(PrefixScheduler((1.0, 1.55), SequentialTemperatures((3.0, 1.0, 1.0))), [[0.6]]) == 0


def test_bad_tables_are_refused():
    with pytest.raises(ValueError, match="positive time"):
        PrefixScheduler((1.0,))
    with pytest.raises(ValueError, match="positive time"):
        PrefixScheduler((1.0, 0.0))
    with pytest.raises(ValueError, match="profiled for γ = 2"):
        depth(PrefixScheduler((1.0, 1.1, 1.2)), [[0.5, 0.5, 0.5]])
