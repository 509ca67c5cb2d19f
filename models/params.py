"""Parameter pytrees of the decoder-only target, with the logical axis names of every array.

Each decoder layer is its own `LayerParams` (a tuple of them, not arrays stacked along a layer axis):
XLA:CPU copies a layer's weights out of a stacked array before every matrix product, which made a Gemma 3
270M decode step 25 % slower. Loaders still hand over stacked arrays ('layers.q' [L, H, D, E]);
`params_from_arrays` splits them. Linear weights are stored [out, in] and contracted on their
last axis, the layout in which XLA:CPU runs the large vocabulary projection fastest (and GGUF's own).
Optional pieces (biases, QK-norm, Gemma's post-norms, an untied head) are `None` when a family lacks them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from dspark_jax.kernels.packed_matrix import PackedMatrix, supported_reason
from dspark_jax.models.config import ConfigError, ModelConfig

Packed = PackedMatrix | tuple[PackedMatrix, ...]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class LayerParams:
    """One decoder layer."""

    attn_norm: jax.Array  # [E]
    # Matrices are arrays or, on the CPU kernels' path, `PackedMatrix`es of the same logical shape.
    q: jax.Array  # [H, D, E]
    k: jax.Array  # [KVH, D, E]
    v: jax.Array  # [KVH, D, E]
    o: jax.Array  # [E, H, D]
    mlp_norm: jax.Array  # [E]
    gate: jax.Array  # [F, E]
    up: jax.Array  # [F, E]
    down: jax.Array  # [E, F]
    q_bias: jax.Array | None = None  # [H, D]
    k_bias: jax.Array | None = None  # [KVH, D]
    v_bias: jax.Array | None = None  # [KVH, D]
    q_norm: jax.Array | None = None  # [D]
    k_norm: jax.Array | None = None  # [D]
    attn_post_norm: jax.Array | None = None  # [E]
    mlp_post_norm: jax.Array | None = None  # [E]

    AXES: ClassVar[dict[str, tuple[str, ...]]] = {
        "attn_norm": ("embed",),
        "q": ("heads", "head_dim", "embed"),
        "k": ("kv_heads", "head_dim", "embed"),
        "v": ("kv_heads", "head_dim", "embed"),
        "o": ("embed", "heads", "head_dim"),
        "mlp_norm": ("embed",),
        "gate": ("ffn", "embed"),
        "up": ("ffn", "embed"),
        "down": ("embed", "ffn"),
        "q_bias": ("heads", "head_dim"),
        "k_bias": ("kv_heads", "head_dim"),
        "v_bias": ("kv_heads", "head_dim"),
        "q_norm": ("head_dim",),
        "k_norm": ("head_dim",),
        "attn_post_norm": ("embed",),
        "mlp_post_norm": ("embed",),
    }


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TransformerParams:
    embed: jax.Array  # [V, E]; also the output head when embeddings are tied
    layers: tuple[LayerParams, ...]
    final_norm: jax.Array  # [E]
    lm_head: jax.Array | None = None  # [V, E] when the head is untied

    AXES: ClassVar[dict[str, tuple[str, ...]]] = {
        "embed": ("vocab", "embed"),
        "final_norm": ("embed",),
        "lm_head": ("vocab", "embed"),
    }

    @property
    def head(self) -> jax.Array:
        """[V, E]: the matrix that turns final hidden states into logits."""
        return self.embed if self.lm_head is None else self.lm_head


def logical_axes(params: TransformerParams) -> TransformerParams:
    """A pytree shaped like `params` whose leaves are the logical axis names of each array."""
    layers = tuple(
        LayerParams(**{f.name: (None if getattr(layer, f.name) is None else LayerParams.AXES[f.name])
                       for f in dataclasses.fields(LayerParams)})
        for layer in params.layers
    )
    return TransformerParams(
        embed=TransformerParams.AXES["embed"],
        layers=layers,
        final_norm=TransformerParams.AXES["final_norm"],
        lm_head=None if params.lm_head is None else TransformerParams.AXES["lm_head"],
    )


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Shape of every parameter the config implies, keyed like the dataclass fields; layer parameters
    stacked over layers ('layers.q': [L, H, D, E]), the form loaders produce."""
    c = config
    n, h, kv, d, e, f = c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim, c.hidden_size, c.intermediate_size
    shapes = {
        "embed": (c.vocab_size, e),
        "final_norm": (e,),
        "layers.attn_norm": (n, e),
        "layers.q": (n, h, d, e),
        "layers.k": (n, kv, d, e),
        "layers.v": (n, kv, d, e),
        "layers.o": (n, e, h, d),
        "layers.mlp_norm": (n, e),
        "layers.gate": (n, f, e),
        "layers.up": (n, f, e),
        "layers.down": (n, e, f),
    }
    if not c.tie_embeddings:
        shapes["lm_head"] = (c.vocab_size, e)
    if c.qkv_bias:
        shapes |= {"layers.q_bias": (n, h, d), "layers.k_bias": (n, kv, d), "layers.v_bias": (n, kv, d)}
    if c.qk_norm:
        shapes |= {"layers.q_norm": (n, d), "layers.k_norm": (n, d)}
    if c.sandwich_norms:
        shapes |= {"layers.attn_post_norm": (n, e), "layers.mlp_post_norm": (n, e)}
    return shapes


def params_from_arrays(config: ModelConfig, arrays: dict[str, np.ndarray | Packed], dtype=jnp.float32
                       ) -> TransformerParams:
    """Builds the pytree from flat arrays keyed as `expected_shapes` names them, checking every shape.

    Loaders produce the flat dict; this is the single place that decides what a complete, consistent set
    of weights for `config` is, so a truncated or mismatched checkpoint fails here with the offending name.
    A matrix may come packed for the CPU kernels (a `PackedMatrix`, or for a stacked key a tuple of one
    per layer); packed matrices keep their stored form, everything else is cast to `dtype`.
    """

    want = expected_shapes(config)
    missing = sorted(set(want) - set(arrays))
    if missing:
        raise ConfigError(f"checkpoint lacks {len(missing)} tensors the config needs, e.g. {missing[:4]}")
    unexpected = sorted(set(arrays) - set(want))
    if unexpected:
        raise ConfigError(f"checkpoint has tensors the config does not use, e.g. {unexpected[:4]}")
    for name, shape in want.items():
        if _shape(arrays[name]) != shape:
            raise ConfigError(
                f"tensor {name} has shape {_shape(arrays[name])} but the config implies {shape}; "
                "the checkpoint does not belong to this config"
            )

    def cast(a):
        return a if isinstance(a, PackedMatrix) else jnp.asarray(a, dtype=dtype)

    flat = {name: cast(a) for name, a in arrays.items() if not name.startswith("layers.")}
    stacked = {name.split(".", 1)[1]: a for name, a in arrays.items() if name.startswith("layers.")}
    layers = tuple(LayerParams(**{name: cast(a[i]) for name, a in stacked.items()})
                   for i in range(config.num_layers))
    return TransformerParams(
        embed=flat["embed"], layers=layers, final_norm=flat["final_norm"], lm_head=flat.get("lm_head")
    )


def _shape(a: np.ndarray | Packed) -> tuple[int, ...]:
    if isinstance(a, tuple):  # one packed matrix per layer
        return (len(a), *a[0].shape) if all(m.shape == a[0].shape for m in a) else (len(a), -1)
    return tuple(a.shape)


def matrix_columns(axes: tuple[str, ...], shape: tuple[int, ...]) -> int | None:
    """The input width of a linear weight of these logical axes ([out, in] layout: a weight that produces
    the embedding reads all its other axes, the rest read their last), None for vectors."""
    if len(axes) < 2:
        return None
    return math.prod(shape[1:]) if axes[0] == "embed" else shape[-1]


def pack_float32(params: TransformerParams) -> TransformerParams:
    """The same model with every float32 matrix the CPU kernels can take as packed float32 rows."""

    def pack(a, axes):
        cols = None if a is None or isinstance(a, PackedMatrix) else matrix_columns(axes, a.shape)
        if cols is None or a.dtype != jnp.float32 or supported_reason("f32", cols) is not None:
            return a
        return PackedMatrix.pack(np.asarray(a).reshape(-1, cols), "f32", a.shape)

    layers = tuple(dataclasses.replace(layer, **{f.name: pack(getattr(layer, f.name), LayerParams.AXES[f.name])
                                                 for f in dataclasses.fields(LayerParams)})
                   for layer in params.layers)
    axes = TransformerParams.AXES
    return TransformerParams(embed=pack(params.embed, axes["embed"]), layers=layers, final_norm=params.final_norm,
                             lm_head=pack(params.lm_head, axes["lm_head"]))


def init_params(config: ModelConfig, key: jax.Array, dtype=jnp.float32, std: float = 0.02) -> TransformerParams:
    """Random weights for tests and drafter initialisation: normal(0, std) matrices, norms near one."""
    arrays = {}
    names = sorted(expected_shapes(config).items())
    for (name, shape), k in zip(names, jax.random.split(key, len(names))):
        if name.endswith("norm"):
            arrays[name] = 1.0 + 0.1 * jax.random.normal(k, shape)
        else:
            arrays[name] = std * jax.random.normal(k, shape)
    return params_from_arrays(config, {n: np.asarray(a) for n, a in arrays.items()}, dtype)
