"""Renaming a drafter's variables to a public layout's tensor names and back, from one table per layout.

A table row is (file tensor name, our variable path, transposed): PyTorch's `nn.Linear.weight` is
[out, in], an NNX kernel [in, out]. Both directions read the same table, so export and import cannot
drift apart.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from dspark_jax.models.config import ConfigError

Rename = tuple[str, str, bool]


def variables(model: nnx.Module) -> dict[str, nnx.Variable]:
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return {"/".join(map(str, path)): variable for path, variable in flat}


def attention_mlp_renames(file_prefix: str, ours: str, qk_norm: bool) -> list[Rename]:
    """One decoder layer's attention, MLP and post-attention norm (Qwen3's and Llama's names)."""
    rows = [(f"{file_prefix}self_attn.{p}_proj.weight", f"{ours}{p}/kernel", True) for p in "qkvo"]
    rows += [(f"{file_prefix}mlp.{p}_proj.weight", f"{ours}{p}/kernel", True) for p in ("gate", "up", "down")]
    rows.append((f"{file_prefix}post_attention_layernorm.weight", f"{ours}mlp_norm/scale", False))
    if qk_norm:
        rows += [(f"{file_prefix}self_attn.{p}_norm.weight", f"{ours}{p}_norm/scale", False) for p in "qk"]
    return rows


def export_renamed(model: nnx.Module, renames: list[Rename]) -> dict[str, np.ndarray]:
    found = variables(model)
    return {name: (lambda a: a.T if transposed else a)(np.asarray(found[path].get_value(), np.float32))
            for name, path, transposed in renames}


def import_renamed(model: nnx.Module, renames: list[Rename], tensors: dict[str, np.ndarray], source: str) -> None:
    found = variables(model)
    missing = [name for name, _, _ in renames if name not in tensors]
    if missing:
        raise ConfigError(f"{source}: tensors missing for the architecture its config describes: {missing[:4]}")
    for name, path, transposed in renames:
        variable = found[path]
        value = tensors[name].T if transposed else tensors[name]
        if value.shape != variable.get_value().shape:
            implied = variable.get_value().shape[::-1] if transposed else variable.get_value().shape
            raise ConfigError(f"{source}: {name} has shape {tensors[name].shape}, its config implies {implied}")
        variable.set_value(jnp.asarray(value, variable.get_value().dtype))
