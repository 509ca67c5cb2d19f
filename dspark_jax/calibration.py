"""Calibration of a drafter's confidence head: ECE, AUROC, Brier score and reliability bins.

Each sample is a confidence c in [0, 1] and an outcome y in {0, 1} (the draft token survived
verification given that the tokens before it did; `SpecStats.confidence_outcomes`). ECE uses equal-width
bins: Σ_b (n_b / n) |mean(y)_b − mean(c)_b|. AUROC is the Mann–Whitney probability that a surviving token
got a higher confidence than a rejected one (ties count half); it is undefined (NaN) with one class only.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class ReliabilityBins:
    confidence: np.ndarray  # float[bins]: mean confidence per bin (NaN where empty)
    accuracy: np.ndarray  # float[bins]: mean outcome per bin (NaN where empty)
    count: np.ndarray  # int[bins]


def reliability_bins(confidence: np.ndarray, outcome: np.ndarray, bins: int = 10) -> ReliabilityBins:
    confidence, outcome = np.asarray(confidence, np.float64), np.asarray(outcome, np.float64)
    index = np.clip((confidence * bins).astype(int), 0, bins - 1)  # c = 1 belongs to the last bin
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, confidence, minlength=bins) / count
        accuracy = np.bincount(index, outcome, minlength=bins) / count
    return ReliabilityBins(mean_conf, accuracy, count)


def expected_calibration_error(confidence: np.ndarray, outcome: np.ndarray, bins: int = 10) -> float:
    r = reliability_bins(confidence, outcome, bins)
    filled = r.count > 0
    if not filled.any():
        return float("nan")
    return float(np.sum(r.count[filled] * np.abs(r.accuracy[filled] - r.confidence[filled])) / r.count.sum())


def brier_score(confidence: np.ndarray, outcome: np.ndarray) -> float:
    if len(confidence) == 0:
        return float("nan")
    return float(np.mean((np.asarray(confidence, np.float64) - np.asarray(outcome, np.float64)) ** 2))


def auroc(confidence: np.ndarray, outcome: np.ndarray) -> float:
    confidence, outcome = np.asarray(confidence, np.float64), np.asarray(outcome, bool)
    positives, negatives = confidence[outcome], confidence[~outcome]
    if len(positives) == 0 or len(negatives) == 0:
        return float("nan")
    # Average ranks handle ties: rank-sum of positives minus its minimum, over all pairs.
    order = np.argsort(confidence, kind="stable")
    ranks = np.empty(len(confidence))
    ranks[order] = np.arange(1, len(confidence) + 1)
    for value in np.unique(confidence):
        tied = confidence == value
        ranks[tied] = ranks[tied].mean()
    rank_sum = ranks[outcome].sum()
    return float((rank_sum - len(positives) * (len(positives) + 1) / 2) / (len(positives) * len(negatives)))


def calibration_by_position(confidence: np.ndarray, outcome: np.ndarray, position: np.ndarray,
                            depth: int, bins: int = 10) -> list[dict]:
    """One record per draft position 1..depth: n, ECE, AUROC, Brier."""
    records = []
    for k in range(1, depth + 1):
        at = position == k
        c, y = confidence[at], outcome[at]
        records.append({"position": k, "n": int(at.sum()), "ece": expected_calibration_error(c, y, bins),
                        "auroc": auroc(c, y), "brier": brier_score(c, y)})
    return records
