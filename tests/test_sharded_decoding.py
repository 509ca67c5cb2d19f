"""Decoding on a mesh of 8 virtual CPU devices: rows over the data axis, the target tensor-parallel over the
model axis, KV caches laid out by the same rules; greedy output equal to the single-device run."""

import dataclasses

import jax
import numpy as np
import pytest
from tiny_models import tiny_config

from dspark_jax import speculative
from dspark_jax.drafter_kinds import drafter_proposer, new_drafter
from dspark_jax.generate import GenerationConfig, generate
from dspark_jax.models.params import init_params
from dspark_jax.models.sharding import make_mesh, place_proposer, placement_of, shard_params
from dspark_jax.proposers.draft_model import DraftModelProposer
from dspark_jax.speculative import SpeculativeMethod, speculative_generate
from dspark_jax.tree import TreeTemplate

CONFIG = tiny_config("gemma3")
PARAMS = init_params(CONFIG, jax.random.key(0), std=0.3)
PROMPTS = np.random.default_rng(0).integers(1, CONFIG.vocab_size, (8, 7)).tolist()
GENERATION = GenerationConfig(max_new_tokens=16)


DSPARK = new_drafter("dspark", CONFIG, depth=4, target_layers=(0, 2), markov_rank=8)


def _method(name: str, params) -> SpeculativeMethod:
    """A method over `params`, the target's weights as the engine gets them (sharded or not), built as
    `DrafterChoice.method` builds one: proposer parameters read the target's own weights."""
    if name == "model":  # the target's first two layers: a draft model that agrees with it often
        draft_config = CONFIG.replace(num_layers=2, layer_types=CONFIG.layer_types[:2])
        draft_params = dataclasses.replace(params, layers=params.layers[:2])
        return SpeculativeMethod(DraftModelProposer(draft_config), draft_params, TreeTemplate(1, 4))
    return SpeculativeMethod(*drafter_proposer(CONFIG, DSPARK, params), TreeTemplate(1, 4))


def _on_mesh(name: str, mesh_shape) -> tuple:
    sharded = shard_params(PARAMS, make_mesh(*mesh_shape))
    method = _method(name, sharded)
    return sharded, dataclasses.replace(method, params=place_proposer(method.params, placement_of(sharded)))


@pytest.mark.parametrize("mesh_shape", [(8, 1), (2, 4)])
def test_plain_decoding_on_a_mesh_is_the_single_device_run(mesh_shape):
    sharded = shard_params(PARAMS, make_mesh(*mesh_shape))
    assert generate(sharded, CONFIG, PROMPTS, GENERATION) == generate(PARAMS, CONFIG, PROMPTS, GENERATION)


@pytest.mark.parametrize("name", ["model", "dspark"])
@pytest.mark.parametrize("mesh_shape", [(8, 1), (4, 2), (1, 8)])
def test_speculative_decoding_on_a_mesh_is_the_single_device_run(name, mesh_shape):
    expected = speculative_generate(PARAMS, CONFIG, PROMPTS, GENERATION, _method(name, PARAMS))
    sharded, method = _on_mesh(name, mesh_shape)
    result = speculative_generate(sharded, CONFIG, PROMPTS, GENERATION, method)
    assert result.tokens == expected.tokens == generate(PARAMS, CONFIG, PROMPTS, GENERATION)
    np.testing.assert_array_equal(result.stats.accepted, expected.stats.accepted)


def test_the_decode_state_keeps_its_rows_on_the_data_axis():
    sharded, method = _on_mesh("dspark", (4, 2))
    decoder, prompt, lengths, key = speculative._decoder(sharded, CONFIG, PROMPTS, GENERATION, method, 0)
    state = speculative._prefill(decoder, sharded, method.params, prompt, lengths, key)
    state = speculative._step(decoder, sharded, method.params, state)
    assert state.cache.k.sharding.spec[1] == "data" and state.history.sharding.spec[0] == "data"
    assert state.cache.k.sharding.spec[3] == "model"  # the tiny target's 2 KV heads, as its k projection


def test_the_drafter_is_split_over_the_model_axis_beside_the_target():
    sharded, method = _on_mesh("dspark", (2, 4))
    params = method.params
    assert params.target.layers[0].q is sharded.layers[0].q  # the target's own weights, not a copy
    matrices = [a for a in jax.tree.leaves((params.backbone, params.heads)) if a.ndim >= 2]
    assert matrices and all("model" in a.sharding.spec for a in matrices)
