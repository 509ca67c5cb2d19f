"""EAGLE-3: the proposer drafts exactly what training-time test unrolls, and decoding with it is lossless."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny_models import tiny_config

from dspark_jax.drafter_kinds import new_drafter
from dspark_jax.generate import GenerationConfig, generate
from dspark_jax.models.draft_vocab import DraftHead
from dspark_jax.models.eagle3 import Eagle3Config, Eagle3Drafter
from dspark_jax.models.kv_cache import KVCache
from dspark_jax.models.params import init_params
from dspark_jax.models.transformer import forward
from dspark_jax.proposers.base import DraftContext, Prefilled
from dspark_jax.proposers.eagle3 import make_eagle3_proposer
from dspark_jax.sampling import SamplingConfig
from dspark_jax.speculative import SpeculativeMethod, speculative_generate
from dspark_jax.train.blocks import make_blocks
from dspark_jax.train.eagle3_ttt import training_time_test
from dspark_jax.tree import TreeTemplate

CONFIG = tiny_config("gemma3")
PARAMS = init_params(CONFIG, jax.random.key(0), std=0.3)
DRAFTER = Eagle3Config.for_target(CONFIG, depth=4, num_features=2, intermediate_size=64)


def captured(tokens):
    tokens = jnp.asarray(tokens, jnp.int32)
    batch, length = tokens.shape
    return forward(PARAMS, tokens, jnp.broadcast_to(jnp.arange(length), tokens.shape),
                   KVCache.empty(CONFIG, batch, length, PARAMS.embed.dtype), config=CONFIG,
                   capture_layers=DRAFTER.target_layers).captured


@pytest.mark.parametrize("vocab", [None, np.arange(0, CONFIG.vocab_size, 2, dtype=np.int32)], ids=["full", "reduced"])
def test_proposer_drafts_what_training_unrolls(vocab):
    model = Eagle3Drafter(DRAFTER, CONFIG.vocab_size if vocab is None else vocab, rngs=nnx.Rngs(3))
    proposer, params = make_eagle3_proposer(CONFIG, model, PARAMS)
    prompt, anchor = [7, 3, 9, 12, 5, 30, 8], 41
    state = proposer.init(params, Prefilled(jnp.asarray([prompt]), jnp.asarray([len(prompt)]), captured([prompt])), 32)
    history = jnp.asarray([prompt + [anchor]])
    context = DraftContext(history=history, length=jnp.asarray([len(prompt) + 1]), done=jnp.asarray([False]))
    draft, _ = proposer.propose(params, state, context, TreeTemplate(1, 4), SamplingConfig(), jax.random.key(0))
    drafted = np.asarray(draft.tokens)[0, :, 0].tolist()

    # Training sees the same sequence with the drafts as teacher tokens: its step logits must pick them again.
    tokens = jnp.asarray([prompt + [anchor] + drafted])
    blocks = make_blocks(tokens, jnp.ones_like(tokens), jnp.asarray([[len(prompt)]]), 4)
    head = DraftHead.from_target(CONFIG, PARAMS, model.vocab.get_value())
    step_logits = training_time_test(model, CONFIG, PARAMS, tokens, captured(tokens), blocks, head)
    assert head.to_target(jnp.argmax(step_logits[:, 0, 0], -1)).tolist() == drafted
    if vocab is not None:
        assert set(drafted) <= set(vocab.tolist())


@pytest.mark.parametrize("template", [TreeTemplate(1, 4), TreeTemplate(2, 3)], ids=str)
def test_greedy_is_lossless(template):
    prompts = [[5, 6, 7, 8, 5, 6], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [9]]
    proposer, params = make_eagle3_proposer(CONFIG, Eagle3Drafter(DRAFTER, CONFIG.vocab_size, rngs=nnx.Rngs(1)),
                                            PARAMS)
    generation = GenerationConfig(max_new_tokens=12)
    result = speculative_generate(PARAMS, CONFIG, prompts, generation, SpeculativeMethod(proposer, params, template))
    assert result.tokens == generate(PARAMS, CONFIG, prompts, generation)


def test_one_layer_only():
    """EAGLE-3's config has no layer count or mask token to set: asking for either is refused by name."""
    assert DRAFTER.depth == DRAFTER.steps == 4
    with pytest.raises(ValueError, match="eagle3 drafter has no mask_token_id, num_layers"):
        new_drafter("eagle3", CONFIG, num_layers=2, mask_token_id=0)
