"""The drafters' attention: groups of queries that share a context and each see keys of their own, packed
into one call of the target's attention (`kernels/attention.py`), so drafters take the same kernel
dispatch (Pallas on Hopper, XLA elsewhere) as the target.

A DFlash block is a group of γ queries seeing the context before its anchor and its own γ slots; an EAGLE-3
step is a group of one query seeing the context before its anchor and the chain drafted so far. Training
packs many groups per sequence (one per anchor) over one shared context; the keys are [context ; every
group's own keys] and the mask lets a group see only its own part of the second half.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dspark_jax.kernels.attention import attention


def grouped_attention(q: jax.Array, context_k: jax.Array, context_v: jax.Array, context_visible: jax.Array,
                      own_k: jax.Array, own_v: jax.Array, *, scale: float) -> jax.Array:
    """q: [B, N, G, H, D], N groups of G queries; context_k/v: [B, S, KVH, D] with context_visible bool[B, N, S];
    own_k/v: [B, N, J, KVH, D], keys only group n sees (all J of them). Returns [B, N, G, H, D]."""
    b, n, g, h, d = q.shape
    size, j, kv_heads = context_k.shape[1], own_k.shape[2], own_k.shape[3]
    keys = jnp.concatenate([context_k, own_k.reshape(b, n * j, kv_heads, d).astype(context_k.dtype)], axis=1)
    values = jnp.concatenate([context_v, own_v.reshape(b, n * j, kv_heads, d).astype(context_v.dtype)], axis=1)
    groups = jnp.arange(n)
    own_visible = jnp.broadcast_to((groups[:, None, None, None] == groups[None, None, :, None]), (n, g, n, j))
    mask = jnp.concatenate([jnp.broadcast_to(context_visible[:, :, None, :], (b, n, g, size)).reshape(b, n * g, size),
                            jnp.broadcast_to(own_visible.reshape(1, n * g, n * j), (b, n * g, n * j))], axis=-1)
    out = attention(q.reshape(b, n * g, h, d), keys, values, mask, scale=scale)
    return out.reshape(b, n, g, h, d)
