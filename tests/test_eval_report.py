"""The eval report when a scheduled drafter verified no draft on some task (nothing to calibrate there)."""

import dataclasses

import numpy as np

from dspark_jax.calibration import calibration_by_position, reliability_bins
from dspark_jax.eval_report import markdown, write_report


def _method(confidence, accepted, position):
    """One drafter's per-task record as evaluation.py writes it; no verified draft -> None, as there."""
    record = {"tau": 1.1, "tau_standard_error": 0.01, "speedup": 0.9, "verified_per_step": 0.1,
              "tokens_per_s": 18.0, "lossless": True, "accept_rate_by_position": [0.2, 0.1],
              "calibration": None, "reliability": None, "survival_ece": None}
    if len(confidence):
        record["calibration"] = calibration_by_position(confidence, accepted, position, 2)
        record["reliability"] = {k: np.asarray(v).tolist()
                                 for k, v in dataclasses.asdict(reliability_bins(confidence, accepted)).items()}
    return record


def test_tasks_without_verified_drafts_are_left_out_of_the_calibration(tmp_path):
    rng = np.random.default_rng(0)
    confidence = rng.uniform(size=40)
    accepted = (rng.uniform(size=40) < confidence).astype(float)
    position = np.repeat([1, 2], 20)
    results = {"settings": {"temperature": 0.0, "max_new_tokens": 8, "batch_size": 1,
                            "drafters": {"dspark+scheduler": "chain 2"}},
               "tasks": {"gsm8k": {"autoregressive": {"tokens_per_s": 20.0},
                                   "dspark+scheduler": _method(confidence, accepted, position)},
                         "humaneval": {"autoregressive": {"tokens_per_s": 20.0},
                                       "dspark+scheduler": _method([], [], [])}}}

    report = markdown(results)

    assert "Confidence calibration of dspark+scheduler (raw head, mean over the tasks with verified drafts: gsm8k)" \
        in report
    assert "| 1 | 20 |" in report and "| 2 | 20 |" in report  # n counts only gsm8k's drafts
    written = {p.name for p in write_report(results, tmp_path)}
    assert {"results.json", "results.md", "reliability.png", "speedup.png"} <= written
