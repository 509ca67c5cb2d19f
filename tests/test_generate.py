"""Jitted generation on tiny random models: greedy exactness, ragged batches, stopping, seeds, sharding."""

import jax
import jax.numpy as jnp
import pytest
from tiny_models import FAMILIES, tiny_config

from dspark_jax import generate as generate_lib
from dspark_jax.generate import GenerationConfig, generate, generate_stream, prepare
from dspark_jax.models.kv_cache import KVCache
from dspark_jax.models.params import init_params
from dspark_jax.models.sharding import make_mesh, shard_params
from dspark_jax.models.transformer import forward, logits
from dspark_jax.sampling import SamplingConfig

PROMPTS = [[5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17], [9], [40, 41]]


@pytest.fixture(scope="module", params=FAMILIES)
def model(request):
    config = tiny_config(request.param)
    return config, init_params(config, jax.random.key(0), std=0.3)


def greedy_by_recompute(params, config, prompt, n):
    """Reference: argmax of a full forward over the whole sequence at every step, no cache reuse."""
    width = 64  # fixed, so one compilation serves every step; causality makes the padding invisible

    @jax.jit
    def next_token(sequence, length):
        out = forward(params, sequence[None], jnp.arange(width)[None], KVCache.empty(config, 1, width),
                      config=config)
        return jnp.argmax(logits(params, out.hidden[0, length - 1], config=config))

    sequence = list(prompt)
    for _ in range(n):
        padded = jnp.asarray(sequence + [0] * (width - len(sequence)))
        sequence.append(int(next_token(padded, len(sequence))))
    return sequence[len(prompt):]


def test_greedy_batch_equals_recompute(model):
    config, params = model
    out = generate(params, config, PROMPTS, GenerationConfig(max_new_tokens=12))
    for prompt, row in zip(PROMPTS, out):
        assert row == greedy_by_recompute(params, config, prompt, 12)


def test_rows_do_not_depend_on_batch_companions(model):
    config, params = model
    together = generate(params, config, PROMPTS, GenerationConfig(max_new_tokens=10))
    for prompt, row in zip(PROMPTS, together):
        assert generate(params, config, [prompt], GenerationConfig(max_new_tokens=10))[0] == row


def test_stop_tokens_end_rows_independently():
    config = tiny_config("llama")
    params = init_params(config, jax.random.key(0), std=0.3)
    free = generate(params, config, PROMPTS, GenerationConfig(max_new_tokens=12))
    stop = free[1][4]  # a token row 1 emits mid-way
    stopped = generate(params, config, PROMPTS, GenerationConfig(max_new_tokens=12, stop_tokens=(stop,)))
    for free_row, row in zip(free, stopped):
        cut = free_row.index(stop) + 1 if stop in free_row else len(free_row)
        assert row == free_row[:cut]
    assert len(stopped[1]) <= 5


def test_stream_yields_the_same_tokens():
    config = tiny_config("gemma3")
    params = init_params(config, jax.random.key(0), std=0.3)
    generation = GenerationConfig(max_new_tokens=19, sampling=SamplingConfig(0.8, top_k=30, top_p=0.9))
    chunks = list(generate_stream(params, config, PROMPTS, generation, seed=3, chunk=5))
    assert [len(r) for r in chunks[0]] == [1] * len(PROMPTS)
    assert len(chunks) == 1 + 4  # 1 token from prefill, then 18 more in chunks of 5
    assert chunks[-1] == generate(params, config, PROMPTS, generation, seed=3)


def test_sampling_is_seeded():
    config = tiny_config("qwen2")
    params = init_params(config, jax.random.key(0), std=0.3)
    generation = GenerationConfig(max_new_tokens=16, sampling=SamplingConfig(1.0))
    a = generate(params, config, PROMPTS, generation, seed=7)
    assert a == generate(params, config, PROMPTS, generation, seed=7)
    assert a != generate(params, config, PROMPTS, generation, seed=8)
    assert all(len(r) == 16 for r in a)


def test_one_compilation_for_different_prompts_of_a_bucket(monkeypatch):
    config = tiny_config("qwen3")
    params = init_params(config, jax.random.key(0), std=0.3)
    traces = []
    original = generate_lib.Decoder.prefill
    monkeypatch.setattr(generate_lib.Decoder, "prefill", lambda *a: traces.append(1) or original(*a))
    generate_lib._generate.clear_cache()
    generation = GenerationConfig(max_new_tokens=5, sampling=SamplingConfig(0.5))
    generate(params, config, [[1, 2, 3], [4]], generation)
    generate(params, config, [[7, 8, 9, 10, 11], [12, 13]], generation, seed=4)
    assert len(traces) == 1


def test_sharded_equals_unsharded():
    config = tiny_config("qwen3").replace(num_heads=8, num_kv_heads=4, head_dim=8)
    params = init_params(config, jax.random.key(0), std=0.3)
    generation = GenerationConfig(max_new_tokens=12)
    expected = generate(params, config, PROMPTS, generation)
    for data, model_axis in [(1, 8), (2, 4)]:
        sharded = shard_params(params, make_mesh(data, model_axis))
        assert len(sharded.layers[0].q.sharding.device_set) == data * model_axis
        assert generate(sharded, config, PROMPTS, generation) == expected


@pytest.mark.parametrize(
    "prompts, generation, message",
    [
        ([], GenerationConfig(), "no prompts"),
        ([[1], []], GenerationConfig(), "prompt 1 is empty"),
        ([[1] * 500], GenerationConfig(max_new_tokens=20), "exceeds the model's context of 512"),
        ([[1, 999]], GenerationConfig(), "outside the vocabulary"),
    ],
)
def test_bad_requests_fail_before_compiling(prompts, generation, message):
    with pytest.raises(ValueError, match=message):
        prepare(tiny_config("llama"), prompts, generation)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=-1.0), "temperature"),
        (dict(top_k=-2), "top_k"),
        (dict(top_k=2.5), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
    ],
)
def test_invalid_sampling_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingConfig(**kwargs)


def test_invalid_budget():
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationConfig(max_new_tokens=0)
