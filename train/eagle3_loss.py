"""EAGLE-3 training-time test objective: soft cross-entropy against the target distribution, summed over
unrolled drafting steps weighted 0.8^k (step k feeds the drafter its own step k-1 outputs)."""

import jax
import jax.numpy as jnp


def eagle3_loss(step_logits: jax.Array, target_log_probs: jax.Array, valid: jax.Array,
                step_decay: float = 0.8) -> jax.Array:
    """Scalar loss. step_logits: [K, N, T, Vd], the drafter's logits at unroll step k for every position;
    target_log_probs: [K, N, T, Vd], the target's log-probabilities (over its full vocabulary) of the draft
    tokens for the token each step predicts; valid bool[K, N, T] (step k at position t needs t + k inside the
    sequence and the loss mask). Target mass outside the draft vocabulary is ignored, as in EAGLE-3."""
    log_draft = jax.nn.log_softmax(step_logits.astype(jnp.float32), axis=-1)
    p_target = jnp.exp(target_log_probs.astype(jnp.float32))
    soft_ce = -jnp.sum(p_target * log_draft, axis=-1)  # [K, N, T]
    mask = valid.astype(jnp.float32)
    per_step = jnp.sum(soft_ce * mask, axis=(1, 2)) / jnp.maximum(jnp.sum(mask, axis=(1, 2)), 1.0)
    return jnp.sum(step_decay ** jnp.arange(step_logits.shape[0], dtype=jnp.float32) * per_step)
