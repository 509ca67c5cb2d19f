"""Training sequences whose responses the target itself wrote (DeepSpec's recipe): a drafter must learn
the target's distribution, not the original assistant's. `write_answers` writes the same shards from
answers that exist already (ShareGPT's own), the cheaper source to compare against.

Prompts are chat-formatted with the target's template, cut to `max_prompt_tokens`, and answered by the
target's batched generation (default sampling: temperature 0.7, top-p 0.8, top-k 20). Results go to shards
`sequences-NNNNN.npz`, each written atomically; a rerun skips the complete shards already on disk, so an
interrupted run resumes where it stopped and reproduces what an uninterrupted one writes (shard i samples
with seed + i), and a run with more prompts completes the last shard of a smaller one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dspark_jax.atomic_file import write_atomically
from dspark_jax.generate import GenerationConfig, generate
from dspark_jax.models.tokenizer import Tokenizer
from dspark_jax.sampling import SamplingConfig
from dspark_jax.target import Target


@dataclasses.dataclass(frozen=True)
class RegenerateConfig:
    max_new_tokens: int = 256
    max_prompt_tokens: int = 256
    sampling: SamplingConfig = SamplingConfig(temperature=0.7, top_k=20, top_p=0.8)
    shard_size: int = 64
    batch_size: int = 8
    seed: int = 0


def _prompt_ids(tokenizer: Tokenizer, message: str, max_tokens: int) -> list[int]:
    """Chat-formatted prompt ids; an over-long message is shortened, never the template around it."""
    overhead = len(tokenizer.encode(tokenizer.chat_prompt("")))
    if max_tokens <= overhead:
        raise ValueError(f"max_prompt_tokens={max_tokens} leaves no room for a message in the chat template")
    message_ids = tokenizer.encode(message, add_bos=False)
    if len(message_ids) > max_tokens - overhead:
        message = tokenizer.decode(message_ids[: max_tokens - overhead])
    ids = tokenizer.encode(tokenizer.chat_prompt(message))
    return ids[:max_tokens] if len(ids) > max_tokens else ids


# (shard index, index of its first prompt, its prompts' ids) -> one response's ids per prompt
Respond = Callable[[int, int, list[list[int]]], list[list[int]]]


def regenerate(target: Target, prompts: list[str], out_dir: Path, config: RegenerateConfig) -> list[Path]:
    """Writes (or completes) the shards for `prompts`, answered by the target, with a progress bar of
    conversations (complete shards on disk count at once); returns all shard paths in order."""
    generation = GenerationConfig(config.max_new_tokens, config.sampling, target.tokenizer.eos_ids)

    def respond(index: int, start: int, chunk: list[list[int]]) -> list[list[int]]:
        return [response for b in range(0, len(chunk), config.batch_size)
                for response in generate(target.params, target.config, chunk[b : b + config.batch_size],
                                         generation, seed=config.seed + index * 100_003 + b)]

    return _write_shards(target.tokenizer, prompts, respond, out_dir, config, target.config.pad_token_id)


def write_answers(tokenizer: Tokenizer, exchanges: list[tuple[str, str]], out_dir: Path, config: RegenerateConfig,
                  pad_id: int) -> list[Path]:
    """Shards of `regenerate`'s form whose responses are the given (prompt, answer) pairs' answers instead
    of the target's: tokenised, cut to max_new_tokens, ended by the end-of-turn token when whole. Nothing
    is generated (config's sampling and batch size go unused)."""
    end_of_turn = tokenizer.eos_ids[-1]  # eos_ids: the eos, then the family's end-of-turn token

    def respond(index: int, start: int, chunk: list[list[int]]) -> list[list[int]]:
        answers = [tokenizer.encode(answer, add_bos=False) + [end_of_turn]
                   for _, answer in exchanges[start : start + len(chunk)]]
        return [ids[: config.max_new_tokens] for ids in answers]

    return _write_shards(tokenizer, [prompt for prompt, _ in exchanges], respond, out_dir, config, pad_id)


def _write_shards(tokenizer: Tokenizer, prompts: list[str], respond: Respond, out_dir: Path,
                  config: RegenerateConfig, pad_id: int) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = []
    bar = tqdm(total=len(prompts), desc="prepare-data", unit="conversation")
    for index, start in enumerate(range(0, len(prompts), config.shard_size)):
        path = out_dir / f"sequences-{index:05d}.npz"
        shards.append(path)
        chunk = prompts[start : start + config.shard_size]
        # A complete shard is kept; a shorter last shard of an earlier, smaller run is written again in full.
        if path.exists() and _rows(path) == len(chunk):
            bar.update(len(chunk))
            continue
        chunk = [_prompt_ids(tokenizer, p, config.max_prompt_tokens) for p in chunk]
        responses = respond(index, start, chunk)
        lengths = np.array([len(p) + len(r) for p, r in zip(chunk, responses)], np.int32)
        tokens = np.full((len(chunk), int(lengths.max())), pad_id, np.int32)
        for row, (p, r) in enumerate(zip(chunk, responses)):
            tokens[row, : len(p) + len(r)] = p + r
        prompt_lengths = np.array([len(p) for p in chunk], np.int32)
        write_atomically(path, lambda tmp: np.savez(tmp, tokens=tokens, lengths=lengths,
                                                    prompt_lengths=prompt_lengths), suffix=".tmp.npz")
        bar.update(len(chunk))
    bar.close()
    return shards


def _rows(shard: Path) -> int:
    with np.load(shard) as data:
        return len(data["lengths"])


def load_sequences(shards: list[Path], length: int, max_sequences: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(tokens int32[N, length], loss_mask bool[N, length]) from shards, cut or padded to `length`; the
    loss mask covers the response tokens only. With max_sequences, only the first ones (N <= max_sequences)."""
    rows, masks = [], []
    for path in shards:
        if max_sequences is not None and len(rows) >= max_sequences:
            break
        with np.load(path) as shard:
            for tokens, n, p in zip(shard["tokens"], shard["lengths"], shard["prompt_lengths"]):
                row = np.zeros(length, np.int32)
                row[: min(n, length)] = tokens[: min(n, length)]
                positions = np.arange(length)
                rows.append(row)
                masks.append((positions >= p) & (positions < n))
    return np.stack(rows[:max_sequences]), np.stack(masks[:max_sequences])
