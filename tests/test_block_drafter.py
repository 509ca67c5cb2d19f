"""DFlash / DSpark proposers inside the speculative engine: lossless with untrained (random) drafters, and
sampled drafts that follow the probabilities they report."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from tiny_models import tiny_config

from dspark_jax.drafter_kinds import drafter_proposer, new_drafter
from dspark_jax.generate import GenerationConfig, generate
from dspark_jax.models.drafter_config import fused_layers
from dspark_jax.models.kv_cache import KVCache
from dspark_jax.models.params import init_params
from dspark_jax.models.transformer import forward
from dspark_jax.proposers.base import DraftContext, Prefilled
from dspark_jax.sampling import SamplingConfig
from dspark_jax.scheduler import PrefixScheduler
from dspark_jax.speculative import SpeculativeMethod, speculative_generate
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
    vocab = reduced_vocab(config) if kind.endswith("reduced") else config.vocab_size
    options = {"markov_rank": 8} if kind.startswith("dspark") else {}
    model = new_drafter(kind.removesuffix("-reduced"), config, vocab, seed=1, depth=4, num_features=2,
                        intermediate_size=64, **options)
    if kind.startswith("dspark"):  # a trained-looking Markov head, so each slot depends on the token before it
        markov = model.heads
        keys = jax.random.split(jax.random.key(2))
        markov.transition_in.embedding[...] = jax.random.normal(keys[0], markov.transition_in.embedding.shape)
        markov.transition_out.kernel[...] = 0.5 * jax.random.normal(keys[1], markov.transition_out.kernel.shape)
    return drafter_proposer(config, model, params)


@pytest.mark.parametrize("template", [TreeTemplate(1, 4), TreeTemplate(2, 3)], ids=str)
@pytest.mark.parametrize("kind", ["dflash", "dspark", "dspark-reduced"])
def test_greedy_is_lossless(target, kind, template):
    config, params = target
    generation = GenerationConfig(max_new_tokens=12)
    proposer, proposer_params = proposer_for(kind, config, params)
    result = speculative_generate(params, config, PROMPTS, generation,
                                  SpeculativeMethod(proposer, proposer_params, template))
    assert result.tokens == generate(params, config, PROMPTS, generation)
    assert result.stats.target_steps <= 12


@pytest.mark.parametrize("template", [TreeTemplate(1, 4), TreeTemplate(2, 3)], ids=str)
def test_scheduled_greedy_is_lossless(target, template):
    """The hardware-aware scheduler, profiled on this machine, cuts drafts by DSpark's confidences; output
    stays the target's. Cost tables that make extra tokens free or dear give full or no verification."""
    config, params = target
    generation = GenerationConfig(max_new_tokens=12)
    proposer, proposer_params = proposer_for("dspark-reduced", config, params)
    expected = generate(params, config, PROMPTS, generation)
    run = lambda schedule: speculative_generate(params, config, PROMPTS, generation,
                                                SpeculativeMethod(proposer, proposer_params, template,
                                                                  schedule=schedule))
    assert run("hardware").tokens == expected
    free, full = run(PrefixScheduler((1.0,) * (template.depth + 1))), run("full")
    assert free.tokens == expected
    np.testing.assert_array_equal(free.stats.accepted, full.stats.accepted)
    assert free.stats.mean_verified_depth == template.depth
    dear = run(PrefixScheduler(tuple(10.0**d for d in range(template.depth + 1))))
    assert dear.tokens == expected
    assert dear.stats.tau == 1.0 and dear.stats.mean_verified_depth == 0.0
    assert full.stats.tau > 1.0  # so "dear" really verified less than the full draft would have accepted


def test_the_scheduler_needs_a_confidence_head(target):
    config, params = target
    proposer, proposer_params = proposer_for("dflash", config, params)
    with pytest.raises(ValueError, match="confidence head"):
        speculative_generate(params, config, PROMPTS, GenerationConfig(max_new_tokens=4),
                             SpeculativeMethod(proposer, proposer_params, TreeTemplate(1, 4),
                                               schedule=PrefixScheduler((1.0,) * 5)))


def goodness_of_fit_p(samples: np.ndarray, probs: np.ndarray) -> float:
    """Chi-square p-value of integer samples against probabilities over the same ids; outcomes expected
    fewer than 10 times are pooled so the approximation holds."""
    observed = np.bincount(samples, minlength=len(probs))
    expected = probs * len(samples)
    common = expected >= 10
    observed = np.append(observed[common], observed[~common].sum())
    expected = np.append(expected[common], expected[~common].sum())
    return stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue


@pytest.mark.parametrize("kind", ["dflash-reduced", "dspark-reduced"])
def test_sampled_drafts_follow_their_reported_probabilities(target, kind):
    """Rejection sampling is lossless only if every main-chain token is drawn from the q the proposer
    reports. Over 4000 draws from one state: slot 1 follows q[1]; among the draws sharing the most common
    slot-1 token, q[2] is one distribution (the Markov head conditions it on that token) and slot 2 follows
    it. The same counts fail against a sharpened q, so the test has the power to notice a mismatch."""
    config, params = target
    proposer, proposer_params = proposer_for(kind, config, params)
    state = proposer.init(proposer_params, _prefilled(config, params), 32)
    context = DraftContext(history=jnp.asarray([[5, 6, 7, 8, 5, 6, 7]], jnp.int32), length=jnp.asarray([7]),
                           done=jnp.asarray([False]))
    sampling = SamplingConfig(temperature=1.0)
    draw = jax.jit(jax.vmap(lambda key: proposer.propose(proposer_params, state, context, TreeTemplate(1, 3),
                                                        sampling, key)[0]))
    drafts = draw(jax.random.split(jax.random.key(0), 4000))
    tokens, q = np.asarray(drafts.tokens[:, 0, :, 0]), np.asarray(drafts.main_probs[:, 0], np.float64)

    np.testing.assert_allclose(q[:, 0], np.broadcast_to(q[0, 0], q[:, 0].shape), rtol=1e-6)
    assert goodness_of_fit_p(tokens[:, 0], q[0, 0]) > 1e-3
    sharpened = q[0, 0] ** 2 / np.sum(q[0, 0] ** 2)
    assert goodness_of_fit_p(tokens[:, 0], sharpened) < 1e-6

    first = np.bincount(tokens[:, 0]).argmax()
    group = tokens[:, 0] == first
    assert group.sum() >= 200
    np.testing.assert_allclose(q[group, 1], np.broadcast_to(q[group][0, 1], q[group, 1].shape), rtol=1e-6)
    assert goodness_of_fit_p(tokens[group, 1], q[group][0, 1]) > 1e-3


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
                  capture_layers=fused_layers(config, 2))
    return Prefilled(prompt=prompt, prompt_lengths=jnp.asarray([6]), features=out.captured)
