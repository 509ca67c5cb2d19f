"""Autoregressive generation: jitted prefill, then decoding inside one `lax.while_loop`.

`Decoder` is a frozen, hashable loop object (it is the static argument of every jitted function), and
`DecodeState` the immutable pytree carried through the loop: fixed-size token buffer, KV cache, per-row
progress. Rows of different prompt lengths share one batch; each row stops on its own stop token or budget
and then idles (its writes are dropped) until the whole batch is done. `generate` runs everything in one
device call; `generate_stream` pulls finished chunks for printing, reusing the same compiled loop.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dspark_jax.models.config import ModelConfig
from dspark_jax.models.kv_cache import KVCache
from dspark_jax.models.params import TransformerParams
from dspark_jax.models.sharding import Placement, constrain_rows, placement_of
from dspark_jax.models.transformer import ForwardOutput, forward, logits
from dspark_jax.sampling import SamplingConfig, sample


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 128
    sampling: SamplingConfig = SamplingConfig()
    stop_tokens: tuple[int, ...] = ()
    min_prompt_width: int = 16  # prompts pad to at least this: requests of different lengths share compiled code

    def __post_init__(self):
        if not (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1):
            raise ValueError(f"max_new_tokens (--max-new-tokens) must be an integer >= 1, got {self.max_new_tokens!r}")
        if self.min_prompt_width < 1:
            raise ValueError(f"min_prompt_width must be >= 1, got {self.min_prompt_width}")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DecodeState:
    cache: KVCache
    tokens: jax.Array  # int32[B, N]: generated tokens, pad_token_id past num_generated
    num_generated: jax.Array  # int32[B]
    last_token: jax.Array  # int32[B]: newest token; the cache holds everything before it
    next_position: jax.Array  # int32[B]: position of last_token
    done: jax.Array  # bool[B]
    keys: jax.Array  # PRNG key per row, [B]
    steps: jax.Array  # int32[]: decode forward passes so far


def prompt_slots(prompt_lengths: jax.Array, width: int, cache_size: int) -> tuple[jax.Array, jax.Array]:
    """(positions, cache write slots), int32[B, width], for a right-padded prompt batch: token t goes to slot t
    and padding to slot cache_size, i.e. nowhere, so a cache only ever holds real tokens."""
    positions = jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32), (prompt_lengths.shape[0], width))
    return positions, jnp.where(positions < prompt_lengths[:, None], positions, cache_size)


def prefill_prompt(params: TransformerParams, config: ModelConfig, prompt: jax.Array, prompt_lengths: jax.Array,
                   cache_size: int, capture_layers: tuple[int, ...] = ()) -> tuple[ForwardOutput, jax.Array]:
    """Runs the prompt batch (int32[B, T], right-padded) into a fresh cache of `cache_size` slots.

    Returns the forward output and float32[B, V], the logits after each row's last prompt token.
    """
    positions, write_slots = prompt_slots(prompt_lengths, prompt.shape[1], cache_size)
    cache = KVCache.empty(config, prompt.shape[0], cache_size, params.embed.dtype)
    out = forward(params, prompt, positions, cache, config=config, write_slots=write_slots,
                  capture_layers=capture_layers)
    last_hidden = jnp.take_along_axis(out.hidden, (prompt_lengths - 1)[:, None, None], axis=1)[:, 0]
    return out, logits(params, last_hidden, config=config)


@dataclasses.dataclass(frozen=True)
class Decoder:
    """Static description of one generation loop; hashable, so it keys the jit caches."""

    config: ModelConfig
    generation: GenerationConfig
    cache_size: int
    placement: Placement | None = None  # a target on a mesh: rows over its data axis (models/sharding.py)

    def _emit(self, state: DecodeState, new_token: jax.Array, keys: jax.Array) -> DecodeState:
        """Appends one token per live row and updates the stop flags."""
        rows = jnp.arange(new_token.shape[0])
        write_at = jnp.where(state.done, self.generation.max_new_tokens, state.num_generated)
        tokens = state.tokens.at[rows, write_at].set(new_token, mode="drop")
        num_generated = state.num_generated + (~state.done)
        stop = jnp.isin(new_token, jnp.asarray(self.generation.stop_tokens or (-1,), jnp.int32))
        done = state.done | stop | (num_generated >= self.generation.max_new_tokens)
        return constrain_rows(dataclasses.replace(
            state,
            tokens=tokens,
            num_generated=num_generated,
            last_token=jnp.where(state.done, state.last_token, new_token),
            next_position=state.next_position + (~state.done),
            done=done,
            keys=keys,
        ), self.placement)

    def prefill(self, params: TransformerParams, prompt: jax.Array, prompt_lengths: jax.Array,
                keys: jax.Array) -> DecodeState:
        """prompt: int32[B, T] right-padded; prompt_lengths: int32[B]; keys: [B]. Samples the first token."""
        batch = prompt.shape[0]
        out, last_logits = prefill_prompt(params, self.config, prompt, prompt_lengths, self.cache_size)
        step_keys, next_keys = _split_rows(keys)
        first = sample(last_logits, step_keys, self.generation.sampling)
        state = DecodeState(
            cache=out.cache,
            tokens=jnp.full((batch, self.generation.max_new_tokens), self.config.pad_token_id, jnp.int32),
            num_generated=jnp.zeros(batch, jnp.int32),
            last_token=jnp.take_along_axis(prompt, (prompt_lengths - 1)[:, None], axis=1)[:, 0],
            next_position=prompt_lengths - 1,
            done=jnp.zeros(batch, bool),
            keys=keys,
            steps=jnp.zeros((), jnp.int32),
        )
        return self._emit(state, first, next_keys)

    def step(self, params: TransformerParams, state: DecodeState) -> DecodeState:
        """One decode forward pass for the whole batch; finished rows write nothing."""
        positions = state.next_position[:, None]
        write_slots = jnp.where(state.done[:, None], self.cache_size, positions)
        out = forward(params, state.last_token[:, None], positions, state.cache, config=self.config,
                      write_slots=write_slots)
        step_keys, next_keys = _split_rows(state.keys)
        new_token = sample(logits(params, out.hidden[:, 0], config=self.config), step_keys, self.generation.sampling)
        state = dataclasses.replace(state, cache=out.cache, steps=state.steps + 1)
        return self._emit(state, new_token, next_keys)

    def run(self, params: TransformerParams, state: DecodeState, until_tokens: jax.Array) -> DecodeState:
        """Decodes until every row is done or has `until_tokens` tokens (a traced bound: one compile)."""

        def cond(s: DecodeState):
            return jnp.any(~s.done & (s.num_generated < until_tokens))

        return jax.lax.while_loop(cond, functools.partial(self.step, params), state)


def _split_rows(keys: jax.Array) -> tuple[jax.Array, jax.Array]:
    pairs = jax.vmap(jax.random.split)(keys)
    return pairs[:, 0], pairs[:, 1]


@functools.partial(jax.jit, static_argnums=0)
def _generate(decoder: Decoder, params, prompt, prompt_lengths, keys) -> DecodeState:
    state = decoder.prefill(params, prompt, prompt_lengths, keys)
    return decoder.run(params, state, jnp.int32(decoder.generation.max_new_tokens))


_prefill = jax.jit(Decoder.prefill, static_argnums=0)
_run = jax.jit(Decoder.run, static_argnums=0, donate_argnums=2)


@dataclasses.dataclass(frozen=True)
class PreparedBatch:
    """Host-side, validated and padded prompts plus the loop object that fits them."""

    decoder: Decoder
    prompt: np.ndarray  # int32[B, T]
    prompt_lengths: np.ndarray  # int32[B]
    keys: jax.Array  # [B]


def bucketed_width(longest: int, minimum: int = 16) -> int:
    """The padded prompt width for a longest prompt of `longest` tokens: a power of two, at least `minimum`."""
    return max(minimum, 1 << (longest - 1).bit_length())


def pad_prompts(config: ModelConfig, prompts: Sequence[Sequence[int]], generation: GenerationConfig,
                reserve: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Validates prompts and right-pads them to a bucketed width: (int32[B, T], int32[B] lengths).

    `reserve` is extra context the decoding loop needs beyond prompt + max_new_tokens (draft-tree scratch
    slots). The width is a power of two (at least `generation.min_prompt_width`) so that similar requests
    reuse compiled code.
    """
    if not prompts:
        raise ValueError("no prompts given: pass at least one prompt")
    lengths = [len(p) for p in prompts]
    if min(lengths) == 0:
        raise ValueError(f"prompt {lengths.index(0)} is empty: every prompt needs at least one token")
    longest = max(lengths)
    if longest + generation.max_new_tokens + reserve > config.max_position:
        raise ValueError(
            f"a prompt of {longest} tokens plus max_new_tokens={generation.max_new_tokens}"
            + (f" plus {reserve} draft slots" if reserve else "")
            + f" exceeds the model's context of {config.max_position} tokens: shorten the prompt or lower "
            "max_new_tokens"
        )
    for i, p in enumerate(prompts):
        bad = [t for t in p if not 0 <= t < config.vocab_size]
        if bad:
            raise ValueError(f"prompt {i} has token ids outside the vocabulary [0, {config.vocab_size}): {bad[:5]}")
    width = bucketed_width(longest, generation.min_prompt_width)
    prompt = np.full((len(prompts), width), config.pad_token_id, np.int32)
    for i, p in enumerate(prompts):
        prompt[i, : len(p)] = p
    return prompt, np.asarray(lengths, np.int32)


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def prepare(config: ModelConfig, prompts: Sequence[Sequence[int]], generation: GenerationConfig,
            seed: int = 0, placement: Placement | None = None) -> PreparedBatch:
    """Validates and pads the prompts and sizes the loop, before anything is compiled.

    The cache size is a multiple of 128 so that similar requests reuse compiled code.
    """
    prompt, lengths = pad_prompts(config, prompts, generation)
    cache_size = round_up(prompt.shape[1] + generation.max_new_tokens, 128)
    keys = jax.random.split(jax.random.key(seed), len(prompts))
    return PreparedBatch(Decoder(config, generation, cache_size, placement), prompt, lengths, keys)


def _rows(state: DecodeState) -> list[list[int]]:
    tokens, counts = jax.device_get((state.tokens, state.num_generated))
    return [row[:n].tolist() for row, n in zip(tokens, counts)]


def generate(params: TransformerParams, config: ModelConfig, prompts: Sequence[Sequence[int]],
             generation: GenerationConfig, seed: int = 0) -> list[list[int]]:
    """Generated token ids per prompt (stop token included), in one device call."""
    batch = prepare(config, prompts, generation, seed, placement_of(params))
    state = _generate(batch.decoder, params, batch.prompt, batch.prompt_lengths, batch.keys)
    return _rows(state)


def generate_stream(params: TransformerParams, config: ModelConfig, prompts: Sequence[Sequence[int]],
                    generation: GenerationConfig, seed: int = 0, chunk: int = 8) -> Iterator[list[list[int]]]:
    """Yields each row's tokens so far after prefill and after every `chunk` further tokens.

    Same tokens as `generate`: the loop and its random keys are identical, only the pauses differ.
    """
    batch = prepare(config, prompts, generation, seed, placement_of(params))
    state = _prefill(batch.decoder, params, batch.prompt, batch.prompt_lengths, batch.keys)
    yield _rows(state)
    until = 1
    while not bool(jnp.all(state.done)):
        until += chunk
        state = _run(batch.decoder, params, state, jnp.int32(until))
        yield _rows(state)
