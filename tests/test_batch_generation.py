"""`generate --input/--output`: every line answered (or its error reported), the same tokens as generating
each batch directly, and a run killed at any point then rerun ends with the uninterrupted run's file."""

import json
from pathlib import Path

import pytest

from dspark_jax import batch_generation, cli
from dspark_jax.batch_generation import generate_file, plan_batches, read_requests
from dspark_jax.generate import GenerationConfig, generate
from dspark_jax.proposers.ngram import NgramProposer
from dspark_jax.speculative import SpeculativeMethod
from dspark_jax.target import load_target
from dspark_jax.tree import TreeTemplate

TINY = str(Path(__file__).parent / "data" / "tiny" / "llama")
LINES = [
    {"prompt": "abcabcabc", "id": "a"},
    {"turns": ["Hello there", "ignored second turn"], "id": "b"},
    "not json",
    {"messages": [{"role": "user", "content": "2+2?"}], "max_new_tokens": 3},
    {"prompt": "xyz xyz xyz", "temperature": 1.0, "top_k": 5},
    {"id": 5},
    {"prompt": "a much longer prompt than the others, to land in a later batch", "tag": [1, 2]},
    {"prompt": "qq", "temperature": 1.0},
    {"prompt": "zz" * 300},  # over the tiny model's context of 512 tokens
]


@pytest.fixture(scope="module")
def target():
    return load_target(TINY)


@pytest.fixture
def input_file(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in LINES))
    return path


def defaults(target):
    return GenerationConfig(max_new_tokens=6, stop_tokens=target.tokenizer.eos_ids)


def read(path):
    return {line["index"]: line for line in map(json.loads, Path(path).read_text().splitlines())}


def test_every_line_is_answered_as_its_batch_would_be(target, input_file, tmp_path):
    out = tmp_path / "out.jsonl"
    summary = generate_file(target, input_file, out, defaults(target), batch_size=2, progress=False)
    lines = read(out)
    assert sorted(lines) == list(range(len(LINES))) and summary.errors == 3 and summary.generated == 6
    assert "not JSON" in lines[2]["error"] and "exactly one of prompt, turns, messages" in lines[5]["error"]
    assert "exceed the model's context" in lines[8]["error"]
    assert lines[0]["id"] == "a" and lines[6]["tag"] == [1, 2] and lines[3]["completion_tokens"] <= 3
    # Each batch decodes exactly as one generate call on the same rows with the batch's seed.
    requests, _ = read_requests(input_file, target, defaults(target))
    requests = [r for r in requests if r.index != 8]
    for batch in plan_batches(requests, 2):
        prompts = [list(r.tokens) for r in batch.requests]
        prompts += [prompts[0]] * (2 - len(prompts))
        rows = generate(target.params, target.config, prompts, batch.requests[0].generation, batch.number)
        for request, row in zip(batch.requests, rows):
            assert lines[request.index]["completion"] == target.tokenizer.decode(row)
            assert lines[request.index]["completion_tokens"] == len(row)


@pytest.mark.parametrize("speculative", [False, True], ids=["plain", "ngram"])
def test_a_run_killed_anywhere_resumes_to_the_same_file(target, input_file, tmp_path, monkeypatch, speculative):
    method = SpeculativeMethod(NgramProposer(), None, TreeTemplate(1, 3)) if speculative else None
    run = lambda out: generate_file(target, input_file, out, defaults(target), method, batch_size=2, seed=3,
                                    progress=False)
    original, writes = batch_generation._append, []
    monkeypatch.setattr(batch_generation, "_append", lambda path, lines: (writes.append(1), original(path, lines)))
    run(tmp_path / "whole.jsonl")
    whole = (tmp_path / "whole.jsonl").read_bytes()
    for kill_at in range(len(writes)):  # the errors, then one write per batch
        for torn in (False, True):
            out, calls = tmp_path / f"killed-{kill_at}-{torn}.jsonl", []

            def dying_append(path, lines):
                if len(calls) == kill_at:
                    if torn:  # the kill lands inside the write: half a line reaches the disk
                        data = (json.dumps(lines[0]) + "\n").encode()
                        with open(path, "ab") as file:
                            file.write(data[: len(data) // 2])
                    raise KeyboardInterrupt
                calls.append(1)
                original(path, lines)

            monkeypatch.setattr(batch_generation, "_append", dying_append)
            with pytest.raises(KeyboardInterrupt):
                run(out)
            monkeypatch.setattr(batch_generation, "_append", original)
            summary = run(out)
            assert out.read_bytes() == whole, (kill_at, torn)
            errors_written_now = summary.errors if kill_at == 0 else 0  # the first write holds the errors
            assert summary.skipped + summary.generated + errors_written_now == len(LINES)
    assert run(tmp_path / "whole.jsonl").generated == 0  # a finished file: nothing left to do


def test_an_output_of_another_input_is_refused(target, input_file, tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps({"index": 99, "completion": "x"}) + "\n")
    with pytest.raises(ValueError, match="holds line indices \\[99\\] that --input"):
        generate_file(target, input_file, out, defaults(target), progress=False)
    out.write_text("a line this command never wrote\n")
    with pytest.raises(ValueError, match="out.jsonl:1 is not a line this command writes"):
        generate_file(target, input_file, out, defaults(target), progress=False)


def test_the_command_line(input_file, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    cli.main(["generate", "--target", TINY, "--input", str(input_file), "--output", str(out), "--max-new-tokens",
              "4", "--batch-size", "3", "--drafter", "ngram"])
    assert "6 lines generated (0 already in the output, 3 errors)" in capsys.readouterr().err
    assert len(read(out)) == len(LINES)
    cli.main(["generate", "--target", TINY, "--input", str(input_file), "--output", str(out), "--max-new-tokens",
              "4", "--batch-size", "3", "--drafter", "ngram"])
    assert "0 lines generated (9 already in the output" in capsys.readouterr().err
    for flags, message in [([], "--input needs --output"),
                           (["--output", str(out), "--prompt", "hi"], "excludes --prompt"),
                           (["--output", str(out), "--batch-size", "0"], "--batch-size must be >= 1")]:
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["generate", "--target", TINY, "--input", str(input_file), *flags])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["generate", "--target", TINY, "--prompt", "hi", "--output", str(out)])
    assert "go with --input" in capsys.readouterr().err
