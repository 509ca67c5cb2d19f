"""Forward pass: cached decoding equals full recompute, and logits match HF transformers on tiny models."""

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_models import FAMILIES, tiny_config

from dspark_jax.models.hf_loader import load_hf_checkpoint
from dspark_jax.models.kv_cache import KVCache
from dspark_jax.models.params import init_params
from dspark_jax.models.rms_norm import rms_norm
from dspark_jax.models.transformer import forward, logits

TINY_DATA = Path(__file__).parent / "data" / "tiny"


def run_full(params, config, tokens):
    batch, length = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
    out = forward(params, tokens, positions, KVCache.empty(config, batch, 64), config=config)
    return logits(params, out.hidden, config=config)


def run_cached(params, config, tokens, prefill: int):
    """Prefill `prefill` tokens, then feed the rest one at a time through the cache."""
    batch, length = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
    step = jax.jit(lambda p, t, pos, c: forward(p, t, pos, c, config=config))
    out = step(params, tokens[:, :prefill], positions[:, :prefill], KVCache.empty(config, batch, 64))
    chunks, cache = [logits(params, out.hidden, config=config)], out.cache
    for t in range(prefill, length):
        out = step(params, tokens[:, t : t + 1], positions[:, t : t + 1], cache)
        chunks.append(logits(params, out.hidden, config=config))
        cache = out.cache
    return jnp.concatenate(chunks, axis=1)


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_decode_equals_full_recompute(family):
    config = tiny_config(family)
    params = init_params(config, jax.random.key(0), std=0.2)
    tokens = jax.random.randint(jax.random.key(1), (2, 20), 0, config.vocab_size)
    full = run_full(params, config, tokens)
    cached = run_cached(params, config, tokens, prefill=7)
    assert float(full.std()) > 0.1  # logits carry signal, so agreement means something
    np.testing.assert_allclose(cached, full, atol=2e-5, rtol=0)


def test_sliding_window_hides_old_tokens():
    """A token beyond the window of every layer cannot influence a sliding-only model; within it, it does."""
    config = tiny_config("gemma3").replace(layer_types=("sliding_attention",) * 3)
    params = init_params(config, jax.random.key(0), std=0.2)
    tokens = jax.random.randint(jax.random.key(1), (1, 30), 1, config.vocab_size)
    changed_far = tokens.at[0, 0].set(0)
    last = lambda t: run_full(params, config, t)[0, -1]
    # Information travels at most window-1 positions per layer: 3 layers × 5 < 29.
    np.testing.assert_array_equal(last(tokens), last(changed_far))
    changed_near = tokens.at[0, 27].set(0)
    assert float(jnp.abs(last(tokens) - last(changed_near)).max()) > 1e-3


def test_capture_layers_returns_requested_layer_outputs():
    config = tiny_config("qwen3")
    params = init_params(config, jax.random.key(0), std=0.2)
    tokens = jnp.arange(8)[None] + 3
    positions = jnp.arange(8)[None]
    cache = KVCache.empty(config, 1, 16)
    out = forward(params, tokens, positions, cache, config=config, capture_layers=(2, 0))
    assert out.captured.shape == (2, 1, 8, config.hidden_size)
    one_layer = config.replace(num_layers=1, layer_types=())
    first_only = dataclasses.replace(params, layers=params.layers[:1])
    single = forward(first_only, tokens, positions, KVCache.empty(one_layer, 1, 16), config=one_layer,
                     capture_layers=(0,))
    np.testing.assert_allclose(out.captured[1], single.captured[0], atol=1e-6)
    # The last layer's output, normed, is the final hidden state.
    np.testing.assert_allclose(rms_norm(out.captured[0], params.final_norm, config.rms_norm_eps), out.hidden,
                               atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers(family):
    """Golden logits from HF transformers (tests/golden/make_tiny_golden.py): prefill and cached decode."""
    directory = TINY_DATA / family
    golden = np.load(directory / "golden.npz")
    config, params = load_hf_checkpoint(directory)
    tokens = jnp.asarray(golden["tokens"])
    reference = golden["logits"]
    assert reference.std() > 0.5
    full = run_full(params, config, tokens)
    np.testing.assert_allclose(full, reference, atol=1e-4, rtol=0)
    cached = run_cached(params, config, tokens, prefill=10)
    np.testing.assert_allclose(cached, reference, atol=1e-4, rtol=0)
