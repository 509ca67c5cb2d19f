"""Static draft-tree template: which verify slot holds which draft node, and who sees whom.

A `W x D` template is "top-W per depth": at every depth d = 1..D the drafter offers W candidates for the
token after the main chain's first d - 1 tokens. Candidate 0 of each depth is the main chain (the only
node that has children); candidates 1..W-1 are leaf siblings. Node 0 is the anchor (the last committed
token, not yet in the cache). A chain of γ draft tokens is the `1 x γ` template, so one code path
verifies both.

Nodes are laid out depth-major: node(d, w) = 1 + (d - 1) * W + w. The verifier writes node i's key/value to
cache slot `anchor_position + i` and gives it position `anchor_position + depth(i)`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class TreeTemplate:
    width: int = 1
    depth: int = 7

    def __post_init__(self):
        if not (isinstance(self.width, int) and isinstance(self.depth, int) and self.width >= 1 and self.depth >= 1):
            raise ValueError(f"a draft tree needs width >= 1 and depth >= 1, got {self.width}x{self.depth}")

    @classmethod
    def parse(cls, text: str) -> TreeTemplate:
        """'WxD' (e.g. '3x4'); a chain of γ tokens is '1xγ'."""
        try:
            width, depth = (int(part) for part in text.lower().split("x"))
        except ValueError:
            raise ValueError(f"a tree template is WIDTHxDEPTH, e.g. 1x7 (chain) or 3x4; got {text!r}") from None
        return cls(width, depth)

    @property
    def num_nodes(self) -> int:
        return 1 + self.width * self.depth

    def node(self, depth: int, candidate: int) -> int:
        return 1 + (depth - 1) * self.width + candidate

    @functools.cached_property
    def parents(self) -> np.ndarray:
        """int32[N]: parent node of each node (-1 for the anchor)."""
        parents = np.full(self.num_nodes, -1, np.int32)
        for d in range(1, self.depth + 1):
            for w in range(self.width):
                parents[self.node(d, w)] = 0 if d == 1 else self.node(d - 1, 0)
        return parents

    @functools.cached_property
    def depths(self) -> np.ndarray:
        """int32[N]: distance of each node from the anchor."""
        return np.concatenate([[0], np.repeat(np.arange(1, self.depth + 1), self.width)]).astype(np.int32)

    @functools.cached_property
    def has_children(self) -> np.ndarray:
        """bool[N]: the anchor and main-chain nodes above the last depth."""
        flags = np.zeros(self.num_nodes, bool)
        flags[0] = True
        flags[[self.node(d, 0) for d in range(1, self.depth)]] = True
        return flags

    @functools.cached_property
    def ancestors(self) -> np.ndarray:
        """bool[N, N]: ancestors[i, j] is True when node j is node i or one of its ancestors."""
        table = np.eye(self.num_nodes, dtype=bool)
        for i in range(1, self.num_nodes):
            table[i] |= table[self.parents[i]]
        return table


def verify_positions(template: TreeTemplate, anchor_position: jax.Array) -> jax.Array:
    """int32[B, N]: position of every node. anchor_position: int32[B]."""
    return anchor_position[:, None] + jnp.asarray(template.depths)[None, :]


def verify_mask(template: TreeTemplate, anchor_position: jax.Array, cache_positions: jax.Array) -> jax.Array:
    """bool[B, N, S]: node i sees the committed prefix (positions < anchor) and the slots of its ancestors.

    cache_positions: int32[B, S], the cache's slot positions before the verify write (committed tokens sit
    below the anchor position; every other slot is free or stale and must stay invisible).
    """
    num_slots = cache_positions.shape[1]
    relative = jnp.arange(num_slots)[None, :] - anchor_position[:, None]  # [B, S]: node index of each slot
    in_tree = (relative >= 0) & (relative < template.num_nodes)
    ancestor = jnp.asarray(template.ancestors)[:, jnp.clip(relative, 0, template.num_nodes - 1)]  # [N, B, S]
    committed = cache_positions < anchor_position[:, None]
    return committed[:, None, :] | (in_tree[:, None, :] & jnp.moveaxis(ancestor, 0, 1))
