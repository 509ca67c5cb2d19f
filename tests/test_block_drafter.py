"""DFlash / DSpark proposers inside the speculative engine: lossless with untrained (random) drafters."""

import jax
import pytest
from flax import nnx
from tiny_models import tiny_config

from dspark_jax.generate import GenerationConfig, generate
from dspark_jax.models.dflash import DFlashBackbone, DrafterConfig
from dspark_jax.models.dspark import DSparkHeads
from dspark_jax.models.params import init_params
from dspark_jax.proposers.block_drafter import make_block_proposer
from dspark_jax.sampling import SamplingConfig
from dspark_jax.speculative import speculative_generate
from dspark_jax.tree import TreeTemplate

PROMPTS = [[5, 6, 7, 8, 5, 6], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [9]]


@pytest.fixture(scope="module")
def target():
    config = tiny_config("gemma3")
    return config, init_params(config, jax.random.key(0), std=0.3)


def proposer_for(kind, config, params):
    drafter = DrafterConfig.for_target(config, num_layers=1, block_size=4, num_features=2,
                                       intermediate_size=64)
    backbone = DFlashBackbone(drafter, rngs=nnx.Rngs(1))
    heads = DSparkHeads(config.vocab_size, config.hidden_size, rank=8, rngs=nnx.Rngs(2)) if kind == "dspark" else None
    return make_block_proposer(config, drafter, backbone, heads, params)


@pytest.mark.parametrize("template", [TreeTemplate(1, 4), TreeTemplate(2, 3)], ids=str)
@pytest.mark.parametrize("kind", ["dflash", "dspark"])
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
