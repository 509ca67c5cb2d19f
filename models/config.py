"""Architecture description of a decoder-only target model.

One frozen, hashable dataclass describes every supported family (Gemma 3, Llama, Qwen2, Qwen3); the
families differ only in which switches are on. Being hashable, a config is passed to `jax.jit` as a static
argument and never threaded through traced code.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np

Family = Literal["gemma3", "llama", "qwen2", "qwen3"]
LayerType = Literal["full_attention", "sliding_attention"]
Activation = Literal["silu", "gelu_tanh"]

FAMILIES: tuple[str, ...] = ("gemma3", "llama", "qwen2", "qwen3")


class ConfigError(ValueError):
    """A model description that cannot be built; the message names the field and the fix."""


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding of one layer type: base frequency plus optional context-extension scaling."""

    theta: float = 10_000.0
    scaling: Literal["default", "linear", "llama3"] = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192

    def inverse_frequencies(self, head_dim: int) -> np.ndarray:
        """float32[head_dim // 2]: per-pair rotation speed, scaled as the config says."""
        inv_freq = 1.0 / (self.theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
        if self.scaling == "linear":
            inv_freq = inv_freq / self.factor
        elif self.scaling == "llama3":
            low_wavelen = self.original_max_position / self.low_freq_factor
            high_wavelen = self.original_max_position / self.high_freq_factor
            wavelen = 2 * math.pi / inv_freq
            smooth = (self.original_max_position / wavelen - self.low_freq_factor) / (
                self.high_freq_factor - self.low_freq_factor
            )
            smoothed = (1 - smooth) * inv_freq / self.factor + smooth * inv_freq
            inv_freq = np.where(
                wavelen > low_wavelen,
                inv_freq / self.factor,
                np.where(wavelen < high_wavelen, inv_freq, smoothed),
            )
        return inv_freq.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shapes and switches of a decoder-only transformer.

    Norm weights are stored as the effective multiplier (Gemma's `1 + w` is folded in by the loaders), so
    the forward pass has one RMSNorm for every family.
    """

    family: Family
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float = 1e-6
    activation: Activation = "silu"
    layer_types: tuple[LayerType, ...] = ()
    sliding_window: int | None = None
    rope_global: RopeConfig = RopeConfig()
    rope_local: RopeConfig | None = None
    qkv_bias: bool = False
    qk_norm: bool = False
    sandwich_norms: bool = False
    embed_scale: float = 1.0
    attention_scale: float | None = None
    attn_logit_softcap: float | None = None
    final_logit_softcap: float | None = None
    tie_embeddings: bool = True
    max_position: int = 8192
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int = 0

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ConfigError(
                f"unknown architecture {self.family!r}; supported families are {', '.join(FAMILIES)}"
            )
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                     "intermediate_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        if not self.layer_types:
            object.__setattr__(self, "layer_types", ("full_attention",) * self.num_layers)
        if len(self.layer_types) != self.num_layers:
            raise ConfigError(
                f"layer_types has {len(self.layer_types)} entries but num_layers is {self.num_layers}"
            )
        if "sliding_attention" in self.layer_types and not self.sliding_window:
            raise ConfigError("sliding_attention layers need a positive sliding_window")

    @property
    def scale(self) -> float:
        """Multiplier applied to q·k before the softmax."""
        return self.attention_scale if self.attention_scale is not None else self.head_dim**-0.5

    @property
    def sliding_layers(self) -> np.ndarray:
        """bool[num_layers]: which layers attend through the sliding window (and use the local RoPE)."""
        return np.array([t == "sliding_attention" for t in self.layer_types], dtype=bool)

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)
