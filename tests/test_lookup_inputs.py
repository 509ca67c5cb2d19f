"""Block drafters with `lookup_inputs`: the candidates by hand, the engine drafting exactly what training
teacher-forces at the same anchor, lossless decoding, training that learns to copy, and the export formats
that cannot hold such a drafter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_models import tiny_config

from dspark_jax.drafter_kinds import drafter_proposer, kind_of, new_drafter
from dspark_jax.generate import GenerationConfig, generate
from dspark_jax.interop.formats import FORMATS
from dspark_jax.models.draft_vocab import DraftHead
from dspark_jax.models.params import init_params
from dspark_jax.proposers.base import DraftContext, Prefilled
from dspark_jax.proposers.ngram import lookup_candidates
from dspark_jax.sampling import SamplingConfig
from dspark_jax.speculative import SpeculativeMethod, speculative_generate
from dspark_jax.train.blocks import make_blocks
from dspark_jax.train.drafter_step import TrainConfig, make_optimizer, target_features, train_step
from dspark_jax.tree import TreeTemplate

CONFIG = tiny_config("gemma3")
PARAMS = init_params(CONFIG, jax.random.key(0), std=0.3)


def test_candidates_by_hand():
    history = jnp.array([[5, 6, 7, 8, 5, 6, 0, 0], [1, 2, 3, 4, 0, 0, 0, 0]])
    tokens, match = lookup_candidates(history, jnp.array([6, 4]), depth=5)
    # Row 0: the tail "5 6" occurred at 0, followed by 7 8 5 6, then the history ends (the anchor, 6, again).
    np.testing.assert_array_equal(tokens[0], [7, 8, 5, 6, 6])
    # Row 1: no earlier occurrence of its last token: no candidate (the anchor repeated), match length 0.
    np.testing.assert_array_equal(tokens[1], [4, 4, 4, 4, 4])
    np.testing.assert_array_equal(match, [2, 0])


def _drafter(kind: str, lookup_inputs: bool, seed: int = 1):
    options = {"markov_rank": 8} if kind == "dspark" else {}
    return new_drafter(kind, CONFIG, seed=seed, depth=4, num_features=2, intermediate_size=64,
                       lookup_inputs=lookup_inputs, **options)


@pytest.mark.parametrize("lookup_inputs", [False, True])
def test_the_engine_drafts_what_training_teacher_forces(lookup_inputs):
    """DFlash's slots are independent, so its greedy draft at an anchor is the argmax of the teacher-forced
    logits of the block at that anchor, slot by slot."""
    model = _drafter("dflash", lookup_inputs)
    tokens = jnp.array([[3, 9, 4, 7, 3, 9, 4, 2, 3, 9, 5, 6]])
    anchor, depth = 9, 4
    features, _ = target_features(CONFIG, PARAMS, tokens, model.config.target_layers)
    blocks = make_blocks(tokens, jnp.ones_like(tokens), jnp.array([[anchor]]), depth)
    head = DraftHead.from_target(CONFIG, PARAMS, model.vocab.get_value())
    forced, _ = kind_of(model).teacher_forced(model, CONFIG, PARAMS, tokens, features, blocks, head)

    proposer, proposer_params = drafter_proposer(CONFIG, model, PARAMS)
    prompt = tokens[:, :anchor]  # the context before the anchor, as after a prefill
    state = proposer.init(proposer_params, Prefilled(prompt, jnp.array([anchor]), features[:, :, :anchor]), 32)
    history = jnp.zeros((1, 32), jnp.int32).at[:, : anchor + 1].set(tokens[:, : anchor + 1])
    context = DraftContext(history=history, length=jnp.array([anchor + 1]), done=jnp.zeros(1, bool))
    draft, _ = proposer.propose(proposer_params, state, context, TreeTemplate(1, depth), SamplingConfig(),
                                jax.random.key(0))
    np.testing.assert_array_equal(draft.tokens[0, :, 0], head.to_target(jnp.argmax(forced[0, 0], -1)))


@pytest.mark.parametrize("kind", ["dflash", "dspark"])
def test_greedy_is_lossless(kind):
    prompts = [[5, 6, 7, 8, 5, 6], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [9]]
    generation = GenerationConfig(max_new_tokens=12)
    proposer, proposer_params = drafter_proposer(CONFIG, _drafter(kind, True), PARAMS)
    result = speculative_generate(PARAMS, CONFIG, prompts, generation,
                                  SpeculativeMethod(proposer, proposer_params, TreeTemplate(1, 4)))
    assert result.tokens == generate(PARAMS, CONFIG, prompts, generation)


def test_training_learns_to_copy_its_context():
    """Sequences that repeat a random phrase: after its first occurrence every token is predictable from the
    context. DFlash learns the data's tokens (cross-entropy); with the lookup's candidates it learns to copy
    within a few dozen steps, without them it cannot. Measured teacher-forced on phrases it never saw."""
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(np.tile(rng.integers(1, CONFIG.vocab_size, (288, 6)), 5))  # [288, 30]
    loss_mask = jnp.broadcast_to(jnp.arange(30) >= 6, tokens.shape)
    train_rows, unseen = slice(0, 256), slice(256, 288)
    train = TrainConfig(learning_rate=3e-3, warmup_steps=5, total_steps=60, anchors_per_sequence=8)
    agreement = {}
    for lookup_inputs in (False, True):
        model = _drafter("dflash", lookup_inputs)
        optimizer = make_optimizer(model, train)
        for step in range(train.total_steps):
            rows = jax.random.choice(jax.random.key(step), 256, (16,), replace=False)
            train_step(model, optimizer, CONFIG, PARAMS, tokens[train_rows][rows], loss_mask[train_rows][rows],
                       jax.random.key(1000 + step), train)
        anchors = jnp.broadcast_to(jnp.arange(6, 25), (32, 19))  # every slot of every block in the copies
        blocks = make_blocks(tokens[unseen], loss_mask[unseen], anchors, 4)
        features, _ = target_features(CONFIG, PARAMS, tokens[unseen], model.config.target_layers)
        head = DraftHead.from_target(CONFIG, PARAMS, model.vocab.get_value())
        logits, _ = kind_of(model).teacher_forced(model, CONFIG, PARAMS, tokens[unseen], features, blocks, head)
        agreement[lookup_inputs] = float(jnp.mean(head.to_target(jnp.argmax(logits, -1)) == blocks.targets))
    assert agreement[True] > 0.8 and agreement[False] < 0.05, agreement  # measured: 0.91 and 0.005


def test_no_other_format_can_hold_it():
    config = _drafter("dspark", True).config
    for format in FORMATS.values():
        problems = format.problems("dspark", config, CONFIG.vocab_size, CONFIG)
        assert any("prompt lookup" in problem for problem in problems), format.name
