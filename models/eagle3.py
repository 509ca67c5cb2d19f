"""EAGLE-3 drafter (Li et al., 2025): one autoregressive decoder layer over fused target features.

The outputs of K target layers at position s are concatenated and projected to one feature g_s. The
drafter's entry at position s reads [embed(x_{s+1}) ; g_s] (the token that follows s, normalised apart and
concatenated to 2E) and predicts x_{s+2}; its output hidden h_s (the residual stream, before the final
norm) replaces g in the next drafting step, so step k reads [embed(draft token k) ; h from step k - 1].
Attention sees the drafter's entries of committed positions (computed from target features) plus the
entries of the current chain. Training unrolls the same steps (training-time test, `train/eagle3_ttt.py`),
so the drafter learns from its own hidden states, as it drafts. Embedding and LM head are the target's.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dspark_jax.models.draft_vocab import vocab_map
from dspark_jax.models.drafter_attention import grouped_attention
from dspark_jax.models.drafter_config import DrafterConfig
from dspark_jax.models.rms_norm import RMSNorm, head_norms, maybe_norm
from dspark_jax.models.transformer import apply_rope


@dataclasses.dataclass(frozen=True, kw_only=True)
class Eagle3Config(DrafterConfig):
    steps: int = 7  # drafting steps (γ), unrolled as many times in the training-time test

    DEFAULT_FEATURES: ClassVar[int] = 3  # EAGLE-3 fuses a low, a middle and a high layer
    DEPTH_FIELD: ClassVar[str] = "steps"


def following_tokens(tokens: jax.Array) -> jax.Array:
    """int32[B, T]: the token after each position (an entry's token input); the last repeats itself, its
    entry is never attended to before the next token is known."""
    return jnp.concatenate([tokens[:, 1:], tokens[:, -1:]], axis=1)


class Eagle3Drafter(nnx.Module):
    """One decoder layer drafting `config.steps` tokens; vocab: see `draft_vocab.vocab_map`."""

    def __init__(self, config: Eagle3Config, vocab: int | np.ndarray, *, rngs: nnx.Rngs):
        e, h, kv, d, f = (config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim,
                          config.intermediate_size)
        linear = lambda i, o: nnx.Linear(i, o, use_bias=False, dtype=config.dtype, rngs=rngs)
        norm = lambda: RMSNorm(e, eps=config.rms_norm_eps, dtype=config.dtype)
        self.config = config
        self.vocab = vocab_map(vocab)
        self.fuse = linear(len(config.target_layers) * e, e)
        self.embed_norm, self.hidden_norm = norm(), norm()
        self.q, self.k, self.v = linear(2 * e, h * d), linear(2 * e, kv * d), linear(2 * e, kv * d)
        self.o = linear(h * d, e)
        self.q_norm, self.k_norm = head_norms(config)
        self.mlp_norm = norm()
        self.gate, self.up, self.down = linear(e, f), linear(e, f), linear(f, e)
        self.final_norm = norm()

    def fuse_features(self, features: jax.Array) -> jax.Array:
        """g [..., E] from target layer outputs [K, ..., E] (K in `target_layers` order)."""
        return self.fuse(jnp.concatenate(list(features), axis=-1))

    def _inputs(self, token_embeddings: jax.Array, hidden: jax.Array) -> jax.Array:
        return jnp.concatenate([self.embed_norm(token_embeddings), self.hidden_norm(hidden)], axis=-1)

    def _heads(self, x: jax.Array, n: int) -> jax.Array:
        return x.reshape(*x.shape[:-1], n, self.config.head_dim)

    def _entry(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        k = apply_rope(maybe_norm(self.k_norm, self._heads(self.k(x), self.config.num_kv_heads)), positions,
                       self.config.inv_freq)
        return k, self._heads(self.v(x), self.config.num_kv_heads)

    def keys_values(self, token_embeddings: jax.Array, hidden: jax.Array,
                    positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Entries of committed positions: token_embeddings (of the next token), hidden (g): [B, S, E] at
        positions [B, S] → k, v: [B, S, KVH, D]."""
        return self._entry(self._inputs(token_embeddings, hidden), positions)

    def __call__(self, token_embeddings: jax.Array, hidden: jax.Array, positions: jax.Array,
                 context_k: jax.Array, context_v: jax.Array, context_visible: jax.Array,
                 chain_k: jax.Array, chain_v: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """One drafting step for N queries per row.

        token_embeddings, hidden: [B, N, E] at positions int32[B, N]; context_k/v: [B, S, KVH, D] with
        context_visible bool[B, N, S]; chain_k/v: [B, N, J, KVH, D], the entries of this query's earlier
        steps (J may be 0). Returns (h [B, N, E], chain_k, chain_v [B, N, J + 1, KVH, D]): the chain with
        this step's own entry appended last.
        """
        c = self.config
        b, n, _ = hidden.shape
        x = self._inputs(token_embeddings, hidden)
        q = apply_rope(maybe_norm(self.q_norm, self._heads(self.q(x), c.num_heads)), positions, c.inv_freq)
        k, v = self._entry(x, positions)
        chain_k = jnp.concatenate([chain_k, k[:, :, None].astype(chain_k.dtype)], axis=2)
        chain_v = jnp.concatenate([chain_v, v[:, :, None].astype(chain_v.dtype)], axis=2)
        attn = grouped_attention(q[:, :, None], context_k, context_v, context_visible, chain_k, chain_v,
                                 scale=c.head_dim**-0.5)[:, :, 0]  # one query per chain: the context and the chain
        h = hidden + self.o(attn.reshape(b, n, -1))
        m = self.mlp_norm(h)
        return h + self.down(jax.nn.silu(self.gate(m)) * self.up(m)), chain_k, chain_v

    def normed(self, hidden: jax.Array) -> jax.Array:
        """Final-normed hidden states (logits = the target head over the draft vocabulary applied to them)."""
        return self.final_norm(hidden)
