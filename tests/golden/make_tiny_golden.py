"""Writes tests/data/tiny/<family>/: a tiny random HF checkpoint, its tokenizer and HF's own logits for it.

Run with a Python that has torch and transformers (see README.md in this folder); the test venv has neither
torch nor a need for it, it only reads the files written here. The shapes are those of
`tests/tiny_models.py::tiny_config`, so the tests can compare the loaded config against it field by field.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig, PreTrainedConfig, Qwen2Config, Qwen3Config
from transformers.convert_slow_tokenizer import bytes_to_unicode

OUT = Path(__file__).resolve().parent.parent / "data" / "tiny"
SEED = 0
VOCAB = 256
SPECIALS = ("<pad>", "<bos>", "<eos>", "<eot>")  # ids 0..3; bytes 4..255 fill the rest of the vocabulary
PAD, BOS, EOS, EOT = range(len(SPECIALS))
COMMON = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=128, max_position_embeddings=512, rms_norm_eps=1e-6, pad_token_id=PAD,
              bos_token_id=BOS, eos_token_id=EOS)


def hf_config(family: str) -> PreTrainedConfig:
    """transformers-5 configs (nested `rope_parameters`); the loader's legacy-format path is unit-tested."""
    if family == "gemma3":
        return Gemma3TextConfig(
            **COMMON, head_dim=16, hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=16,
            sliding_window=6, layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                             "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
            tie_word_embeddings=True,
        )
    if family == "llama":
        return LlamaConfig(
            **{**COMMON, "eos_token_id": [EOS, EOT]}, head_dim=16, tie_word_embeddings=False,
            rope_parameters={"rope_type": "llama3", "rope_theta": 10_000.0, "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
        )
    rope = {"rope_type": "default", "rope_theta": 1_000_000.0}
    if family == "qwen2":  # no head_dim field: it is hidden_size // num_attention_heads = 16
        return Qwen2Config(**COMMON, rope_parameters=rope, tie_word_embeddings=True)
    if family == "qwen3":
        return Qwen3Config(**COMMON, head_dim=16, rope_parameters=rope, tie_word_embeddings=True)
    raise ValueError(family)


def randomize(model: torch.nn.Module, family: str, generator: torch.Generator) -> None:
    """std-0.2 weights so logits are far from flat; norms off their neutral value so the Gemma `1 + w`
    convention (neutral 0) versus Llama's `w` (neutral 1) is actually exercised."""
    neutral = 0.0 if family == "gemma3" else 1.0
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            p.copy_(neutral + 0.1 * noise if "norm" in name else 0.2 * noise)


def byte_tokenizer(add_bos: bool) -> Tokenizer:
    """Exactly VOCAB tokens: the special tokens, then the byte-level symbols of bytes len(SPECIALS)..255."""
    byte_symbol = bytes_to_unicode()
    vocab = {tok: i for i, tok in enumerate(SPECIALS)} | {byte_symbol[b]: b for b in range(len(SPECIALS), 256)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(SPECIALS))
    if add_bos:
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", BOS)]
        )
    return tokenizer


def write_family(family: str) -> None:
    model = AutoModelForCausalLM.from_config(hf_config(family), attn_implementation="eager", dtype=torch.float32)
    randomize(model, family, torch.Generator().manual_seed(SEED))
    model.eval()

    rng = np.random.default_rng(SEED)
    tokens = rng.integers(0, VOCAB, size=(2, 24), dtype=np.int32)
    with torch.no_grad():
        logits = model(torch.from_numpy(tokens).long()).logits.float().numpy()

    directory = OUT / family
    shutil.rmtree(directory, ignore_errors=True)
    model.save_pretrained(directory)
    byte_tokenizer(add_bos=family in ("gemma3", "llama")).save(str(directory / "tokenizer.json"))
    np.savez(directory / "golden.npz", tokens=tokens, logits=logits)
    print(f"{family}: logits std {logits.std():.3f} -> {directory}")


if __name__ == "__main__":
    for family in ("gemma3", "llama", "qwen2", "qwen3"):
        write_family(family)
