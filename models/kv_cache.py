"""Fixed-size key/value cache returned (never mutated) by the forward pass, and the drafters' caches of
their own keys/values over committed positions (the same slots, written with `write`).

Every row owns `size` slots. A slot remembers the position of the token whose key/value it holds, so the
attention mask is derived from positions rather than slot order: plain decoding writes token p into slot p,
while a verifier may park tree nodes in scratch slots and later compact the accepted path.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from dspark_jax.models.config import ModelConfig

# Sentinel position of a free slot: larger than any real position, so `kv_pos <= q_pos` never admits it.
EMPTY_POSITION = np.iinfo(np.int32).max


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    k: jax.Array  # [L, B, S, KVH, D]
    v: jax.Array  # [L, B, S, KVH, D]
    positions: jax.Array  # [B, S] int32: position held by each slot, EMPTY_POSITION when free

    @staticmethod
    def logical_axes() -> KVCache:
        """The cache's logical axis names (models/sharding.py): rows over the data axis, KV heads as the
        target's k/v projections are split."""
        kv = ("layers", "batch", "cache_slots", "kv_heads", "head_dim")
        return KVCache(k=kv, v=kv, positions=("batch", "cache_slots"))

    @classmethod
    def empty(cls, config: ModelConfig, batch: int, size: int, dtype=jnp.float32) -> KVCache:
        return cls.zeros(config.num_layers, batch, size, config.num_kv_heads, config.head_dim, dtype)

    @classmethod
    def zeros(cls, layers: int, batch: int, size: int, kv_heads: int, head_dim: int, dtype=jnp.float32) -> KVCache:
        shape = (layers, batch, size, kv_heads, head_dim)
        return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
                   positions=jnp.full((batch, size), EMPTY_POSITION, jnp.int32))

    def write(self, k: jax.Array, v: jax.Array, positions: jax.Array, slots: jax.Array) -> KVCache:
        """The cache with k, v: [L, B, T, KVH, D] of the tokens at positions int32[B, T] written into slots
        int32[B, T] of every layer; a slot >= size is dropped (how callers skip padding)."""
        rows = jnp.arange(slots.shape[0])[:, None]
        put = lambda table, new: table.at[:, rows, slots].set(new.astype(table.dtype), mode="drop")
        return KVCache(k=put(self.k, k), v=put(self.v, v),
                       positions=self.positions.at[rows, slots].set(positions, mode="drop"))

    @property
    def size(self) -> int:
        return self.positions.shape[1]

    @property
    def batch(self) -> int:
        return self.positions.shape[0]


def causal_mask(cache_positions: jax.Array, query_positions: jax.Array) -> jax.Array:
    """bool[B, T, S]: query t sees every cached token at or before its own position.

    cache_positions: int32[B, S]; query_positions: int32[B, T].
    """
    return cache_positions[:, None, :] <= query_positions[:, :, None]


def keep_path(cache: KVCache, anchor_position: jax.Array, path: jax.Array, num_accepted: jax.Array) -> KVCache:
    """Compacts a verified tree so the cache equals plain decoding of the accepted tokens.

    The verifier parked tree node i in slot anchor_position + i. The accepted path (node indices
    path[:, j], j <= num_accepted) moves to slots anchor_position + j, and every other slot at or beyond
    the anchor is freed. anchor_position, num_accepted: int32[B]; path: int32[B, D + 1].
    """
    batch, span = path.shape
    steps = jnp.arange(span, dtype=jnp.int32)[None, :]
    source = anchor_position[:, None] + path  # [B, D + 1]
    target = jnp.where(steps <= num_accepted[:, None], anchor_position[:, None] + steps, cache.size)
    rows = jnp.arange(batch)[:, None]

    def move(kv: jax.Array) -> jax.Array:  # [L, B, S, KVH, D]
        moved = kv[:, rows, jnp.minimum(source, cache.size - 1)]  # [L, B, D + 1, KVH, D]
        return kv.at[:, rows, target].set(moved, mode="drop")

    last_kept = anchor_position + num_accepted
    # By slot, not position: an unaccepted sibling has a position the accepted path also reaches.
    scratch = jnp.arange(cache.size)[None, :] > last_kept[:, None]
    positions = jnp.where(scratch, EMPTY_POSITION, cache.positions)
    positions = positions.at[rows, target].set(anchor_position[:, None] + steps, mode="drop")
    return KVCache(k=move(cache.k), v=move(cache.v), positions=positions)
