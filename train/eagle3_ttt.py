"""EAGLE-3's training-time test: the drafting steps unrolled at random anchors, as the drafter runs them.

For an anchor at position a (the newest token, whose target features are not known yet), step 0 reads
[embed(x_a) ; g_{a-1}] at position a - 1 and predicts x_{a+1}; step k reads [embed(x_{a+k}) ; h_{k-1}]
at position a - 1 + k, with h_{k-1} the drafter's own output of the previous step (not a target feature),
and predicts x_{a+1+k}. Every step attends to the entries of positions < a - 1, computed from target
features, and to the chain's own entries 0..k, exactly the keys the proposer's cache offers at inference.
The same `Blocks` as DFlash/DSpark give anchors, teacher tokens, targets and validity, so all three
drafters learn from the same positions for the same budget.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dspark_jax.models.config import ModelConfig
from dspark_jax.models.draft_vocab import DraftHead
from dspark_jax.models.eagle3 import Eagle3Drafter, following_tokens
from dspark_jax.models.params import TransformerParams
from dspark_jax.models.transformer import embed
from dspark_jax.train.blocks import Blocks


def training_time_test(model: Eagle3Drafter, target: ModelConfig, params: TransformerParams, tokens: jax.Array,
                       features: jax.Array, blocks: Blocks, head: DraftHead) -> jax.Array:
    """Draft logits float32[γ, B, N, Vd] of the γ unrolled steps at each of the N anchors per row.

    tokens: int32[B, T]; features: [K, B, T, E] target layer outputs; blocks: from `make_blocks`.
    """
    batch, length = tokens.shape
    g = model.fuse_features(features)  # [B, T, E]
    next_tokens = following_tokens(tokens)  # the last entry is never visible
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    context_k, context_v = model.keys_values(embed(params, next_tokens, config=target), g, positions)
    anchors = blocks.anchors  # [B, N]
    visible = jnp.arange(length)[None, None, :] < (anchors - 1)[..., None]
    hidden = jnp.take_along_axis(g, jnp.maximum(anchors - 1, 0)[..., None], axis=1)
    hidden = jnp.where((anchors > 0)[..., None], hidden, 0.0)  # an anchor at 0 has no feature before it
    c = model.config
    chain_k = jnp.zeros((*anchors.shape, 0, c.num_kv_heads, c.head_dim), context_k.dtype)
    chain_v = chain_k
    step_logits = []
    for k in range(c.steps):
        token_embeddings = embed(params, blocks.previous[..., k], config=target)
        hidden, chain_k, chain_v = model(token_embeddings, hidden, anchors - 1 + k, context_k, context_v, visible,
                                         chain_k, chain_v)
        step_logits.append(head.logits(model.normed(hidden)))
    return jnp.stack(step_logits)


def eagle3_teacher_forced(model: Eagle3Drafter, target: ModelConfig, params: TransformerParams, tokens: jax.Array,
                          features: jax.Array, blocks: Blocks, head: DraftHead) -> tuple[jax.Array, None]:
    """(draft logits float32[B, N, γ, Vd], None): the training-time test laid out like a block drafter's."""
    return jnp.moveaxis(training_time_test(model, target, params, tokens, features, blocks, head), 0, 2), None
