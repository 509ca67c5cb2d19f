"""Speculative engine on tiny random models: lossless greedy and sampling, KV compaction, one compilation."""

import dataclasses
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from tiny_models import tiny_config

from dspark_jax import speculative
from dspark_jax.generate import GenerationConfig, generate
from dspark_jax.models.drafter_calibration import DrafterCalibration
from dspark_jax.models.kv_cache import EMPTY_POSITION, KVCache
from dspark_jax.models.params import init_params
from dspark_jax.models.transformer import forward
from dspark_jax.proposers.draft_model import DraftModelProposer
from dspark_jax.proposers.ngram import NgramProposer
from dspark_jax.sampling import SamplingConfig
from dspark_jax.scheduler import PrefixScheduler
from dspark_jax.speculative import SpecStats, SpeculativeMethod, speculative_generate
from dspark_jax.temperature_scaling import SequentialTemperatures
from dspark_jax.tree import TreeTemplate

PROMPTS = [[5, 6, 7, 8, 5, 6, 7, 8, 5, 6], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17], [9],
           [40, 41, 40]]


def truncated(params, config, layers: int):
    """The first `layers` layers of the target: a cheap draft model that agrees with it often."""
    small = config.replace(num_layers=layers, layer_types=config.layer_types[:layers])
    return small, dataclasses.replace(params, layers=params.layers[:layers])


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def model(request):
    config = tiny_config(request.param)
    return config, init_params(config, jax.random.key(0), std=0.3)


def proposers(config, params):
    draft_config, draft_params = truncated(params, config, 2)
    return {"ngram": (NgramProposer(), None), "model": (DraftModelProposer(draft_config), draft_params)}


@pytest.mark.parametrize("template", [TreeTemplate(1, 4), TreeTemplate(3, 3)], ids=str)
@pytest.mark.parametrize("name", ["ngram", "model"])
def test_greedy_is_lossless(model, name, template):
    config, params = model
    generation = GenerationConfig(max_new_tokens=20)
    proposer, proposer_params = proposers(config, params)[name]
    expected = generate(params, config, PROMPTS, generation)
    result = speculative_generate(params, config, PROMPTS, generation,
                                  SpeculativeMethod(proposer, proposer_params, template))
    assert result.tokens == expected
    single = speculative_generate(params, config, PROMPTS[1:2], generation,
                                  SpeculativeMethod(proposer, proposer_params, template))
    assert single.tokens == expected[1:2]


def test_acceptance_is_real(model):
    """A draft equal to the target accepts everything; the n-gram drafter accepts on repetitive text."""
    config, params = model
    generation = GenerationConfig(max_new_tokens=20)
    perfect = speculative_generate(params, config, PROMPTS, generation,
                                   SpeculativeMethod(DraftModelProposer(config), params, TreeTemplate(1, 4)))
    assert perfect.stats.tau > 4.0  # 5 per full step; only the budget cuts the last step short
    np.testing.assert_array_equal(perfect.stats.accept_rate_by_position, 1.0)
    repeat = [[3, 4, 5, 6, 7] * 6]
    ngram = speculative_generate(params, config, repeat, generation,
                                 SpeculativeMethod(NgramProposer(), None, TreeTemplate(1, 4)))
    copied = generate(params, config, repeat, generation)
    assert ngram.tokens == copied
    assert ngram.stats.target_steps < 20


def test_stop_tokens_and_budgets_per_row():
    config = tiny_config("llama")
    params = init_params(config, jax.random.key(0), std=0.3)
    free = generate(params, config, PROMPTS, GenerationConfig(max_new_tokens=16))
    stop = free[1][5]
    generation = GenerationConfig(max_new_tokens=16, stop_tokens=(stop,))
    expected = generate(params, config, PROMPTS, generation)
    assert len(expected[1]) <= 6 and any(len(row) == 16 for row in expected)
    draft_config, draft_params = truncated(params, config, 2)
    result = speculative_generate(params, config, PROMPTS, generation,
                                  SpeculativeMethod(DraftModelProposer(draft_config), draft_params, TreeTemplate(2, 3)))
    assert result.tokens == expected


def test_tau_standard_error_matches_the_spread_of_repeated_evaluations():
    """Simulated evaluations of 10 prompts, each with its own acceptance probability: the standard error's
    root mean square matches the standard deviation of τ across them, where a per-step error (steps as
    independent draws) would understate it several times over."""
    rng = np.random.default_rng(0)
    rows, steps, depth = 10, 80, 7

    def evaluation() -> SpecStats:
        p = rng.beta(2, 6, size=rows)
        accepted = np.cumprod(rng.random((rows, steps, depth)) < p[:, None, None], axis=2).sum(axis=2)
        stopped = np.arange(steps)[None] >= rng.integers(steps // 2, steps + 1, size=rows)[:, None]
        accepted = np.where(stopped, -1, accepted)
        return SpecStats(accepted, np.full_like(accepted, depth), np.full((rows, steps, depth), np.nan), depth,
                         0.0, 1.0)

    runs = [evaluation() for _ in range(500)]
    spread = np.std([r.tau for r in runs])
    assert np.sqrt(np.mean([r.tau_standard_error**2 for r in runs])) == pytest.approx(spread, rel=0.1)
    per_step = np.mean([np.std(r.acceptance_lengths, ddof=1) / np.sqrt(r.acceptance_lengths.size) for r in runs])
    assert per_step < spread / 2


def test_stats_by_hand():
    accepted = np.array([[3, 0, 2, -1], [1, 1, -1, -1]])
    confidence = np.arange(24, dtype=np.float32).reshape(2, 4, 3) / 24
    s = SpecStats(accepted=accepted, verified_depth=np.full_like(accepted, 3), confidence=confidence, depth=3,
                  prefill_seconds=0.0, decode_seconds=1.0)
    assert s.target_steps == 4
    assert s.tau == pytest.approx(np.mean([4, 1, 3, 2, 2]))
    np.testing.assert_allclose(s.tau_by_row, [8 / 3, 2])
    # τ = 12 / 5 from rows of (8 tokens, 3 steps) and (4, 2): residuals 8 - 2.4 · 3 = 0.8 and -0.8, so the
    # standard error is sqrt(2 / 1 · 1.28) / 5.
    assert s.tau_standard_error == pytest.approx(0.32)
    one_row = dataclasses.replace(s, accepted=np.array([[2, -1, -1, -1], [-1, -1, -1, -1]]))
    assert np.isnan(one_row.tau_standard_error) and np.isnan(one_row.tau_by_row[1])
    # position 1: 4 of 5 steps accepted it; position 2: 2 of those 4; position 3: 1 of those 2.
    np.testing.assert_allclose(s.accept_rate_by_position, [4 / 5, 2 / 4, 1 / 2])
    # judged positions: step (0,0) all 3 survive; (0,1) position 1 fails; (0,2) 1, 2 survive and 3 fails;
    # (1,0) and (1,1): 1 survives, 2 fails.
    conf, survived, position = s.confidence_outcomes()
    np.testing.assert_allclose(conf * 24, [0, 1, 2, 3, 6, 7, 8, 12, 13, 15, 16])
    assert survived.tolist() == [1, 1, 1, 0, 1, 1, 0, 1, 0, 1, 0]
    assert position.tolist() == [1, 2, 3, 1, 1, 2, 3, 1, 2, 1, 2]
    # A scheduler verified only 2 tokens at step (0, 0) and 1 at (1, 1): position 3 was not judged there,
    # nor position 2 at (1, 1), where the row accepted everything it was shown.
    cut = dataclasses.replace(s, verified_depth=np.array([[2, 3, 3, 3], [3, 1, 3, 3]]),
                              accepted=np.array([[2, 0, 2, -1], [1, 1, -1, -1]]))
    np.testing.assert_allclose(cut.accept_rate_by_position, [4 / 5, 2 / 3, 0 / 1])
    assert cut.mean_verified_depth == pytest.approx(np.mean([2, 3, 3, 3, 1]))
    assert cut.confidence_outcomes()[2].tolist() == [1, 2, 1, 1, 2, 3, 1, 2, 1]
    # STS fits on the steps whose draft was verified whole: all five live ones, and three of them once cut.
    conf, lengths = s.whole_drafts()
    np.testing.assert_allclose(conf, confidence.reshape(8, 3)[[0, 1, 2, 4, 5]])
    assert lengths.tolist() == [3, 0, 2, 1, 1]
    conf, lengths = cut.whole_drafts()
    np.testing.assert_allclose(conf, confidence.reshape(8, 3)[[1, 2, 4]])
    assert lengths.tolist() == [0, 2, 1]
    no_head = dataclasses.replace(s, confidence=np.full_like(confidence, np.nan))
    assert no_head.whole_drafts()[1].size == 0


def test_the_scheduler_is_profiled_per_batch_shape(monkeypatch):
    """A step's cost depends on the batch: every prompt shape gets its own table, each measured once."""
    config = tiny_config("llama")
    params = init_params(config, jax.random.key(0), std=0.3)
    steps = []
    step = speculative._step
    monkeypatch.setattr(speculative, "_step", lambda *args: steps.append(args[-1]) or step(*args))
    generation = GenerationConfig(max_new_tokens=4)
    tables = []
    for prompts in (PROMPTS[:1], PROMPTS[:1] * 2, PROMPTS[:1]):  # same width, batch 1 and 2
        decoder, prompt, lengths = speculative.prepare(config, prompts, generation, NgramProposer(), TreeTemplate(1, 2))
        tables.append(speculative.profile_scheduler(decoder, params, None, prompt, lengths, jax.random.key(0)))
    assert tables[0] is tables[2] and tables[1] is not tables[0]
    warm, timed = [0, 0, 1, 1, 2, 2], [0, 1, 2] * 7  # two warm-up calls per depth, then 7 rounds
    assert [int(d) for d in steps] == (warm + timed) * 2


def test_a_measured_scheduler_profile_is_stored_for_the_next_process(monkeypatch):
    """The cost table is written under the step program's hash and read back, without running a step, once
    the process has forgotten it; a file that is cut is measured again, and another program has its own."""
    config = tiny_config("llama")
    params = init_params(config, jax.random.key(0), std=0.3)
    steps = []
    step = speculative._step
    monkeypatch.setattr(speculative, "_step", lambda *args: steps.append(args[-1]) or step(*args))
    monkeypatch.setattr(speculative, "_profiled", {})

    def profile(depth: int, on_disk: bool = True) -> tuple[float, ...]:
        decoder, prompt, lengths = speculative.prepare(config, PROMPTS[:1], GenerationConfig(max_new_tokens=4),
                                                       NgramProposer(), TreeTemplate(1, depth))
        speculative._profiled.clear()  # as in a new process
        steps.clear()
        return speculative.profile_scheduler(decoder, params, None, prompt, lengths, jax.random.key(0),
                                             on_disk=on_disk).step_seconds

    measured = profile(2)
    assert len(steps) == 3 * 9 and len(measured) == 3
    [stored] = speculative.PROFILE_DIR.glob("*.json")
    assert profile(2) == measured and steps == []
    stored.write_text(stored.read_text()[:-3])  # a write cut short
    remeasured = profile(2)
    assert len(steps) == 3 * 9 and len(json.loads(stored.read_text())["step_seconds"]) == 3
    assert profile(2) == remeasured and steps == []
    assert len(profile(3)) == 4 and len(list(speculative.PROFILE_DIR.glob("*.json"))) == 2
    profile(4, on_disk=False)
    assert len(steps) == 5 * 9 and len(list(speculative.PROFILE_DIR.glob("*.json"))) == 2


def test_partial_accept_leaves_the_cache_of_plain_decoding():
    config = tiny_config("gemma3")
    params = init_params(config, jax.random.key(0), std=0.3)
    # A noisy copy of the target: it agrees for a few tokens, then diverges.
    noise = init_params(config, jax.random.key(1), std=0.3)
    draft_params = jax.tree.map(lambda a, b: a + 0.6 * b, params, noise)
    decoder, prompt, lengths = speculative.prepare(config, PROMPTS, GenerationConfig(max_new_tokens=40),
                                                   DraftModelProposer(config), TreeTemplate(2, 4))
    state = decoder.prefill(params, draft_params, prompt, lengths, jax.random.key(0))
    step = jax.jit(decoder.step)
    for _ in range(6):  # step until some row accepts part of its draft
        state = step(params, draft_params, state)
        accepted = np.asarray(state.accepted[:, int(state.steps) - 1])
        if np.any((accepted > 0) & (accepted < 4)):
            break
    assert np.any((accepted > 0) & (accepted < 4)), accepted
    committed = np.asarray(state.length) - 1  # the newest token is the anchor, not yet cached
    width = int(committed.max())
    plain = forward(params, state.history[:, :width], jnp.broadcast_to(jnp.arange(width), (4, width)),
                    KVCache.empty(config, 4, decoder.cache_size), config=config,
                    write_slots=jnp.where(jnp.arange(width)[None] < committed[:, None], jnp.arange(width),
                                          decoder.cache_size)).cache
    live = ~np.asarray(state.done)  # a finished row's cache is never read again
    assert live.sum() >= 3
    for row, n in enumerate(committed):
        if not live[row]:
            continue
        np.testing.assert_array_equal(state.cache.positions[row, :n], np.arange(n))
        assert np.all(np.asarray(state.cache.positions[row, n:]) == EMPTY_POSITION)
        np.testing.assert_allclose(state.cache.k[:, row, :n], plain.k[:, row, :n], atol=1e-5)
        np.testing.assert_allclose(state.cache.v[:, row, :n], plain.v[:, row, :n], atol=1e-5)


def test_one_compilation_whatever_the_acceptance(monkeypatch):
    config = tiny_config("llama")
    params = init_params(config, jax.random.key(0), std=0.3)
    traces = []
    original = speculative.SpecDecoder.step
    monkeypatch.setattr(speculative.SpecDecoder, "step", lambda *a: traces.append(1) or original(*a))
    speculative._generate.clear_cache()
    generation = GenerationConfig(max_new_tokens=20)
    proposer = DraftModelProposer(config)  # same static loop; only the draft weights differ
    noisy = jax.tree.map(lambda a, b: a + 0.6 * b, params, init_params(config, jax.random.key(1), std=0.3))
    perfect = speculative_generate(params, config, PROMPTS, generation,
                                   SpeculativeMethod(proposer, params, TreeTemplate(1, 4)))
    poor = speculative_generate(params, config, PROMPTS, generation,
                                SpeculativeMethod(proposer, noisy, TreeTemplate(1, 4)))
    assert perfect.stats.target_steps < poor.stats.target_steps
    assert len(traces) == 1


@dataclasses.dataclass(frozen=True)
class WrappedProposer:
    """Another proposer with its drafts altered by `propose` (a subclass); state and updates are the inner one's."""

    inner: Any
    capture_layers = ()

    def init(self, params, prefilled, cache_size):
        return self.inner.init(params, prefilled, cache_size)

    def update(self, params, state, verified):
        return self.inner.update(params, state, verified)


@dataclasses.dataclass(frozen=True)
class ParityConfidence(WrappedProposer):
    """Another proposer's drafts with a confidence c_k = 0.9 when draft token k - 1 is even, else 0.2."""

    def propose(self, params, state, context, template, sampling, key):
        draft, state = self.inner.propose(params, state, context, template, sampling, key)
        previous = jnp.concatenate([context.anchor[:, None], draft.tokens[:, :-1, 0]], axis=1)
        return dataclasses.replace(draft, confidence=jnp.where(previous % 2 == 0, 0.9, 0.2)), state


def test_the_profiled_scheduler_uses_the_fit_for_the_decoding_temperature(monkeypatch):
    """Step costs (1, 1.6, 2.2): raw confidences 0.9 make verifying pay (Θ1 = 1.9 / 1.6); an STS fit with
    T = 10 flattens them to 0.55 (Θ1 < 1), so nothing is verified, and the output stays the target's."""
    config = tiny_config("llama")
    params = init_params(config, jax.random.key(0), std=0.3)
    draft_config, draft_params = truncated(params, config, 1)
    proposer = ParityConfidence(DraftModelProposer(draft_config))
    monkeypatch.setattr(speculative, "profile_scheduler", lambda *args: PrefixScheduler((1.0, 1.6, 2.2)))
    generation = GenerationConfig(max_new_tokens=12)
    expected = generate(params, config, PROMPTS, generation)
    flat = SequentialTemperatures((10.0, 10.0))
    run = lambda calibration: speculative_generate(params, config, PROMPTS, generation,
                                                   SpeculativeMethod(proposer, draft_params, TreeTemplate(1, 2),
                                                                     schedule="hardware", calibration=calibration))
    raw = run(DrafterCalibration(()))
    calibrated = run(DrafterCalibration(()).with_fit(0.0, flat))
    other_temperature = run(DrafterCalibration(()).with_fit(1.0, flat))
    assert raw.tokens == calibrated.tokens == other_temperature.tokens == expected
    assert calibrated.stats.mean_verified_depth == 0 < raw.stats.mean_verified_depth
    assert other_temperature.stats.mean_verified_depth == raw.stats.mean_verified_depth
    with pytest.raises(ValueError, match="carries its own calibration"):
        speculative_generate(params, config, PROMPTS, generation,
                             SpeculativeMethod(proposer, draft_params, TreeTemplate(1, 2),
                                               schedule=PrefixScheduler((1.0, 1.6, 2.2)),
                                               calibration=DrafterCalibration(()).with_fit(0.0, flat)))


def first_tokens(rows, count):
    return np.array([row[:count] for row in rows])


def two_sample_p(a: np.ndarray, b: np.ndarray, vocab_size: int) -> float:
    """Chi-square p-value that rows of a and b (int[N, 3]: tokens 1-3) draw tokens 2 and 3 alike; rare
    outcomes are pooled so the approximation holds."""
    pairs = np.concatenate([a, b])[:, 1] * vocab_size + np.concatenate([a, b])[:, 2]
    values, codes = np.unique(pairs, return_inverse=True)
    table = np.stack([np.bincount(codes[: len(a)], minlength=len(values)),
                      np.bincount(codes[len(a):], minlength=len(values))])
    common = table.sum(0) >= 10
    table = np.concatenate([table[:, common], table[:, ~common].sum(1, keepdims=True)], axis=1)
    return stats.chi2_contingency(table).pvalue


def test_sampling_matches_plain_sampling(monkeypatch):
    """Tokens 2 and 3 (the first ones speculation produces) over 3000 independent rows: a two-sample
    chi-square test against plain sampling passes, and fails once the draft's q is distorted."""
    config = tiny_config("qwen3")
    params = init_params(config, jax.random.key(0), std=0.15)
    draft_config, draft_params = truncated(params, config, 1)
    sampling = SamplingConfig(temperature=1.0, top_k=8)
    generation = GenerationConfig(max_new_tokens=3, sampling=sampling)
    prompts = [[7, 3, 9, 1]] * 3000
    plain = first_tokens(generate(params, config, prompts, generation, seed=1), 3)

    def speculative_tokens():
        result = speculative_generate(params, config, prompts, generation,
                                      SpeculativeMethod(DraftModelProposer(draft_config), draft_params,
                                                        TreeTemplate(2, 2)),
                                      seed=2)
        return first_tokens(result.tokens, 3), result.stats

    good, good_stats = speculative_tokens()
    assert 1.3 < good_stats.tau < 3.0  # drafts are partly accepted, so both paths of the rule are exercised
    assert two_sample_p(plain, good, config.vocab_size) > 1e-3

    # A scheduler cutting the drafts by confidences that depend on the previous draft token (as DSpark's do)
    # keeps the distribution: here it verifies one token of two.
    scheduled = speculative_generate(params, config, prompts, generation,
                                     SpeculativeMethod(ParityConfidence(DraftModelProposer(draft_config)), draft_params,
                                                       TreeTemplate(2, 2), schedule=PrefixScheduler((1.0, 1.1, 5.0))),
                                     seed=2)
    assert scheduled.stats.mean_verified_depth == 1.0 and scheduled.stats.tau > 1.2
    assert two_sample_p(plain, first_tokens(scheduled.tokens, 3), config.vocab_size) > 1e-3

    original = speculative.accept
    def distorted(template, target_probs, node_tokens, main_probs, key, verify_depth):
        sharpened = main_probs**4 / jnp.sum(main_probs**4, axis=-1, keepdims=True)
        return original(template, target_probs, node_tokens, sharpened, key, verify_depth)
    monkeypatch.setattr(speculative, "accept", distorted)
    speculative._generate.clear_cache()
    bad, _ = speculative_tokens()
    speculative._generate.clear_cache()
    assert two_sample_p(plain, bad, config.vocab_size) < 1e-6


def test_a_method_is_checked_when_built():
    with pytest.raises(ValueError, match="unknown schedule 'sometimes'"):
        SpeculativeMethod(NgramProposer(), schedule="sometimes")
    with pytest.raises(ValueError, match="carries its own calibration"):
        SpeculativeMethod(NgramProposer(), schedule=PrefixScheduler((1.0, 2.0)),
                          calibration=DrafterCalibration(()).with_fit(0.0, SequentialTemperatures((1.0,))))
    assert not SpeculativeMethod(NgramProposer()).scheduled
    assert SpeculativeMethod(NgramProposer(), schedule="hardware").scheduled


def test_streaming_yields_growing_prefixes_of_the_same_result():
    config = tiny_config("llama")
    params = init_params(config, jax.random.key(0), std=0.3)
    generation = GenerationConfig(max_new_tokens=20)
    method = SpeculativeMethod(DraftModelProposer(config), params, TreeTemplate(1, 3))
    noisy = dataclasses.replace(method, params=jax.tree.map(lambda a: a * 1.05, params))  # a drafter that misses
    whole = speculative_generate(params, config, PROMPTS, generation, noisy)
    chunks = list(speculative.speculative_stream(params, config, PROMPTS, generation, noisy, chunk_steps=2))
    assert len(chunks) > 2 and chunks[-1].tokens == whole.tokens
    for earlier, later in zip(chunks, chunks[1:]):
        assert all(later_row[: len(row)] == row for row, later_row in zip(earlier.tokens, later.tokens))
    np.testing.assert_array_equal(chunks[-1].stats.accepted, whole.stats.accepted)
