"""DFlash objective: position-weighted cross-entropy of the block's draft logits against the data tokens.

Targets are draft-vocabulary ids; a data token outside the draft vocabulary is -1 and carries no
cross-entropy (the drafter cannot propose it).
"""

import jax
import jax.numpy as jnp

from dspark_jax.train.position_weights import exponential_weights


def weighted_mean(values: jax.Array, valid: jax.Array, weights: jax.Array) -> jax.Array:
    """Mean of values [N, γ] over valid entries, each position k weighted by weights[k]."""
    w = valid.astype(jnp.float32) * weights[None, :]
    return jnp.sum(values * w) / jnp.maximum(jnp.sum(w), 1e-9)


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """float32[N, γ]: -log softmax(logits)[target], 0 where target < 0. logits [N, γ, V]; targets int[N, γ]."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = -jnp.take_along_axis(log_probs, jnp.maximum(targets, 0)[..., None], axis=-1)[..., 0]
    return jnp.where(targets >= 0, picked, 0.0)


def dflash_loss(draft_logits: jax.Array, targets: jax.Array, valid: jax.Array, decay: float = 4.0) -> jax.Array:
    """Scalar loss. draft_logits [N, γ, Vd]; targets int[N, γ] (draft ids, -1 outside the draft vocabulary);
    valid bool[N, γ] (inside the sequence and the loss mask)."""
    return weighted_mean(cross_entropy(draft_logits, targets), valid & (targets >= 0),
                         exponential_weights(draft_logits.shape[1], decay))
