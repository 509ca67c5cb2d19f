"""DSpark objective (paper §3.3): α_ce·CE + α_tv·‖p_d − p_t‖₁ + α_conf·BCE(c, c*), position-weighted.

The draft distribution p_d already includes the Markov head's transition bias, teacher-forced on the data
tokens. The confidence target c* = 1 − ½‖p_d − p_t‖₁ is the probability that the token is accepted
(Leviathan et al., 2023); it is a label, so no gradient flows into the drafter through it.

With a reduced draft vocabulary the draft puts no mass outside it, so the L1 distance gains the target's
mass there, 1 − Σ_{v∈Vd} p_t(v): a constant for the gradient, but it keeps c* the true acceptance probability.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dspark_jax.train.dflash_loss import cross_entropy, weighted_mean
from dspark_jax.train.position_weights import exponential_weights


@dataclasses.dataclass(frozen=True)
class DSparkLossWeights:
    ce: float = 0.1
    tv: float = 0.9
    conf: float = 1.0
    decay: float = 4.0


def dspark_loss(draft_logits: jax.Array, target_log_probs: jax.Array, confidence_logits: jax.Array,
                targets: jax.Array, valid: jax.Array,
                weights: DSparkLossWeights = DSparkLossWeights()) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(total, {"ce", "tv", "conf"}). draft_logits: [N, γ, Vd]; target_log_probs: [N, γ, Vd], the target's
    log-probabilities of the draft tokens (normalised over its full vocabulary); confidence_logits: [N, γ]
    (pre-sigmoid); targets int[N, γ] (draft ids, -1 outside the draft vocabulary); valid bool[N, γ]."""
    position = exponential_weights(draft_logits.shape[1], weights.decay)
    p_draft = jax.nn.softmax(draft_logits.astype(jnp.float32), axis=-1)
    p_target = jnp.exp(target_log_probs.astype(jnp.float32))
    outside = jnp.maximum(1.0 - jnp.sum(p_target, axis=-1), 0.0)
    l1 = jnp.sum(jnp.abs(p_draft - p_target), axis=-1) + outside  # [N, γ]
    label = jax.lax.stop_gradient(1.0 - 0.5 * l1)
    # BCE on logits: log σ(x) = -softplus(-x), log(1 - σ(x)) = -softplus(x).
    bce = label * jax.nn.softplus(-confidence_logits) + (1 - label) * jax.nn.softplus(confidence_logits)
    parts = {
        "ce": weighted_mean(cross_entropy(draft_logits, targets), valid & (targets >= 0), position),
        "tv": weighted_mean(l1, valid, position),
        "conf": weighted_mean(bce, valid, position),
    }
    total = weights.ce * parts["ce"] + weights.tv * parts["tv"] + weights.conf * parts["conf"]
    return total, parts
