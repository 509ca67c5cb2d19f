"""Sequential temperature scaling (STS, DSpark paper §3.2.1): calibrating the confidence head for the scheduler.

The confidence head's c_k estimates P(draft token k accepted | tokens < k accepted), so a draft prefix of
length k survives with probability a_k = c_1 ... c_k, and the scheduler (`scheduler.py`) weighs verify costs
against these absolute values. Raw confidences are typically overconfident. STS fits one temperature per
position on a held-out set of drafts, left to right: T_k is the value on a log grid that minimises the ECE
of the cumulative product a_k against "the first k tokens were accepted", with T_1 .. T_{k-1} already
fixed. c ↦ σ(logit(c) / T) keeps the order of the confidences, so the head's ranking is untouched.

Because T_k never depends on positions after k, a calibration fitted at depth γ serves any depth <= γ.
A fit is tied to one decoding temperature (acceptance differs between greedy and sampled decoding) and to
the drafter's weights: `DrafterCalibration` keeps one fit per decoding temperature in `sts.json` beside
the exported drafter, with a fingerprint of its weights file so a retrained drafter never inherits it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dspark_jax.atomic_file import write_atomically
from dspark_jax.calibration import expected_calibration_error
from dspark_jax.models.drafter_checkpoint import WEIGHTS

CALIBRATION_FILE = "sts.json"
# Odd count, symmetric in log space: T = 1 (the raw confidences) is on the grid, so a fit never does worse
# than no calibration on the data it was fitted to.
TEMPERATURE_GRID = np.geomspace(0.1, 10.0, 201)
_EPSILON = 1e-6  # confidences of exactly 0 or 1 would have infinite logits


def temperature_scale(confidence: jax.Array, temperature: jax.Array) -> jax.Array:
    """σ(logit(c) / T), elementwise with broadcasting."""
    c = jnp.clip(jnp.asarray(confidence, jnp.float32), _EPSILON, 1 - _EPSILON)
    return jax.nn.sigmoid((jnp.log(c) - jnp.log1p(-c)) / temperature)


@dataclasses.dataclass(frozen=True)
class SequentialTemperatures:
    temperatures: tuple[float, ...]  # T_k for draft positions k = 1 .. len

    def __post_init__(self):
        if not self.temperatures or min(self.temperatures) <= 0:
            raise ValueError(f"temperatures must be positive, one per draft position, got {self.temperatures}")

    @property
    def depth(self) -> int:
        return len(self.temperatures)

    def apply(self, confidence: jax.Array) -> jax.Array:
        """float[..., γ] calibrated c_k for raw confidence float[..., γ], γ <= depth."""
        gamma = confidence.shape[-1]
        if gamma > self.depth:
            raise ValueError(f"the STS calibration covers draft depth {self.depth}, the draft has {gamma}: "
                             f"recalibrate with `dspark-jax calibrate --gamma {gamma}`")
        return temperature_scale(confidence, jnp.asarray(self.temperatures[:gamma], jnp.float32))


def survival_ece(confidence: np.ndarray, accepted: np.ndarray, bins: int = 10) -> np.ndarray:
    """float[γ]: ECE of a_k = c_1 ... c_k against accepted >= k, k = 1 .. γ.

    confidence: float[N, γ], one row per fully verified draft; accepted: int[N], its accepted draft tokens."""
    survival = np.cumprod(np.asarray(confidence, np.float64), axis=1)
    return np.array([expected_calibration_error(survival[:, j], accepted >= j + 1, bins)
                     for j in range(survival.shape[1])])


def fit_sequential_temperatures(confidence: np.ndarray, accepted: np.ndarray, grid: np.ndarray = TEMPERATURE_GRID,
                                bins: int = 10) -> SequentialTemperatures:
    """Fits T_1 .. T_γ left to right by grid search (see the module docstring).

    confidence: float[N, γ] raw confidences of N fully verified drafts; accepted: int[N] in 0..γ."""
    confidence, accepted = np.asarray(confidence, np.float64), np.asarray(accepted)
    if confidence.ndim != 2 or len(confidence) == 0 or accepted.shape != confidence.shape[:1]:
        raise ValueError(f"need confidence [N, γ] with N >= 1 and accepted [N], got {confidence.shape} and "
                         f"{accepted.shape}")
    grid = np.asarray(grid, np.float64)
    prefix = np.ones(len(confidence))  # calibrated a_{k-1}
    temperatures = []
    for k in range(confidence.shape[1]):
        candidates = prefix[None, :] * np.asarray(temperature_scale(confidence[:, k][None, :], grid[:, None]))
        survived = accepted >= k + 1
        errors = np.array([expected_calibration_error(c, survived, bins) for c in candidates])
        # Among equally good temperatures take the one nearest 1: the smallest change to the head's output.
        best = min(np.flatnonzero(errors <= errors.min() + 1e-12), key=lambda i: abs(np.log(grid[i])))
        temperatures.append(float(grid[best]))
        prefix = candidates[best]
    return SequentialTemperatures(tuple(temperatures))


def weights_fingerprint(directory: Path) -> str:
    return hashlib.sha256((Path(directory) / WEIGHTS).read_bytes()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class DrafterCalibration:
    """The STS fits of one exported drafter, one per decoding temperature it was calibrated at."""

    fits: tuple[tuple[float, SequentialTemperatures], ...]  # (decoding temperature, fit), sorted

    def for_temperature(self, temperature: float) -> SequentialTemperatures | None:
        return dict(self.fits).get(float(temperature))

    def with_fit(self, temperature: float, fit: SequentialTemperatures) -> DrafterCalibration:
        return DrafterCalibration(tuple(sorted((dict(self.fits) | {float(temperature): fit}).items())))

    @staticmethod
    def read(directory: Path) -> DrafterCalibration:
        """The drafter's fits; none when it was never calibrated, or when its weights changed since (a fit
        belongs to the weights it was measured on)."""
        path = Path(directory) / CALIBRATION_FILE
        if not path.is_file():
            return DrafterCalibration(())
        stored = json.loads(path.read_text())
        if stored.get("weights") != weights_fingerprint(directory):
            return DrafterCalibration(())
        return DrafterCalibration(tuple(sorted((float(t), SequentialTemperatures(tuple(fit)))
                                               for t, fit in stored["temperatures"].items())))

    def write(self, directory: Path) -> None:
        stored = {"weights": weights_fingerprint(directory),
                  "temperatures": {f"{t:g}": list(fit.temperatures) for t, fit in self.fits}}
        text = json.dumps(stored, indent=2)
        write_atomically(Path(directory) / CALIBRATION_FILE, lambda tmp: Path(tmp).write_text(text))
