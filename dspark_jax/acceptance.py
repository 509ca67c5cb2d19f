"""Lossless acceptance of a draft tree: the longest path the target agrees with, plus one target token.

One rule serves greedy and sampling, chains and trees (speculative sampling, Leviathan et al. 2023, with
SpecInfer's sibling rule for trees). At a node with target distribution p, the children are tried in order;
child x proposed from q is accepted with probability min(1, p(x)/q(x)), and on rejection p becomes
normalize(max(0, p - q)) before the next sibling. A deterministic proposal has one-hot q, which gives the
sibling rule "accept with p(x), else zero p(x) and renormalise". When no child is accepted (or the path ends)
the bonus token is drawn from what is left of p. Greedy decoding is the special case of one-hot p (the
target's argmax): acceptance is then exact match and the bonus is the argmax, so greedy output equals the
target's own token for token. `accept_greedy` is that special case computed from the argmax tokens alone, so
greedy verification never builds [B, N, V] one-hot distributions (tested equal).

`verify_depth` (int32[], optional) says how deep the target verified: nodes below it are never accepted,
so the walk stops there and the bonus comes from the target's distribution at the last verified node,
exactly as if the draft had ended at that depth.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dspark_jax.sampling import sample_from
from dspark_jax.tree import TreeTemplate


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Acceptance:
    path: jax.Array  # int32[B, D + 1]: accepted node indices, path[:, 0] = 0 (anchor); padded with the last
    num_accepted: jax.Array  # int32[B]: accepted draft tokens (0..D)
    bonus: jax.Array  # int32[B]: the target's own token after the accepted path


def _take(table: jax.Array, index: jax.Array) -> jax.Array:
    """table: [B, K, ...]; index: int[B] → [B, ...]."""
    return jnp.take_along_axis(table, index[:, None, *([None] * (table.ndim - 2))], axis=1)[:, 0]


def _token_prob(probs: jax.Array, tokens: jax.Array) -> jax.Array:
    return jnp.take_along_axis(probs, tokens[:, None], axis=1)[:, 0]


def accept(template: TreeTemplate, target_probs: jax.Array, node_tokens: jax.Array,
           main_draft_probs: jax.Array | None, key: jax.Array, verify_depth: jax.Array | None = None) -> Acceptance:
    """Walks the tree from the anchor.

    target_probs: float32[B, N, V], the target's (filtered) distribution at every node (one-hot when greedy).
    node_tokens: int32[B, N], the token of every node (node 0, the anchor, is not tested).
    main_draft_probs: float32[B, D, V], the distribution each main-chain token was sampled from, or None
      when every node is a deterministic proposal (one-hot q).
    key: one PRNG key for the whole batch.
    verify_depth: int32[], the deepest verified depth (default: all); target_probs below it are not read.
    """
    batch, _, vocab = target_probs.shape
    acceptance_key, bonus_key = jax.random.split(key)
    uniforms = jax.random.uniform(acceptance_key, (batch, template.depth, template.width))

    def try_child(depth: int, candidate: int, node: int, trying: jax.Array, residual: jax.Array):
        token = node_tokens[:, node]
        if candidate == 0 and main_draft_probs is not None:
            q = main_draft_probs[:, depth - 1]
        else:
            q = jax.nn.one_hot(token, vocab, dtype=residual.dtype)
        ok = trying & (uniforms[:, depth - 1, candidate] * _token_prob(q, token) < _token_prob(residual, token))
        leftover = jnp.maximum(residual - q, 0.0)
        total = jnp.sum(leftover, axis=-1, keepdims=True)
        leftover = jnp.where(total > 0, leftover / jnp.where(total > 0, total, 1.0), residual)
        return ok, jnp.where((trying & ~ok)[:, None], leftover, residual)

    def descend(found: jax.Array, current: jax.Array, residual: jax.Array) -> jax.Array:
        return jnp.where(found[:, None], _take(target_probs, current), residual)

    path, residual = _walk(template, batch, try_child, descend, target_probs[:, 0], verify_depth)
    return _acceptance(path, sample_from(residual, jax.random.uniform(bonus_key, (batch,))))


def accept_greedy(template: TreeTemplate, target_tokens: jax.Array, node_tokens: jax.Array,
                  verify_depth: jax.Array | None = None) -> Acceptance:
    """`accept` for a greedy target, whose distribution at every node is one-hot on its argmax.

    target_tokens: int32[B, N], the target's argmax at every node; node_tokens: int32[B, N] as in `accept`.
    A child is accepted exactly when it is its parent's target token (the first such sibling), whatever the
    draft's distribution; the bonus is the target token at the last accepted node. Same result as `accept`
    with one-hot target_probs, without the vocabulary-wide work.
    """

    def try_child(depth: int, candidate: int, node: int, trying: jax.Array, expected: jax.Array):
        return trying & (node_tokens[:, node] == expected), expected

    def descend(found: jax.Array, current: jax.Array, expected: jax.Array) -> jax.Array:
        return _take(target_tokens, current)

    path, expected = _walk(template, node_tokens.shape[0], try_child, descend, target_tokens[:, 0], verify_depth)
    return _acceptance(path, expected)


def _walk(template: TreeTemplate, batch: int, try_child, descend, carry: jax.Array,
          verify_depth: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """The walk both rules share: from the anchor, try the children of the current node in order and move to
    the first accepted one, until none is or the path ends (at the template's depth or `verify_depth`).

    try_child(depth, candidate, node, trying, carry) -> (ok, carry) tests one child for the rows where
    `trying` (ok must be False elsewhere); descend(found, current, carry) -> carry runs after each depth.
    Returns the path, int32[B, D + 1] padded with its last node, and the final carry.
    """
    has_children = jnp.asarray(template.has_children)
    current = jnp.zeros(batch, jnp.int32)
    alive = jnp.ones(batch, bool)
    path = [current]
    for d in range(1, template.depth + 1):
        expanding = alive & has_children[current]
        if verify_depth is not None:
            expanding = expanding & (d <= verify_depth)
        chosen = jnp.zeros(batch, jnp.int32)
        found = jnp.zeros(batch, bool)
        for w in range(template.width):
            node = template.node(d, w)
            ok, carry = try_child(d, w, node, expanding & ~found, carry)
            chosen = jnp.where(ok, node, chosen)
            found = found | ok
        current = jnp.where(found, chosen, current)
        carry = descend(found, current, carry)
        alive = found
        path.append(current)
    return jnp.stack(path, axis=1), carry


def _acceptance(path: jax.Array, bonus: jax.Array) -> Acceptance:
    num_accepted = jnp.sum(path[:, 1:] != path[:, :-1], axis=1).astype(jnp.int32)
    return Acceptance(path=path, num_accepted=num_accepted, bonus=bonus)
