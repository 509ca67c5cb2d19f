"""The dspark+ngram hybrid: which draft each row gets, and that the engine stays lossless with it."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_block_drafter import PROMPTS, proposer_for
from test_speculative import WrappedProposer, first_tokens, truncated, two_sample_p
from tiny_models import tiny_config

from dspark_jax.generate import GenerationConfig, generate
from dspark_jax.models.params import init_params
from dspark_jax.proposers.base import Draft, DraftContext
from dspark_jax.proposers.draft_model import DraftModelProposer
from dspark_jax.proposers.hybrid import HybridProposer, ngram_expectation
from dspark_jax.sampling import SamplingConfig
from dspark_jax.speculative import SpeculativeMethod, speculative_generate
from dspark_jax.tree import TreeTemplate

VOCAB = 16


@dataclasses.dataclass(frozen=True)
class FixedDraft:
    """Drafts token 15 everywhere with confidence `confidence` (None: no head) and a uniform q."""

    confidence: float | None
    capture_layers = ()

    def propose(self, params, state, context, template, sampling, key):
        batch = context.length.shape[0]
        confidence = None if self.confidence is None else jnp.full((batch, template.depth), self.confidence)
        return Draft(tokens=jnp.full((batch, template.depth, template.width), 15, jnp.int32),
                     main_probs=jnp.full((batch, template.depth, VOCAB), 1.0 / VOCAB), confidence=confidence), state


# Row 0 ends in "1 2 3 4", seen before and followed by 5 6: a 4-gram match. Row 1 has no earlier token in
# common with its tail (match length 0). Row 2's tail token 9 occurred once, followed by 8: a 1-gram match.
CONTEXT = DraftContext(history=jnp.asarray([[1, 2, 3, 4, 5, 6, 1, 2, 3, 4], [7, 8, 9, 10, 11, 12, 13, 0, 0, 0],
                                            [9, 8, 7, 6, 5, 9, 0, 0, 0, 0]], jnp.int32),
                       length=jnp.asarray([10, 7, 6]), done=jnp.zeros(3, bool))
SURVIVAL = ((0.5, 0.25, 0.0), (0.6, 0.5, 0.4), (0.7, 0.6, 0.5), (0.9, 0.8, 0.7))


def test_expected_ngram_tokens_sum_the_survival_table():
    np.testing.assert_allclose(ngram_expectation(SURVIVAL, 4, 3), [0.0, 0.75, 1.5, 1.8, 2.4], rtol=1e-6)
    np.testing.assert_allclose(ngram_expectation(SURVIVAL, 4, 2), [0.0, 0.75, 1.1, 1.3, 1.7], rtol=1e-6)
    # Past the table's depth its last probability repeats.
    np.testing.assert_allclose(ngram_expectation(SURVIVAL, 4, 4)[4], 3.1, rtol=1e-6)


@pytest.mark.parametrize(("confidence", "ngram_rows"), [(None, [True, False, True]), (0.5, [True, False, False]),
                                                         (0.99, [False, False, False])])
def test_each_row_gets_the_draft_expected_to_last(confidence, ngram_rows):
    """Expected n-gram tokens (depth 3): row 0 2.4, row 1 0, row 2 0.75. A drafter without confidences expects 0;
    confidences 0.5 give 0.5 + 0.25 + 0.125 = 0.875; 0.99 give 2.97, more than any lookup."""
    hybrid = HybridProposer(FixedDraft(confidence), survival=SURVIVAL)
    template = TreeTemplate(2, 3)
    draft, _ = hybrid.propose(None, (), CONTEXT, template, SamplingConfig(temperature=1.0), jax.random.key(0))
    lookup, match = hybrid.ngram.lookup(CONTEXT, template)
    np.testing.assert_array_equal(match, [4, 0, 1])
    np.testing.assert_array_equal(lookup[0, :, 0], [5, 6, 1])
    for row, ngram in enumerate(ngram_rows):
        expected = lookup[row] if ngram else jnp.full((3, 2), 15)
        np.testing.assert_array_equal(draft.tokens[row], expected)
        if ngram:  # a deterministic proposal: one-hot q on the main chain token
            np.testing.assert_array_equal(draft.main_probs[row], jax.nn.one_hot(lookup[row, :, 0], VOCAB))
        else:
            np.testing.assert_allclose(draft.main_probs[row], 1.0 / VOCAB)
    assert draft.confidence is None


@pytest.mark.parametrize("template", [TreeTemplate(1, 4), TreeTemplate(2, 3)], ids=str)
@pytest.mark.parametrize("kind", ["dflash", "dspark-reduced"])
def test_greedy_is_lossless(kind, template):
    config = tiny_config("gemma3")
    params = init_params(config, jax.random.key(0), std=0.3)
    proposer, proposer_params = proposer_for(kind, config, params)
    generation = GenerationConfig(max_new_tokens=12)
    prompts = PROMPTS + [[3, 4, 5, 6, 7] * 4]  # one prompt the lookup continues at once
    result = speculative_generate(params, config, prompts, generation,
                                  SpeculativeMethod(HybridProposer(proposer), proposer_params, template))
    assert result.tokens == generate(params, config, prompts, generation)


@dataclasses.dataclass(frozen=True)
class DrafterQEverywhere(WrappedProposer):
    """The hybrid (inner) with a bug: n-gram rows report the drafter's q instead of their one-hot q."""

    def propose(self, params, state, context, template, sampling, key):
        draft, state = self.inner.propose(params, state, context, template, sampling, key)
        drafted, _ = self.inner.drafter.propose(params, state, context, template, sampling, key)
        return dataclasses.replace(draft, main_probs=drafted.main_probs), state


def test_sampling_matches_plain_sampling():
    """Tokens 2 and 3 over 3000 rows whose prompt holds every other token id: rows whose first sampled token
    occurs in the prompt take the lookup's draft, the others the draft model's. The mix samples what plain
    sampling does (two-sample chi-square), and the test notices n-gram rows that report the wrong q."""
    config = tiny_config("qwen3")
    params = init_params(config, jax.random.key(0), std=0.15)
    draft_config, draft_params = truncated(params, config, 1)
    generation = GenerationConfig(max_new_tokens=3, sampling=SamplingConfig(temperature=1.0, top_k=8))
    prompts = [list(range(1, config.vocab_size, 2))] * 3000
    plain = first_tokens(generate(params, config, prompts, generation, seed=1), 3)
    in_prompt = np.isin(plain[:, 0], prompts[0])
    assert 0.2 < in_prompt.mean() < 0.8  # both kinds of rows are common
    hybrid = HybridProposer(DraftModelProposer(draft_config))
    run = lambda proposer: first_tokens(speculative_generate(params, config, prompts, generation,
                                                             SpeculativeMethod(proposer, draft_params,
                                                                               TreeTemplate(1, 2)),
                                                             seed=2).tokens, 3)
    assert two_sample_p(plain, run(hybrid), config.vocab_size) > 1e-3
    assert two_sample_p(plain, run(DrafterQEverywhere(hybrid)), config.vocab_size) < 1e-6


def test_a_trusted_lookup_skips_the_drafter():
    """With drafter_ceiling 2, row 0's lookup (2.4 expected tokens) wins even against confidences 0.99 (2.97);
    when every row's lookup is trusted, the drafter's pass does not run at all."""
    calls = []

    @dataclasses.dataclass(frozen=True)
    class CountedDraft(FixedDraft):
        def propose(self, params, state, context, template, sampling, key):
            jax.debug.callback(lambda: calls.append(1))
            return super().propose(params, state, context, template, sampling, key)

    hybrid = HybridProposer(CountedDraft(0.99), survival=SURVIVAL, drafter_ceiling=2.0)
    template, greedy = TreeTemplate(1, 3), SamplingConfig()
    draft, _ = hybrid.propose(None, (), CONTEXT, template, greedy, jax.random.key(0))
    lookup, _ = hybrid.ngram.lookup(CONTEXT, template)
    np.testing.assert_array_equal(draft.tokens[0], lookup[0])
    np.testing.assert_array_equal(draft.tokens[1:], 15)
    assert len(calls) == 1
    only_row_0 = DraftContext(history=CONTEXT.history[:1], length=CONTEXT.length[:1], done=CONTEXT.done[:1])
    draft, _ = jax.jit(lambda c: hybrid.propose(None, (), c, template, greedy, jax.random.key(0)))(only_row_0)
    np.testing.assert_array_equal(draft.tokens, lookup[:1])
    assert len(calls) == 1
