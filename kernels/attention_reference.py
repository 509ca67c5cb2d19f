"""Pure-XLA grouped-query attention over a KV cache with an explicit boolean mask.

This is the semantics every attention kernel in `kernels/` must reproduce, and the implementation used
wherever no kernel applies (CPU, odd shapes).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dspark_jax.kernels.soft_cap import soft_cap


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array,
    *,
    scale: float,
    logit_softcap: float | None = None,
) -> jax.Array:
    """Softmax attention of a few queries against all cache slots.

    q: [B, T, H, D]; k, v: [B, S, KVH, D] with H a multiple of KVH; mask: bool[B, T, S], True = visible.
    Returns [B, T, H, D] in q's dtype. Scores and softmax run in float32. A query with nothing visible
    gets a finite (uniform) result rather than NaN, so padding rows never poison a batch.
    """
    b, t, h, d = q.shape
    kv_heads = k.shape[2]
    q = q.reshape(b, t, kv_heads, h // kv_heads, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) * scale
    scores = soft_cap(scores, logit_softcap)
    scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, t, h, d)
