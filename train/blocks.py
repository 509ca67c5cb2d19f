"""Training blocks: random anchors per sequence, the positions, targets and masks the drafters learn from.

For an anchor at position a the block covers positions a .. a + γ - 1 (DFlash feeds [x_a, mask, ..., mask]
there, EAGLE-3 the teacher tokens x_a .. x_{a+γ-1}); slot i predicts x_{a+1+i}, and the target's distribution
for it is the target's prediction at position a + i. The block sees the target context at positions < a (and
itself). Slots past the sequence end or outside the loss mask (prompt tokens) are invalid and carry no loss.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Blocks:
    anchors: jax.Array  # int32[B, N]
    positions: jax.Array  # int32[B, N, γ]
    targets: jax.Array  # int32[B, N, γ]: x_{a+1+i}
    previous: jax.Array  # int32[B, N, γ]: x_{a+i}, the teacher-forced token before each slot (Markov head)
    source: jax.Array  # int32[B, N, γ]: position whose target prediction slot i must match (a + i)
    valid: jax.Array  # bool[B, N, γ]
    context_visible: jax.Array  # bool[B, N, T]: context positions < anchor


def at_positions(table: jax.Array, positions: jax.Array) -> jax.Array:
    """[B, N, γ, ...] from a per-position table [B, T, ...] at positions int[B, N, γ] (inside [0, T))."""
    index = positions.reshape(*positions.shape, *([1] * (table.ndim - 2)))
    return jnp.take_along_axis(table[:, None], index, axis=2)


def predicts_loss_token(loss_mask: jax.Array) -> jax.Array:
    """bool[B, T]: positions whose next token is in the loss mask [B, T]: the anchors a block may start at,
    and the only source positions of valid slots."""
    return jnp.zeros_like(loss_mask, dtype=bool).at[:, :-1].set(loss_mask[:, 1:].astype(bool))


def sample_anchors(key: jax.Array, loss_mask: jax.Array, num_anchors: int) -> jax.Array:
    """int32[B, N]: anchors drawn uniformly (with replacement) among positions a whose next token is in
    the loss mask; rows with none fall back to position 0 and yield only invalid slots."""
    batch, length = loss_mask.shape
    eligible = predicts_loss_token(loss_mask)
    logits = jnp.where(eligible, 0.0, -jnp.inf)
    first_only = jnp.where(jnp.arange(length) == 0, 0.0, -jnp.inf)
    logits = jnp.where(jnp.any(eligible, axis=1, keepdims=True), logits, first_only)
    return jax.random.categorical(key, logits[:, None, :], axis=-1, shape=(batch, num_anchors)).astype(jnp.int32)


def make_blocks(tokens: jax.Array, loss_mask: jax.Array, anchors: jax.Array, block_size: int) -> Blocks:
    """tokens, loss_mask: [B, T]; anchors: int32[B, N]."""
    batch, length = tokens.shape
    offsets = jnp.arange(block_size, dtype=jnp.int32)
    positions = anchors[..., None] + offsets  # [B, N, γ]
    take = lambda table, index: at_positions(table, jnp.clip(index, 0, length - 1))
    target_index = positions + 1
    valid = (target_index < length) & take(loss_mask, target_index).astype(bool)
    return Blocks(
        anchors=anchors,
        positions=positions,
        targets=take(tokens, target_index),
        previous=take(tokens, positions),
        source=jnp.clip(positions, 0, length - 1),
        valid=valid,
        context_visible=jnp.arange(length)[None, None, :] < anchors[..., None],
    )


def masked_inputs(blocks: Blocks, mask_token_id: int) -> jax.Array:
    """int32[B, N, γ]: a DFlash block's input, the anchor token then mask tokens."""
    slot = jnp.arange(blocks.previous.shape[-1])
    return jnp.where(slot == 0, blocks.previous[..., :1], mask_token_id).astype(jnp.int32)
