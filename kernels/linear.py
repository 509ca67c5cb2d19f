"""Matrix entry points of the model: the CPU kernels for packed weights, XLA's dot for arrays.

Like `attention`, the choice is made while tracing from a static fact, here the weight's type: a
`PackedMatrix` (GGUF blocks or float32 rows, made by the loader for a CPU target) goes to the C++
kernels of `cpu_kernels`, a plain array to `jnp.einsum`. A compiled forward pass holds one of the two.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dspark_jax.kernels import packed_matrix
from dspark_jax.kernels.packed_matrix import PackedMatrix

Weight = jax.Array | PackedMatrix


def linear(x: jax.Array, w: Weight, *, preferred_element_type=None) -> jax.Array:
    """x [..., in] times w [out, in] → [..., out] (float32 for packed weights)."""
    if isinstance(w, PackedMatrix):
        return packed_matrix.matmul(x, w)
    return jnp.einsum("...i,oi->...o", x, w.astype(x.dtype), preferred_element_type=preferred_element_type)


def take_rows(w: Weight, ids: jax.Array) -> Weight:
    """Rows `ids` (int[n]) of w [V, E], in w's own form (a packed matrix stays packed)."""
    return w.take_rows(ids) if isinstance(w, PackedMatrix) else jnp.take(w, ids, axis=0)


def lookup(w: Weight, ids: jax.Array) -> jax.Array:
    """[..., E] values of rows `ids` [...] of w [V, E] (an embedding lookup; packed rows are decoded)."""
    if isinstance(w, PackedMatrix):
        return packed_matrix.decode(w.take_rows(ids.reshape(-1))).reshape(*ids.shape, w.cols)
    return jnp.take(w, ids, axis=0)
