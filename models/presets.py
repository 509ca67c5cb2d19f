"""Architectures of large public targets, for planning (`dspark-jax plan`) without their weights.

Each preset is the language-model part of the model's published transformers config.json (the numbers on
its Hugging Face model card), read by the same parser as a downloaded checkpoint's config, so a preset and
the real directory give one `ModelConfig`.
"""

from __future__ import annotations

from dspark_jax.models.config import ConfigError, ModelConfig
from dspark_jax.models.hf_loader import config_from_hf

_QWEN3 = {"model_type": "qwen3", "head_dim": 128, "hidden_act": "silu", "max_position_embeddings": 40960,
          "rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0, "tie_word_embeddings": False, "vocab_size": 151936,
          "num_key_value_heads": 8, "use_sliding_window": False, "bos_token_id": 151643, "eos_token_id": 151645}

PRESETS: dict[str, dict] = {
    # Qwen/Qwen3-8B
    "qwen3-8b": _QWEN3 | {"hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
                          "num_attention_heads": 32},
    # Qwen/Qwen3-14B
    "qwen3-14b": _QWEN3 | {"hidden_size": 5120, "intermediate_size": 17408, "num_hidden_layers": 40,
                           "num_attention_heads": 40},
    # google/gemma-3-12b-pt (its text_config; the rest are transformers' Gemma 3 defaults)
    "gemma3-12b": {"model_type": "gemma3_text", "hidden_size": 3840, "intermediate_size": 15360,
                   "num_hidden_layers": 48, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256,
                   "sliding_window": 1024, "rope_scaling": {"rope_type": "linear", "factor": 8.0}},
    # meta-llama/Meta-Llama-3-8B
    "llama3-8b": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                  "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_act": "silu",
                  "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500_000.0,
                  "tie_word_embeddings": False, "vocab_size": 128256, "bos_token_id": 128000,
                  "eos_token_id": 128001},
}


def preset_config(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown --target-config {name!r}; presets are {', '.join(PRESETS)}")
    return config_from_hf(PRESETS[name], f"preset {name}")
