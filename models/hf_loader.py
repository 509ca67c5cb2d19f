"""Loading a Hugging Face checkpoint directory: config.json plus *.safetensors shards.

`hf_config` reads config.json alone, so a wrong or unsupported model fails in milliseconds. It accepts both
the transformers-5 layout (`rope_parameters`, possibly one dict per layer type) and the older one
(`rope_theta`, `rope_scaling`, Gemma's `rope_local_base_freq`). `load_hf_checkpoint` then reads the
weights and rearranges them into the layout `params_from_arrays` checks: projections split per head
([H, D, E]), layers stacked, and Gemma's `1 + w` RMSNorm weights folded into effective multipliers.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open

from dspark_jax.models.config import ConfigError, Family, LayerType, ModelConfig, RopeConfig
from dspark_jax.models.params import TransformerParams, expected_shapes, params_from_arrays

MODEL_TYPES: dict[str, Family] = {
    "gemma3": "gemma3", "gemma3_text": "gemma3", "llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3",
}
LAYER_TYPES: tuple[LayerType, ...] = ("full_attention", "sliding_attention")

# transformers' own defaults for keys a config.json may omit. Gemma 3's are complete because multimodal
# checkpoints ship a sparse `text_config` that relies on them.
_SHARED_DEFAULTS = {"rms_norm_eps": 1e-6, "rope_theta": 10_000.0, "tie_word_embeddings": False,
                    "hidden_act": "silu"}
_DEFAULTS: dict[Family, dict[str, Any]] = {
    "gemma3": _SHARED_DEFAULTS | {
        "vocab_size": 262_208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
        "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
        "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 131_072,
        "query_pre_attn_scalar": 256, "sliding_window": 4096, "sliding_window_pattern": 6,
        "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0, "tie_word_embeddings": True,
        "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
    },
    "llama": _SHARED_DEFAULTS | {"max_position_embeddings": 2048, "bos_token_id": 1, "eos_token_id": 2},
    "qwen2": _SHARED_DEFAULTS | {"max_position_embeddings": 32_768, "max_window_layers": 28},
    "qwen3": _SHARED_DEFAULTS | {"max_position_embeddings": 32_768, "max_window_layers": 28, "head_dim": 128},
}
_UNSUPPORTED_SWITCHES = {
    "attention_bias": "a bias on the attention output projection",
    "mlp_bias": "biases in the MLP",
    "use_bidirectional_attention": "bidirectional attention",
}
_ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh"}
_ROPE_TYPES = ("default", "linear", "llama3")

# Tensors outside the language model of a multimodal checkpoint, and buffers old exports saved.
_IGNORED = re.compile(r"^(?:model\.)?(?:vision_tower|multi_modal_projector)\.|\.rotary_emb\.inv_freq$")
# The language model sits under `model.`, `model.language_model.` (transformers 5 multimodal) or
# `language_model.model.` (older multimodal); the head under `lm_head.` or `language_model.lm_head.`.
_PREFIX = re.compile(r"^(?:model\.language_model\.|language_model\.model\.|language_model\.|model\.)")
_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")
_TOP_TENSORS = {"embed_tokens.weight": "embed", "norm.weight": "final_norm", "lm_head.weight": "lm_head"}
_LAYER_TENSORS = {
    "self_attn.q_proj.weight": "q", "self_attn.k_proj.weight": "k", "self_attn.v_proj.weight": "v",
    "self_attn.o_proj.weight": "o", "self_attn.q_proj.bias": "q_bias", "self_attn.k_proj.bias": "k_bias",
    "self_attn.v_proj.bias": "v_bias", "self_attn.q_norm.weight": "q_norm", "self_attn.k_norm.weight": "k_norm",
    "input_layernorm.weight": "attn_norm", "mlp.gate_proj.weight": "gate", "mlp.up_proj.weight": "up",
    "mlp.down_proj.weight": "down",
}
# Gemma 3 norms both ends of each block; Llama/Qwen's post_attention_layernorm is the MLP's input norm.
_SANDWICH_NORMS = {"post_attention_layernorm.weight": "attn_post_norm",
                   "pre_feedforward_layernorm.weight": "mlp_norm",
                   "post_feedforward_layernorm.weight": "mlp_post_norm"}
_PLAIN_NORMS = {"post_attention_layernorm.weight": "mlp_norm"}


def hf_config(path: Path) -> ModelConfig:
    """The architecture described by `path`/config.json (weights are not touched)."""
    config_file = _config_file(Path(path))
    try:
        raw = json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{config_file} is not valid JSON: {error}") from None
    return config_from_hf(raw, config_file)


def config_from_hf(raw: dict[str, Any], config_file: Path | str) -> ModelConfig:
    """The architecture a parsed transformers config.json describes; `config_file` names it in errors."""
    family, cfg = _language_model_config(raw, config_file)
    for key, what in _UNSUPPORTED_SWITCHES.items():
        if cfg.get(key):
            raise ConfigError(f"{config_file}: {key}=true ({what}) is not supported for {family}")

    def need(key: str) -> Any:
        if cfg.get(key) is None:
            raise ConfigError(f"{config_file} lacks {key!r}, which a {family} model needs")
        return cfg[key]

    hidden, heads, num_layers = need("hidden_size"), need("num_attention_heads"), need("num_hidden_layers")
    layer_types, window = _attention_layout(cfg, family, num_layers, config_file)
    activation = cfg.get("hidden_activation") or need("hidden_act")
    if activation not in _ACTIVATIONS:
        raise ConfigError(f"{config_file}: activation {activation!r} is not supported; "
                          f"supported: {', '.join(_ACTIVATIONS)}")
    eos = cfg.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else () if eos is None else (eos,)
    pad = cfg.get("pad_token_id")
    gemma = family == "gemma3"
    return ModelConfig(
        family=family,
        vocab_size=need("vocab_size"),
        hidden_size=hidden,
        num_layers=num_layers,
        num_heads=heads,
        num_kv_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim") or hidden // heads,
        intermediate_size=need("intermediate_size"),
        rms_norm_eps=float(need("rms_norm_eps")),
        activation=_ACTIVATIONS[activation],
        layer_types=layer_types,
        sliding_window=window,
        rope_global=_rope(cfg, "full_attention", family, config_file),
        rope_local=_rope(cfg, "sliding_attention", family, config_file) if gemma else None,
        qkv_bias=family == "qwen2",
        qk_norm=family in ("gemma3", "qwen3"),
        sandwich_norms=gemma,
        embed_scale=math.sqrt(hidden) if gemma else 1.0,
        attention_scale=need("query_pre_attn_scalar") ** -0.5 if gemma else None,
        attn_logit_softcap=cfg.get("attn_logit_softcapping"),
        final_logit_softcap=cfg.get("final_logit_softcapping"),
        tie_embeddings=bool(need("tie_word_embeddings")),
        max_position=need("max_position_embeddings"),
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_ids=eos_ids,
        pad_token_id=pad if pad is not None else (eos_ids[0] if eos_ids else 0),
    )


def load_hf_checkpoint(path: Path, dtype=jnp.float32) -> tuple[ModelConfig, TransformerParams]:
    """Config and weights (cast to `dtype`) of an HF checkpoint directory."""
    path = Path(path)
    config = hf_config(path)
    arrays = _arrange(config, _read_tensors(_shards(path)))
    return config, params_from_arrays(config, arrays, dtype)


def _config_file(path: Path) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"HF checkpoint directory {path} does not exist (or is not a directory)")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} has no config.json; an HF checkpoint directory needs config.json "
                                "next to its *.safetensors weights")
    return config_file


def _language_model_config(raw: dict[str, Any], config_file: Path) -> tuple[Family, dict[str, Any]]:
    """Family and the text model's settings over transformers' defaults (multimodal Gemma 3 nests them)."""
    model_type = raw.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ConfigError(f"{config_file}: model_type {model_type!r} is not supported; "
                          f"supported model types are {', '.join(MODEL_TYPES)}")
    family = MODEL_TYPES[model_type]
    if model_type == "gemma3":  # the wrapper's own token ids and tying apply to its language model
        outer = {k: raw[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings")
                 if k in raw}
        raw = (raw.get("text_config") or {}) | outer
    return family, _DEFAULTS[family] | raw


def _attention_layout(cfg: dict[str, Any], family: Family, num_layers: int,
                      config_file: Path) -> tuple[tuple[LayerType, ...], int | None]:
    """Per-layer attention type and the window; Qwen slides only when `use_sliding_window` is set."""
    gemma = family == "gemma3"
    window = cfg.get("sliding_window") if gemma or cfg.get("use_sliding_window") else None
    if not gemma and not window:
        return ("full_attention",) * num_layers, None
    if cfg.get("layer_types"):
        types = tuple(cfg["layer_types"])
    elif gemma:
        pattern = cfg.get("_sliding_window_pattern") or cfg["sliding_window_pattern"]
        types = tuple("sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(num_layers))
    else:
        types = tuple("sliding_attention" if i >= cfg["max_window_layers"] else "full_attention"
                      for i in range(num_layers))
    unknown = set(types) - set(LAYER_TYPES)
    if unknown:
        raise ConfigError(f"{config_file}: layer types {sorted(unknown)} are not supported; "
                          f"supported: {', '.join(LAYER_TYPES)}")
    return types, window if "sliding_attention" in types else None


def _rope(cfg: dict[str, Any], layer_type: LayerType, family: Family, config_file: Path) -> RopeConfig:
    """RoPE of one layer type, from `rope_parameters` (flat or per layer type) or the legacy keys."""
    params = cfg.get("rope_parameters") or {}
    if params.keys() & set(LAYER_TYPES):
        params = params.get(layer_type) or {}
    gemma_local = family == "gemma3" and layer_type == "sliding_attention"
    legacy_scaling = {} if gemma_local else cfg.get("rope_scaling") or {}
    params = legacy_scaling | params
    theta = float(params.get("rope_theta") or cfg["rope_local_base_freq" if gemma_local else "rope_theta"])
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in _ROPE_TYPES:
        raise ConfigError(f"{config_file}: RoPE type {kind!r} ({layer_type}) is not supported; "
                          f"supported: {', '.join(_ROPE_TYPES)}")
    if params.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ConfigError(f"{config_file}: partial_rotary_factor != 1 is not supported")
    if kind == "default":
        return RopeConfig(theta)
    if kind == "linear":
        return RopeConfig(theta, scaling="linear", factor=float(params["factor"]))
    return RopeConfig(
        theta, scaling="llama3", factor=float(params["factor"]),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position=int(params.get("original_max_position_embeddings",
                                             cfg["max_position_embeddings"])),
    )


def _shards(path: Path) -> list[Path]:
    """The weight files: those the shard index names (all must exist), else every *.safetensors."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = [path / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
        missing = [s.name for s in shards if not s.is_file()]
        if missing:
            raise FileNotFoundError(f"{index} names shards that are missing: {', '.join(missing)}")
        return shards
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"{path} has config.json but no *.safetensors weights")
    return shards


def _read_tensors(shards: list[Path]) -> Iterator[tuple[str, np.ndarray, Path]]:
    """(name, array, file) for every tensor of every shard; a damaged file fails with its path."""
    for shard in shards:
        try:
            with safe_open(shard, framework="numpy") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name), shard
        except SafetensorError as error:
            raise ConfigError(
                f"{shard}: file is truncated or corrupt ({error}); download or save it again"
            ) from None


def _arrange(config: ModelConfig, tensors: Iterator[tuple[str, np.ndarray, Path]]) -> dict[str, np.ndarray]:
    """HF tensors → the flat, stacked arrays `params_from_arrays` wants.

    A tensor whose size does not fit the config keeps its shape rather than failing here, so that
    `params_from_arrays`, the one judge of shapes, reports it under its flat name.
    """
    layer_names = _LAYER_TENSORS | (_SANDWICH_NORMS if config.sandwich_norms else _PLAIN_NORMS)
    top: dict[str, np.ndarray] = {}
    per_layer: dict[str, dict[int, np.ndarray]] = {}
    for hf_name, array, shard in tensors:
        if _IGNORED.search(hf_name):
            continue
        name = _PREFIX.sub("", hf_name)
        layer = _LAYER.match(name)
        if name in _TOP_TENSORS:
            top[_TOP_TENSORS[name]] = array
        elif layer and layer[2] in layer_names:
            per_layer.setdefault(layer_names[layer[2]], {})[int(layer[1])] = array
        else:
            raise ConfigError(f"{shard}: tensor {hf_name!r} is not part of a {config.family} decoder "
                              "as this implementation knows it")
    if config.tie_embeddings:
        top.pop("lm_head", None)  # some exports save the tied head too; transformers ignores it

    shapes = expected_shapes(config)
    arrays = {name: _fit(a, shapes.get(name)) for name, a in top.items()}
    while per_layer:  # popping frees each tensor's per-layer copies once it is stacked
        name, by_layer = per_layer.popitem()
        layers = sorted(by_layer)
        if layers != list(range(config.num_layers)):
            raise ConfigError(f"checkpoint has layers.{name} for layers {layers}, "
                              f"but the config has {config.num_layers} layers")
        shape = shapes.get(f"layers.{name}")
        stacked = [_fit(by_layer[i], shape and shape[1:]) for i in layers]
        if len({a.shape for a in stacked}) > 1:
            raise ConfigError(f"layers.{name} differs in shape between layers: {[a.shape for a in stacked]}")
        arrays[f"layers.{name}"] = np.stack(stacked)
    if config.family == "gemma3":  # Gemma's RMSNorm multiplies by (1 + w)
        arrays = {n: a.astype(np.float32) + 1.0 if n.endswith("norm") else a for n, a in arrays.items()}
    return arrays


def _fit(array: np.ndarray, shape: tuple[int, ...] | None) -> np.ndarray:
    """`array` in `shape` when it holds exactly that many elements, else unchanged."""
    return array.reshape(shape) if shape is not None and array.size == math.prod(shape) else array
