"""Tiny random target configs, one per family, for tests that need a model but not a real one."""

from dspark_jax.models.config import ModelConfig, RopeConfig

VOCAB = 256


def tiny_config(family: str) -> ModelConfig:
    common = dict(vocab_size=VOCAB, hidden_size=64, num_layers=3, num_heads=4, num_kv_heads=2, head_dim=16,
                  intermediate_size=128, max_position=512, pad_token_id=0)
    if family == "gemma3":
        return ModelConfig(
            family="gemma3", activation="gelu_tanh", qk_norm=True, sandwich_norms=True, embed_scale=8.0,
            layer_types=("sliding_attention", "sliding_attention", "full_attention"), sliding_window=6,
            rope_local=RopeConfig(10_000.0), rope_global=RopeConfig(1_000_000.0), attention_scale=16**-0.5,
            **common,
        )
    if family == "llama":
        rope = RopeConfig(10_000.0, scaling="llama3", factor=8.0, original_max_position=64)
        return ModelConfig(family="llama", tie_embeddings=False, rope_global=rope, **common)
    if family == "qwen2":
        return ModelConfig(family="qwen2", qkv_bias=True, rope_global=RopeConfig(1_000_000.0), **common)
    if family == "qwen3":
        return ModelConfig(family="qwen3", qk_norm=True, rope_global=RopeConfig(1_000_000.0), **common)
    raise ValueError(family)


FAMILIES = ("gemma3", "llama", "qwen2", "qwen3")
