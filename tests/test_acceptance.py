"""Lossless acceptance, measured: the emitted tokens follow the target distribution exactly.

Each test runs `accept` on a large batch of independent rows over a 5-token vocabulary and compares the
empirical distribution of the emitted tokens with the target's by a chi-square test; the same test run on
a deliberately broken case (the draft's q sharpened as if a different temperature were applied to the
draft than the one it was sampled at) must fail it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from dspark_jax.acceptance import accept, accept_greedy
from dspark_jax.tree import TreeTemplate

V = 5
ROWS = 200_000


def random_dist(rng, *shape):
    x = rng.gamma(0.7, size=(*shape, V))
    return (x / x.sum(-1, keepdims=True)).astype(np.float32)


def draw(rng, probs):
    """One sample per row of probs [B, V]."""
    cdf = probs.cumsum(-1)
    return np.minimum((rng.random(len(probs))[:, None] * cdf[:, -1:] > cdf).sum(-1), V - 1)


def p_value(samples, expected_probs):
    counts = np.bincount(samples, minlength=V)
    expected = expected_probs * len(samples)
    keep = expected > 0
    assert counts[~keep].sum() == 0, "a token with zero target probability was emitted"
    expected = expected[keep].astype(np.float64)
    return stats.chisquare(counts[keep], expected * counts[keep].sum() / expected.sum()).pvalue


def emitted(result, node_tokens):
    """First two emitted tokens per row; the second only where the first draft token was accepted."""
    path_tokens = np.take_along_axis(node_tokens, np.asarray(result.path), axis=1)
    accepted = np.asarray(result.num_accepted)
    bonus = np.asarray(result.bonus)
    first = np.where(accepted >= 1, path_tokens[:, 1], bonus)
    second = np.where(accepted >= 2, path_tokens[:, min(2, path_tokens.shape[1] - 1)], bonus)
    return first, second, accepted


def chain_case(rng, broken: bool, verify_depth=None):
    """Depth-2 chain drafted by sampling from q; the target distribution depends on the prefix."""
    p0, q1 = random_dist(rng), random_dist(rng)
    p1, q2 = random_dist(rng, V), random_dist(rng, V)  # indexed by the first draft token
    p2 = random_dist(rng, V, V)
    d1 = draw(rng, np.broadcast_to(q1, (ROWS, V)))
    d2 = draw(rng, q2[d1])
    node_tokens = np.stack([np.zeros(ROWS, int), d1, d2], axis=1)
    target = np.stack([np.broadcast_to(p0, (ROWS, V)), p1[d1], p2[d1, d2]], axis=1)
    main_probs = np.stack([np.broadcast_to(q1, (ROWS, V)), q2[d1]], axis=1)
    if broken:
        main_probs = main_probs**2 / (main_probs**2).sum(-1, keepdims=True)
    result = accept(TreeTemplate(1, 2), jnp.asarray(target), jnp.asarray(node_tokens), jnp.asarray(main_probs),
                    jax.random.key(int(rng.integers(1 << 30))), verify_depth)
    return p0, p1, node_tokens, result


@pytest.mark.parametrize("broken", [False, True])
def test_chain_sampling_matches_target(broken):
    rng = np.random.default_rng(0)
    p0, p1, node_tokens, result = chain_case(rng, broken)
    first, second, accepted = emitted(result, node_tokens)
    values = [p_value(first, p0)]
    for token in range(V):  # the token after an accepted first draft token follows p1[that token]
        rows = (accepted >= 1) & (first == token)
        if rows.sum() > 2000:
            values.append(p_value(second[rows], p1[token]))
    if broken:
        assert min(values) < 1e-6
    else:
        assert min(values) > 1e-4, values
        assert 0.2 < np.mean(accepted >= 1) < 0.95  # the draft is neither always right nor always wrong


def test_a_draft_verified_to_depth_1_ends_there_and_still_matches_target():
    """The second draft token is never accepted; after an accepted first one, the bonus token follows the
    target's distribution at that node."""
    rng = np.random.default_rng(2)
    p0, p1, node_tokens, result = chain_case(rng, broken=False, verify_depth=jnp.int32(1))
    first, second, accepted = emitted(result, node_tokens)
    assert accepted.max() == 1 and np.mean(accepted) > 0.2
    values = [p_value(first, p0)]
    for token in range(V):
        rows = (accepted == 1) & (first == token)
        if rows.sum() > 2000:
            values.append(p_value(second[rows], p1[token]))
    assert len(values) > 2 and min(values) > 1e-4, values


@pytest.mark.parametrize("width, depth", [(1, 4), (3, 2)])
def test_verify_depth_is_the_draft_cut_at_that_depth(width, depth):
    rng = np.random.default_rng(7)
    template, batch = TreeTemplate(width, depth), 2048
    target_tokens = jnp.asarray(rng.integers(0, 3, size=(batch, template.num_nodes)), jnp.int32)
    node_tokens = jnp.asarray(rng.integers(0, 3, size=(batch, template.num_nodes)), jnp.int32)
    cut = accept_greedy(template, target_tokens, node_tokens, jnp.int32(0))
    np.testing.assert_array_equal(cut.num_accepted, 0)
    np.testing.assert_array_equal(cut.bonus, target_tokens[:, 0])
    for verify_depth in range(1, depth + 1):
        cut = accept_greedy(template, target_tokens, node_tokens, jnp.int32(verify_depth))
        nodes = 1 + verify_depth * width
        short = accept_greedy(TreeTemplate(width, verify_depth), target_tokens[:, :nodes], node_tokens[:, :nodes])
        np.testing.assert_array_equal(cut.num_accepted, short.num_accepted)
        np.testing.assert_array_equal(cut.bonus, short.bonus)
        np.testing.assert_array_equal(cut.path[:, : verify_depth + 1], short.path)
        assert np.asarray(short.num_accepted).max() == verify_depth  # every cut length is reached


@pytest.mark.parametrize("sampled_main", [False, True])
def test_sibling_rule_matches_target(sampled_main):
    """Width-3 tree at depth 1: candidates tried in order with the sibling rule."""
    rng = np.random.default_rng(1)
    p0, q = random_dist(rng), random_dist(rng)
    order = np.argsort(-q)
    if sampled_main:
        main = draw(rng, np.broadcast_to(q, (ROWS, V)))
        others = np.array([[t for t in order if t != m][:2] for m in range(V)])[main]
        candidates = np.concatenate([main[:, None], others], axis=1)
        main_probs = jnp.asarray(np.broadcast_to(q, (ROWS, 1, V)))
    else:
        candidates = np.broadcast_to(order[:3], (ROWS, 3))
        main_probs = None
    node_tokens = np.concatenate([np.zeros((ROWS, 1), int), candidates], axis=1)
    target = np.broadcast_to(p0, (ROWS, 4, V))
    result = accept(TreeTemplate(3, 1), jnp.asarray(target), jnp.asarray(node_tokens), main_probs,
                    jax.random.key(3))
    first, _, accepted = emitted(result, node_tokens)
    assert p_value(first, p0) > 1e-4
    assert np.mean(accepted) > 0.5  # three tries accept more often than one


def test_greedy_is_exact_match():
    """One-hot target probabilities: accept while the draft equals the argmax, bonus = argmax."""
    target_tokens = np.array([[3, 1, 4], [3, 1, 4], [2, 2, 2]])  # argmax at nodes 0, 1, 2 per row
    node_tokens = np.array([[9, 3, 1], [9, 3, 0], [9, 1, 2]])  # anchor, d1, d2
    target = jax.nn.one_hot(target_tokens, V + 5)
    result = accept(TreeTemplate(1, 2), target, jnp.asarray(node_tokens), None, jax.random.key(0))
    np.testing.assert_array_equal(result.num_accepted, [2, 1, 0])
    np.testing.assert_array_equal(result.bonus, [4, 1, 2])
    np.testing.assert_array_equal(result.path, [[0, 1, 2], [0, 1, 1], [0, 0, 0]])


@pytest.mark.parametrize("width, depth", [(1, 4), (3, 2), (2, 3)])
@pytest.mark.parametrize("sampled_main", [False, True])
def test_accept_greedy_equals_accept_with_one_hot_targets(width, depth, sampled_main):
    rng = np.random.default_rng(width * 10 + depth)
    template, vocab, batch = TreeTemplate(width, depth), V, 4096  # enough rows for every path length
    target_tokens = rng.integers(0, vocab, size=(batch, template.num_nodes))
    node_tokens = rng.integers(0, vocab, size=(batch, template.num_nodes))
    main_probs = jnp.asarray(random_dist(rng, batch, depth)) if sampled_main else None
    general = accept(template, jax.nn.one_hot(target_tokens, vocab), jnp.asarray(node_tokens), main_probs,
                     jax.random.key(1))
    greedy = accept_greedy(template, jnp.asarray(target_tokens, jnp.int32), jnp.asarray(node_tokens))
    assert len(set(np.asarray(greedy.num_accepted).tolist())) == depth + 1
    for field in ("path", "num_accepted", "bonus"):
        np.testing.assert_array_equal(getattr(greedy, field), getattr(general, field))
