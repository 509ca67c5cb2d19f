"""What every drafter's config shares: the fused target layers, the attention and MLP sizes, the compute
dtype, and how those are taken from a target. Each kind adds its own fields in its model file (DFlash's
block and mask token, DSpark's Markov rank, EAGLE-3's step count) and says which of them is its draft
depth; `dspark_jax/drafter_kinds.py` maps config types to kinds.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from dspark_jax.models.config import ModelConfig, RopeConfig


def fused_layers(target: ModelConfig, num_features: int) -> tuple[int, ...]:
    """The K target layers a drafter fuses: spread over the depth, never the last (DeepSpec's choice)."""
    # Qwen3-8B (36 layers), K = 5: 1, 9, 17, 25, 33; Gemma 3 270M (18 layers): 1, 4, 8, 11, 15.
    span, last_allowed = max(target.num_layers - 4, 0), max(target.num_layers - 2, 0)
    return tuple(sorted({min(1 + i * span // max(num_features - 1, 1), last_allowed) for i in range(num_features)}))


@dataclasses.dataclass(frozen=True, kw_only=True)
class DrafterConfig:
    target_layers: tuple[int, ...]  # target decoder layers whose outputs are fused (K of them)
    hidden_size: int  # the target's, since embedding and head are shared
    num_heads: int = 4
    num_kv_heads: int = 1
    head_dim: int = 64
    intermediate_size: int = 1024
    rope_theta: float = 10_000.0
    rms_norm_eps: float = 1e-6
    # Per-head RMSNorm of queries and keys before RoPE (Qwen3's attention): the drafters of DeepSpec, vLLM and
    # SGLang have it, so a drafter with it exports to their formats and theirs import exactly (docs/interop.md).
    qk_norm: bool = False
    compute_dtype: str = "float32"  # "bfloat16" computes the drafter in bf16; parameters stay float32

    DEFAULT_FEATURES: ClassVar[int] = 5  # K when the user names none
    DEPTH_FIELD: ClassVar[str]  # the field that bounds the draft depth (γ)

    @classmethod
    def for_target(cls, target: ModelConfig, *, num_features: int | None = None, depth: int | None = None,
                   **overrides: Any):
        """Sizes taken from the target, K = num_features layers (`fused_layers`), `depth` into the kind's own
        depth field; overrides name fields of this config (a field of another kind raises TypeError)."""
        fields = dict(target_layers=fused_layers(target, num_features or cls.DEFAULT_FEATURES),
                      hidden_size=target.hidden_size, num_heads=target.num_heads, num_kv_heads=target.num_kv_heads,
                      head_dim=target.head_dim, intermediate_size=target.intermediate_size,
                      rms_norm_eps=target.rms_norm_eps) | cls.target_fields(target)
        if depth is not None:
            fields[cls.DEPTH_FIELD] = depth
        return cls(**(fields | overrides))

    @classmethod
    def target_fields(cls, target: ModelConfig) -> dict[str, Any]:
        """Fields of this kind that come from the target (DFlash: its mask token)."""
        return {}

    @classmethod
    def from_dict(cls, fields: dict[str, Any]):
        """The config a drafter file stores (`dataclasses.asdict`; JSON turns tuples into lists)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        if self.depth < 1 or not self.target_layers:
            raise ValueError(f"a drafter needs {self.DEPTH_FIELD} >= 1 and at least one target layer")
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"compute_dtype must be float32 or bfloat16, got {self.compute_dtype!r}")

    @property
    def depth(self) -> int:
        """The most tokens one draft may hold."""
        return getattr(self, self.DEPTH_FIELD)

    @property
    def dtype(self) -> jnp.dtype:
        return jnp.dtype(self.compute_dtype)

    @property
    def inv_freq(self) -> jax.Array:
        """RoPE inverse frequencies of the drafter's attention (plain RoPE at `rope_theta`)."""
        return jnp.asarray(RopeConfig(self.rope_theta).inverse_frequencies(self.head_dim))
