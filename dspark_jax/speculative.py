"""Speculative decoding: prefill, then draft → verify → accept inside one jitted `lax.while_loop`.

`SpecDecoder` is the frozen loop object (static argument of the jit); `SpecState` the immutable pytree it
carries. Each step the proposer drafts a static tree (a chain is the 1 x γ tree), the target verifies all
its nodes in one forward pass under the tree mask, `acceptance.accept` picks the longest agreed path plus a
bonus token, and the target's KV cache is compacted so rejected nodes vanish. Every row accepts its own
number of tokens and stops on its own; shapes never depend on acceptance, so one compilation serves a
whole generation and no step returns to the host.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dspark_jax.acceptance import accept, accept_greedy
from dspark_jax.atomic_file import write_atomically
from dspark_jax.command_names import SCHEDULES
from dspark_jax.generate import GenerationConfig, pad_prompts, prefill_prompt, round_up
from dspark_jax.kernels.cpu_kernels import cache_dir
from dspark_jax.models.config import ModelConfig
from dspark_jax.models.drafter_calibration import DrafterCalibration
from dspark_jax.models.kv_cache import KVCache, keep_path
from dspark_jax.models.params import TransformerParams
from dspark_jax.models.sharding import Placement, constrain_rows, placement_of
from dspark_jax.models.transformer import forward, logits
from dspark_jax.proposers.base import DraftContext, Prefilled, Proposer, Verified
from dspark_jax.sampling import argmax, probabilities, sample
from dspark_jax.scheduler import PrefixScheduler
from dspark_jax.tree import TreeTemplate, verify_mask, verify_positions


@dataclasses.dataclass(frozen=True, eq=False)
class SpeculativeMethod:
    """What speculative decoding drafts with, built once (`DrafterChoice.method` from the CLI's --drafter, or
    by hand) and consumed whole by `speculative_generate`, `Evaluator` and `calibrate`.

    schedule: "full" verifies the whole draft every step; "hardware" verifies the prefix the hardware-aware
    scheduler picks from the drafter's confidences (DSpark), its step costs profiled on the first call of a
    shape (`profile_scheduler`) and the confidences calibrated by `calibration`'s STS fit for the decoding
    temperature (raw without one); a `PrefixScheduler` brings its own costs and calibration.
    """

    proposer: Proposer
    params: Any = None  # the proposer's parameters (pytree); None for a proposer without any
    template: TreeTemplate = TreeTemplate()
    schedule: str | PrefixScheduler = "full"
    calibration: DrafterCalibration = DrafterCalibration(())  # STS fits of the confidence head
    name: str = "speculative"

    def __post_init__(self):
        if isinstance(self.schedule, PrefixScheduler):
            if self.calibration.fits:
                raise ValueError("a PrefixScheduler carries its own calibration: use schedule='hardware' to "
                                 "calibrate with `calibration`")
        elif self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}: use one of {', '.join(SCHEDULES)} or a "
                             "PrefixScheduler")

    @property
    def scheduled(self) -> bool:
        return self.schedule != "full"


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class SpecState:
    cache: KVCache
    proposer_state: Any
    history: jax.Array  # int32[B, H]: prompt then generated tokens; the newest one is the next anchor
    length: jax.Array  # int32[B]: tokens in history
    prompt_lengths: jax.Array  # int32[B]
    done: jax.Array  # bool[B]
    key: jax.Array  # PRNG key
    steps: jax.Array  # int32[]: verify steps so far
    accepted: jax.Array  # int32[B, max_new_tokens]: draft tokens accepted per step, -1 where the row idled
    verified_depth: jax.Array  # int32[B, max_new_tokens]: how deep the target verified the draft per step
    confidence: jax.Array  # float32[B, max_new_tokens, γ]: the drafter's confidences per step, NaN if it has none


@dataclasses.dataclass(frozen=True)
class SpecDecoder:
    """Static description of one speculative generation; hashable, so it keys the jit caches."""

    config: ModelConfig
    proposer: Proposer
    template: TreeTemplate
    generation: GenerationConfig
    cache_size: int
    history_size: int
    scheduler: PrefixScheduler | None = None  # None: verify the whole draft every step
    placement: Placement | None = None  # a target on a mesh: rows over its data axis (models/sharding.py)

    def prefill(self, params: TransformerParams, proposer_params: Any, prompt: jax.Array,
                prompt_lengths: jax.Array, key: jax.Array) -> SpecState:
        """prompt: int32[B, T] right-padded; prompt_lengths: int32[B]. Samples the first token."""
        batch, width = prompt.shape
        out, last_logits = prefill_prompt(params, self.config, prompt, prompt_lengths, self.cache_size,
                                          self.proposer.capture_layers)
        # Three keys, the middle one unused: a two-way split would change every seeded sampled run, and with
        # it the T = 1 results recorded in docs/.
        first_key, _, key = jax.random.split(key, 3)
        first = sample(last_logits, jax.random.split(first_key, batch), self.generation.sampling)
        rows = jnp.arange(batch)
        history = jnp.zeros((batch, self.history_size), jnp.int32).at[:, :width].set(prompt)
        history = history.at[rows, prompt_lengths].set(first)
        prefilled = Prefilled(prompt=prompt, prompt_lengths=prompt_lengths, features=out.captured)
        return constrain_rows(SpecState(
            cache=out.cache,
            proposer_state=self.proposer.init(proposer_params, prefilled, self.cache_size),
            history=history,
            length=prompt_lengths + 1,
            prompt_lengths=prompt_lengths,
            done=self._is_stop(first) | (self.generation.max_new_tokens <= 1),
            key=key,
            steps=jnp.zeros((), jnp.int32),
            accepted=jnp.full((batch, self.generation.max_new_tokens), -1, jnp.int32),
            verified_depth=jnp.zeros((batch, self.generation.max_new_tokens), jnp.int32),
            confidence=jnp.full((batch, self.generation.max_new_tokens, self.template.depth), jnp.nan, jnp.float32),
        ), self.placement)

    def _is_stop(self, tokens: jax.Array) -> jax.Array:
        return jnp.isin(tokens, jnp.asarray(self.generation.stop_tokens or (-1,), jnp.int32))

    def step(self, params: TransformerParams, proposer_params: Any, state: SpecState,
             verify_depth: jax.Array | None = None) -> SpecState:
        """One draft → verify → accept step. verify_depth (int32[]) forces how deep the draft is verified
        (profiling); by default the scheduler chooses, or, without one, the whole draft is verified."""
        template, batch = self.template, state.length.shape[0]
        draft_key, accept_key, key = jax.random.split(state.key, 3)
        context = DraftContext(history=state.history, length=state.length, done=state.done)
        draft, proposer_state = self.proposer.propose(proposer_params, state.proposer_state, context, template,
                                                      self.generation.sampling, draft_key)
        if verify_depth is None and self.scheduler is not None:
            if draft.confidence is None:
                raise ValueError("the prefix scheduler needs a drafter with a confidence head (DSpark)")
            verify_depth = self.scheduler.verify_depth(draft.confidence, ~state.done)

        anchor_position = context.anchor_position
        node_tokens = jnp.concatenate([context.anchor[:, None], draft.tokens.reshape(batch, -1)], axis=1)
        cache, judged, captured = self._verify(params, state, node_tokens, anchor_position, verify_depth)
        if self.generation.sampling.greedy:
            result = accept_greedy(template, judged, node_tokens, verify_depth)
        else:
            result = accept(template, judged, node_tokens, draft.main_probs, accept_key, verify_depth)
        num_accepted = jnp.where(state.done, 0, result.num_accepted)
        cache = keep_path(cache, anchor_position, result.path, num_accepted)

        # Emit the accepted tokens and the bonus, cut at the first stop token and at the budget.
        path_tokens = jnp.take_along_axis(node_tokens, result.path, axis=1)  # [B, D + 1], anchor first
        offsets = jnp.arange(template.depth + 1, dtype=jnp.int32)[None, :]
        emitted = jnp.where(offsets < num_accepted[:, None], jnp.roll(path_tokens, -1, axis=1),
                            result.bonus[:, None])
        count = num_accepted + 1
        stops = self._is_stop(emitted) & (offsets < count[:, None])
        count = jnp.where(jnp.any(stops, axis=1), jnp.argmax(stops, axis=1) + 1, count)
        budget = self.generation.max_new_tokens - (state.length - state.prompt_lengths)
        count = jnp.where(state.done, 0, jnp.minimum(count, budget))
        rows = jnp.arange(batch)[:, None]
        write_at = jnp.where(offsets < count[:, None], state.length[:, None] + offsets, self.history_size)
        history = state.history.at[rows, write_at].set(emitted, mode="drop")
        length = state.length + count
        done = state.done | jnp.any(stops, axis=1) | (length - state.prompt_lengths >= self.generation.max_new_tokens)

        features = jnp.take_along_axis(captured, result.path[None, :, :, None], axis=2)
        verified = Verified(tokens=path_tokens, num_accepted=num_accepted, anchor_position=anchor_position,
                            features=features, done=state.done)
        accepted = state.accepted.at[:, state.steps].set(jnp.where(state.done, -1, num_accepted), mode="drop")
        verified_depth = state.verified_depth.at[:, state.steps].set(
            template.depth if verify_depth is None else verify_depth, mode="drop")
        confidence = state.confidence
        if draft.confidence is not None:
            confidence = confidence.at[:, state.steps].set(draft.confidence.astype(jnp.float32), mode="drop")
        return constrain_rows(SpecState(
            cache=cache,
            proposer_state=self.proposer.update(proposer_params, proposer_state, verified),
            history=history,
            length=length,
            prompt_lengths=state.prompt_lengths,
            done=done,
            key=key,
            steps=state.steps + 1,
            accepted=accepted,
            verified_depth=verified_depth,
            confidence=confidence,
        ), self.placement)

    def _verify(self, params: TransformerParams, state: SpecState, node_tokens: jax.Array,
                anchor_position: jax.Array, verify_depth: jax.Array | None) -> tuple[KVCache, jax.Array, jax.Array]:
        """One target pass over the nodes down to verify_depth (all by default); node i is parked in slot
        anchor + i. Returns (cache, what acceptance judges by: the target's argmax int32[B, N] when greedy,
        else its distribution [B, N, V], captured features [K, B, N, E]), zero past the verified nodes.

        Nodes are depth-major, so depth ℓ is the first 1 + ℓW nodes and their rows of the full tree mask.
        A traced depth selects one of γ + 1 static-shape passes with `lax.switch`, which runs only that one.
        """
        template, num_nodes = self.template, self.template.num_nodes
        slots = anchor_position[:, None] + jnp.arange(num_nodes, dtype=jnp.int32)[None, :]
        slots = jnp.where(state.done[:, None], self.cache_size, slots)
        positions = verify_positions(template, anchor_position)
        mask = verify_mask(template, anchor_position, state.cache.positions)

        def verify_nodes(n: int):
            out = forward(params, node_tokens[:, :n], positions[:, :n], state.cache, config=self.config,
                          write_slots=slots[:, :n], mask=mask[:, :n], capture_layers=self.proposer.capture_layers)
            target_logits = logits(params, out.hidden, config=self.config)
            sampling = self.generation.sampling
            judged = argmax(target_logits) if sampling.greedy else probabilities(target_logits, sampling)
            pad = lambda a, axis: jnp.pad(a, [(0, num_nodes - n if i == axis else 0) for i in range(a.ndim)])
            return out.cache, pad(judged, 1), pad(out.captured, 2)

        if verify_depth is None:
            return verify_nodes(num_nodes)
        branches = [functools.partial(verify_nodes, 1 + depth * template.width) for depth in range(template.depth + 1)]
        return jax.lax.switch(verify_depth, branches)

    def run(self, params: TransformerParams, proposer_params: Any, state: SpecState,
            until_steps: jax.Array) -> SpecState:
        """Steps until every row is done or `until_steps` verify steps ran in all (a traced bound: one compile)."""
        return jax.lax.while_loop(lambda s: jnp.any(~s.done) & (s.steps < until_steps),
                                  functools.partial(self.step, params, proposer_params), state)


ALL_STEPS = np.iinfo(np.int32).max  # `run`'s bound when nothing pauses the loop


@functools.partial(jax.jit, static_argnums=0)
def _generate(decoder: SpecDecoder, params, proposer_params, prompt, prompt_lengths, key) -> SpecState:
    state = decoder.prefill(params, proposer_params, prompt, prompt_lengths, key)
    return decoder.run(params, proposer_params, state, jnp.int32(ALL_STEPS))


_prefill = jax.jit(SpecDecoder.prefill, static_argnums=0)
_run = jax.jit(SpecDecoder.run, static_argnums=0, donate_argnums=3)
_step = jax.jit(SpecDecoder.step, static_argnums=0)
_profiled: dict[tuple[SpecDecoder, tuple[int, ...]], PrefixScheduler] = {}
PROFILE_DIR = cache_dir() / "scheduler-profiles"  # one JSON file per measured step program and machine


def profile_scheduler(decoder: SpecDecoder, params: TransformerParams, proposer_params: Any, prompt: jax.Array,
                      prompt_lengths: jax.Array, key: jax.Array, repeats: int = 7,
                      on_disk: bool = True) -> PrefixScheduler:
    """The scheduler with its cost table measured on this machine: the wall time of one whole engine step
    (draft, verify, accept, drafter update) verifying each depth 0..γ, from the state after prefill.
    Measured once per decoder (drafter, sampling, sizes) and prompt shape, and remembered: in the process,
    and (`on_disk`) in PROFILE_DIR under the hash of the step's program and the devices that run it, so a
    later process skips the measurement (~70 steps, and compiling the step: most of a short one-off
    `generate`'s start when sampling). Delete the directory to measure again, e.g. after a hardware change.

    The first calls after compiling run slower, so every depth is warmed up twice before any is timed;
    the timed calls then go round the depths `repeats` times, so drift on a busy machine hits all of them
    alike, and each depth keeps its fastest call."""
    decoder = dataclasses.replace(decoder, scheduler=None)
    measured_for = (decoder, tuple(prompt.shape))
    if measured_for not in _profiled:
        state = _prefill(decoder, params, proposer_params, prompt, prompt_lengths, key)
        stored = _profile_file(decoder, params, proposer_params, state, repeats) if on_disk else None
        seconds = _read_profile(stored, decoder.template.depth)
        if seconds is None:
            seconds = _measure_steps(decoder, params, proposer_params, state, repeats)
            if stored is not None:
                write_atomically(stored, lambda tmp: Path(tmp).write_text(json.dumps({"step_seconds": seconds})))
        _profiled[measured_for] = PrefixScheduler(seconds)
    return _profiled[measured_for]


def _measure_steps(decoder: SpecDecoder, params, proposer_params, state: SpecState, repeats: int) -> tuple[float, ...]:
    depths = range(decoder.template.depth + 1)
    run = lambda depth: jax.block_until_ready(_step(decoder, params, proposer_params, state, jnp.int32(depth)))
    for depth in depths:  # the first call compiles, once for every depth
        run(depth)
        run(depth)
    seconds = [float("inf")] * len(depths)
    for _ in range(repeats):
        for depth in depths:
            start = time.perf_counter()
            run(depth)
            seconds[depth] = min(seconds[depth], time.perf_counter() - start)
    return tuple(seconds)


def _profile_file(decoder: SpecDecoder, params, proposer_params, state: SpecState, repeats: int) -> Path:
    """PROFILE_DIR / (hash of the step's lowered program, the devices and the measurement).json. Lowering
    traces the step without compiling it; the program text is what a step costs, whatever the Python
    objects that built it."""
    step = jax.jit(SpecDecoder.step, static_argnums=0)
    program = step.lower(decoder, params, proposer_params, state, jnp.int32(0)).as_text()
    devices = jax.devices()
    machine = (jax.__version__, devices[0].platform, devices[0].device_kind, len(devices), os.cpu_count(), repeats)
    digest = hashlib.sha256(f"{program}\0{machine}".encode()).hexdigest()[:32]
    return PROFILE_DIR / f"{digest}.json"


def _read_profile(path: Path | None, depth: int) -> tuple[float, ...] | None:
    """A stored table of γ + 1 positive step times, or None (no file, or one that is unreadable or cut:
    then it is measured and written again)."""
    if path is None or not path.exists():
        return None
    try:
        seconds = tuple(float(s) for s in json.loads(path.read_text())["step_seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return seconds if len(seconds) == depth + 1 and min(seconds) > 0 else None


@dataclasses.dataclass(frozen=True)
class SpecStats:
    """Per-row acceptance record of one generation, plus timing."""

    accepted: np.ndarray  # int32[B, steps]: draft tokens accepted at each verify step, -1 when idle
    verified_depth: np.ndarray  # int32[B, steps]: how deep the target verified the draft (γ without a scheduler)
    confidence: np.ndarray  # float32[B, steps, γ]: drafter confidence per position, NaN without a confidence head
    depth: int  # draft depth γ
    prefill_seconds: float
    decode_seconds: float

    @property
    def target_steps(self) -> int:
        """Verify passes of the target (the prefill excluded)."""
        return int(self.accepted.shape[1])

    @property
    def acceptance_lengths(self) -> np.ndarray:
        """Accepted draft tokens of every (row, step) that verified something."""
        return self.accepted[self.accepted >= 0]

    @property
    def tau(self) -> float:
        """Mean tokens produced per verify step, counting the target's bonus token (so tau >= 1)."""
        return float(np.mean(self.acceptance_lengths + 1))

    def _produced_and_steps(self) -> tuple[np.ndarray, np.ndarray]:
        """(tokens produced, verify steps) per row, int[B] each."""
        live = self.accepted >= 0
        return np.sum(np.where(live, self.accepted + 1, 0), axis=1), np.sum(live, axis=1)

    @property
    def tau_by_row(self) -> np.ndarray:
        """float[B]: τ of each row (prompt) on its own; NaN for a row that never verified."""
        produced, steps = self._produced_and_steps()
        return np.where(steps > 0, produced / np.maximum(steps, 1), np.nan)

    @property
    def tau_standard_error(self) -> float:
        """Standard error of `tau` with the rows (prompts) as the sampled units; NaN with fewer than two.

        Steps of one row are not independent draws (a prompt the drafter finds easy stays easy), so the
        spread comes from rows: τ is the ratio Σ produced / Σ steps over rows, whose variance the delta
        method gives as m / (m - 1) · Σ_i (produced_i - τ · steps_i)² / (Σ steps)²."""
        produced, steps = self._produced_and_steps()
        rows = steps > 0
        if np.sum(rows) < 2:
            return float("nan")
        residuals = produced[rows] - self.tau * steps[rows]
        m = residuals.size
        return float(np.sqrt(m / (m - 1) * np.sum(residuals**2)) / np.sum(steps))

    @property
    def mean_verified_depth(self) -> float:
        """Draft tokens the target verified per step (γ unless a scheduler cut the drafts)."""
        return float(np.mean(self.verified_depth[self.accepted >= 0]))

    @property
    def accept_rate_by_position(self) -> np.ndarray:
        """float[γ]: P(draft token k accepted | tokens before k accepted and token k verified), k = 1..γ."""
        live = self.accepted >= 0
        lengths, depths = self.accepted[live], self.verified_depth[live]
        reached = np.array([np.sum((lengths >= k - 1) & (depths >= k)) for k in range(1, self.depth + 1)])
        passed = np.array([np.sum(lengths >= k) for k in range(1, self.depth + 1)])
        return passed / np.maximum(reached, 1)

    def confidence_outcomes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(confidence, survived, position) for every draft position the verifier judged: position k of a
        step counts when it was verified and tokens < k were accepted; survived says whether token k was.
        Empty without a confidence head. Matches c_k = P(token k accepted | tokens < k accepted)."""
        live = self.accepted >= 0
        k = np.arange(1, self.depth + 1)[None, None, :]
        judged = (live[..., None] & (k <= self.accepted[..., None] + 1) & (k <= self.verified_depth[..., None])
                  & ~np.isnan(self.confidence))
        survived = k <= self.accepted[..., None]
        position = np.broadcast_to(k, judged.shape)
        return self.confidence[judged], survived[judged], position[judged]

    def whole_drafts(self) -> tuple[np.ndarray, np.ndarray]:
        """(confidence float32[M, γ], accepted int32[M]) of every step that verified the whole draft of a
        drafter with confidences: the samples sequential temperature scaling is fitted and judged on."""
        whole = (self.accepted >= 0) & (self.verified_depth == self.depth) & ~np.isnan(self.confidence).any(-1)
        return self.confidence[whole], self.accepted[whole]


@dataclasses.dataclass(frozen=True)
class SpecResult:
    tokens: list[list[int]]  # generated ids per prompt (stop token included)
    stats: SpecStats


def prepare(config: ModelConfig, prompts: Sequence[Sequence[int]], generation: GenerationConfig,
            proposer: Proposer, template: TreeTemplate) -> tuple[SpecDecoder, np.ndarray, np.ndarray]:
    """Validates and pads the request and sizes the loop, before anything is compiled."""
    prompt, lengths = pad_prompts(config, prompts, generation, reserve=template.num_nodes)
    width = prompt.shape[1]
    cache_size = round_up(width + generation.max_new_tokens + template.num_nodes, 128)
    history_size = width + generation.max_new_tokens + template.depth + 1
    return SpecDecoder(config, proposer, template, generation, cache_size, history_size), prompt, lengths


def speculative_generate(params: TransformerParams, config: ModelConfig, prompts: Sequence[Sequence[int]],
                         generation: GenerationConfig, method: SpeculativeMethod, seed: int = 0,
                         split_timing: bool = False) -> SpecResult:
    """Generated tokens per prompt and acceptance statistics, drafting with `method`.

    By default the whole generation is one device call. `split_timing=True` runs prefill and the decode
    loop as two calls (still no host round trip per step) so their wall times can be reported apart.
    """
    decoder, prompt, lengths, key = _decoder(params, config, prompts, generation, method, seed)
    start = time.perf_counter()
    if split_timing:
        state = jax.block_until_ready(_prefill(decoder, params, method.params, prompt, lengths, key))
        prefill_done = time.perf_counter()
        state = jax.block_until_ready(_run(decoder, params, method.params, state, jnp.int32(ALL_STEPS)))
    else:
        state = jax.block_until_ready(_generate(decoder, params, method.params, prompt, lengths, key))
        prefill_done = start
    return _result(state, lengths, method.template, prefill_done - start, time.perf_counter() - prefill_done)


def speculative_stream(params: TransformerParams, config: ModelConfig, prompts: Sequence[Sequence[int]],
                       generation: GenerationConfig, method: SpeculativeMethod, seed: int = 0,
                       chunk_steps: int = 2) -> Iterator[SpecResult]:
    """Yields the tokens accepted so far (and the statistics so far) after prefill and after every
    `chunk_steps` verify steps; the last result is `speculative_generate`'s: the loop and its keys are the
    same, only the pauses differ."""
    decoder, prompt, lengths, key = _decoder(params, config, prompts, generation, method, seed)
    start = time.perf_counter()
    state = jax.block_until_ready(_prefill(decoder, params, method.params, prompt, lengths, key))
    prefill_done = time.perf_counter()
    yield _result(state, lengths, method.template, prefill_done - start, 0.0)
    until = 0
    while not bool(jnp.all(state.done)):
        until += chunk_steps
        state = jax.block_until_ready(_run(decoder, params, method.params, state, jnp.int32(until)))
        yield _result(state, lengths, method.template, prefill_done - start, time.perf_counter() - prefill_done)


def _decoder(params: TransformerParams, config: ModelConfig, prompts: Sequence[Sequence[int]],
             generation: GenerationConfig, method: SpeculativeMethod, seed: int):
    """(decoder, padded prompts, lengths, key) for `method`, its scheduler profiled when it asks for one."""
    decoder, prompt, lengths = prepare(config, prompts, generation, method.proposer, method.template)
    decoder = dataclasses.replace(decoder, placement=placement_of(params))
    key = jax.random.key(seed)
    schedule = method.schedule
    if schedule == "hardware":
        fit = method.calibration.for_temperature(generation.sampling.temperature)
        schedule = dataclasses.replace(profile_scheduler(decoder, params, method.params, prompt, lengths, key),
                                       calibration=fit, greedy=generation.sampling.greedy)
    if isinstance(schedule, PrefixScheduler):
        decoder = dataclasses.replace(decoder, scheduler=schedule)
    return decoder, prompt, lengths, key


def _result(state: SpecState, lengths: np.ndarray, template: TreeTemplate, prefill_seconds: float,
            decode_seconds: float) -> SpecResult:
    history, length, accepted, verified_depth, confidence, steps = jax.device_get(
        (state.history, state.length, state.accepted, state.verified_depth, state.confidence, state.steps))
    tokens = [row[p:n].tolist() for row, p, n in zip(history, lengths, length)]
    stats = SpecStats(accepted=accepted[:, :steps], verified_depth=verified_depth[:, :steps],
                      confidence=confidence[:, :steps], depth=template.depth,
                      prefill_seconds=prefill_seconds, decode_seconds=decode_seconds)
    return SpecResult(tokens=tokens, stats=stats)
