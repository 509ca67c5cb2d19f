"""DFlash backbone masks and DSpark's Markov sampling, on tiny random drafters."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny_models import tiny_config

from dspark_jax.models.dflash import DFlashBackbone, DFlashConfig
from dspark_jax.models.drafter_config import fused_layers
from dspark_jax.models.dspark import DSparkHeads
from dspark_jax.sampling import SamplingConfig

TARGET = tiny_config("qwen3")
CONFIG = DFlashConfig(target_layers=(0, 1), hidden_size=TARGET.hidden_size, mask_token_id=0, block_size=4,
                       num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, intermediate_size=96)
S = 12


def run_backbone(model, features, block, anchors):
    """features [K, 1, S, E]; block embeddings [1, N, γ, E]; anchors int[N] (block positions start there)."""
    positions = jnp.arange(S)[None]
    context = model.context(features, positions)
    block_positions = jnp.asarray(anchors)[None, :, None] + jnp.arange(CONFIG.block_size)
    visible = positions[:, None, :] < jnp.asarray(anchors)[None, :, None]
    return model(block, block_positions, *context, visible)


@pytest.fixture(scope="module")
def backbone_inputs():
    model = DFlashBackbone(CONFIG, rngs=nnx.Rngs(0))
    k1, k2 = jax.random.split(jax.random.key(1))
    features = jax.random.normal(k1, (2, 1, S, CONFIG.hidden_size))
    block = jax.random.normal(k2, (1, 2, CONFIG.block_size, CONFIG.hidden_size))
    return model, features, block


def test_context_after_the_anchor_changes_nothing(backbone_inputs):
    model, features, block = backbone_inputs
    anchors = [5, 9]
    out = run_backbone(model, features, block, anchors)
    later = features.at[:, :, 7].add(3.0)  # after anchor 5, before anchor 9
    changed = run_backbone(model, later, block, anchors)
    np.testing.assert_array_equal(changed[:, 0], out[:, 0])  # block at 5 cannot see position 7
    assert float(jnp.abs(changed[:, 1] - out[:, 1]).max()) > 1e-3  # block at 9 does
    at_anchor = run_backbone(model, features.at[:, :, 5].add(3.0), block, anchors)
    np.testing.assert_array_equal(at_anchor[:, 0], out[:, 0])  # strictly before the anchor


def test_block_attends_to_itself_in_both_directions(backbone_inputs):
    model, features, block = backbone_inputs
    out = run_backbone(model, features, block, [5, 9])
    changed = run_backbone(model, features, block.at[:, 0, 3].add(1.0), [5, 9])
    assert float(jnp.abs(changed[:, 0, 0] - out[:, 0, 0]).max()) > 1e-4  # slot 0 sees slot 3
    np.testing.assert_array_equal(changed[:, 1], out[:, 1])  # other blocks are independent


def test_bfloat16_compute_stays_close_to_float32(backbone_inputs):
    model, features, block = backbone_inputs
    bf16 = DFlashBackbone(dataclasses.replace(CONFIG, compute_dtype="bfloat16"), rngs=nnx.Rngs(0))
    nnx.update(bf16, nnx.state(model))  # same float32 weights
    out, low = run_backbone(model, features, block, [5, 9]), run_backbone(bf16, features, block, [5, 9])
    assert low.dtype == jnp.bfloat16 and out.dtype == jnp.float32
    assert float(jnp.abs(low.astype(jnp.float32) - out).max()) < 0.1 * float(jnp.abs(out).max())


def test_default_target_layers_follow_the_design():
    qwen3_8b = TARGET.replace(num_layers=36, layer_types=())
    assert fused_layers(qwen3_8b, 5) == (1, 9, 17, 25, 33)
    gemma_270m = TARGET.replace(num_layers=18, layer_types=())
    assert fused_layers(gemma_270m, 5) == (1, 4, 8, 11, 15)


@pytest.fixture(scope="module")
def heads():
    model = DSparkHeads(TARGET.vocab_size, CONFIG.hidden_size, rank=8, rngs=nnx.Rngs(2))
    # Non-zero transition output so the Markov bias matters.
    model.transition_out.kernel[...] = jax.random.normal(jax.random.key(3), model.transition_out.kernel.shape) * 3
    return model


def block_inputs(batch=3):
    k1, k2 = jax.random.split(jax.random.key(4))
    base = jax.random.normal(k1, (batch, CONFIG.block_size, TARGET.vocab_size))
    hidden = jax.random.normal(k2, (batch, CONFIG.block_size, CONFIG.hidden_size))
    return base, hidden, jnp.array([5, 17, 200])[:batch]


def test_markov_greedy_sampling_equals_step_by_step_reference(heads):
    base, hidden, anchor = block_inputs()
    draft = jax.jit(lambda b, h, a: heads.sample_block(b, h, a, 2, SamplingConfig(), jax.random.key(0)))
    tokens, q, confidence = draft(base, hidden, anchor)
    assert q is None
    w1 = np.asarray(heads.transition_in.embedding[...])
    w2 = np.asarray(heads.transition_out.kernel[...])
    w_conf, b_conf = np.asarray(heads.confidence.kernel[...])[:, 0], float(heads.confidence.bias[...][0])
    for row in range(3):
        previous = int(anchor[row])
        for k in range(CONFIG.block_size):
            logits = np.asarray(base[row, k]) + w1[previous] @ w2
            order = np.argsort(-logits)
            assert tokens[row, k, 0] == order[0] and tokens[row, k, 1] == order[1]
            expected_c = 1 / (1 + np.exp(-(np.concatenate([hidden[row, k], w1[previous]]) @ w_conf + b_conf)))
            np.testing.assert_allclose(confidence[row, k], expected_c, rtol=1e-4)
            previous = int(order[0])


def test_markov_sampling_in_jit_equals_eager_steps(heads):
    base, hidden, anchor = block_inputs()
    sampling = SamplingConfig(temperature=1.0, top_k=20)
    key = jax.random.key(7)
    tokens, q, _ = jax.jit(lambda b, h, a: heads.sample_block(b, h, a, 1, sampling, key))(base, hidden, anchor)
    # Eager reference: one step at a time with the same per-step keys.
    from dspark_jax.sampling import expand_candidates
    previous = anchor
    for k, key_k in enumerate(jax.random.split(key, CONFIG.block_size)):
        bias, _ = heads.transition(previous)
        candidates, q_k = expand_candidates(base[:, k] + bias, 1, sampling, key_k)
        np.testing.assert_array_equal(tokens[:, k], candidates)
        np.testing.assert_allclose(q[:, k], q_k, atol=1e-6)
        previous = candidates[:, 0]


def test_teacher_forcing_uses_the_data_tokens(heads):
    base, hidden, anchor = block_inputs()
    data = jnp.array([[1, 2, 3, 4], [9, 9, 9, 9], [0, 5, 0, 5]])
    previous = jnp.concatenate([anchor[:, None], data[:, :-1]], axis=1)
    logits, _ = heads.teacher_forced(base, hidden, previous)
    bias, _ = heads.transition(previous)
    np.testing.assert_allclose(logits, base + bias, atol=1e-6)
    assert float(jnp.abs(bias).max()) > 0.1


def test_grouped_attention_is_each_group_alone():
    """Packing groups into one attention call equals attending each group to [its visible context ; its own keys]."""
    from dspark_jax.kernels.attention_reference import attention
    from dspark_jax.models.drafter_attention import grouped_attention

    b, n, g, h, kv, d, s, j = 2, 3, 4, 4, 2, 8, 10, 5
    keys = jax.random.split(jax.random.key(7), 6)
    q = jax.random.normal(keys[0], (b, n, g, h, d))
    context_k, context_v = (jax.random.normal(k, (b, s, kv, d)) for k in keys[1:3])
    own_k, own_v = (jax.random.normal(k, (b, n, j, kv, d)) for k in keys[3:5])
    visible = jax.random.bernoulli(keys[5], 0.6, (b, n, s))
    packed = grouped_attention(q, context_k, context_v, visible, own_k, own_v, scale=0.3)
    for row in range(b):
        for group in range(n):
            k_all = jnp.concatenate([context_k[row], own_k[row, group]])[None]
            v_all = jnp.concatenate([context_v[row], own_v[row, group]])[None]
            mask = jnp.broadcast_to(jnp.concatenate([visible[row, group], jnp.ones(j, bool)]), (1, g, s + j))
            alone = attention(q[row, group][None], k_all, v_all, mask, scale=0.3)[0]
            np.testing.assert_allclose(packed[row, group], alone, rtol=1e-5, atol=1e-6)
