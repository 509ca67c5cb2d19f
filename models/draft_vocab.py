"""The draft vocabulary: the drafter predicts over a subset of the target's tokens (EAGLE-3's d2t / t2d maps).

Gemma's vocabulary has 262k tokens; a drafter head over all of them costs as much as the target's and the
Markov head's two V×r tables dominate the checkpoint. Restricting drafting to the most frequent tokens of
the training responses keeps both small while losing almost no acceptance (a token outside the subset is
simply never proposed; verification stays lossless because the target decides).

The subset is stored as `draft_to_target`, the sorted target ids of the Vd draft tokens. Target → draft is a
binary search into it; target tokens outside the subset map to Vd, an extra "other" index the Markov head
embeds. The logits are the target's own head rows, gathered once (`DraftHead`), never trained or stored.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dspark_jax.kernels.linear import Weight, linear, take_rows
from dspark_jax.kernels.soft_cap import soft_cap
from dspark_jax.models.config import ModelConfig
from dspark_jax.models.params import TransformerParams


class VocabMap(nnx.Variable):
    """Non-trainable int32[Vd] map from draft ids to target ids, saved with the drafter's weights."""


def full_vocab(vocab_size: int) -> np.ndarray:
    return np.arange(vocab_size, dtype=np.int32)


def vocab_map(vocab: int | np.ndarray) -> VocabMap:
    """A drafter's map from `vocab`: the target's vocabulary size (draft over all of it) or the sorted target
    ids of a reduced draft vocabulary (`most_frequent_tokens`)."""
    return VocabMap(jnp.asarray(full_vocab(vocab) if isinstance(vocab, int) else np.asarray(vocab, np.int32)))


def most_frequent_tokens(tokens: np.ndarray, loss_mask: np.ndarray, size: int, vocab_size: int,
                         always: tuple[int, ...] = ()) -> np.ndarray:
    """Sorted int32[min(size, V)]: the `size` tokens seen most often where loss_mask is set (the responses
    the drafter learns), plus `always` (stop tokens), ties broken by lower id. tokens, loss_mask: [N, T]."""
    if size < 1:
        raise ValueError(f"draft vocabulary size must be >= 1, got {size}")
    size = min(size, vocab_size)
    counts = np.bincount(np.asarray(tokens)[np.asarray(loss_mask, bool)].ravel(), minlength=vocab_size)
    counts = counts.astype(np.float64)
    counts[list(always)] = np.inf
    order = np.argsort(-counts, kind="stable")[:size]
    return np.sort(order).astype(np.int32)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DraftHead:
    """The target's LM head restricted to the draft vocabulary, with the maps between the two id spaces."""

    weight: Weight  # [Vd, E]: rows of the target head (the head itself when Vd = V)
    draft_to_target: jax.Array  # int32[Vd], sorted
    target_vocab_size: int = dataclasses.field(metadata=dict(static=True))
    final_logit_softcap: float | None = dataclasses.field(metadata=dict(static=True))

    @classmethod
    def from_target(cls, config: ModelConfig, params: TransformerParams, draft_to_target) -> DraftHead:
        draft_to_target = jnp.asarray(draft_to_target, jnp.int32)
        full = draft_to_target.shape[0] == config.vocab_size  # sorted and unique, so it is the identity
        weight = params.head if full else take_rows(params.head, draft_to_target)
        return cls(weight, draft_to_target, config.vocab_size, config.final_logit_softcap)

    @property
    def size(self) -> int:
        return self.draft_to_target.shape[0]

    def logits(self, hidden: jax.Array) -> jax.Array:
        """float32[..., Vd] from final-normed hidden states [..., E] (the target's head, same soft-capping)."""
        return soft_cap(linear(hidden, self.weight, preferred_element_type=jnp.float32), self.final_logit_softcap)

    def to_target(self, draft_ids: jax.Array) -> jax.Array:
        return jnp.take(self.draft_to_target, draft_ids, axis=0)

    def to_draft(self, target_ids: jax.Array) -> jax.Array:
        """int32: the draft id of each target token, Vd for tokens outside the draft vocabulary."""
        index = jnp.clip(jnp.searchsorted(self.draft_to_target, target_ids), 0, self.size - 1)
        return jnp.where(self.draft_to_target[index] == target_ids, index, self.size).astype(jnp.int32)

    def probs_to_target(self, q: jax.Array) -> jax.Array:
        """[..., V] from draft probabilities [..., Vd]: zero mass outside the draft vocabulary."""
        if self.size == self.target_vocab_size:
            return q
        return jnp.zeros((*q.shape[:-1], self.target_vocab_size), q.dtype).at[..., self.draft_to_target].set(q)

    def target_log_probs(self, hidden: jax.Array, log_normalizer: jax.Array) -> jax.Array:
        """float32[..., Vd]: the target's log-probabilities of the draft tokens, normalised over its whole
        vocabulary, from final normed hidden states [..., E] and the logsumexp of its full logits [...]."""
        return self.logits(hidden) - log_normalizer[..., None]
