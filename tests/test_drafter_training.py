"""Training each drafter (DFlash, DSpark, EAGLE-3) online against a tiny target raises its acceptance and
keeps decoding lossless."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_models import tiny_config

from dspark_jax.drafter_kinds import drafter_proposer, new_drafter
from dspark_jax.generate import GenerationConfig, generate
from dspark_jax.models.params import init_params
from dspark_jax.speculative import SpeculativeMethod, speculative_generate
from dspark_jax.train.blocks import make_blocks, masked_inputs
from dspark_jax.train.drafter_step import TrainConfig, make_optimizer, train_step
from dspark_jax.tree import TreeTemplate

PROMPT_LENGTH, RESPONSE_LENGTH = 4, 28


def test_blocks_by_hand():
    tokens = jnp.array([[10, 11, 12, 13, 14, 15]])
    loss_mask = jnp.array([[0, 0, 1, 1, 1, 1]])
    blocks = make_blocks(tokens, loss_mask, jnp.array([[1, 4]]), block_size=3)
    np.testing.assert_array_equal(masked_inputs(blocks, mask_token_id=0), [[[11, 0, 0], [14, 0, 0]]])
    np.testing.assert_array_equal(blocks.positions, [[[1, 2, 3], [4, 5, 6]]])
    np.testing.assert_array_equal(blocks.targets[0, 0], [12, 13, 14])
    np.testing.assert_array_equal(blocks.previous[0, 0], [11, 12, 13])
    np.testing.assert_array_equal(blocks.valid, [[[True, True, True], [True, False, False]]])
    np.testing.assert_array_equal(blocks.context_visible[0, 1], [1, 1, 1, 1, 0, 0])


@pytest.fixture(scope="module")
def data():
    config = tiny_config("gemma3")
    params = init_params(config, jax.random.key(0), std=0.3)
    prompts = np.random.default_rng(0).integers(1, config.vocab_size, (512, PROMPT_LENGTH)).tolist()
    responses = generate(params, config, prompts, GenerationConfig(max_new_tokens=RESPONSE_LENGTH))
    tokens = jnp.asarray([p + r for p, r in zip(prompts, responses)])
    loss_mask = jnp.broadcast_to(jnp.arange(tokens.shape[1]) >= PROMPT_LENGTH, tokens.shape)
    return config, params, tokens, loss_mask


def tau(config, params, model, prompts):
    """Greedy tau on prompts the drafter never trained on, checking losslessness on the way."""
    proposer, proposer_params = drafter_proposer(config, model, params)
    generation = GenerationConfig(max_new_tokens=RESPONSE_LENGTH)
    result = speculative_generate(params, config, prompts, generation,
                                  SpeculativeMethod(proposer, proposer_params, TreeTemplate(1, 4)))
    assert result.tokens == generate(params, config, prompts, generation)  # lossless before and after training
    return result.stats.tau


@pytest.mark.parametrize("kind", ["dflash", "dspark", "eagle3"])
def test_training_raises_acceptance(data, kind):
    config, params, tokens, loss_mask = data
    model = new_drafter(kind, config, depth=4, num_features=2, intermediate_size=128,
                        **({"markov_rank": 16} if kind == "dspark" else {}))
    held_out = np.random.default_rng(1).integers(1, config.vocab_size, (8, PROMPT_LENGTH)).tolist()
    before = tau(config, params, model, held_out)
    train = TrainConfig(learning_rate=3e-3, warmup_steps=10, total_steps=300, anchors_per_sequence=8)
    optimizer = make_optimizer(model, train)
    key = jax.random.key(1)
    for step in range(train.total_steps):
        key, batch_key, anchor_key = jax.random.split(key, 3)
        rows = jax.random.choice(batch_key, tokens.shape[0], (16,), replace=False)
        metrics = train_step(model, optimizer, config, params, tokens[rows], loss_mask[rows], anchor_key, train)
    after = tau(config, params, model, held_out)
    print(f"\ntau before {before:.2f} after {after:.2f}; last top-1 agreement {float(metrics['top1_agreement']):.2f}")
    assert after > before + 0.5
