"""Logical-axis sharding: one mapping from logical axis names to mesh axes places every array.

Arrays name their axes (`LayerParams.AXES`, `KVCache.AXES`, a batch's leading "batch"); `ShardingRules`
says which mesh axis, if any, each logical axis is split over, and a logical axis the rules do not name is
replicated. A dimension that the mesh axis does not divide is replicated instead (Gemma 3 270M has a single
KV head, say), so the same rules serve any model and mesh. A `Placement` (mesh + rules, hashable) is what
jitted code takes as a static argument to constrain its outputs to the same layout as its inputs.

Drafters are trained data-parallel: their parameters and optimizer state are replicated, or, with
`fsdp` set, each array is split along its largest dimension that the FSDP axis divides (ZeRO-3 style;
XLA gathers it where a layer needs it). Their arrays carry no logical names: FSDP needs none.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dspark_jax.models import params as params_lib
from dspark_jax.models.kv_cache import KVCache

Axes = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ShardingRules:
    """Mesh axis per logical axis; None replicates. Default: the target tensor-parallel over 'model', batches
    (training batches, KV caches, decode state) over 'data', drafters replicated."""

    vocab: str | None = "model"
    heads: str | None = "model"
    kv_heads: str | None = "model"
    ffn: str | None = "model"
    embed: str | None = None  # "data": the target's parameters FSDP over the data axis as well
    head_dim: str | None = None
    batch: str | None = "data"
    fsdp: str | None = None  # training: the axis drafter parameters and optimizer state are split over
    drafter: str | None = "model"  # decoding: the axis a drafter's matrices are split over, as the target's

    def spec(self, axes: Axes, shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
        names = []
        for logical, size in zip(axes, shape):
            mesh_axis = getattr(self, logical, None)
            fits = mesh_axis is not None and size % mesh.shape[mesh_axis] == 0 and mesh_axis not in names
            names.append(mesh_axis if fits else None)
        return PartitionSpec(*names)

    def largest_dimension_spec(self, shape: tuple[int, ...], mesh: Mesh, mesh_axis: str | None) -> PartitionSpec:
        """The largest dimension of a matrix (or larger) that `mesh_axis` divides goes over it; vectors and
        scalars are replicated. How arrays without logical names (a drafter's) are split."""
        if mesh_axis is None or len(shape) < 2:
            return PartitionSpec()
        divisible = [i for i, size in enumerate(shape) if size % mesh.shape[mesh_axis] == 0]
        if not divisible:
            return PartitionSpec()
        split = max(divisible, key=lambda i: shape[i])
        return PartitionSpec(*(mesh_axis if i == split else None for i in range(len(shape))))


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where arrays live: a mesh and the rules that map logical axes onto it."""

    mesh: Mesh
    rules: ShardingRules = ShardingRules()

    def sharding(self, axes: Axes, shape: tuple[int, ...]) -> NamedSharding:
        return NamedSharding(self.mesh, self.rules.spec(axes, shape, self.mesh))

    def batch_sharding(self, shape: tuple[int, ...], axis: int = 0) -> NamedSharding:
        """Rows along dimension `axis` split over the batch's mesh axis, the rest replicated."""
        axes = tuple("batch" if i == axis else "replicated" for i in range(len(shape)))
        return self.sharding(axes, shape)

    @property
    def data_ways(self) -> int:
        return 1 if self.rules.batch is None else self.mesh.shape[self.rules.batch]

    def check_batch(self, rows: int, what: str = "--batch-size") -> None:
        if rows % self.data_ways:
            raise ValueError(f"{what} {rows} does not split over the mesh's {self.data_ways} data rows: "
                             f"pick a multiple of {self.data_ways}")

    def put_batch(self, array, axis: int = 0) -> jax.Array:
        """A batch every process holds whole, split over the data axis."""
        return put(array, self.batch_sharding(np.shape(array), axis))

    def local_rows(self, rows: int) -> slice:
        """The rows of a batch of `rows` that this process's devices hold (all of them in one process): what
        it reads of the data, for `put_local_batch`."""
        indices = self.batch_sharding((rows,)).addressable_devices_indices_map((rows,)).values()
        starts = [index[0].indices(rows) for index in indices]
        return slice(min(start for start, _, _ in starts), max(stop for _, stop, _ in starts))

    def put_local_batch(self, local, rows: int, axis: int = 0) -> jax.Array:
        """The global batch of `rows` rows from this process's `local_rows` of it (along `axis`)."""
        shape = list(np.shape(local))
        shape[axis] = rows
        return jax.make_array_from_process_local_data(self.batch_sharding(tuple(shape), axis), np.asarray(local),
                                                      tuple(shape))

    def constrain_batch(self, array: jax.Array, axis: int = 0) -> jax.Array:
        """Inside jit: the array's rows stay split over the data axis (a hint where XLA's propagation
        would gather them)."""
        return jax.lax.with_sharding_constraint(array, self.batch_sharding(array.shape, axis))

    def state_sharding(self, array: jax.Array) -> NamedSharding:
        """Training: a drafter's or optimizer's array, FSDP over `rules.fsdp` (or replicated)."""
        return NamedSharding(self.mesh, self.rules.largest_dimension_spec(array.shape, self.mesh, self.rules.fsdp))

    def drafter_sharding(self, array: jax.Array) -> NamedSharding:
        """Decoding: a drafter's array split over `rules.drafter`, beside the tensor-parallel target."""
        return NamedSharding(self.mesh, self.rules.largest_dimension_spec(array.shape, self.mesh, self.rules.drafter))


def make_mesh(data: int = 1, model: int | None = None, devices: list | None = None) -> Mesh:
    """A ('data', 'model') mesh over `devices` (default: the default backend's, of every process); `model`
    defaults to all devices left over."""
    devices = jax.devices() if devices is None else devices
    model = len(devices) // data if model is None else model
    if data * model > len(devices) or data < 1 or model < 1:
        raise ValueError(
            f"a {data}x{model} mesh needs {data * model} devices but {len(devices)} are available; on CPU, "
            "set XLA_FLAGS=--xla_force_host_platform_device_count=N to get N devices"
        )
    return Mesh(np.asarray(devices[: data * model]).reshape(data, model), ("data", "model"))


def put(array, sharding: NamedSharding) -> jax.Array:
    """`array` (the same value in every process) placed by `sharding`; across processes each one transfers
    only the pieces its own devices hold."""
    if jax.process_count() == 1:
        return jax.device_put(array, sharding)
    host = np.asarray(array)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def is_logical_axes(node) -> bool:
    """A leaf of an axes tree: a tuple of logical axis names."""
    return isinstance(node, tuple) and all(isinstance(name, str) for name in node)


def shard(tree, axes_tree, mesh: Mesh, rules: ShardingRules = ShardingRules()):
    """Places every array of `tree` according to the logical axes in the parallel `axes_tree`."""
    placement = Placement(mesh, rules)

    def place(axes, array):
        return put(array, placement.sharding(axes, array.shape))

    return jax.tree.map(place, axes_tree, tree, is_leaf=is_logical_axes)


def constrain(tree, axes_tree, placement: Placement):
    """Inside jit: every array of `tree` laid out by the logical axes in the parallel `axes_tree`."""
    return jax.tree.map(lambda axes, a: jax.lax.with_sharding_constraint(a, placement.sharding(axes, a.shape)),
                        axes_tree, tree, is_leaf=is_logical_axes)


def placement_of(params: params_lib.TransformerParams) -> Placement | None:
    """The placement of a target that `shard_params` put on a mesh of more than one device, else None."""
    sharding = getattr(jax.tree.leaves(params)[0], "sharding", None)
    if isinstance(sharding, NamedSharding) and sharding.mesh.size > 1:
        return Placement(sharding.mesh)
    return None


def constrain_rows(state, placement: Placement | None):
    """Inside jit: a decode state (a dataclass of per-row arrays and KV caches) laid out with its rows over
    the data axis and its caches by `KVCache.logical_axes`; other fields (a proposer's state) are left to
    XLA. The loops call it on what they carry, so every step keeps one layout."""
    if placement is None:
        return state
    rows = state.cache.batch
    laid_out = {}
    for field in dataclasses.fields(state):
        value = getattr(state, field.name)
        if isinstance(value, KVCache):
            laid_out[field.name] = constrain(value, KVCache.logical_axes(), placement)
        elif isinstance(value, jax.Array) and value.ndim and value.shape[0] == rows:
            laid_out[field.name] = placement.constrain_batch(value)
    return dataclasses.replace(state, **laid_out)


def shard_params(params: params_lib.TransformerParams, mesh: Mesh,
                 rules: ShardingRules = ShardingRules()) -> params_lib.TransformerParams:
    return shard(params, params_lib.logical_axes(params), mesh, rules)


def place_state(*modules: nnx.Module, placement: Placement) -> None:
    """Moves every array of the modules (a drafter, its optimizer) onto the mesh: FSDP or replicated."""
    for module in modules:
        state = nnx.state(module)
        nnx.update(module, jax.tree.map(lambda a: put(a, placement.state_sharding(a)), state))


def place_proposer(proposer_params, placement: Placement):
    """A proposer's parameters on the target's mesh: arrays already on it (the target's own weights, which
    proposers read) stay, the drafter's are split by `Placement.drafter_sharding`."""
    def place(array):
        sharding = getattr(array, "sharding", None)
        if isinstance(sharding, NamedSharding) and sharding.mesh == placement.mesh:
            return array
        return put(array, placement.drafter_sharding(array))

    return jax.tree.map(place, proposer_params)


def constrain_state(*modules: nnx.Module, placement: Placement) -> None:
    """Inside jit: the modules' arrays keep the layout `place_state` gave them, so a step's outputs match its
    inputs and the next step reuses the compiled program."""
    for module in modules:
        state = nnx.state(module)
        nnx.update(module, jax.tree.map(
            lambda a: jax.lax.with_sharding_constraint(a, placement.state_sharding(a)), state))
