"""Forward pass of the decoder-only target: pure functions over `TransformerParams` and a `KVCache`.

One body serves every family; `ModelConfig` switches decide biases, QK-norm, sandwich norms, sliding-window
layers and per-layer-type RoPE. Positions, cache write slots and the attention mask are explicit inputs so
the same function runs prefill, single-token decode and tree verification.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dspark_jax.kernels.attention import attention
from dspark_jax.kernels.linear import linear, lookup
from dspark_jax.kernels.soft_cap import soft_cap
from dspark_jax.models.config import ModelConfig
from dspark_jax.models.kv_cache import KVCache, causal_mask
from dspark_jax.models.params import LayerParams, TransformerParams
from dspark_jax.models.rms_norm import rms_norm


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class ForwardOutput:
    hidden: jax.Array  # [B, T, E]: final-normed hidden state (logits = hidden @ head.T)
    captured: jax.Array  # [K, B, T, E]: outputs of the decoder layers named in `capture_layers`
    cache: KVCache


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotate-half RoPE. x: [B, T, N, D]; positions: int32[B, T]; inv_freq: float32[D // 2]."""
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, D/2]
    cos = jnp.concatenate([jnp.cos(angles)] * 2, axis=-1)[:, :, None, :]
    sin = jnp.concatenate([jnp.sin(angles)] * 2, axis=-1)[:, :, None, :]
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos + rotated * sin).astype(x.dtype)


def _activation(config: ModelConfig, x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=True) if config.activation == "gelu_tanh" else jax.nn.silu(x)


def _project_heads(x: jax.Array, w: jax.Array) -> jax.Array:
    """x: [B, T, E] times w: [N, D, E] → [B, T, N, D].

    Computed as one 2-D matrix product over the flattened [N * D, E] weight (a free reshape): XLA:CPU runs
    the head-split einsum several times slower than a plain matrix product.
    """
    heads, head_dim, embed = w.shape
    return linear(x, w.reshape(heads * head_dim, embed)).reshape(*x.shape[:2], heads, head_dim)


def _layer(
    config: ModelConfig,
    layer: LayerParams,
    index: int,
    x: jax.Array,
    k_cache: jax.Array,
    v_cache: jax.Array,
    positions: jax.Array,
    write_slots: jax.Array,
    mask: jax.Array,
    inv_freq: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Decoder layer `index`. x: [B, T, E]; k_cache/v_cache: all layers, [L, B, S, KVH, D]; mask: bool[B, T, S].

    The new keys/values are scattered straight into the full cache (in place under jit), so a step never
    copies a layer's cache slice out and back.
    """
    eps = config.rms_norm_eps
    h = rms_norm(x, layer.attn_norm, eps)
    q, k, v = (_project_heads(h, w) for w in (layer.q, layer.k, layer.v))
    if layer.q_bias is not None:
        q, k, v = q + layer.q_bias, k + layer.k_bias, v + layer.v_bias
    if layer.q_norm is not None:
        q, k = rms_norm(q, layer.q_norm, eps), rms_norm(k, layer.k_norm, eps)
    q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)

    rows = jnp.arange(x.shape[0])[:, None]
    # Slots past the cache end are dropped: callers route padding tokens there so they never land.
    k_cache = k_cache.at[index, rows, write_slots].set(k.astype(k_cache.dtype), mode="drop")
    v_cache = v_cache.at[index, rows, write_slots].set(v.astype(v_cache.dtype), mode="drop")

    attn = attention(q, k_cache[index], v_cache[index], mask, scale=config.scale,
                     logit_softcap=config.attn_logit_softcap)
    h = linear(attn.reshape(*attn.shape[:2], -1), layer.o.reshape(layer.o.shape[0], -1))
    if layer.attn_post_norm is not None:
        h = rms_norm(h, layer.attn_post_norm, eps)
    x = x + h

    h = rms_norm(x, layer.mlp_norm, eps)
    h = linear(_activation(config, linear(h, layer.gate)) * linear(h, layer.up), layer.down)
    if layer.mlp_post_norm is not None:
        h = rms_norm(h, layer.mlp_post_norm, eps)
    return x + h, k_cache, v_cache


def forward(
    params: TransformerParams,
    tokens: jax.Array,
    positions: jax.Array,
    cache: KVCache,
    *,
    config: ModelConfig,
    write_slots: jax.Array | None = None,
    mask: jax.Array | None = None,
    capture_layers: tuple[int, ...] = (),
) -> ForwardOutput:
    """Runs T new tokens per row against the cache and returns the updated cache.

    tokens, positions: int32[B, T]. write_slots: int32[B, T], the cache slot each token's key/value goes
    to (default: its position; a slot >= cache.size drops the write, used for padding). mask: bool[B, T, S]
    over cache slots *after* the write (default: causal by position); sliding-window layers additionally
    restrict it to the last `sliding_window` positions. capture_layers: decoder layer indices whose
    outputs are returned (layer i's output is HF's `hidden_states[i + 1]`).
    """
    write_slots = positions if write_slots is None else write_slots
    cache_positions = cache.positions.at[jnp.arange(tokens.shape[0])[:, None], write_slots].set(
        positions, mode="drop"
    )
    full_mask = causal_mask(cache_positions, positions) if mask is None else mask
    if config.sliding_window:
        in_window = positions[:, :, None] - cache_positions[:, None, :] < config.sliding_window
        local_mask = full_mask & in_window
    else:
        local_mask = full_mask

    global_freq = jnp.asarray(config.rope_global.inverse_frequencies(config.head_dim))
    local_rope = config.rope_local or config.rope_global
    local_freq = jnp.asarray(local_rope.inverse_frequencies(config.head_dim))

    for layer_id in capture_layers:
        if not 0 <= layer_id < config.num_layers:
            raise ValueError(f"capture layer {layer_id} outside 0..{config.num_layers - 1}")

    x = embed(params, tokens, config=config)
    k, v = cache.k, cache.v
    outputs = {}
    for index, (layer, sliding) in enumerate(zip(params.layers, config.sliding_layers)):
        x, k, v = _layer(config, layer, index, x, k, v, positions, write_slots,
                         local_mask if sliding else full_mask, local_freq if sliding else global_freq)
        if index in capture_layers:
            outputs[index] = x
    captured = jnp.stack([outputs[i] for i in capture_layers] or [x])[: len(capture_layers)]
    hidden = rms_norm(x, params.final_norm, config.rms_norm_eps)
    return ForwardOutput(hidden=hidden, captured=captured, cache=KVCache(k=k, v=v, positions=cache_positions))


def embed(params: TransformerParams, tokens: jax.Array, *, config: ModelConfig) -> jax.Array:
    """[..., E] input embeddings of token ids [...] (scaled as the family requires; drafters share them)."""
    x = lookup(params.embed, tokens)
    return (x * jnp.asarray(config.embed_scale, x.dtype)) if config.embed_scale != 1.0 else x


def logits(params: TransformerParams, hidden: jax.Array, *, config: ModelConfig) -> jax.Array:
    """float32[..., V] from final-normed hidden states [..., E]."""
    return soft_cap(linear(hidden, params.head, preferred_element_type=jnp.float32), config.final_logit_softcap)
