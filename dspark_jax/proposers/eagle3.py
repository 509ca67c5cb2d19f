"""EAGLE-3 as a proposer: γ sequential drafter steps inside the jitted loop.

The state is the drafter's key/value cache over committed positions plus `pending`, the fused target
feature of the newest committed position a - 1: its entry needs the token after it, the anchor, which only
the next `propose` knows. `propose` computes that entry (step 0, then kept in the cache), then drafts
step by step, each step feeding the drafter's own hidden state and the token just drafted to the next;
the chain's entries live only for this draft. `update` adds the entries of the verified path whose next
token is known and keeps the last feature pending. Trees are top-W per depth around the main chain.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from dspark_jax.generate import prompt_slots
from dspark_jax.models.config import ModelConfig
from dspark_jax.models.draft_vocab import DraftHead
from dspark_jax.models.eagle3 import Eagle3Drafter, following_tokens
from dspark_jax.models.kv_cache import KVCache
from dspark_jax.models.params import TransformerParams
from dspark_jax.models.transformer import embed
from dspark_jax.proposers.base import Draft, DraftContext, Prefilled, Verified
from dspark_jax.sampling import SamplingConfig, expand_candidates
from dspark_jax.tree import TreeTemplate


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Eagle3Params:
    drafter: nnx.State
    target: TransformerParams  # embedding read from here
    head: DraftHead  # the target's head over the draft vocabulary


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Eagle3State:
    cache: KVCache  # the drafter's entries of committed positions (one layer)
    pending: jax.Array  # [B, E]: fused feature of position anchor - 1, whose entry waits for the anchor


@dataclasses.dataclass(frozen=True)
class Eagle3Proposer:
    target: ModelConfig
    drafter_def: nnx.GraphDef
    target_layers: tuple[int, ...]

    @property
    def capture_layers(self) -> tuple[int, ...]:
        return self.target_layers

    def init(self, params: Eagle3Params, prefilled: Prefilled, cache_size: int) -> Eagle3State:
        drafter = nnx.merge(self.drafter_def, params.drafter)
        batch, width = prefilled.prompt.shape
        g = drafter.fuse_features(prefilled.features)  # [B, T, E]
        # The last prompt position's entry waits for the anchor: only the positions before it are written.
        last = prefilled.prompt_lengths - 1
        positions, slots = prompt_slots(last, width, cache_size)
        k, v = drafter.keys_values(embed(params.target, following_tokens(prefilled.prompt), config=self.target), g,
                                   positions)
        c = drafter.config
        cache = KVCache.zeros(1, batch, cache_size, c.num_kv_heads, c.head_dim, k.dtype)
        return Eagle3State(cache=cache.write(k[None], v[None], positions, slots),
                           pending=jnp.take_along_axis(g, last[:, None, None], axis=1)[:, 0])

    def update(self, params: Eagle3Params, state: Eagle3State, verified: Verified) -> Eagle3State:
        drafter = nnx.merge(self.drafter_def, params.drafter)
        g = drafter.fuse_features(verified.features)  # [B, D + 1, E] along anchor + accepted tokens
        positions, _ = verified.committed_slots(state.cache.size)
        k, v = drafter.keys_values(embed(params.target, following_tokens(verified.tokens), config=self.target), g,
                                   positions)
        offsets = jnp.arange(positions.shape[1])[None, :]
        live = ~verified.done[:, None]
        slots = jnp.where((offsets < verified.num_accepted[:, None]) & live, positions, state.cache.size)
        newest = jnp.take_along_axis(g, verified.num_accepted[:, None, None], axis=1)[:, 0]
        return Eagle3State(cache=state.cache.write(k[None], v[None], positions, slots),
                           pending=jnp.where(live, newest, state.pending))

    def propose(self, params: Eagle3Params, state: Eagle3State, context: DraftContext, template: TreeTemplate,
                sampling: SamplingConfig, key: jax.Array) -> tuple[Draft, Eagle3State]:
        drafter = nnx.merge(self.drafter_def, params.drafter)
        head = params.head
        c = drafter.config
        batch = context.length.shape[0]
        step0_position = context.anchor_position - 1
        visible = (state.cache.positions < step0_position[:, None])[:, None]  # [B, 1, S]
        chain_k = jnp.zeros((batch, 1, 0, c.num_kv_heads, c.head_dim), state.cache.k.dtype)
        chain_v = chain_k
        hidden, token = state.pending[:, None], context.anchor
        columns, main_probs = [], []
        for k, step_key in enumerate(jax.random.split(key, template.depth)):
            token_embeddings = embed(params.target, token[:, None], config=self.target)
            hidden, chain_k, chain_v = drafter(token_embeddings, hidden, (step0_position + k)[:, None],
                                               state.cache.k[0], state.cache.v[0], visible, chain_k, chain_v)
            if k == 0:  # the anchor's entry is committed context from now on
                cache = state.cache.write(chain_k[None, :, :, 0], chain_v[None, :, :, 0], step0_position[:, None],
                                          step0_position[:, None])
                state = dataclasses.replace(state, cache=cache)
            candidates, q = expand_candidates(head.logits(drafter.normed(hidden[:, 0])), template.width, sampling,
                                              step_key)
            candidates = head.to_target(candidates)
            columns.append(candidates)
            main_probs.append(q)
            token = candidates[:, 0]
        q = None if sampling.greedy else head.probs_to_target(jnp.stack(main_probs, axis=1))
        return Draft(tokens=jnp.stack(columns, axis=1), main_probs=q), state


def make_eagle3_proposer(target: ModelConfig, model: Eagle3Drafter, target_params: TransformerParams):
    """(proposer, params) for the engine from a trained (or fresh) EAGLE-3 drafter."""
    drafter_def, drafter_state = nnx.split(model)
    proposer = Eagle3Proposer(target, drafter_def, model.config.target_layers)
    head = DraftHead.from_target(target, target_params, model.vocab.get_value())
    return proposer, Eagle3Params(drafter=drafter_state, target=target_params, head=head)
