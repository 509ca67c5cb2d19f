"""Plans for large targets on paper, compiled for real: memory per device of the training step and of
speculative generation, from abstract shapes (no weights), lowered and compiled ahead of time for a mesh.

Parameters, optimizer state, batches and KV caches are counted from the shardings the rules give them (what
one device holds of each); activations and workspace are XLA's own figure for the compiled program
(`memory_analysis().temp_size_in_bytes`), as are the FLOPs of the verify and decode passes. Nothing is
allocated: the plan of a 14B target runs on a laptop's virtual CPU devices.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from dspark_jax import speculative
from dspark_jax.drafter_kinds import DrafterKind, drafter_proposer
from dspark_jax.generate import GenerationConfig
from dspark_jax.models.config import ModelConfig
from dspark_jax.models.drafter_config import DrafterConfig
from dspark_jax.models.kv_cache import KVCache
from dspark_jax.models.params import TransformerParams, expected_shapes, logical_axes, params_from_arrays
from dspark_jax.models.sharding import Placement, is_logical_axes
from dspark_jax.models.transformer import forward
from dspark_jax.train.drafter_step import TrainConfig, make_optimizer, train_step
from dspark_jax.tree import TreeTemplate


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Bytes one device holds while the step runs."""

    step: str  # "train" or "generate"
    target_parameters: int
    drafter_parameters: int
    optimizer_state: int
    batch: int  # training batch, or the decode state's per-row buffers
    kv_cache: int
    activations: int  # XLA's temporaries of the compiled program
    flops: float  # XLA's cost analysis of the program (one device), where it reports one

    @property
    def total(self) -> int:
        return (self.target_parameters + self.drafter_parameters + self.optimizer_state + self.batch
                + self.kv_cache + self.activations)


def device_bytes(tree) -> int:
    """What one device holds of a pytree of sharded `ShapeDtypeStruct`s or arrays."""
    arrays = [leaf for leaf in jax.tree.leaves(tree) if hasattr(leaf, "sharding")]
    return sum(math.prod(leaf.sharding.shard_shape(leaf.shape)) * np.dtype(leaf.dtype).itemsize
               for leaf in arrays if not jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key))


def _placed(abstract, sharding_of):
    place = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding_of(a)) if hasattr(a, "shape") else a
    return jax.tree.map(place, abstract)


def _by_axes(abstract, axes_tree, placement: Placement):
    """Shapes laid out by the logical axes in the parallel `axes_tree`, as `shard` would place arrays."""
    place = lambda axes, a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=placement.sharding(axes, a.shape))
    return jax.tree.map(place, axes_tree, abstract, is_leaf=is_logical_axes)


def abstract_target(config: ModelConfig, placement: Placement, dtype=jnp.bfloat16) -> TransformerParams:
    """The target's parameters as sharded shapes, placed as `shard_params` would place the real ones."""
    shapes = jax.eval_shape(lambda: params_from_arrays(
        config, {name: jnp.zeros(shape, dtype) for name, shape in expected_shapes(config).items()}, dtype))
    return _by_axes(shapes, logical_axes(shapes), placement)


def _replicated_key(placement: Placement) -> jax.ShapeDtypeStruct:
    key = jax.eval_shape(lambda: jax.random.key(0))
    return jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=NamedSharding(placement.mesh, PartitionSpec()))


def plan_training(target: ModelConfig, kind: DrafterKind, drafter: DrafterConfig, draft_vocab: int,
                  placement: Placement, batch: int, length: int, dtype=jnp.bfloat16,
                  train: TrainConfig = TrainConfig()) -> MemoryPlan:
    """One online training step (target features on the fly, drafter update) compiled for the mesh; `batch`
    a multiple of the data axis (`Placement.check_batch`)."""
    params = abstract_target(target, placement, dtype)
    vocab = np.arange(draft_vocab)

    def build():
        model = kind.new_drafter(drafter, vocab)
        return model, make_optimizer(model, train)

    graphdef, state = nnx.split(nnx.eval_shape(build))
    state = _placed(state, placement.state_sharding)
    tokens = jax.ShapeDtypeStruct((batch, length), jnp.int32, sharding=placement.batch_sharding((batch, length)))
    key = _replicated_key(placement)

    def step(state, params, tokens, loss_mask, key):
        model, optimizer = nnx.merge(graphdef, state)
        metrics = train_step(model, optimizer, target, params, tokens, loss_mask, key, train, placement)
        return nnx.state((model, optimizer)), metrics

    mask = jax.ShapeDtypeStruct(tokens.shape, jnp.bool_, sharding=tokens.sharding)
    compiled = jax.jit(step, donate_argnums=0).lower(state, params, tokens, mask, key).compile()
    model_state, optimizer_state = state[0], state[1]  # the split of the pair (model, optimizer)
    return MemoryPlan("train", device_bytes(params), device_bytes(model_state), device_bytes(optimizer_state),
                      device_bytes((tokens, mask)), 0, compiled.memory_analysis().temp_size_in_bytes,
                      _flops(compiled))


def plan_generation(target: ModelConfig, kind: DrafterKind, drafter: DrafterConfig, draft_vocab: int,
                    placement: Placement, batch: int, length: int, dtype=jnp.bfloat16) -> MemoryPlan:
    """Speculative generation (prefill + the jitted draft → verify loop) of `batch` prompts of `length`
    tokens, `length` new tokens each, compiled for the mesh."""
    params = abstract_target(target, placement, dtype)
    built = {}

    def proposer_params(params):
        built["proposer"], drafted = drafter_proposer(target, kind.new_drafter(drafter, np.arange(draft_vocab)), params)
        return drafted

    drafted = _placed(jax.eval_shape(proposer_params, params), placement.drafter_sharding)
    drafted = dataclasses.replace(drafted, target=params)  # the engine reads the target's own (sharded) weights
    template = TreeTemplate(1, drafter.depth)
    generation = GenerationConfig(max_new_tokens=length, min_prompt_width=length)
    decoder, prompt, lengths = speculative.prepare(target, [[1] * length] * batch, generation, built["proposer"],
                                                   template)
    decoder = dataclasses.replace(decoder, placement=placement)
    prompt = jax.ShapeDtypeStruct(prompt.shape, jnp.int32, sharding=placement.batch_sharding(prompt.shape))
    lengths = jax.ShapeDtypeStruct(lengths.shape, jnp.int32, sharding=placement.batch_sharding(lengths.shape))
    key = _replicated_key(placement)
    compiled = speculative._generate.lower(decoder, params, drafted, prompt, lengths, key).compile()
    state = jax.eval_shape(decoder.prefill, params, drafted, prompt, lengths, key)
    # the rest of the decode state (token buffers, the drafter's own cache) split along its rows
    row_axis = lambda a: next((i for i, size in enumerate(a.shape) if size == batch), 0)
    rows = _placed(dataclasses.replace(state, cache=None), lambda a: placement.batch_sharding(a.shape, row_axis(a)))
    cache = _by_axes(state.cache, KVCache.logical_axes(), placement)
    drafter_bytes = device_bytes(dataclasses.replace(drafted, target=None))
    return MemoryPlan("generate", device_bytes(params), drafter_bytes, 0, device_bytes((rows, prompt, lengths)),
                      device_bytes(cache), compiled.memory_analysis().temp_size_in_bytes, _flops(compiled))


def verify_decode_flops(target: ModelConfig, placement: Placement, batch: int, context: int, nodes: int,
                        dtype=jnp.bfloat16) -> tuple[float, float]:
    """(FLOPs of one verify pass over `nodes` tokens, of one decode pass) per row at `context` cached
    tokens, from XLA's cost analysis of the target's forward pass compiled for the mesh."""
    params = abstract_target(target, placement, dtype)
    cache = jax.eval_shape(lambda: KVCache.empty(target, batch, context + nodes, dtype))
    cache = _by_axes(cache, KVCache.logical_axes(), placement)

    def flops(tokens: int) -> float:
        ids = jax.ShapeDtypeStruct((batch, tokens), jnp.int32, sharding=placement.batch_sharding((batch, tokens)))
        run = jax.jit(lambda p, t, c: forward(p, t, jnp.broadcast_to(context + jnp.arange(tokens), t.shape), c,
                                             config=target).hidden)
        return _flops(run.lower(params, ids, cache).compile())

    return flops(nodes), flops(1)


def _flops(compiled) -> float:
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return float((analysis or {}).get("flops", float("nan")))


def format_plans(plans: list[MemoryPlan]) -> str:
    """One table: a row per kind of bytes, a column per plan, in GB (10^9 bytes) per device."""
    rows = (("target parameters", "target_parameters"), ("drafter parameters", "drafter_parameters"),
            ("optimizer state", "optimizer_state"), ("batch / decode state", "batch"), ("KV cache", "kv_cache"),
            ("activations (XLA temporaries)", "activations"), ("total", "total"))
    lines = [f"{'':32}" + "".join(f"{plan.step:>12}" for plan in plans)]
    for label, field in rows:
        lines.append(f"{label:32}" + "".join(f"{getattr(plan, field) / 1e9:>12.3f}" for plan in plans))
    return "\n".join(lines)
