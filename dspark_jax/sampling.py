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
            raise ValueError(f"temperature must be a number >= 0 (0 = greedy), got {self.temperature!r}")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise ValueError(f"top_k must be an integer >= 0 (0 = no top-k filter), got {self.top_k!r}")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1] (1 = no nucleus filter), got {self.top_p!r}")

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


def argmax(x: jax.Array) -> jax.Array:
    """int32[...]: index of the largest entry along the last axis, the first one on ties, as `jnp.argmax`.
    A row holding NaN (a broken model) still gets an index inside the row: its largest number's or a NaN's.

    XLA:CPU lowers `jnp.argmax` to a variadic (value, index) reduction that it does not vectorise: over
    Gemma 3's 262,144-entry vocabulary that takes ~1.2 ms per row, a tenth of the time the LM head takes
    to read all its weights. A max followed by a first-hit search is two vectorised passes, ~0.1 ms.
    """
    largest = jnp.max(x, axis=-1, keepdims=True)
    hits = (x == largest) | jnp.isnan(x)
    positions = jnp.arange(x.shape[-1], dtype=jnp.int32)
    return jnp.min(jnp.where(hits, positions, x.shape[-1]), axis=-1)


def categorical(keys: jax.Array, logits: jax.Array) -> jax.Array:
    """int32[B]: one draw per row from softmax(logits [B, V]), one PRNG key per row; the same draws as
    `jax.random.categorical` (Gumbel-max with the same noise), through the fast `argmax`."""
    noise = jax.vmap(lambda key: jax.random.gumbel(key, logits.shape[-1:], logits.dtype))(keys)
    return argmax(noise + logits)


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
