"""`plan`: per-device memory of large targets from abstract shapes, compiled for a mesh of virtual CPU devices."""

import math

import jax
import pytest
from tiny_models import tiny_config

from dspark_jax import cli, planning
from dspark_jax.command_names import TARGET_PRESETS
from dspark_jax.drafter_kinds import drafter_proposer, kind_named, new_drafter
from dspark_jax.generate import GenerationConfig
from dspark_jax.models.params import expected_shapes, init_params
from dspark_jax.models.presets import PRESETS, preset_config
from dspark_jax.models.sharding import Placement, make_mesh, shard_params
from dspark_jax.speculative import SpeculativeMethod, _decoder, _prefill
from dspark_jax.tree import TreeTemplate


def _held(tree) -> int:
    """Bytes device 0 really holds of a pytree of placed arrays."""
    return sum(leaf.addressable_shards[0].data.nbytes for leaf in jax.tree.leaves(tree)
               if not jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key))


def test_presets_have_their_published_parameter_counts():
    assert tuple(PRESETS) == TARGET_PRESETS
    counts = {name: sum(math.prod(s) for s in expected_shapes(preset_config(name)).values()) for name in PRESETS}
    assert counts["llama3-8b"] == 8_030_261_248  # Meta-Llama-3-8B, exactly
    assert round(counts["qwen3-8b"] / 1e9, 1) == 8.2 and round(counts["qwen3-14b"] / 1e9, 1) == 14.8  # model cards
    assert counts["gemma3-12b"] - 64 * 3840 == 11_765_788_416  # Keras' count, over 262,144 of the 262,208 rows


def test_planned_bytes_are_what_a_real_placement_holds():
    config = tiny_config("qwen3")
    placement = Placement(make_mesh(2, 4))
    params = shard_params(init_params(config, jax.random.key(0)), placement.mesh)
    assert planning.device_bytes(planning.abstract_target(config, placement, params.embed.dtype)) == _held(params)
    model = new_drafter("dspark", config, depth=3, markov_rank=8)
    method = SpeculativeMethod(*drafter_proposer(config, model, params), TreeTemplate(1, 3))
    generation = GenerationConfig(max_new_tokens=128, min_prompt_width=128)
    decoder, prompt, lengths, key = _decoder(params, config, [[1] * 128] * 4, generation, method, 0)
    state = _prefill(decoder, params, method.params, prompt, lengths, key)
    plan = planning.plan_generation(config, kind_named("dspark"), model.config, config.vocab_size, placement, 4, 128,
                                    params.embed.dtype)
    assert plan.kv_cache == _held(state.cache)
    assert plan.target_parameters == _held(params)


def test_qwen3_8b_with_dspark_fits_an_h100_on_1x8(capsys):
    cli.main(["plan", "--target-config", "qwen3-8b", "--mesh", "1x8", "--length", "512"])
    out = capsys.readouterr().out
    assert "train: " in out and "generate: " in out and out.count("fits an 80 GB H100") == 2
    params = next(line for line in out.splitlines() if line.startswith("target parameters")).split()
    assert float(params[-1]) == pytest.approx(8.19 * 2 / 8, rel=0.01)  # bfloat16, tensor-parallel over 8


def test_a_batch_the_mesh_cannot_split_is_refused(capsys):
    with pytest.raises(SystemExit):
        cli.main(["plan", "--target-config", "qwen3-8b", "--mesh", "4x2", "--batch", "6"])
    assert "--batch 6 does not split over the mesh's 4 data rows" in capsys.readouterr().err
