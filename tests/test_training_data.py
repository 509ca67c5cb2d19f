"""ShareGPT prompts and target-regenerated training sequences (tiny target), resumable shards."""

from pathlib import Path

import numpy as np
import pytest

from dspark_jax.target import load_target
from dspark_jax.train import regenerate as regenerate_lib
from dspark_jax.train.regenerate import RegenerateConfig, load_sequences, regenerate, write_answers
from dspark_jax.train.sharegpt import (
    first_exchanges,
    first_turns,
    held_out_prompts,
    human_turns,
    split,
    training_exchanges,
    training_prompts,
)

TINY = Path(__file__).parent / "data" / "tiny" / "gemma3"


@pytest.fixture(scope="module")
def records():
    return first_turns()


def test_sharegpt_reads_every_complete_record(records):
    assert len(records) > 10_000  # the packaged file is truncated; everything before the cut is kept
    assert all(prompt.strip() for _, prompt in records)
    train, held_out = split(records)
    assert len(train) + len(held_out) == len(records)
    assert 0.03 < len(held_out) / len(records) < 0.07
    again_train, again_held_out = split(list(reversed(records)))
    assert set(again_held_out) == set(held_out)  # the split depends on ids, not order


def test_later_turns_extend_the_first_turns_without_held_out_text(records):
    conversations = human_turns()
    assert [(cid, messages[0]) for cid, messages in conversations] == records
    train_first, held_out_first = split(records)
    assert held_out_prompts(conversations) == held_out_first
    prompts = training_prompts(conversations)
    assert prompts[: len(train_first)] == train_first  # shards written from first turns keep their prompts
    later = prompts[len(train_first):]
    assert len(prompts) > 20_480 and len(later) == len(set(later)) and not set(later) & set(train_first)
    train_ids = set(split([(cid, cid) for cid, _ in records])[0])
    train_text = {m for cid, messages in conversations if cid in train_ids for m in messages}
    assert set(later) <= train_text  # nothing that only held-out conversations say


def test_regeneration_resumes_after_a_failure(records, tmp_path, monkeypatch):
    target = load_target(str(TINY))
    prompts = [prompt for _, prompt in records[:6]]
    config = RegenerateConfig(max_new_tokens=5, max_prompt_tokens=80, shard_size=2, batch_size=2)
    straight = regenerate(target, prompts, tmp_path / "straight", config)

    calls = []
    original = regenerate_lib.generate

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while making the second shard
        return original(*args, **kwargs)

    monkeypatch.setattr(regenerate_lib, "generate", failing)
    with pytest.raises(KeyboardInterrupt):
        regenerate(target, prompts, tmp_path / "resumed", config)
    assert sorted(p.name for p in (tmp_path / "resumed").iterdir()) == ["sequences-00000.npz"]  # no partial file
    monkeypatch.setattr(regenerate_lib, "generate", original)
    resumed = regenerate(target, prompts, tmp_path / "resumed", config)
    for a, b in zip(straight, resumed):
        with np.load(a) as x, np.load(b) as y:
            for key in ("tokens", "lengths", "prompt_lengths"):
                np.testing.assert_array_equal(x[key], y[key])

    tokens, loss_mask = load_sequences(resumed, length=96)
    assert tokens.shape == (6, 96)
    with np.load(resumed[0]) as shard:
        p, n, shard_tokens = shard["prompt_lengths"][0], shard["lengths"][0], shard["tokens"][0].tolist()
    assert p <= 80 and n > p
    assert target.tokenizer.decode(shard_tokens[:p], skip_special=False).endswith("model\n")  # template kept
    np.testing.assert_array_equal(np.flatnonzero(loss_mask[0]), np.arange(p, min(n, 96)))


def test_sharegpt_answers_pair_each_training_first_turn_with_its_reply(records):
    exchanges = first_exchanges()
    by_id = dict(records)
    assert len(exchanges) > 0.95 * len(records)  # nearly every first turn has a reply
    assert all(by_id[cid] == prompt and answer.strip() for cid, prompt, answer in exchanges)
    pairs = training_exchanges(exchanges)
    train_first, held_out_first = split(records)
    prompts = [prompt for prompt, _ in pairs]
    assert not set(prompts) & (set(held_out_first) - set(train_first))
    remaining = iter(train_first)
    assert all(prompt in remaining for prompt in prompts)  # a subsequence of the target's prompts, in file order
    assert len(pairs) > 0.95 * len(train_first)


def test_sharegpt_answers_are_written_as_sequences_without_generating(tmp_path, monkeypatch):
    target = load_target(str(TINY))
    tokenizer = target.tokenizer
    monkeypatch.setattr(regenerate_lib, "generate", None)  # nothing may generate
    exchanges = [("What is 2 + 2?", "4."), ("Name a colour.", "Blue is one. " * 40), ("Hi", "Hello!")]
    config = RegenerateConfig(max_new_tokens=12, max_prompt_tokens=80, shard_size=2)
    shards = write_answers(tokenizer, exchanges, tmp_path, config, pad_id=target.config.pad_token_id)
    assert [s.name for s in shards] == ["sequences-00000.npz", "sequences-00001.npz"]
    tokens, loss_mask = load_sequences(shards, length=160)  # the tiny tokenizer is byte-level
    for row, (prompt, answer) in enumerate(exchanges):
        response = tokens[row][loss_mask[row]].tolist()
        whole = tokenizer.encode(answer, add_bos=False) + [tokenizer.eos_ids[-1]]
        assert response == whole[:12]  # cut to max_new_tokens; a whole answer ends its turn
        prompt_ids = tokens[row][: np.flatnonzero(loss_mask[row])[0]].tolist()
        assert prompt_ids == tokenizer.encode(tokenizer.chat_prompt(prompt))
