"""Gemma's logit soft-capping, cap · tanh(x / cap): one definition for attention scores (reference and GPU
kernels) and for the LM head (target and draft vocabulary)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def soft_cap(x: jax.Array, cap: float | None) -> jax.Array:
    """x squashed smoothly into (-cap, cap); x itself when cap is None (families without capping)."""
    return x if cap is None else jnp.tanh(x / cap) * cap
