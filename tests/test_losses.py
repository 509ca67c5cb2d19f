"""Drafter losses against direct NumPy computations on tiny inputs."""

import jax
import jax.numpy as jnp
import numpy as np

from dspark_jax.train.dflash_loss import dflash_loss
from dspark_jax.train.dspark_loss import DSparkLossWeights, dspark_loss
from dspark_jax.train.eagle3_loss import eagle3_loss
from dspark_jax.train.position_weights import exponential_weights

rng = np.random.default_rng(0)
N, G, V = 3, 4, 6
draft = rng.standard_normal((N, G, V)).astype(np.float32) * 2
target = rng.standard_normal((N, G, V)).astype(np.float32) * 2
conf = rng.standard_normal((N, G)).astype(np.float32)
tokens = rng.integers(0, V, (N, G))
valid = np.ones((N, G), bool)
valid[2, 2:] = False  # a block that runs past the end of its sequence


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def log_softmax(x):
    return np.log(softmax(x))


target_lp = log_softmax(target)


def weights():
    return np.exp(-np.arange(G) / 4.0)


def reference_weighted_mean(values):
    w = valid * weights()[None]
    return (values * w).sum() / w.sum()


def test_position_weights():
    np.testing.assert_allclose(exponential_weights(3, 2.0), [1, np.exp(-0.5), np.exp(-1)], rtol=1e-6)


def test_dflash_cross_entropy():
    ce = -np.log(np.take_along_axis(softmax(draft), tokens[..., None], -1)[..., 0])
    np.testing.assert_allclose(dflash_loss(draft, tokens, valid), reference_weighted_mean(ce), rtol=1e-5)


def test_dspark_loss_terms():
    pd, pt = softmax(draft), softmax(target)
    l1 = np.abs(pd - pt).sum(-1)
    label = 1 - 0.5 * l1
    c = 1 / (1 + np.exp(-conf))
    bce = -(label * np.log(c) + (1 - label) * np.log(1 - c))
    ce = -np.log(np.take_along_axis(pd, tokens[..., None], -1)[..., 0])
    total, parts = dspark_loss(draft, target_lp, conf, tokens, valid)
    np.testing.assert_allclose(parts["ce"], reference_weighted_mean(ce), rtol=1e-5)
    np.testing.assert_allclose(parts["tv"], reference_weighted_mean(l1), rtol=1e-5)
    np.testing.assert_allclose(parts["conf"], reference_weighted_mean(bce), rtol=1e-5)
    expected = 0.1 * reference_weighted_mean(ce) + 0.9 * reference_weighted_mean(l1) + reference_weighted_mean(bce)
    np.testing.assert_allclose(total, expected, rtol=1e-5)


def test_confidence_label_carries_no_gradient_into_the_drafter():
    conf_only = DSparkLossWeights(ce=0.0, tv=0.0, conf=1.0)
    grad = jax.grad(lambda d: dspark_loss(d, target_lp, conf, tokens, valid, conf_only)[0])(jnp.asarray(draft))
    np.testing.assert_array_equal(grad, 0.0)
    grad_conf = jax.grad(lambda c: dspark_loss(draft, target_lp, c, tokens, valid, conf_only)[0])(jnp.asarray(conf))
    assert np.all(np.abs(grad_conf[valid]) > 0) and np.all(grad_conf[~valid] == 0)


def test_invalid_positions_change_nothing():
    changed = draft.copy()
    changed[2, 2:] += 5.0
    np.testing.assert_allclose(dflash_loss(changed, tokens, valid), dflash_loss(draft, tokens, valid), rtol=1e-6)
    np.testing.assert_allclose(dspark_loss(changed, target_lp, conf, tokens, valid)[0],
                               dspark_loss(draft, target_lp, conf, tokens, valid)[0], rtol=1e-6)


def test_eagle3_soft_cross_entropy():
    steps = 3
    step_logits = rng.standard_normal((steps, N, 5, V)).astype(np.float32)
    target_logits = rng.standard_normal((steps, N, 5, V)).astype(np.float32)
    mask = np.ones((steps, N, 5), bool)
    mask[1, :, 4:] = False
    mask[2, :, 3:] = False
    logq = np.log(softmax(step_logits))
    soft = -(softmax(target_logits) * logq).sum(-1)
    expected = sum(0.8**k * soft[k][mask[k]].mean() for k in range(steps))
    np.testing.assert_allclose(eagle3_loss(step_logits, log_softmax(target_logits), mask), expected, rtol=1e-5)


def test_reduced_vocabulary_losses():
    """Draft vocabulary = tokens {0, 2, 3, 5} of V = 6: the target's outside mass enters the L1 distance and
    tokens outside carry no cross-entropy."""
    kept = np.array([0, 2, 3, 5])
    to_draft = np.full(V, -1)
    to_draft[kept] = np.arange(len(kept))
    draft_small, targets_small = draft[..., kept], to_draft[tokens]
    pd, pt = softmax(draft_small), softmax(target)[..., kept]
    l1 = np.abs(pd - pt).sum(-1) + (1 - pt.sum(-1))
    inside = valid & (targets_small >= 0)
    ce = -np.log(np.take_along_axis(pd, np.maximum(targets_small, 0)[..., None], -1)[..., 0])
    w = inside * weights()[None]
    _, parts = dspark_loss(draft_small, target_lp[..., kept], conf, targets_small, valid)
    np.testing.assert_allclose(parts["tv"], reference_weighted_mean(l1), rtol=1e-5)
    np.testing.assert_allclose(parts["ce"], (ce * w).sum() / w.sum(), rtol=1e-5)
    np.testing.assert_allclose(dflash_loss(draft_small, targets_small, valid), (ce * w).sum() / w.sum(), rtol=1e-5)
    assert (targets_small[valid] < 0).any()  # the case under test occurs
