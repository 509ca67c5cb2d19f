"""Sequential temperature scaling: fits recover known temperatures, left to right, and are stored safely."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from dspark_jax.models.drafter_calibration import CALIBRATION_FILE, DrafterCalibration
from dspark_jax.models.drafter_checkpoint import WEIGHTS
from dspark_jax.temperature_scaling import (
    SequentialTemperatures,
    fit_sequential_temperatures,
    survival_ece,
    temperature_scale,
)


def logit(p):
    return np.log(p) - np.log1p(-p)


def drafts(true_temperatures, n=40_000, seed=0):
    """Raw confidences overconfident by known temperatures: the true c_k is σ(logit(raw_k) / T_k), and the
    accepted length is drawn from those true conditional survival probabilities."""
    rng = np.random.default_rng(seed)
    raw = 1 / (1 + np.exp(-rng.normal(1.0, 2.0, (n, len(true_temperatures)))))
    true = 1 / (1 + np.exp(-logit(raw) / np.asarray(true_temperatures)))
    survives = rng.uniform(size=true.shape) < true
    accepted = np.argmin(np.concatenate([survives, np.zeros((n, 1), bool)], axis=1), axis=1)
    return raw, accepted


def test_scaling_by_hand():
    np.testing.assert_allclose(temperature_scale(jnp.float32(0.8), 1.0), 0.8, rtol=1e-6)
    # logit(0.8) = ln 4; T = 2 halves it: σ(ln 2) = 2/3.
    np.testing.assert_allclose(temperature_scale(jnp.float32(0.8), 2.0), 2 / 3, rtol=1e-6)
    np.testing.assert_allclose(temperature_scale(jnp.float32(0.5), 7.0), 0.5, rtol=1e-6)
    assert np.isfinite(temperature_scale(jnp.array([0.0, 1.0]), 3.0)).all()
    fit = SequentialTemperatures((2.0, 0.5))
    np.testing.assert_allclose(fit.apply(jnp.array([[0.8, 0.8]])), [[2 / 3, 16 / 17]], rtol=1e-6)
    np.testing.assert_allclose(fit.apply(jnp.array([[0.8]])), [[2 / 3]], rtol=1e-6)  # shallower drafts: a prefix


def test_order_is_preserved():
    c = jnp.linspace(0.01, 0.99, 50)
    for t in (0.3, 1.0, 4.0):
        assert np.all(np.diff(np.asarray(temperature_scale(c, t))) > 0)


def test_survival_ece_by_hand():
    # a_1 = (.5, .5), a_2 = (.25, .25); outcomes accepted >= 1: (1, 1), >= 2: (0, 1).
    ece = survival_ece(np.array([[0.5, 0.5], [0.5, 0.5]]), np.array([1, 2]))
    np.testing.assert_allclose(ece, [0.5, 0.25])


def test_fit_recovers_the_overconfidence_position_by_position():
    true = (2.0, 1.0, 0.5)
    raw, accepted = drafts(true)
    fit = fit_sequential_temperatures(raw, accepted)
    np.testing.assert_allclose(fit.temperatures, true, rtol=0.1)
    before, after = survival_ece(raw, accepted), survival_ece(np.asarray(fit.apply(raw)), accepted)
    assert after[0] < 0.01 < 0.05 < before[0]
    assert np.all(after <= before + 1e-9)


def test_calibrated_data_keeps_temperature_one():
    raw, accepted = drafts((1.0, 1.0))
    np.testing.assert_allclose(fit_sequential_temperatures(raw, accepted).temperatures, (1.0, 1.0), rtol=0.1)


def test_each_temperature_depends_on_earlier_positions_only():
    raw, accepted = drafts((2.0, 1.0, 0.5), n=5_000)
    full = fit_sequential_temperatures(raw, accepted)
    # Cutting the drafts at depth 2 (accepted capped too) leaves T_1, T_2 unchanged.
    assert fit_sequential_temperatures(raw[:, :2], np.minimum(accepted, 2)).temperatures == full.temperatures[:2]
    # So does scrambling position 3.
    scrambled = raw.copy()
    scrambled[:, 2] = np.random.default_rng(1).uniform(size=len(raw))
    assert fit_sequential_temperatures(scrambled, accepted).temperatures[:2] == full.temperatures[:2]


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="confidence"):
        fit_sequential_temperatures(np.zeros((0, 3)), np.zeros(0, int))
    with pytest.raises(ValueError, match="confidence"):
        fit_sequential_temperatures(np.zeros((4, 3)), np.zeros(5, int))
    with pytest.raises(ValueError, match="positive"):
        SequentialTemperatures((1.0, 0.0))
    with pytest.raises(ValueError, match="calibrate --gamma 3"):
        SequentialTemperatures((1.0, 2.0)).apply(jnp.zeros((1, 3)))


def test_stored_fits_belong_to_their_weights(tmp_path):
    (tmp_path / WEIGHTS).write_bytes(b"weights v1")
    assert DrafterCalibration.read(tmp_path).fits == ()
    calibration = DrafterCalibration(()).with_fit(1.0, SequentialTemperatures((2.0, 1.5)))
    calibration = calibration.with_fit(0.0, SequentialTemperatures((0.5, 0.7)))
    calibration.write(tmp_path)
    read = DrafterCalibration.read(tmp_path)
    assert read == calibration
    assert read.for_temperature(0) == SequentialTemperatures((0.5, 0.7))
    assert read.for_temperature(0.7) is None
    assert sorted(json.loads((tmp_path / CALIBRATION_FILE).read_text())["temperatures"]) == ["0", "1"]
    # Refitting one temperature keeps the other.
    refitted = read.with_fit(1.0, SequentialTemperatures((3.0, 3.0)))
    assert refitted.for_temperature(0) == SequentialTemperatures((0.5, 0.7))
    # A retrained drafter (new weights in the same directory) does not inherit the fits.
    (tmp_path / WEIGHTS).write_bytes(b"weights v2")
    assert DrafterCalibration.read(tmp_path).fits == ()
