"""Token sampling: temperature, top-k and top-p, applied identically wherever a distribution is needed.

`filtered_logits` is the one definition of "the distribution we sample from"; plain decoding samples from
it and the speculative verifier applies it to both target and draft logits, which is what keeps rejection
sampling lossless.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """temperature 0 means greedy (argmax); top_k 0 and top_p 1 disable those filters."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if not (isinstance(self.temperature, (int, float)) and self.temperature >= 0):
            raise ValueError(f"temperature (--temperature) must be >= 0 (0 = greedy), got {self.temperature!r}")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise ValueError(f"top_k (--top-k) must be an integer >= 0 (0 = no top-k filter), got {self.top_k!r}")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p (--top-p) must be in (0, 1] (1 = no nucleus filter), got {self.top_p!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def filtered_logits(logits: jax.Array, config: SamplingConfig) -> jax.Array:
    """float32[..., V]: logits / temperature with tokens outside top-k / top-p set to -inf.

    Not defined for greedy configs (use argmax). Ties at the cut-off are all kept.
    """
    x = logits.astype(jnp.float32) / config.temperature
    if config.top_k == 0 and config.top_p == 1:
        return x
    k = min(config.top_k or x.shape[-1], x.shape[-1])
    top_values, _ = jax.lax.top_k(x, k)  # sorted, descending
    if config.top_p < 1:
        probs = jax.nn.softmax(top_values, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        # Keep the smallest prefix whose mass reaches top_p: token i stays while the mass before it < top_p.
        num_kept = jnp.sum(mass_before < config.top_p, axis=-1, keepdims=True)
        cutoff = jnp.take_along_axis(top_values, num_kept - 1, axis=-1)
    else:
        cutoff = top_values[..., -1:]
    return jnp.where(x >= cutoff, x, -jnp.inf)


CHUNK = 1024  # argmax and sample_from cut vocabulary rows into chunks of this many entries


def _chunks(x: jax.Array, fill: float) -> jax.Array:
    """[..., C, CHUNK]: the last axis of x cut into chunks, the last one padded with `fill`."""
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, -x.shape[-1] % CHUNK)], constant_values=fill)
    return x.reshape(*x.shape[:-1], -1, CHUNK)


def _chunk_at(chunks: jax.Array, index: jax.Array) -> jax.Array:
    """[..., CHUNK]: chunk `index` [...] of each row of chunks [..., C, CHUNK]."""
    return jnp.take_along_axis(chunks, index[..., None, None], axis=-2)[..., 0, :]


def argmax(x: jax.Array) -> jax.Array:
    """int32[...]: index of the largest entry along the last axis, the first one on ties, as `jnp.argmax`.
    A row holding NaN (a broken model) still gets an index inside the row.

    XLA:CPU lowers `jnp.argmax` to a variadic (value, index) reduction that it does not vectorise: 1.2 ms
    per row of Gemma 3's 262,144 logits, 38 ms for the 64 rows of a batch-8 verify pass. Here the row is
    cut into chunks; one vectorised max pass finds each chunk's maximum, and only the first chunk holding
    the row's maximum is searched for its position (1 row: ~0.1 ms, 64 rows: ~4 ms).
    """
    chunks = _chunks(x, -jnp.inf)  # padding never wins a tie against a real entry that comes first
    chunk_max = jnp.max(chunks, axis=-1)
    largest = jnp.max(chunk_max, axis=-1, keepdims=True)
    first_chunk = jnp.minimum(_first_hit(chunk_max, largest), chunks.shape[-2] - 1)
    block = _chunk_at(chunks, first_chunk)
    return jnp.minimum(first_chunk * CHUNK + _first_hit(block, largest), x.shape[-1] - 1)


def _first_hit(x: jax.Array, value: jax.Array) -> jax.Array:
    """int32[...]: first index along the last axis where x equals value (or is NaN); x.shape[-1] if none."""
    hits = (x == value) | jnp.isnan(x)
    positions = jnp.arange(x.shape[-1], dtype=jnp.int32)
    return jnp.min(jnp.where(hits, positions, x.shape[-1]), axis=-1)


def sample_from(weights: jax.Array, uniforms: jax.Array) -> jax.Array:
    """int32[B]: inverse-CDF draw from each row of non-negative weights [B, V] (normalised or not), with
    uniforms [B] in [0, 1). Exact for one-hot rows; a zero-weight token is never drawn.

    A cumulative sum over Gemma's 262,144 entries is a long sequential scan on XLA:CPU (50 ms for 32 rows).
    Here the row is cut into chunks: the cumulative mass of the chunk totals picks the chunk, and only that
    chunk is scanned (32 rows: ~15 ms).
    """
    chunks = _chunks(weights, 0.0)
    chunk_mass = jnp.sum(chunks, axis=-1)  # [B, C]
    chunk_cdf = jnp.cumsum(chunk_mass, axis=-1)
    threshold = uniforms * chunk_cdf[:, -1]
    # The first chunk whose cumulative mass passes the threshold; chunks of zero mass are skipped.
    chunk = _clamp_to_positive(chunk_mass, jnp.sum(chunk_cdf <= threshold[:, None], axis=-1))
    block = _chunk_at(chunks, chunk)  # [B, CHUNK]
    mass_before = jnp.take_along_axis(chunk_cdf - chunk_mass, chunk[:, None], axis=1)[:, 0]
    inside = jnp.sum(jnp.cumsum(block, axis=-1) <= (threshold - mass_before)[:, None], axis=-1)
    # Rounding between the two sums can land just outside the chunk's positive entries: clamp into them.
    token = chunk * CHUNK + _clamp_to_positive(block, inside)
    return jnp.minimum(token, weights.shape[-1] - 1).astype(jnp.int32)


def _clamp_to_positive(weights: jax.Array, index: jax.Array) -> jax.Array:
    """index [B] moved into [first, last] positive entry of its row of weights [B, K] (0 if none is)."""
    positions = jnp.arange(weights.shape[-1], dtype=jnp.int32)
    positive = weights > 0
    first = jnp.min(jnp.where(positive, positions, weights.shape[-1]), axis=-1)
    last = jnp.max(jnp.where(positive, positions, 0), axis=-1)
    return jnp.clip(index, jnp.minimum(first, last), last)


def categorical(keys: jax.Array, logits: jax.Array) -> jax.Array:
    """int32[B]: one draw per row from softmax(logits [B, V]), one PRNG key per row. Inverse CDF with one
    uniform per row: Gumbel-max (`jax.random.categorical`) needs V random numbers and two logs per entry,
    140 ms for 32 rows of Gemma's vocabulary."""
    weights = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    return sample_from(weights, jax.vmap(jax.random.uniform)(keys))


def probabilities(logits: jax.Array, config: SamplingConfig) -> jax.Array:
    """float32[..., V]: the distribution tokens are drawn from (one-hot of the argmax when greedy)."""
    if config.greedy:
        return jax.nn.one_hot(argmax(logits), logits.shape[-1], dtype=jnp.float32)
    return jax.nn.softmax(filtered_logits(logits, config), axis=-1)


def sample(logits: jax.Array, keys: jax.Array, config: SamplingConfig) -> jax.Array:
    """int32[B]: one token per row. logits: [B, V]; keys: one PRNG key per row, [B]."""
    if config.greedy:
        return argmax(logits)
    return categorical(keys, filtered_logits(logits, config))


def expand_candidates(logits: jax.Array, width: int, sampling: SamplingConfig,
                      key: jax.Array) -> tuple[jax.Array, jax.Array | None]:
    """The W candidates of one depth from draft logits [B, V]: (int32[B, W], q [B, V] or None).

    Greedy: the top-W tokens, all deterministic. Sampling: the main token is drawn from q (the draft's
    distribution after the same temperature / top-k / top-p as the target) and the siblings are the most
    likely other tokens, deterministic proposals.
    """
    if sampling.greedy:
        return jax.lax.top_k(logits, width)[1].astype(jnp.int32), None
    q = probabilities(logits, sampling)
    main = categorical(jax.random.split(key, logits.shape[0]), jnp.log(q))
    if width == 1:
        return main[:, None], q
    others = jnp.where(jax.nn.one_hot(main, logits.shape[-1], dtype=bool), -jnp.inf, logits)
    siblings = jax.lax.top_k(others, width - 1)[1].astype(jnp.int32)
    return jnp.concatenate([main[:, None], siblings], axis=1), q
