"""DFlash and DSpark as proposers: one backbone pass drafts a whole block inside the jitted loop.

The proposer keeps, per draft layer, the keys/values of the fused target context for every committed
position (a fixed-size cache like the target's). `init` fills it from the target's prefill features,
`update` appends the features of the verified path (anchor + accepted tokens), and `propose` runs the
backbone once over [anchor, mask, ..., mask] and turns its hidden states into draft tokens: independently
per slot for DFlash, left to right through the Markov head for DSpark (which also yields confidences).
Embedding and LM head are the target's own arrays, passed in (the head restricted once to the draft
vocabulary); drafts are made in draft ids and handed to the engine as target ids.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from dspark_jax.generate import prompt_slots
from dspark_jax.models.config import ModelConfig
from dspark_jax.models.dflash import DFlashConfig, DFlashDrafter
from dspark_jax.models.draft_vocab import DraftHead
from dspark_jax.models.dspark import DSparkDrafter, DSparkHeads
from dspark_jax.models.kv_cache import KVCache
from dspark_jax.models.params import TransformerParams
from dspark_jax.models.transformer import embed
from dspark_jax.proposers.base import Draft, DraftContext, Prefilled, Verified
from dspark_jax.proposers.ngram import lookup_candidates
from dspark_jax.sampling import SamplingConfig, expand_candidates
from dspark_jax.tree import TreeTemplate


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class BlockDrafterParams:
    backbone: nnx.State
    heads: nnx.State | None  # None for DFlash
    target: TransformerParams  # the target's weights: embedding and head are read, never stored twice
    head: DraftHead  # the target's head over the draft vocabulary


@dataclasses.dataclass(frozen=True)
class BlockDrafterProposer:
    target: ModelConfig
    drafter: DFlashConfig
    backbone_def: nnx.GraphDef
    heads_def: nnx.GraphDef | None = None

    @property
    def capture_layers(self) -> tuple[int, ...]:
        return self.drafter.target_layers

    def _context(self, params: BlockDrafterParams, features: jax.Array, positions: jax.Array):
        return nnx.merge(self.backbone_def, params.backbone).context(features, positions)

    def init(self, params: BlockDrafterParams, prefilled: Prefilled, cache_size: int) -> KVCache:
        """The context cache: per draft layer, keys/values of the fused target context at every committed
        position, in the target's slot layout."""
        batch, width = prefilled.prompt.shape
        positions, slots = prompt_slots(prefilled.prompt_lengths, width, cache_size)
        k, v = self._context(params, prefilled.features, positions)
        c = self.drafter
        cache = KVCache.zeros(c.num_layers, batch, cache_size, c.num_kv_heads, c.head_dim, k.dtype)
        return cache.write(k, v, positions, slots)

    def update(self, params: BlockDrafterParams, cache: KVCache, verified: Verified) -> KVCache:
        positions, slots = verified.committed_slots(cache.size)
        return cache.write(*self._context(params, verified.features, positions), positions, slots)

    def propose(self, params: BlockDrafterParams, cache: KVCache, context: DraftContext,
                template: TreeTemplate, sampling: SamplingConfig, key: jax.Array) -> tuple[Draft, KVCache]:
        if template.depth > self.drafter.block_size:
            raise ValueError(f"draft depth {template.depth} exceeds the drafter's block size {self.drafter.block_size}")
        depth, batch = template.depth, context.length.shape[0]
        anchor, anchor_position = context.anchor, context.anchor_position
        block = jnp.full((batch, depth), self.drafter.mask_token_id, jnp.int32).at[:, 0].set(anchor)
        embeddings = embed(params.target, block, config=self.target)
        positions = anchor_position[:, None] + jnp.arange(depth, dtype=jnp.int32)[None, :]
        visible = cache.positions < anchor_position[:, None]
        backbone = nnx.merge(self.backbone_def, params.backbone)
        lookup, match = None, None
        if self.drafter.lookup_inputs:
            candidates, match = lookup_candidates(context.history, context.length, depth)
            lookup = embed(params.target, candidates, config=self.target)
        embeddings = backbone.block_inputs(embeddings, lookup, match)
        hidden = backbone(embeddings[:, None], positions[:, None], cache.k, cache.v, visible[:, None])[:, 0]
        head = params.head
        base_logits = head.logits(hidden)  # [B, γ, Vd]
        confidence = None
        if self.heads_def is None:  # DFlash: slots are independent
            keys = jax.random.split(key, depth)
            picks = [expand_candidates(base_logits[:, k], template.width, sampling, keys[k]) for k in range(depth)]
            tokens = jnp.stack([p[0] for p in picks], axis=1)
            q = None if sampling.greedy else jnp.stack([p[1] for p in picks], axis=1)
        else:
            heads = nnx.merge(self.heads_def, params.heads)
            tokens, q, confidence = heads.sample_block(base_logits, hidden, head.to_draft(anchor), template.width,
                                                       sampling, key)
        q = None if q is None else head.probs_to_target(q)
        return Draft(tokens=head.to_target(tokens), main_probs=q, confidence=confidence), cache


def make_dflash_proposer(target: ModelConfig, model: DFlashDrafter, target_params: TransformerParams):
    """(proposer, params) for the engine from a DFlash drafter."""
    return _block_proposer(target, model, None, target_params)


def make_dspark_proposer(target: ModelConfig, model: DSparkDrafter, target_params: TransformerParams):
    """(proposer, params) for the engine from a DSpark drafter: the DFlash proposer drafting through its heads."""
    return _block_proposer(target, model, model.heads, target_params)


def _block_proposer(target: ModelConfig, model: DFlashDrafter, heads: DSparkHeads | None,
                    target_params: TransformerParams):
    backbone_def, backbone_state = nnx.split(model.backbone)
    heads_def, heads_state = nnx.split(heads) if heads is not None else (None, None)
    proposer = BlockDrafterProposer(target, model.config, backbone_def, heads_def)
    head = DraftHead.from_target(target, target_params, model.vocab.get_value())
    return proposer, BlockDrafterParams(backbone=backbone_state, heads=heads_state, target=target_params, head=head)
