"""A trained drafter and prompt lookup in one step: each row verifies the draft expected to survive longer.

Every step the lookup runs (a few vector compares over the history) and per row the engine gets one draft: the
n-gram continuation when the accepted length expected from its match length beats the drafter's own
expectation, the drafter's draft otherwise. A drafter with a confidence head (DSpark) expects Σ_d c_1 ... c_d
tokens; one without a head (DFlash, EAGLE-3, a draft model) expects `drafter_expectation`, a constant (default
0: it drafts only the rows with no match). A row whose lookup expects at least `drafter_ceiling` tokens takes
the n-gram draft without asking the drafter (a drafter that expects as much is rare: DSpark's confidences
seldom add up to one token here), and a step where every row does skips the drafter's pass (`lax.cond`); the
drafter's state still follows the verified text through `update`. The n-gram expectation comes from
`NGRAM_SURVIVAL`, measured on the target's greedy text.

Which draft a row gets depends on the history and the drafter's confidences, never on a draft token itself
being sampled, and an n-gram row reports one-hot q, so acceptance stays lossless at every temperature.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from dspark_jax.proposers.base import Draft, DraftContext, Prefilled, Proposer, Verified
from dspark_jax.proposers.ngram import NgramProposer
from dspark_jax.sampling import SamplingConfig
from dspark_jax.tree import TreeTemplate

# P(n-gram draft token d is accepted | match length n), d = 1..7, for n = 1..4: the lookup's main chain
# against Gemma 3 270M's greedy answers to 640 ShareGPT prompts. Rerun with
# `.venv/bin/python benchmarks/ngram_acceptance.py --data data/sharegpt-gemma3-270m-greedy --max-shards 10`.
NGRAM_SURVIVAL = (
    (0.395, 0.321, 0.253, 0.193, 0.172, 0.158, 0.147),
    (0.794, 0.676, 0.566, 0.522, 0.488, 0.461, 0.436),
    (0.825, 0.703, 0.637, 0.597, 0.562, 0.532, 0.499),
    (0.976, 0.960, 0.907, 0.881, 0.849, 0.816, 0.790),
)


def ngram_expectation(survival: tuple[tuple[float, ...], ...], max_ngram: int, depth: int) -> jax.Array:
    """float32[max_ngram + 1]: expected accepted n-gram tokens of a depth-`depth` chain per match length
    (index 0: no match). Depths past the table keep its last survival probability."""
    rows = [[0.0] * depth]
    for n in range(1, max_ngram + 1):
        row = survival[min(n, len(survival)) - 1]
        rows.append([row[min(d, len(row) - 1)] for d in range(depth)])
    return jnp.sum(jnp.asarray(rows, jnp.float32), axis=1)


@dataclasses.dataclass(frozen=True)
class HybridProposer:
    drafter: Proposer
    ngram: NgramProposer = NgramProposer()
    survival: tuple[tuple[float, ...], ...] = NGRAM_SURVIVAL
    drafter_expectation: float = 0.0  # expected accepted tokens of a drafter without a confidence head
    drafter_ceiling: float = 3.0  # rows whose lookup expects this many tokens take its draft unasked

    @property
    def capture_layers(self) -> tuple[int, ...]:
        return self.drafter.capture_layers

    def init(self, params: Any, prefilled: Prefilled, cache_size: int) -> Any:
        return self.drafter.init(params, prefilled, cache_size)

    def update(self, params: Any, state: Any, verified: Verified) -> Any:
        return self.drafter.update(params, state, verified)

    def propose(self, params: Any, state: Any, context: DraftContext, template: TreeTemplate,
                sampling: SamplingConfig, key: jax.Array) -> tuple[Draft, Any]:
        looked_up, match_length = self.ngram.lookup(context, template)
        expected_ngram = ngram_expectation(self.survival, self.ngram.max_ngram, template.depth)[match_length]
        trusted = expected_ngram >= self.drafter_ceiling  # rows that take the lookup's draft unasked
        one_hot = lambda like: jax.nn.one_hot(looked_up[:, :, 0], like.shape[-1], dtype=like.dtype)

        def with_drafter(state):
            drafted, state = self.drafter.propose(params, state, context, template, sampling, key)
            use_ngram = trusted | (expected_ngram > self.drafter_expected(drafted))
            tokens = jnp.where(use_ngram[:, None, None], looked_up, drafted.tokens)
            main_probs = drafted.main_probs
            if main_probs is not None:
                main_probs = jnp.where(use_ngram[:, None, None], one_hot(main_probs), main_probs)
            return (tokens, main_probs), state

        probs_shape = jax.eval_shape(with_drafter, state)[0][1]  # q's shape and dtype, or None (greedy)
        lookup_only = lambda state: ((looked_up, None if probs_shape is None else one_hot(probs_shape)), state)
        needs_drafter = jnp.any(~trusted & ~context.done)
        (tokens, main_probs), state = jax.lax.cond(needs_drafter, with_drafter, lookup_only, state)
        return Draft(tokens=tokens, main_probs=main_probs), state

    def drafter_expected(self, drafted: Draft) -> jax.Array:
        """float32[B]: accepted tokens expected of the drafter's draft."""
        if drafted.confidence is None:
            return jnp.full(drafted.tokens.shape[:1], self.drafter_expectation, jnp.float32)
        survival = jnp.cumprod(jnp.clip(drafted.confidence.astype(jnp.float32), 0.0, 1.0), axis=1)
        return jnp.sum(survival, axis=1)
