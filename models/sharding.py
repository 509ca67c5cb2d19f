"""Logical-axis sharding: one mapping from logical axis names to mesh axes places every array.

Parameters name their axes (`LayerParams.AXES`); `ShardingRules` says which mesh axis, if any, each
logical axis is split over. Only the target's parameters are placed; the KV cache and activations follow
them through XLA's sharding propagation. A dimension that the mesh axis does not divide is
replicated instead (Gemma 3 270M has a single KV head, say), so the same rules serve any model and mesh.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dspark_jax.models import params as params_lib


@dataclasses.dataclass(frozen=True)
class ShardingRules:
    """Mesh axis per logical axis of the parameters; None replicates. Default: tensor-parallel over 'model'."""

    vocab: str | None = "model"
    heads: str | None = "model"
    kv_heads: str | None = "model"
    ffn: str | None = "model"
    embed: str | None = None
    head_dim: str | None = None

    def spec(self, axes: tuple[str, ...], shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
        names = []
        for logical, size in zip(axes, shape):
            mesh_axis = getattr(self, logical)
            fits = mesh_axis is not None and size % mesh.shape[mesh_axis] == 0 and mesh_axis not in names
            names.append(mesh_axis if fits else None)
        return PartitionSpec(*names)


def make_mesh(data: int = 1, model: int | None = None) -> Mesh:
    """A ('data', 'model') mesh over the local devices; `model` defaults to all devices left over."""
    devices = jax.devices()
    model = len(devices) // data if model is None else model
    if data * model > len(devices) or data < 1 or model < 1:
        raise ValueError(
            f"a {data}x{model} mesh needs {data * model} devices but {len(devices)} are available; on CPU, "
            "set XLA_FLAGS=--xla_force_host_platform_device_count=N to get N devices"
        )
    return Mesh(np.asarray(devices[: data * model]).reshape(data, model), ("data", "model"))


def shard(tree, axes_tree, mesh: Mesh, rules: ShardingRules = ShardingRules()):
    """Places every array of `tree` according to the logical axes in the parallel `axes_tree`."""

    def place(axes, array):
        return jax.device_put(array, NamedSharding(mesh, rules.spec(axes, array.shape, mesh)))

    is_axes = lambda x: isinstance(x, tuple) and all(isinstance(name, str) for name in x)
    return jax.tree.map(place, axes_tree, tree, is_leaf=is_axes)


def shard_params(params: params_lib.TransformerParams, mesh: Mesh,
                 rules: ShardingRules = ShardingRules()) -> params_lib.TransformerParams:
    return shard(params, params_lib.logical_axes(params), mesh, rules)
