"""The contract between the speculative engine and a drafter ("proposer").

A proposer is a frozen, hashable object (a static argument of the jitted loop) with three pure functions
over its own state pytree:
- `init`: state after the target's prefill (it may read the target's hidden states of `capture_layers`);
- `propose`: draft tokens for every node of the static tree template, with the distribution each main-chain
  token was drawn from (or None for deterministic drafts) and optional per-depth confidences;
- `update`: state after verification, told which tokens were accepted.
Everything is shaped by the template, so acceptance lengths never change shapes or trigger recompilation.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from dspark_jax.sampling import SamplingConfig
from dspark_jax.tree import TreeTemplate


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DraftContext:
    """What every proposer may read when drafting. Positions equal indices into `history`."""

    history: jax.Array  # int32[B, H]: prompt and generated tokens, anchor included
    length: jax.Array  # int32[B]: tokens in history; the anchor is history[length - 1]
    done: jax.Array  # bool[B]: finished rows (their drafts are ignored)

    @property
    def anchor(self) -> jax.Array:
        return jnp.take_along_axis(self.history, (self.length - 1)[:, None], axis=1)[:, 0]

    @property
    def anchor_position(self) -> jax.Array:
        return self.length - 1


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Draft:
    tokens: jax.Array  # int32[B, D, W]: candidate w at depth d; w = 0 is the main chain
    main_probs: jax.Array | None = None  # float32[B, D, V]: q of each main token, None if deterministic
    confidence: jax.Array | None = None  # float32[B, D]: P(token d survives | tokens < d survived)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Verified:
    """What the engine tells the proposer after a verify step."""

    tokens: jax.Array  # int32[B, D + 1]: anchor then the accepted draft tokens (padded past num_accepted)
    num_accepted: jax.Array  # int32[B]
    anchor_position: jax.Array  # int32[B]: position of tokens[:, 0]
    features: jax.Array  # [K, B, D + 1, E]: target hidden states of `capture_layers` along the path
    done: jax.Array  # bool[B]

    def committed_slots(self, cache_size: int) -> tuple[jax.Array, jax.Array]:
        """(positions, cache write slots), int32[B, D + 1], of `tokens`: slot = position for the anchor and
        the accepted tokens of live rows, cache_size (a dropped write) for padding and finished rows."""
        offsets = jnp.arange(self.tokens.shape[1], dtype=jnp.int32)[None, :]
        positions = self.anchor_position[:, None] + offsets
        keep = (offsets <= self.num_accepted[:, None]) & ~self.done[:, None]
        return positions, jnp.where(keep, positions, cache_size)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Prefilled:
    """The target's prefill, as the proposer's `init` sees it."""

    prompt: jax.Array  # int32[B, T], right-padded
    prompt_lengths: jax.Array  # int32[B]
    features: jax.Array  # [K, B, T, E]: target hidden states of `capture_layers`


class Proposer(Protocol):
    capture_layers: tuple[int, ...]  # target layers whose outputs the proposer reads; () for none

    def init(self, params: Any, prefilled: Prefilled, cache_size: int) -> Any: ...

    def propose(self, params: Any, state: Any, context: DraftContext, template: TreeTemplate,
                sampling: SamplingConfig, key: jax.Array) -> tuple[Draft, Any]: ...

    def update(self, params: Any, state: Any, verified: Verified) -> Any: ...
