"""DFlash / DSpark proposers inside the speculative engine: lossless with untrained (random) drafters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny_models import tiny_config

from dspark_jax.generate import GenerationConfig, generate
from dspark_jax.models.block_drafter import BlockDrafter
from dspark_jax.models.dflash import DrafterConfig
from dspark_jax.models.kv_cache import KVCache
from dspark_jax.models.params import init_params
from dspark_jax.models.transformer import forward
from dspark_jax.proposers.base import DraftContext, Prefilled
from dspark_jax.proposers.block_drafter import make_block_proposer
from dspark_jax.sampling import SamplingConfig
from dspark_jax.speculative import speculative_generate
from dspark_jax.tree import TreeTemplate

PROMPTS = [[5, 6, 7, 8, 5, 6], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [9]]


@pytest.fixture(scope="module")
def target():
    config = tiny_config("gemma3")
    return config, init_params(config, jax.random.key(0), std=0.3)


def reduced_vocab(config):
    """Every third token: the drafter can propose only a third of what the target writes."""
    return np.arange(0, config.vocab_size, 3, dtype=np.int32)


def proposer_for(kind, config, params):
    drafter = DrafterConfig.for_target(config, num_layers=1, block_size=4, num_features=2,
                                       intermediate_size=64)
    vocab = reduced_vocab(config) if kind.endswith("reduced") else config.vocab_size
    model = BlockDrafter(drafter, vocab, 8 if kind.startswith("dspark") else None, rngs=nnx.Rngs(1))
    return make_block_proposer(config, model, params)


@pytest.mark.parametrize("template", [TreeTemplate(1, 4), TreeTemplate(2, 3)], ids=str)
@pytest.mark.parametrize("kind", ["dflash", "dspark", "dspark-reduced"])
def test_greedy_is_lossless(target, kind, template):
    config, params = target
    generation = GenerationConfig(max_new_tokens=12)
    proposer, proposer_params = proposer_for(kind, config, params)
    result = speculative_generate(params, config, PROMPTS, generation, proposer, proposer_params, template)
    assert result.tokens == generate(params, config, PROMPTS, generation)
    assert result.stats.target_steps <= 12


def test_sampling_runs(target):
    config, params = target
    proposer, proposer_params = proposer_for("dspark", config, params)
    sampling = SamplingConfig(temperature=1.0, top_p=0.9)
    result = speculative_generate(params, config, PROMPTS, GenerationConfig(max_new_tokens=8, sampling=sampling),
                                  proposer, proposer_params, TreeTemplate(1, 4), seed=3)
    assert [len(r) for r in result.tokens] == [8, 8, 8]
    assert all(0 <= t < config.vocab_size for row in result.tokens for t in row)


@pytest.mark.parametrize("kind", ["dflash-reduced", "dspark-reduced"])
def test_reduced_vocabulary_drafts_only_its_tokens(target, kind):
    config, params = target
    proposer, proposer_params = proposer_for(kind, config, params)
    state = proposer.init(proposer_params, _prefilled(config, params), 32)
    history = jnp.asarray([[5, 6, 7, 8, 5, 6, 7]], jnp.int32)
    context = DraftContext(history=history, length=jnp.asarray([7]), done=jnp.asarray([False]))
    sampling = SamplingConfig(temperature=1.0)
    draft, _ = proposer.propose(proposer_params, state, context, TreeTemplate(2, 4), sampling,
                                jax.random.key(0))
    allowed = set(reduced_vocab(config).tolist())
    assert set(np.asarray(draft.tokens).ravel().tolist()) <= allowed
    q = np.asarray(draft.main_probs)
    np.testing.assert_allclose(q.sum(-1), 1.0, rtol=1e-5)
    outside = np.setdiff1d(np.arange(config.vocab_size), reduced_vocab(config))
    assert np.all(q[..., outside] == 0)


def _prefilled(config, params):
    prompt = jnp.asarray([[5, 6, 7, 8, 5, 6]], jnp.int32)
    out = forward(params, prompt, jnp.arange(6)[None], KVCache.empty(config, 1, 6, params.embed.dtype), config=config,
                  capture_layers=DrafterConfig.for_target(config, num_features=2).target_layers)
    return Prefilled(prompt=prompt, prompt_lengths=jnp.asarray([6]), features=out.captured)
