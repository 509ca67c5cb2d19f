"""DFlash's and DSpark's teacher-forced pass: the backbone over every training block in one call.

Each block is [x_a, mask, ..., mask] at positions a .. a + γ - 1 and sees the fused target context before
a, exactly what the proposer runs at inference; DSpark's Markov head then reads the data's previous token
at each slot (x_a, x*_1, ..., x*_{γ-1}) instead of its own draws. With `lookup_inputs` the slots also read
prompt lookup's candidates over x_0 .. x_a, as the proposer looks them up over its history.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dspark_jax.models.config import ModelConfig
from dspark_jax.models.dflash import DFlashDrafter
from dspark_jax.models.draft_vocab import DraftHead
from dspark_jax.models.dspark import DSparkDrafter
from dspark_jax.models.params import TransformerParams
from dspark_jax.models.transformer import embed
from dspark_jax.proposers.ngram import lookup_candidates
from dspark_jax.train.blocks import Blocks, masked_inputs


def _backbone_hidden(model: DFlashDrafter, target: ModelConfig, params: TransformerParams, tokens: jax.Array,
                     features: jax.Array, blocks: Blocks) -> jax.Array:
    batch, length = tokens.shape
    context_k, context_v = model.backbone.context(features, jnp.broadcast_to(jnp.arange(length), (batch, length)))
    inputs = embed(params, masked_inputs(blocks, model.config.mask_token_id), config=target)
    lookup, match = None, None
    if model.config.lookup_inputs:
        anchors = blocks.anchors.shape[1]
        history = jnp.broadcast_to(tokens[:, None], (batch, anchors, length)).reshape(batch * anchors, length)
        candidates, match = lookup_candidates(history, blocks.anchors.reshape(-1) + 1, blocks.positions.shape[-1])
        lookup = embed(params, candidates.reshape(blocks.positions.shape), config=target)
        match = match.reshape(batch, anchors)
    inputs = model.backbone.block_inputs(inputs, lookup, match)
    return model.backbone(inputs, blocks.positions, context_k, context_v, blocks.context_visible)  # [B, N, γ, E]


def dflash_teacher_forced(model: DFlashDrafter, target: ModelConfig, params: TransformerParams, tokens: jax.Array,
                          features: jax.Array, blocks: Blocks, head: DraftHead) -> tuple[jax.Array, None]:
    """(draft logits float32[B, N, γ, Vd], None). tokens: [B, T]; features: [K, B, T, E]."""
    return head.logits(_backbone_hidden(model, target, params, tokens, features, blocks)), None


def dspark_teacher_forced(model: DSparkDrafter, target: ModelConfig, params: TransformerParams, tokens: jax.Array,
                          features: jax.Array, blocks: Blocks, head: DraftHead) -> tuple[jax.Array, jax.Array]:
    """(draft logits float32[B, N, γ, Vd] with the Markov bias, confidence logits [B, N, γ])."""
    hidden = _backbone_hidden(model, target, params, tokens, features, blocks)
    return model.heads.teacher_forced(head.logits(hidden), hidden, head.to_draft(blocks.previous))
