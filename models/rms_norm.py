"""RMSNorm, one definition for the target (weights from its checkpoint) and the drafters (a trained `scale`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """x * rsqrt(mean(x²) + eps) * weight, computed in float32 (weight is the effective multiplier)."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (normed * weight.astype(jnp.float32)).astype(x.dtype)


class RMSNorm(nnx.Module):
    """A drafter's RMSNorm over the last axis: `rms_norm` with a trained multiplier `scale` (ones at init),
    output in `dtype` (the drafter's compute dtype)."""

    def __init__(self, size: int, *, eps: float, dtype: jnp.dtype):
        self.scale = nnx.Param(jnp.ones((size,), jnp.float32))
        self.eps, self.dtype = eps, dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        return rms_norm(x.astype(self.dtype), self.scale.get_value(), self.eps)


def head_norms(config) -> tuple[RMSNorm | None, RMSNorm | None]:
    """(query norm, key norm) over one head of a drafter's attention when `config.qk_norm`, else (None, None)."""
    if not config.qk_norm:
        return None, None
    return tuple(RMSNorm(config.head_dim, eps=config.rms_norm_eps, dtype=config.dtype) for _ in range(2))


def maybe_norm(norm: RMSNorm | None, x: jax.Array) -> jax.Array:
    return x if norm is None else norm(x)
