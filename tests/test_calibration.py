"""Calibration metrics against values computed by hand."""

import numpy as np
import pytest

from dspark_jax.calibration import (
    auroc,
    brier_score,
    calibration_by_position,
    expected_calibration_error,
    reliability_bins,
)

CONF = np.array([0.1, 0.15, 0.8, 0.9, 0.85, 0.4])
OUT = np.array([0, 1, 1, 1, 0, 0])


def test_reliability_bins_and_ece_by_hand():
    r = reliability_bins(CONF, OUT, bins=2)  # [0, .5): .1 .15 .4 -> y 0 1 0; [.5, 1]: .8 .9 .85 -> y 1 1 0
    np.testing.assert_allclose(r.confidence, [0.65 / 3, 2.55 / 3])
    np.testing.assert_allclose(r.accuracy, [1 / 3, 2 / 3])
    assert r.count.tolist() == [3, 3]
    expected = 0.5 * abs(1 / 3 - 0.65 / 3) + 0.5 * abs(2 / 3 - 2.55 / 3)
    assert expected_calibration_error(CONF, OUT, bins=2) == pytest.approx(expected)
    assert expected_calibration_error(np.array([1.0, 1.0]), np.array([1, 1])) == 0.0  # c = 1 in the last bin


def test_brier_by_hand():
    assert brier_score(CONF, OUT) == pytest.approx(np.mean([0.01, 0.7225, 0.04, 0.01, 0.7225, 0.16]))


def test_auroc_by_hand():
    # positives .15 .8 .9 vs negatives .1 .85 .4: pairs won 1+0+0 + 1+0+1 + 1+1+1 = 6 of 9
    assert auroc(CONF, OUT) == pytest.approx(6 / 9)
    assert auroc(np.array([0.5, 0.5]), np.array([1, 0])) == pytest.approx(0.5)  # a tie counts half
    assert auroc(np.array([0.2, 0.9]), np.array([0, 1])) == 1.0
    assert np.isnan(auroc(np.array([0.2, 0.9]), np.array([1, 1])))


def test_by_position():
    records = calibration_by_position(CONF, OUT, np.array([1, 1, 1, 2, 2, 2]), depth=3)
    assert [r["n"] for r in records] == [3, 3, 0]
    assert records[0]["brier"] == pytest.approx(np.mean([0.01, 0.7225, 0.04]))
    assert np.isnan(records[2]["ece"])
