"""Pallas Mosaic GPU kernel for single-token decode (T == 1): the verify kernel's pipeline with one mask row.

With one query token, every query row of a KV head (its H/KVH grouped heads) sees the same cache slots,
so the mask travels as int8 [B, S] and each pipeline step fetches `block_s` bytes of it, broadcast across
the rows in registers; the verify kernel instead repeats the mask per grouped head and streams 64 rows of
it. The call signature matches `attention_reference.attention`, so the dispatcher can swap it in.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dspark_jax.kernels.verify_attention import DEFAULT_BLOCK_S, partial_attention


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array,
    *,
    scale: float,
    logit_softcap: float | None = None,
    interpret: bool = False,
    block_s: int = DEFAULT_BLOCK_S,
    num_splits: int | None = None,
) -> jax.Array:
    """q: [B, 1, H, D]; k, v: [B, S, KVH, D]; mask: bool[B, 1, S]. Returns [B, 1, H, D] in q's dtype.

    block_s, num_splits and interpret as in `verify_attention.attention`. Decode reads the whole cache
    for one token, so it is bandwidth-bound: the default splits spread a small batch over all SMs.
    """
    b, t, h, d = q.shape
    if t != 1:
        raise ValueError(f"decode attention takes one query token per row, got T = {t}")
    kv_heads = k.shape[2]
    q_rows = q.reshape(b, kv_heads, h // kv_heads, d)  # row g of KV head h is query head h·G + g
    out = partial_attention(
        q_rows, k, v, mask[:, 0].astype(jnp.int8),
        scale=scale, logit_softcap=logit_softcap, block_s=block_s, num_splits=num_splits, interpret=interpret,
    )  # fmt: skip
    return out.reshape(b, 1, h, d).astype(q.dtype)
