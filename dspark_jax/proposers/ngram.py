"""Prompt-lookup drafting: continue the text the way it continued after the last time its tail appeared.

No model and no training: the longest suffix of the history (from `max_ngram` down to `min_ngram` tokens)
that occurred earlier is looked up, and the tokens that followed its most recent occurrence become the
main chain. In a tree, candidate w at depth d is the token at the same offset after the (w+1)-th most
recent occurrence. Strong on code and math, where prompts get quoted back. Deterministic, so its
proposals are one-hot and sampling stays lossless.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dspark_jax.models.dflash import LOOKUP_MAX_NGRAM
from dspark_jax.proposers.base import Draft, DraftContext, Prefilled, Verified
from dspark_jax.sampling import SamplingConfig
from dspark_jax.tree import TreeTemplate


@dataclasses.dataclass(frozen=True)
class NgramProposer:
    max_ngram: int = 4
    min_ngram: int = 1
    capture_layers: tuple[int, ...] = ()

    def __post_init__(self):
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {self.min_ngram}, {self.max_ngram}")

    def init(self, params, prefilled: Prefilled, cache_size: int):
        return ()

    def update(self, params, state, verified: Verified):
        return state

    def propose(self, params, state, context: DraftContext, template: TreeTemplate, sampling: SamplingConfig,
                key: jax.Array) -> tuple[Draft, tuple]:
        tokens, _ = self.lookup(context, template)
        return Draft(tokens=tokens), state

    def lookup(self, context: DraftContext, template: TreeTemplate) -> tuple[jax.Array, jax.Array]:
        """(draft tokens int32[B, D, W], match length int32[B]): the length of the longest earlier
        occurrence of the history's tail, 0 where none was found (the draft then repeats the anchor)."""
        history, length = context.history, context.length
        batch, size = history.shape
        starts = jnp.arange(size)
        best = jnp.zeros((batch, size), bool)  # match starts of the longest n-gram found so far
        best_n = jnp.zeros(batch, jnp.int32)
        for n in range(self.min_ngram, self.max_ngram + 1):
            suffix = jax.vmap(lambda row, end: jax.lax.dynamic_slice(row, (end - n,), (n,)))(
                history, jnp.maximum(length, n))
            matches = jnp.ones((batch, size), bool)
            for i in range(n):
                shifted = jnp.roll(history, -i, axis=1)
                matches &= shifted == suffix[:, i : i + 1]
            # A match must be followed by at least one known token, and not be the suffix itself.
            matches &= (starts[None, :] + n < length[:, None]) & (length[:, None] >= n)
            found = jnp.any(matches, axis=1, keepdims=True)
            best = jnp.where(found, matches, best)
            best_n = jnp.where(found[:, 0], n, best_n)
        # The W most recent matches, most recent first; rows with fewer reuse the most recent one.
        ranked, _ = jax.lax.top_k(jnp.where(best, starts[None, :], -1), template.width)
        ranked = jnp.where(ranked < 0, ranked[:, :1], ranked)
        continuation = ranked[:, None, :] + best_n[:, None, None] + jnp.arange(template.depth)[None, :, None]
        # Past the end of the history (or without a match) there is nothing to copy: repeat the anchor.
        found = (best_n > 0)[:, None]
        tokens = jnp.take_along_axis(history, jnp.clip(continuation, 0, size - 1).reshape(batch, -1), axis=1)
        tokens = jnp.where(found & (continuation.reshape(batch, -1) < length[:, None]), tokens,
                           context.anchor[:, None])
        return tokens.reshape(batch, template.depth, template.width).astype(jnp.int32), best_n


def lookup_candidates(history: jax.Array, length: jax.Array, depth: int) -> tuple[jax.Array, jax.Array]:
    """What a block drafter with `lookup_inputs` reads: (the main chain of prompt lookup int32[R, depth],
    its match length int32[R], 0 where none was found) after the first `length` int32[R] tokens of each
    history row int32[R, H]. The same function for training blocks and for drafting."""
    context = DraftContext(history=history, length=length, done=jnp.zeros(length.shape, bool))
    tokens, match = NgramProposer(max_ngram=LOOKUP_MAX_NGRAM).lookup(context, TreeTemplate(1, depth))
    return tokens[..., 0], match
