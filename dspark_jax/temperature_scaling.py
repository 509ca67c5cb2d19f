"""Sequential temperature scaling (STS, DSpark paper §3.2.1): calibrating the confidence head for the scheduler.

The confidence head's c_k estimates P(draft token k accepted | tokens < k accepted), so a draft prefix of
length k survives with probability a_k = c_1 ... c_k, and the scheduler (`scheduler.py`) weighs verify costs
against these absolute values. Raw confidences are typically overconfident. STS fits one temperature per
position on a held-out set of drafts, left to right: T_k is the value on a log grid that minimises the ECE
of the cumulative product a_k against "the first k tokens were accepted", with T_1 .. T_{k-1} already
fixed. c ↦ σ(logit(c) / T) keeps the order of the confidences, so the head's ranking is untouched.

Because T_k never depends on positions after k, a calibration fitted at depth γ serves any depth <= γ.
A fit is tied to one decoding temperature (acceptance differs between greedy and sampled decoding) and to
the drafter's weights: `models/drafter_calibration.py` stores the fits beside the exported drafter. This
module is math only, so the scheduler that applies a fit imports nothing else.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from dspark_jax.calibration import expected_calibration_error

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
