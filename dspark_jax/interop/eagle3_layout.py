"""EAGLE-3 in the public layouts, both directions: SpecForge's `LlamaForCausalLMEagle3` (what vLLM's
vllm/model_executor/models/llama_eagle3.py and SGLang's llama_eagle3.py load) and DeepSpec's
`Qwen3Eagle3Model` (deepspec/modeling/eagle3/qwen3/{config,modeling}.py).

Both are ours: one decoder layer whose attention reads [input_layernorm(embedding) ; hidden_norm(h)],
residual h, a post-attention norm and MLP, `norm` for the logits, and the residual stream fed back as the
next step's h. They differ in what ours toggles: the Llama layer has no q/k norm, the Qwen3 one always has
it. vLLM counts a target layer from its input (`eagle_aux_hidden_state_layer_ids` = our layer + 1) and its
Llama layer fuses exactly three; DeepSpec's `target_layer_ids` are ours.
"""

from __future__ import annotations

import numpy as np

from dspark_jax.interop.block_drafter_layout import qwen3_fields
from dspark_jax.interop.tensor_names import Rename, attention_mlp_renames, export_renamed, import_renamed
from dspark_jax.models.config import ConfigError, ModelConfig
from dspark_jax.models.eagle3 import Eagle3Config

LLAMA_ARCHITECTURE = "LlamaForCausalLMEagle3"
QWEN3_ARCHITECTURE = "Qwen3Eagle3Model"
ARCHITECTURES = (LLAMA_ARCHITECTURE, QWEN3_ARCHITECTURE)
LLAMA_FEATURES = 3  # vLLM's Llama EAGLE-3 `fc` takes 3 × hidden_size


def renames(config: Eagle3Config, architecture: str) -> list[Rename]:
    layer = "midlayer." if architecture == LLAMA_ARCHITECTURE else "layers.0."
    return [("fc.weight", "fuse/kernel", True), ("norm.weight", "final_norm/scale", False),
            (f"{layer}input_layernorm.weight", "embed_norm/scale", False),
            (f"{layer}hidden_norm.weight", "hidden_norm/scale", False),
            *attention_mlp_renames(layer, "", config.qk_norm)]


def export_config(config: Eagle3Config, target: ModelConfig, architecture: str, draft_size: int) -> dict:
    # ttt_length: the steps it was trained to draft (DeepSpec's and SpecForge's training field)
    fields = qwen3_fields(config, target, 1) | {"architectures": [architecture], "draft_vocab_size": draft_size,
                                                "ttt_length": config.steps}
    if architecture == LLAMA_ARCHITECTURE:
        aux = [i + 1 for i in config.target_layers]
        return fields | {"model_type": "llama", "eagle_aux_hidden_state_layer_ids": aux,
                         "eagle_config": {"eagle_aux_hidden_state_layer_ids": aux, "use_aux_hidden_state": True}}
    return fields | {"target_layer_ids": list(config.target_layers), "draft_num_hidden_layers": 1,
                     "step_loss_decay": 1.0}


def export_tensors(model, architecture: str) -> dict[str, np.ndarray]:
    return export_renamed(model, renames(model.config, architecture))


def read_fields(hf: dict, architecture: str, target_layers: int, source: str) -> dict:
    """Our EAGLE-3 config fields from its config.json; target_layers: the target's layer count (vLLM's
    default aux layers depend on it)."""
    problems = []
    if hf.get("num_hidden_layers", 1) != 1:
        problems.append(f"{hf['num_hidden_layers']} decoder layers (ours has one)")
    if hf.get("norm_before_residual"):
        problems.append("norm_before_residual (its residual is the normed hidden state)")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        problems.append("biases")
    if hf.get("hidden_act", "silu") != "silu":
        problems.append(f"activation {hf['hidden_act']!r}")
    if (hf.get("rope_scaling") or {}).get("rope_type", "default") != "default":
        problems.append("scaled RoPE")
    if problems:
        raise ConfigError(f"{source}: this EAGLE-3 drafter has {', '.join(problems)}, which dspark-jax's cannot "
                          "express")
    if architecture == LLAMA_ARCHITECTURE:
        aux = hf.get("eagle_aux_hidden_state_layer_ids") or (hf.get("eagle_config") or {}).get(
            "eagle_aux_hidden_state_layer_ids")
        if not aux and not target_layers:
            raise ConfigError(f"{source}: names neither eagle_aux_hidden_state_layer_ids nor num_target_layers, so "
                              "the target layers it fuses are unknown")
        aux = aux or [2, target_layers // 2, target_layers - 3]  # vLLM's default for Llama-style targets
        layers = tuple(int(i) - 1 for i in aux)
    else:
        layers = tuple(int(i) for i in hf["target_layer_ids"])
    rope = hf.get("rope_theta") or (hf.get("rope_parameters") or {}).get("rope_theta") or 10_000.0
    return dict(target_layers=layers, hidden_size=hf["hidden_size"], num_heads=hf["num_attention_heads"],
                num_kv_heads=hf.get("num_key_value_heads", hf["num_attention_heads"]),
                head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
                intermediate_size=hf["intermediate_size"], rope_theta=float(rope),
                rms_norm_eps=hf.get("rms_norm_eps", 1e-6), qk_norm=architecture == QWEN3_ARCHITECTURE,
                steps=int(hf.get("ttt_length") or Eagle3Config.steps))


def import_tensors(model, tensors: dict[str, np.ndarray], architecture: str, source: str) -> None:
    if any(name.startswith("layers.1.") for name in tensors):
        raise ConfigError(f"{source}: more than one decoder layer's tensors; dspark-jax's EAGLE-3 has one")
    import_renamed(model, renames(model.config, architecture), tensors, source)
