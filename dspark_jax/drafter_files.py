"""A trained drafter's directory in any format dspark-jax reads: its own (`drafter.json` +
`drafter.safetensors`) or a public one (`config.json` + safetensors: DeepSpec, vLLM, SGLang; see
`interop/formats.py`). Callers ask here and never care which."""

from __future__ import annotations

from pathlib import Path

from flax import nnx

from dspark_jax.drafter_kinds import load_drafter
from dspark_jax.interop import formats
from dspark_jax.interop.hf_directory import is_hf_drafter
from dspark_jax.models.config import ModelConfig
from dspark_jax.models.drafter_checkpoint import CONFIG, read_drafter_config
from dspark_jax.models.params import TransformerParams


def _is_public(directory: Path) -> bool:
    return not (Path(directory) / CONFIG).exists() and is_hf_drafter(directory)


def read_meta(directory: Path) -> dict:
    """kind, config fields ("drafter"), draft_vocab_size and target vocab_size, without loading weights."""
    return formats.read_meta(directory) if _is_public(directory) else read_drafter_config(directory)


def load(directory: Path, target: ModelConfig, target_params: TransformerParams) -> nnx.Module:
    if _is_public(directory):
        return formats.load(directory, target, target_params)
    return load_drafter(directory, target, target_params)
