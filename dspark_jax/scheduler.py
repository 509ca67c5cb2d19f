"""Hardware-aware prefix scheduler (DSpark paper §3.2.2, Algorithm 1): how deep to verify a draft.

Draft token j of row r survives verification with probability a_{r,j} = c_{r,1} ... c_{r,j} (the
confidence head's chain rule), so verifying depth ℓ yields Σ_live (1 + Σ_{j<=ℓ} a_{r,j}) tokens in
expectation, and one engine step that verifies ℓ tokens per row takes `step_seconds[ℓ]` (profiled once,
`speculative.profile_scheduler`). The scheduler picks the ℓ of highest expected throughput
Θ(ℓ) = tokens(ℓ) / step_seconds[ℓ], admitting depths in order and stopping at the first one that does not
raise Θ. The confidences are first calibrated by sequential temperature scaling when the drafter has a fit
(`temperature_scaling.py`), since Θ needs the absolute survival probabilities, not just their order.

The paper admits single (row, position) pairs into a ragged verify batch. Our verify pass has a static
shape, every row padded to the same depth, so a step's cost depends on the depth alone and a row verifying
less than the others saves nothing: admission is per depth, for all rows at once. The early stop is what
keeps sampling lossless (paper Appendix A): whether depth ℓ is verified depends on a_{·,≤ℓ}, hence on the
draft tokens before ℓ but never on the token at ℓ itself, since c_ℓ is computed from token ℓ - 1.
Greedy decoding needs no such care (a draft token is kept iff it equals the target's argmax, whatever
else was verified), so there the scheduler takes the depth of highest Θ over all depths: on a CPU the
first verified token costs far more than each one after it, and the early stop would end at that first
step even when the whole draft is worth verifying.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dspark_jax.temperature_scaling import SequentialTemperatures


@dataclasses.dataclass(frozen=True)
class PrefixScheduler:
    step_seconds: tuple[float, ...]  # one engine step verifying 0, 1, ..., γ draft tokens per row
    calibration: SequentialTemperatures | None = None  # STS fit for the run's decoding temperature; None: raw c
    greedy: bool = False  # the run decodes greedily: choose the best depth overall, not by early stop

    def __post_init__(self):
        if len(self.step_seconds) < 2 or min(self.step_seconds) <= 0:
            raise ValueError(f"step_seconds needs a positive time for depths 0..γ (γ >= 1), got {self.step_seconds}")

    def verify_depth(self, confidence: jax.Array, live: jax.Array) -> jax.Array:
        """int32[]: draft depth to verify. confidence: float[B, γ], c_k per row; live: bool[B], rows still
        generating (finished rows add nothing)."""
        depth = confidence.shape[1]
        if depth != len(self.step_seconds) - 1:
            raise ValueError(f"the scheduler was profiled for γ = {len(self.step_seconds) - 1}, the draft has {depth}")
        if self.calibration is not None:
            confidence = self.calibration.apply(confidence)
        survival = jnp.cumprod(jnp.clip(confidence.astype(jnp.float32), 0.0, 1.0), axis=1)
        survival = jnp.where(live[:, None], survival, 0.0)
        tokens = jnp.sum(live) + jnp.concatenate([jnp.zeros(1), jnp.cumsum(jnp.sum(survival, axis=0))])
        throughput = tokens / jnp.asarray(self.step_seconds, jnp.float32)  # Θ(ℓ), ℓ = 0..γ
        if self.greedy:
            return jnp.argmax(throughput).astype(jnp.int32)
        # Admit depth ℓ while each one raised Θ: the first ℓ whose successor does not.
        gains = throughput[1:] > throughput[:-1]
        return jnp.argmin(jnp.concatenate([gains, jnp.zeros(1, bool)])).astype(jnp.int32)
