"""DFlash drafter backbone: a parallel block drafter conditioned on fused hidden states of the target.

A block is the anchor token x0 (the target's newest token) followed by γ - 1 mask tokens; slot i predicts
the token at anchor position + 1 + i, so γ inputs give γ draft distributions in one pass (DeepSpec's
variant: the anchor is the first prediction slot). The outputs of K target layers at every committed
position are concatenated, projected by `fuse` and normalised; each draft layer turns that context into
extra keys/values with its own projections. A block attends bidirectionally to itself and to the context
strictly before its anchor, nothing else. Embedding and LM head are the target's, frozen and never stored
here (as in DFlash and DeepSpec).

Several blocks of one sequence share one context ([B, S] keys/values) and differ only in which context
positions they may see: training packs many random anchors per sequence this way, inference uses one.

With `lookup_inputs` (ours, not DFlash's or DeepSpec's) each slot's input also carries what prompt lookup
proposes for the slot's own token: the tokens that followed the most recent earlier occurrence of the
history's tail, and the length of that match. The target copies its context most of the time at T = 0 and
a one-layer block drafter cannot find the earlier occurrence by itself (docs/results.md, "They do not
copy"); given the candidate, it only has to learn when to keep it. The lookup's projection starts as the
identity, so an untrained drafter already leans towards the candidate.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dspark_jax.models.config import ModelConfig
from dspark_jax.models.draft_vocab import vocab_map
from dspark_jax.models.drafter_attention import grouped_attention
from dspark_jax.models.drafter_config import DrafterConfig
from dspark_jax.models.rms_norm import RMSNorm, head_norms, maybe_norm
from dspark_jax.models.transformer import apply_rope


@dataclasses.dataclass(frozen=True, kw_only=True)
class DFlashConfig(DrafterConfig):
    mask_token_id: int  # the input of every block slot after the anchor
    block_size: int = 7  # γ
    num_layers: int = 1
    lookup_inputs: bool = False  # slots also read prompt lookup's candidate for their token (module docstring)

    DEPTH_FIELD: ClassVar[str] = "block_size"

    @classmethod
    def target_fields(cls, target: ModelConfig) -> dict[str, Any]:
        return {"mask_token_id": target.pad_token_id}

    def __post_init__(self):
        super().__post_init__()
        if self.num_layers < 1:
            raise ValueError(f"a block drafter needs num_layers >= 1, got {self.num_layers}")


class DraftLayer(nnx.Module):
    def __init__(self, config: DFlashConfig, *, rngs: nnx.Rngs):
        e, h, kv, d, f = (config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim,
                          config.intermediate_size)
        linear = lambda i, o: nnx.Linear(i, o, use_bias=False, dtype=config.dtype, rngs=rngs)
        self.config = config
        self.attn_norm = RMSNorm(e, eps=config.rms_norm_eps, dtype=config.dtype)
        self.q, self.k, self.v, self.o = linear(e, h * d), linear(e, kv * d), linear(e, kv * d), linear(h * d, e)
        self.q_norm, self.k_norm = head_norms(config)
        self.mlp_norm = RMSNorm(e, eps=config.rms_norm_eps, dtype=config.dtype)
        self.gate, self.up, self.down = linear(e, f), linear(e, f), linear(f, e)

    def _heads(self, x: jax.Array, n: int) -> jax.Array:
        return x.reshape(*x.shape[:-1], n, self.config.head_dim)

    def keys_values(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x: [B, S, E] (already normalised) at positions [B, S] → k, v: [B, S, KVH, D]."""
        c = self.config
        k = apply_rope(maybe_norm(self.k_norm, self._heads(self.k(x), c.num_kv_heads)), positions, c.inv_freq)
        return k, self._heads(self.v(x), c.num_kv_heads)

    def __call__(self, x: jax.Array, positions: jax.Array, context_k: jax.Array, context_v: jax.Array,
                 context_visible: jax.Array) -> jax.Array:
        """x: [B, N, γ, E] blocks at positions [B, N, γ]; context_k/v: [B, S, KVH, D];
        context_visible: bool[B, N, S]."""
        c = self.config
        b, n, g, _ = x.shape
        h = self.attn_norm(x)
        flat = lambda a: a.reshape(b, n * g, *a.shape[3:])
        flat_positions = flat(positions[..., None])[..., 0]
        q = apply_rope(maybe_norm(self.q_norm, self._heads(flat(self.q(h)), c.num_heads)), flat_positions, c.inv_freq)
        block_k, block_v = self.keys_values(flat(h), flat_positions)
        group = lambda a: a.reshape(b, n, g, *a.shape[2:])
        attn = grouped_attention(group(q), context_k, context_v, context_visible, group(block_k), group(block_v),
                                 scale=c.head_dim**-0.5)  # a block sees the context before its anchor and itself
        x = x + self.o(attn.reshape(b, n, g, -1))
        h = self.mlp_norm(x)
        return x + self.down(jax.nn.silu(self.gate(h)) * self.up(h))


# Match lengths a lookup candidate can carry: 0 (none found) .. LOOKUP_MAX_NGRAM.
LOOKUP_MAX_NGRAM = 4


class DFlashBackbone(nnx.Module):
    def __init__(self, config: DFlashConfig, *, rngs: nnx.Rngs):
        self.config = config
        e = config.hidden_size
        self.fuse = nnx.Linear(len(config.target_layers) * e, e, use_bias=False, dtype=config.dtype, rngs=rngs)
        self.fuse_norm = RMSNorm(e, eps=config.rms_norm_eps, dtype=config.dtype)
        if config.lookup_inputs:
            self.lookup = nnx.Linear(e, e, use_bias=False, dtype=config.dtype, rngs=rngs,
                                     kernel_init=lambda key, shape, dtype: jnp.eye(*shape, dtype=dtype))
            self.match_length = nnx.Embed(LOOKUP_MAX_NGRAM + 1, e, embedding_init=nnx.initializers.zeros, rngs=rngs)
        self.layers = nnx.List([DraftLayer(config, rngs=rngs) for _ in range(config.num_layers)])
        self.final_norm = RMSNorm(e, eps=config.rms_norm_eps, dtype=config.dtype)

    def block_inputs(self, block_embeddings: jax.Array, lookup_embeddings: jax.Array | None,
                     match_length: jax.Array | None) -> jax.Array:
        """What the first layer reads, [..., γ, E]: the embeddings of the block's tokens [..., γ, E], plus,
        with `lookup_inputs`, the projected embeddings of prompt lookup's candidates [..., γ, E] and the
        embedding of the match length int32[...] they come from (0: none found)."""
        if not self.config.lookup_inputs:
            return block_embeddings
        found = self.match_length(jnp.clip(match_length, 0, LOOKUP_MAX_NGRAM))[..., None, :]
        return block_embeddings + self.lookup(lookup_embeddings) + found

    def context(self, features: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The context keys and values of every draft layer, [L, B, S, KVH, D] each. features: [K, B, S, E]
        target layer outputs (K in `target_layers` order); positions: int32[B, S]."""
        fused = self.fuse_norm(self.fuse(jnp.concatenate(list(features), axis=-1)))
        keys, values = zip(*(layer.keys_values(fused, positions) for layer in self.layers))
        return jnp.stack(keys), jnp.stack(values)

    def __call__(self, block_embeddings: jax.Array, block_positions: jax.Array, context_k: jax.Array,
                 context_v: jax.Array, context_visible: jax.Array) -> jax.Array:
        """Final-normed hidden states [B, N, γ, E] of N blocks per row (logits = target head applied to them).

        block_embeddings: [B, N, γ, E] (target embedding of anchor + mask tokens); block_positions: int32[B, N, γ];
        context_k/v: [L, B, S, KVH, D] (`context`, or a cache of it); context_visible: bool[B, N, S], True where
        the block may see a context slot.
        """
        x = block_embeddings
        for index, layer in enumerate(self.layers):
            x = layer(x, block_positions, context_k[index], context_v[index], context_visible)
        return self.final_norm(x)


class DFlashDrafter(nnx.Module):
    """The trainable part of a DFlash drafter: the backbone and the draft vocabulary it predicts over
    (`draft_vocab.vocab_map`)."""

    def __init__(self, config: DFlashConfig, vocab: int | np.ndarray, *, rngs: nnx.Rngs):
        self.config = config
        self.vocab = vocab_map(vocab)
        self.backbone = DFlashBackbone(config, rngs=rngs)
