"""The target's tokenizer: a `tokenizers.Tokenizer` plus the special ids and chat format generation needs.

A GGUF file carries its vocabulary as metadata; transformers' GGUF converter turns that into a fast
tokenizer (the same one `AutoTokenizer.from_pretrained(dir, gguf_file=...)` builds). The conversion takes
seconds for a 262k vocabulary, so its result is cached as tokenizer.json keyed by the file's identity.

Chat prompts use each family's fixed format rather than the model's jinja template: rendering templates
needs jinja2, which is not a dependency, and the default Gemma GGUF ships no template anyway.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
from pathlib import Path
from typing import Any

import tokenizers

from dspark_jax.atomic_file import write_atomically
from dspark_jax.kernels.cpu_kernels import cache_dir
from dspark_jax.models.config import ConfigError, ModelConfig
from dspark_jax.models.gguf_loader import END_OF_TURN_TOKENS, GGUFHeader, read_gguf_header, special_token_ids

# One user turn then the start of the model's turn, as the family's HF chat template renders it minus the
# leading BOS (encode adds that): (format, whether the template trims the message).
_CHAT_FORMATS: dict[str, tuple[str, bool]] = {
    "gemma3": ("<start_of_turn>user\n{}<end_of_turn>\n<start_of_turn>model\n", True),
    "llama": (
        "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        True,
    ),
    "qwen2": ("<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n", False),
    "qwen3": ("<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n", False),
}
_HF_FAMILIES = {"gemma3": "gemma3", "gemma3_text": "gemma3", "llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}


@dataclasses.dataclass(frozen=True, eq=False)
class Tokenizer:
    """Text <-> ids for one target model.

    bos_id is the id `encode(add_bos=True)` prepends, None for models whose tokenizer adds none (Qwen).
    eos_ids are every id that ends a reply: eos plus the family's end-of-turn token.
    """

    backend: tokenizers.Tokenizer
    family: str
    bos_id: int | None
    eos_ids: tuple[int, ...]
    pad_id: int

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """Token ids, with the model's BOS first when add_bos (and the model uses one)."""
        ids = self.backend.encode(text, add_special_tokens=False).ids
        return [self.bos_id, *ids] if add_bos and self.bos_id is not None else ids

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special)

    def chat_prompt(self, user_message: str) -> str:
        """One user turn followed by the start of the model's turn, in the family's chat format.

        Carries no BOS: `encode(chat_prompt(m))` equals HF's `apply_chat_template(..., tokenize=True)`.
        """
        if self.family not in _CHAT_FORMATS:
            raise ConfigError(
                f"no chat format for model family {self.family!r}; known families: {', '.join(_CHAT_FORMATS)}"
            )
        form, trim = _CHAT_FORMATS[self.family]
        return form.format(user_message.strip() if trim else user_message)


def load_tokenizer(path: Path) -> Tokenizer:
    """The tokenizer of a .gguf file or of an HF model directory (tokenizer.json + configs)."""
    path = Path(path)
    if path.is_dir():
        return _hf_tokenizer(path)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer source {path} does not exist")
    return _gguf_tokenizer(read_gguf_header(path))


def check_compatible(tokenizer: Tokenizer, config: ModelConfig) -> None:
    """Raises ConfigError unless every id the tokenizer can produce has a row in the model's embedding."""
    hint = "this tokenizer does not belong to this model; use the tokenizer that ships with the target"
    if tokenizer.vocab_size > config.vocab_size:
        raise ConfigError(
            f"tokenizer has {tokenizer.vocab_size} tokens but the model's embedding has only "
            f"{config.vocab_size} rows: {hint}"
        )
    special = {"bos": [tokenizer.bos_id] if tokenizer.bos_id is not None else [], "eos": list(tokenizer.eos_ids),
               "pad": [tokenizer.pad_id]}
    for name, ids in special.items():
        for i in ids:
            if not 0 <= i < config.vocab_size:
                raise ConfigError(
                    f"tokenizer's {name} id {i} is outside the model's vocabulary of {config.vocab_size}: {hint}"
                )


def _cache_file(path: Path) -> Path:
    """Where the converted tokenizer of this exact file (path, size, mtime) and converter version lives."""
    stat = path.stat()
    identity = f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\0{importlib.metadata.version('transformers')}"
    return cache_dir() / "tokenizers" / f"{hashlib.sha256(identity.encode()).hexdigest()}.json"


def _convert_gguf(header: GGUFHeader) -> tokenizers.Tokenizer:
    """transformers' GGUF -> fast tokenizer conversion, fed from our (fast) header parse."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer

    tokenizer_dict = {
        name: _plain(header.metadata[f"tokenizer.{key}"])
        for key, name in GGUF_TOKENIZER_MAPPING["tokenizer"].items()
        if f"tokenizer.{key}" in header.metadata
    }
    backend, _ = convert_gguf_tokenizer(header.architecture, tokenizer_dict)
    return backend


def _plain(value: Any) -> Any:
    """Lists instead of numpy arrays, as transformers' own GGUF reader returns them."""
    return value.tolist() if hasattr(value, "tolist") else value


def _gguf_tokenizer(header: GGUFHeader) -> Tokenizer:
    cache = _cache_file(header.path)
    if cache.exists():
        backend = tokenizers.Tokenizer.from_file(str(cache))
    else:
        backend = _convert_gguf(header)
        try:
            text = backend.to_str()
            write_atomically(cache, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        except OSError:
            pass  # a read-only cache only costs the conversion again next time
    meta = header.metadata
    bos, eos, pad = special_token_ids(header)
    # As transformers does: sentencepiece ("llama") vocabularies add BOS unless the file says otherwise.
    adds_bos = bool(meta.get("tokenizer.ggml.add_bos_token", meta.get("tokenizer.ggml.model") == "llama"))
    return Tokenizer(
        backend=backend,
        family=header.architecture,
        bos_id=bos if adds_bos else None,
        eos_ids=eos,
        pad_id=pad,
    )


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _hf_tokenizer(directory: Path) -> Tokenizer:
    """tokenizer.json for the vocabulary (and BOS); config files for the eos and pad ids."""
    if not (directory / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{directory} has no tokenizer.json; a fast (tokenizers) tokenizer is required")
    backend = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
    config = _read_json(directory / "config.json")
    tok_config = _read_json(directory / "tokenizer_config.json")
    generation = _read_json(directory / "generation_config.json")

    def token_id(token: Any) -> int | None:
        content = token.get("content") if isinstance(token, dict) else token
        return backend.token_to_id(content) if content else None

    # BOS is whatever tokenizer.json's post-processor prepends (Gemma, Llama) or nothing (Qwen).
    with_special, plain = backend.encode("a").ids, backend.encode("a", add_special_tokens=False).ids
    bos = with_special[0] if with_special[:1] != plain[:1] else None
    eos = generation.get("eos_token_id", config.get("eos_token_id", token_id(tok_config.get("eos_token"))))
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    family = _HF_FAMILIES.get(config.get("model_type", ""), config.get("model_type", ""))
    eos += [i for t in END_OF_TURN_TOKENS.get(family, ()) if (i := backend.token_to_id(t)) is not None]
    pad = config.get("pad_token_id", token_id(tok_config.get("pad_token")))
    return Tokenizer(backend, family, bos, tuple(dict.fromkeys(eos)), pad if pad is not None else 0)
