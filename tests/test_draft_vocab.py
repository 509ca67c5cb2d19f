"""The reduced draft vocabulary: which tokens it keeps and the maps between draft and target ids."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_models import tiny_config

from dspark_jax.models.draft_vocab import DraftHead, most_frequent_tokens
from dspark_jax.models.params import init_params
from dspark_jax.models.transformer import logits


def test_most_frequent_response_tokens_plus_stop_tokens():
    tokens = np.array([[9, 9, 3, 3, 3, 5, 7, 7]])
    loss_mask = np.array([[0, 0, 1, 1, 1, 1, 1, 1]])  # the 9s are prompt tokens and do not count
    assert most_frequent_tokens(tokens, loss_mask, 2, 10).tolist() == [3, 7]
    assert most_frequent_tokens(tokens, loss_mask, 3, 10, always=(1,)).tolist() == [1, 3, 7]
    assert most_frequent_tokens(tokens, loss_mask, 50, 10).tolist() == list(range(10))
    with pytest.raises(ValueError, match=">= 1"):
        most_frequent_tokens(tokens, loss_mask, 0, 10)


def test_draft_head_maps_and_logits():
    config = tiny_config("qwen2")
    params = init_params(config, jax.random.key(0))
    kept = np.array([2, 5, 11, 40], np.int32)
    head = DraftHead.from_target(config, params, kept)
    hidden = jnp.ones((3, config.hidden_size))
    np.testing.assert_allclose(head.logits(hidden), logits(params, hidden, config=config)[:, kept], rtol=1e-6)
    assert head.to_draft(jnp.asarray([5, 40, 3, 0, 41])).tolist() == [1, 3, 4, 4, 4]  # 4 = outside
    assert head.to_target(jnp.asarray([0, 3])).tolist() == [2, 40]
    q = jnp.asarray([[0.1, 0.2, 0.3, 0.4]])
    full = np.asarray(head.probs_to_target(q))
    assert full.shape == (1, config.vocab_size) and full[0, kept].tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert full.sum() == pytest.approx(1.0)
    full_logits = np.asarray(logits(params, hidden, config=config))
    softmax = np.exp(full_logits - full_logits.max(-1, keepdims=True))
    softmax /= softmax.sum(-1, keepdims=True)
    log_normalizer = jax.nn.logsumexp(jnp.asarray(full_logits), axis=-1)
    np.testing.assert_allclose(np.exp(head.target_log_probs(hidden, log_normalizer)), softmax[:, kept], rtol=1e-5)
    everything = DraftHead.from_target(config, params, np.arange(config.vocab_size))
    assert everything.weight is params.head
