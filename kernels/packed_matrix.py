"""Weight matrices kept in GGUF's stored blocks (or plain float32 rows) for the CPU kernels.

A `PackedMatrix` is the bytes of a [rows, cols] matrix, one row of ggml blocks per output row, plus the
block format and the parameter's logical shape. The model code treats it like the float32 array it stands
for: `kernels.linear` multiplies by it and takes rows of it, through the C++ kernels of `cpu_kernels`.
Rows are whole blocks in every supported format, so slicing rows (a draft vocabulary) stays packed.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from dspark_jax.kernels import cpu_kernels

# name -> (FFI format id, elements per block, bytes per block); ids match packed_linear.cc.
FORMATS: dict[str, tuple[int, int, int]] = {
    "f32": (0, 1, 4),
    "q8_0": (1, 32, 34),
    "q5_0": (2, 32, 22),
    "q4_k": (3, 256, 144),
    "q6_k": (4, 256, 210),
}


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PackedMatrix:
    """data: uint8[rows, row_bytes]; `shape` is the parameter's logical shape, whose trailing dims
    multiply to `cols` (e.g. a [heads, head_dim, embed] query weight packed as [heads * head_dim, embed])."""

    data: jax.Array
    format: str = dataclasses.field(metadata=dict(static=True))
    cols: int = dataclasses.field(metadata=dict(static=True))
    shape: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))

    dtype = jnp.dtype(jnp.float32)  # what it computes in and stands for

    @classmethod
    def pack(cls, data: np.ndarray, format: str, shape: tuple[int, ...]) -> PackedMatrix:
        """From stored bytes uint8[rows, row_bytes] (for 'f32', a float32[rows, cols] array is accepted)."""
        if format not in FORMATS:
            raise ValueError(f"unknown packed format {format!r}; known: {', '.join(FORMATS)}")
        if format == "f32" and data.dtype == np.float32:
            data = np.ascontiguousarray(data).view(np.uint8)
        _, block, block_bytes = FORMATS[format]
        rows, row_bytes = data.shape
        cols = row_bytes // block_bytes * block
        if data.dtype != np.uint8 or row_bytes % block_bytes or rows * cols != math.prod(shape):
            raise ValueError(f"{data.dtype}{list(data.shape)} bytes are not a {format} matrix of shape {shape}")
        return cls(jnp.asarray(data), format, cols, tuple(shape))

    @property
    def rows(self) -> int:
        return self.data.shape[0]

    def reshape(self, *shape: int) -> PackedMatrix:
        """Another logical view of the same rows: the new last dim must be `cols` (an [out, in] matrix).
        One dim may be -1, as for arrays."""
        if shape.count(-1) == 1:
            known = math.prod(n for n in shape if n != -1)
            shape = tuple(math.prod(self.shape) // known if n == -1 else n for n in shape)
        if shape[-1] != self.cols or math.prod(shape) != math.prod(self.shape):
            raise ValueError(f"a packed {self.shape} matrix cannot be viewed as {shape}: rows stay rows")
        return dataclasses.replace(self, shape=tuple(shape))

    def take_rows(self, ids: jax.Array) -> PackedMatrix:
        """Rows `ids` (int[n]), still packed: [n, cols]."""
        return PackedMatrix(jnp.take(self.data, ids, axis=0), self.format, self.cols, (ids.shape[0], self.cols))


def matmul(x: jax.Array, w: PackedMatrix) -> jax.Array:
    """float32[..., rows] = x[..., cols] @ w.T, through the C++ kernel (weights decoded in registers)."""
    reason = cpu_kernels.unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"packed weights need the CPU kernels, which are unavailable: {reason}")
    lead = x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
    out = jax.ffi.ffi_call(cpu_kernels.TARGETS["packed_linear"], jax.ShapeDtypeStruct((flat.shape[0], w.rows),
                           jnp.float32))(flat, w.data, format=np.int64(FORMATS[w.format][0]))
    return out.reshape(*lead, w.rows)


def decode(w: PackedMatrix) -> jax.Array:
    """float32[rows, cols]: the values the stored blocks encode (bit-identical to gguf-py's dequantize)."""
    reason = cpu_kernels.unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"packed weights need the CPU kernels, which are unavailable: {reason}")
    return jax.ffi.ffi_call(cpu_kernels.TARGETS["decode_rows"], jax.ShapeDtypeStruct((w.rows, w.cols), jnp.float32))(
        w.data, format=np.int64(FORMATS[w.format][0]))


def supported_reason(format: str, cols: int) -> str | None:
    """Why a matrix of this format and width cannot be packed (None: it can)."""
    if format not in FORMATS:
        return f"format {format} has no CPU kernel (supported: {', '.join(FORMATS)})"
    if cols % 32 or cols % FORMATS[format][1]:
        return f"width {cols} is not a multiple of 32 and of the {format} block"
    return cpu_kernels.unavailable_reason()
