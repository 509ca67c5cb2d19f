"""An independent small draft model (any `dspark_jax.models` transformer sharing the target's vocabulary).

It drafts autoregressively with its own KV cache: D single-token steps down the main chain, each step's
distribution also supplying the tree's sibling candidates. After verification it re-reads the anchor and
the accepted tokens in one pass, so its cache again holds exactly the committed text: whatever branch was
accepted, no stale draft entry survives.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dspark_jax.generate import prefill_prompt
from dspark_jax.models.config import ModelConfig
from dspark_jax.models.kv_cache import EMPTY_POSITION, KVCache
from dspark_jax.models.params import TransformerParams
from dspark_jax.models.transformer import forward, logits
from dspark_jax.proposers.base import Draft, DraftContext, Prefilled, Verified
from dspark_jax.sampling import SamplingConfig, expand_candidates
from dspark_jax.tree import TreeTemplate


@dataclasses.dataclass(frozen=True)
class DraftModelProposer:
    config: ModelConfig
    capture_layers: tuple[int, ...] = ()

    def init(self, params: TransformerParams, prefilled: Prefilled, cache_size: int) -> KVCache:
        out, _ = prefill_prompt(params, self.config, prefilled.prompt, prefilled.prompt_lengths, cache_size)
        return out.cache

    def propose(self, params: TransformerParams, cache: KVCache, context: DraftContext, template: TreeTemplate,
                sampling: SamplingConfig, key: jax.Array) -> tuple[Draft, KVCache]:
        def step(carry, xs):
            cache, token = carry
            depth, step_key = xs
            positions = (context.anchor_position + depth)[:, None]
            slots = jnp.where(context.done[:, None], cache.size, positions)
            out = forward(params, token[:, None], positions, cache, config=self.config, write_slots=slots)
            step_logits = logits(params, out.hidden[:, 0], config=self.config)
            candidates, q = expand_candidates(step_logits, template.width, sampling, step_key)
            return (out.cache, candidates[:, 0]), (candidates, q)

        xs = (jnp.arange(template.depth), jax.random.split(key, template.depth))
        (cache, _), (tokens, q) = jax.lax.scan(step, (cache, context.anchor), xs)
        main_probs = None if q is None else jnp.moveaxis(q, 0, 1)
        return Draft(tokens=jnp.moveaxis(tokens, 0, 1), main_probs=main_probs), cache

    def update(self, params: TransformerParams, cache: KVCache, verified: Verified) -> KVCache:
        positions, slots = verified.committed_slots(cache.size)
        last_kept = verified.anchor_position + verified.num_accepted
        cleared = jnp.where(cache.positions > last_kept[:, None], EMPTY_POSITION, cache.positions)
        cache = dataclasses.replace(cache, positions=cleared)
        return forward(params, verified.tokens, positions, cache, config=self.config, write_slots=slots).cache
