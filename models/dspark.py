"""DSpark's heads on top of the DFlash backbone (paper §3): a low-rank Markov head and a confidence head.

The backbone gives base logits U_k for the γ slots of a block in one pass. The Markov head makes the block
semi-autoregressive at almost no cost: p_k(v) ∝ exp(U_k(v) + B(x_{k-1}, v)) with B(x, ·) = W1[x] · W2,
W1: V×r, W2: r×V, where x_{k-1} is the previous token of the block (the anchor for k = 1). Tokens are drawn
left to right, each transition bias depending on the token just drawn. The confidence head
c_k = σ(w · [h_k ; W1[x_{k-1}]]) estimates the probability that token k survives verification given that
every earlier one did; the scheduler uses it to choose how much of the draft to verify.

Everything here lives in the draft vocabulary (size Vd, see draft_vocab.py): W1 has one extra row for
"a token outside the draft vocabulary", which the anchor may be.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dspark_jax.models.dflash import DFlashConfig, DFlashDrafter
from dspark_jax.sampling import SamplingConfig, expand_candidates


@dataclasses.dataclass(frozen=True, kw_only=True)
class DSparkConfig(DFlashConfig):
    markov_rank: int = 256  # r of the Markov head's W1: V×r, W2: r×V

    def __post_init__(self):
        super().__post_init__()
        if self.markov_rank < 1:
            raise ValueError(f"the Markov head needs markov_rank >= 1, got {self.markov_rank}")


class DSparkHeads(nnx.Module):
    def __init__(self, vocab_size: int, hidden_size: int, rank: int = 256, *, rngs: nnx.Rngs):
        """vocab_size: Vd, the draft vocabulary's size."""
        self.transition_in = nnx.Embed(vocab_size + 1, rank, embedding_init=nnx.initializers.normal(0.02), rngs=rngs)
        # Zero output map: training starts from the plain DFlash distribution.
        self.transition_out = nnx.Linear(rank, vocab_size, use_bias=False, kernel_init=nnx.initializers.zeros,
                                         rngs=rngs)
        self.confidence = nnx.Linear(hidden_size + rank, 1, rngs=rngs)

    def transition(self, previous: jax.Array) -> tuple[jax.Array, jax.Array]:
        """previous: int[...] draft ids (Vd = outside) → (bias B(previous, ·) [..., Vd], W1[previous] [..., r])."""
        code = self.transition_in(previous)
        return self.transition_out(code), code

    def confidence_logit(self, hidden: jax.Array, code: jax.Array) -> jax.Array:
        """Pre-sigmoid confidence [...] from backbone hidden [..., E] and W1[x_{k-1}] [..., r]."""
        return self.confidence(jnp.concatenate([hidden, code.astype(hidden.dtype)], axis=-1))[..., 0]

    def teacher_forced(self, base_logits: jax.Array, hidden: jax.Array,
                       previous: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Training: logits U + B(x*_{k-1}) and confidence logits, with the data's tokens as x_{k-1}.

        base_logits: [..., γ, V]; hidden: [..., γ, E]; previous: int[..., γ] (anchor, x*_1, ..., x*_{γ-1}).
        """
        bias, code = self.transition(previous)
        return base_logits + bias, self.confidence_logit(hidden, code)

    def sample_block(self, base_logits: jax.Array, hidden: jax.Array, anchor: jax.Array, width: int,
                     sampling: SamplingConfig, key: jax.Array):
        """Drafting: the γ tokens left to right (one `lax.scan`), each from U_k + B(main token k-1, ·).

        base_logits: [B, γ, Vd]; hidden: [B, γ, E]; anchor: int[B] (draft id). Returns (candidates, draft ids
        int[B, γ, W] with the main chain at w = 0, q [B, γ, Vd] or None when greedy, confidence [B, γ]).
        """
        def step(previous, xs):
            logits_k, hidden_k, key_k = xs
            bias, code = self.transition(previous)
            candidates, q = expand_candidates(logits_k + bias, width, sampling, key_k)
            confidence = jax.nn.sigmoid(self.confidence_logit(hidden_k, code))
            return candidates[:, 0], (candidates, q, confidence)

        xs = (jnp.moveaxis(base_logits, 1, 0), jnp.moveaxis(hidden, 1, 0),
              jax.random.split(key, base_logits.shape[1]))
        _, (candidates, q, confidence) = jax.lax.scan(step, anchor, xs)
        q = None if q is None else jnp.moveaxis(q, 0, 1)
        return jnp.moveaxis(candidates, 0, 1), q, jnp.moveaxis(confidence, 0, 1)


class DSparkDrafter(DFlashDrafter):
    """The trainable part of a DSpark drafter: a DFlash drafter plus the Markov and confidence heads over its
    draft vocabulary."""

    def __init__(self, config: DSparkConfig, vocab: int | np.ndarray, *, rngs: nnx.Rngs):
        super().__init__(config, vocab, rngs=rngs)
        self.heads = DSparkHeads(self.vocab.get_value().shape[0], config.hidden_size, config.markov_rank, rngs=rngs)
