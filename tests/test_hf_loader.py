"""HF checkpoint loading: config.json parsing per family and format, weight layout, and clear failures.

Forward-pass agreement with transformers lives in test_transformer.py (golden logits); these tests only
read files, so they run in seconds.
"""

import json
import math
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from tiny_models import FAMILIES, tiny_config

from dspark_jax.models.config import ConfigError, RopeConfig
from dspark_jax.models.hf_loader import hf_config, load_hf_checkpoint

TINY_DATA = Path(__file__).parent / "data" / "tiny"

# As google/gemma-3-270m ships it (transformers 4.x layout: rope_theta, rope_local_base_freq).
GEMMA3_270M = {
    "_sliding_window_pattern": 6, "architectures": ["Gemma3ForCausalLM"], "attention_bias": False,
    "attn_logit_softcapping": None, "bos_token_id": 2, "eos_token_id": 1, "final_logit_softcapping": None,
    "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 640, "intermediate_size": 2048,
    "max_position_embeddings": 32768, "model_type": "gemma3_text", "num_attention_heads": 4,
    "num_hidden_layers": 18, "num_key_value_heads": 1, "pad_token_id": 0, "query_pre_attn_scalar": 256,
    "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000.0, "rope_scaling": None, "rope_theta": 1000000.0,
    "sliding_window": 512, "use_bidirectional_attention": False, "vocab_size": 262144,
}
# As Llama 3.2 1B ships it: legacy rope_theta + rope_scaling, an eos list, head_dim given.
LLAMA_3_2 = {
    "model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256,
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "hidden_act": "silu", "rope_theta": 500000.0,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "tie_word_embeddings": True,
    "attention_bias": False, "mlp_bias": False,
}
# As Qwen2.5 0.5B ships it: a sliding window that use_sliding_window switches off, no pad id.
QWEN2_5 = {
    "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
    "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936, "max_position_embeddings": 32768,
    "max_window_layers": 21, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
    "use_sliding_window": False, "tie_word_embeddings": True, "bos_token_id": 151643, "eos_token_id": 151643,
    "hidden_act": "silu",
}


def write_config(directory: Path, raw: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(raw))
    return directory


def copy_tiny(family: str, directory: Path, config_changes: dict | None = None,
              rename=lambda name: name, extra: dict | None = None) -> Path:
    """The tiny checkpoint, optionally with config.json edited and tensors renamed or added."""
    source = TINY_DATA / family
    raw = json.loads((source / "config.json").read_text()) | (config_changes or {})
    tensors = {rename(n): a for n, a in load_file(source / "model.safetensors").items()} | (extra or {})
    write_config(directory, raw)
    save_file(tensors, directory / "model.safetensors")
    return directory


def tiny_tensors(family: str) -> dict[str, np.ndarray]:
    return load_file(TINY_DATA / family / "model.safetensors")


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_configs_parse_to_the_test_configs(family):
    eos = (2, 3) if family == "llama" else (2,)
    assert hf_config(TINY_DATA / family) == tiny_config(family).replace(bos_token_id=1, eos_token_ids=eos)


def test_gemma3_legacy_config(tmp_path):
    config = hf_config(write_config(tmp_path, GEMMA3_270M))
    assert config.family == "gemma3"
    assert config.layer_types == (("sliding_attention",) * 5 + ("full_attention",)) * 3
    assert config.sliding_window == 512
    assert config.rope_global == RopeConfig(1_000_000.0) and config.rope_local == RopeConfig(10_000.0)
    assert config.attention_scale == 256**-0.5 and config.embed_scale == math.sqrt(640)
    assert config.activation == "gelu_tanh" and config.qk_norm and config.sandwich_norms
    assert config.attn_logit_softcap is None and config.final_logit_softcap is None
    assert config.tie_embeddings and config.max_position == 32768
    assert (config.bos_token_id, config.eos_token_ids, config.pad_token_id) == (2, (1,), 0)


def test_multimodal_gemma3_reads_the_sparse_text_config(tmp_path):
    """Gemma 3 4B's config.json: the text model relies on transformers' defaults and scales global RoPE."""
    raw = {"model_type": "gemma3", "eos_token_id": [1, 106],
           "text_config": {"model_type": "gemma3_text", "hidden_size": 2560, "intermediate_size": 10240,
                           "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                           "sliding_window": 1024},
           "vision_config": {"model_type": "siglip_vision_model"}}
    config = hf_config(write_config(tmp_path, raw))
    assert (config.num_heads, config.num_kv_heads, config.head_dim, config.vocab_size) == (8, 4, 256, 262_208)
    assert config.rope_global == RopeConfig(1_000_000.0, scaling="linear", factor=8.0)
    assert config.rope_local == RopeConfig(10_000.0)
    assert config.layer_types[:6] == ("sliding_attention",) * 5 + ("full_attention",)
    assert config.eos_token_ids == (1, 106) and config.attention_scale == 256**-0.5


def test_llama_legacy_rope_scaling(tmp_path):
    config = hf_config(write_config(tmp_path, LLAMA_3_2))
    assert config.rope_global == RopeConfig(500_000.0, scaling="llama3", factor=32.0, original_max_position=8192)
    assert config.rope_local is None and config.head_dim == 64 and config.rms_norm_eps == 1e-5
    assert config.eos_token_ids == (128001, 128008, 128009) and config.pad_token_id == 128001
    assert not (config.qkv_bias or config.qk_norm or config.sandwich_norms) and config.tie_embeddings


def test_head_dim_defaults_to_hidden_over_heads(tmp_path):
    raw = LLAMA_3_2 | {"head_dim": None, "num_attention_heads": 16}
    assert hf_config(write_config(tmp_path, raw)).head_dim == 2048 // 16


def test_qwen2_sliding_window_only_when_switched_on(tmp_path):
    config = hf_config(write_config(tmp_path / "off", QWEN2_5))
    assert config.layer_types == ("full_attention",) * 24 and config.sliding_window is None
    assert config.qkv_bias and not config.qk_norm and config.head_dim == 896 // 14
    on = hf_config(write_config(tmp_path / "on", QWEN2_5 | {"use_sliding_window": True, "sliding_window": 4096}))
    assert on.layer_types == ("full_attention",) * 21 + ("sliding_attention",) * 3 and on.sliding_window == 4096


def test_flat_rope_parameters_of_transformers_5(tmp_path):
    raw = QWEN2_5 | {"rope_theta": None, "rope_parameters": {"rope_type": "linear", "rope_theta": 5e5, "factor": 2}}
    assert hf_config(write_config(tmp_path, raw)).rope_global == RopeConfig(5e5, scaling="linear", factor=2.0)


@pytest.mark.parametrize("change, message", [
    ({"model_type": "mistral"}, "'mistral' is not supported; supported model types are gemma3, gemma3_text"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "RoPE type 'yarn'"),
    ({"attention_bias": True}, "attention_bias=true"),
    ({"hidden_act": "relu"}, "activation 'relu'"),
    ({"hidden_size": None}, "lacks 'hidden_size'"),
])
def test_unsupported_configs_are_named(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        hf_config(write_config(tmp_path, LLAMA_3_2 | change))


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        hf_config(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_hf_checkpoint(tmp_path)
    shutil.copy(TINY_DATA / "qwen3" / "config.json", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors"):
        load_hf_checkpoint(tmp_path)


def test_truncated_weights_name_the_file(tmp_path):
    directory = copy_tiny("qwen3", tmp_path)
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ConfigError, match=r"model\.safetensors: file is truncated or corrupt"):
        load_hf_checkpoint(directory)


def test_weights_of_another_shape_name_the_tensor(tmp_path):
    directory = copy_tiny("llama", tmp_path, config_changes={"intermediate_size": 96})
    with pytest.raises(ConfigError, match=r"tensor layers\.(gate|up|down) has shape"):
        load_hf_checkpoint(directory)


def test_missing_layer_and_unknown_tensor(tmp_path):
    drop_layer = lambda n: n.replace("layers.2.mlp.up_proj", "layers.7.mlp.up_proj")
    with pytest.raises(ConfigError, match=r"layers\.up for layers \[0, 1, 7\]"):
        load_hf_checkpoint(copy_tiny("qwen3", tmp_path / "a", rename=drop_layer))
    extra = {"model.layers.0.self_attn.o_proj.bias": np.zeros(64, np.float32)}
    with pytest.raises(ConfigError, match=r"'model\.layers\.0\.self_attn\.o_proj\.bias' is not part of a qwen3"):
        load_hf_checkpoint(copy_tiny("qwen3", tmp_path / "b", extra=extra))


@pytest.mark.parametrize("family", ["gemma3", "qwen2"])
def test_weights_land_where_the_forward_pass_reads_them(family):
    config, params = load_hf_checkpoint(TINY_DATA / family)
    hf = tiny_tensors(family)
    h, d, e = config.num_heads, config.head_dim, config.hidden_size
    np.testing.assert_array_equal(params.layers[1].q, hf["model.layers.1.self_attn.q_proj.weight"].reshape(h, d, e))
    np.testing.assert_array_equal(params.layers[2].o, hf["model.layers.2.self_attn.o_proj.weight"].reshape(e, h, d))
    np.testing.assert_array_equal(params.layers[0].down, hf["model.layers.0.mlp.down_proj.weight"])
    assert params.lm_head is None  # tied
    if family == "gemma3":  # (1 + w), and post_attention_layernorm is the attention's output norm
        np.testing.assert_allclose(params.layers[1].attn_post_norm,
                                   1 + hf["model.layers.1.post_attention_layernorm.weight"])
        np.testing.assert_allclose(params.layers[1].mlp_norm, 1 + hf["model.layers.1.pre_feedforward_layernorm.weight"])
        np.testing.assert_allclose(params.layers[0].k_norm, 1 + hf["model.layers.0.self_attn.k_norm.weight"])
        np.testing.assert_allclose(params.final_norm, 1 + hf["model.norm.weight"])
    else:
        np.testing.assert_array_equal(params.layers[1].mlp_norm, hf["model.layers.1.post_attention_layernorm.weight"])
        np.testing.assert_array_equal(params.layers[2].k_bias,
                                      hf["model.layers.2.self_attn.k_proj.bias"].reshape(config.num_kv_heads, d))


def test_untied_head_and_dtype():
    config, params = load_hf_checkpoint(TINY_DATA / "llama", dtype=jnp.bfloat16)
    assert not config.tie_embeddings and params.lm_head.dtype == jnp.bfloat16
    np.testing.assert_array_equal(params.lm_head, jnp.asarray(tiny_tensors("llama")["lm_head.weight"], jnp.bfloat16))


def test_multimodal_and_sharded_layouts_load_the_same_weights(tmp_path):
    """transformers-5 multimodal names (`model.language_model.`), a vision tower to skip, and two shards."""
    _, reference = load_hf_checkpoint(TINY_DATA / "gemma3")
    text = json.loads((TINY_DATA / "gemma3" / "config.json").read_text())
    tensors = {n.replace("model.", "model.language_model.", 1): a for n, a in tiny_tensors("gemma3").items()}
    tensors["model.vision_tower.patch_embedding.weight"] = np.zeros((2, 2), np.float32)
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, shard_names in shards.items():
        save_file({n: tensors[n] for n in shard_names}, tmp_path / shard)
    weight_map = {n: shard for shard, shard_names in shards.items() for n in shard_names}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    write_config(tmp_path, {"model_type": "gemma3", "text_config": text, "vision_config": {}})

    config, params = load_hf_checkpoint(tmp_path)
    assert config == hf_config(TINY_DATA / "gemma3")
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(reference), strict=True):
        np.testing.assert_array_equal(got, want)
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors"):
        load_hf_checkpoint(tmp_path)
