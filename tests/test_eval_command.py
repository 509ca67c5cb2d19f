"""`dspark-jax eval` and `bench` end to end on a tiny target: report files, metrics and the lossless check."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TargetLoaded

from dspark_jax import cli, eval_commands
from dspark_jax.drafter_kinds import new_drafter, save_drafter
from dspark_jax.evaluation import load_tasks, merge_stats
from dspark_jax.models.drafter_calibration import DrafterCalibration
from dspark_jax.speculative import SpecStats
from dspark_jax.target import load_target
from dspark_jax.temperature_scaling import SequentialTemperatures

TINY = str(Path(__file__).parent / "data" / "tiny" / "gemma3")


@pytest.fixture(scope="module")
def drafter_dir(tmp_path_factory):
    target = load_target(TINY)
    directory = tmp_path_factory.mktemp("drafter") / "tiny-dspark"
    model = new_drafter("dspark", target.config, depth=3, num_features=2, intermediate_size=64, markov_rank=8)
    save_drafter(directory, model, target.config, target.params, "tiny")
    return directory


def test_eval_writes_the_report(drafter_dir, tmp_path, capsys):
    own = tmp_path / "mine.jsonl"
    own.write_text('{"turns": ["Say hi."]}\n{"turns": ["Count to three.", "Again."]}\n{"turns": ["Unused."]}\n')
    out = tmp_path / "report"
    cli.main(["eval", "--target", TINY, "--drafter", f"{drafter_dir},ngram", "--tasks", f"gsm8k,{own}",
              "--limit", "2", "--max-new-tokens", "8", "--schedule", "full,hardware", "--output", str(out)])
    printed = capsys.readouterr().out
    tau_rows = [line for line in printed.split("### τ")[1].split("###")[0].splitlines() if line.startswith("| tiny")
                or line.startswith("| ngram")]
    assert len(tau_rows) == 3 and all(row.count(" ± ") == 3 for row in tau_rows)  # 2 tasks and the mean
    assert sorted(p.name for p in out.iterdir()) == ["accept_rate_by_position.png", "reliability.png", "results.json",
                                                      "results.md", "speedup.png"]
    results = json.loads((out / "results.json").read_text())
    assert list(results["tasks"]) == ["gsm8k", "mine"]
    for task in results["tasks"].values():
        assert task["autoregressive"]["prompts"] == 2
        assert list(task) == ["autoregressive", "tiny-dspark", "tiny-dspark+scheduler", "ngram"]
        for name, depth in (("tiny-dspark", 3), ("tiny-dspark+scheduler", 3), ("ngram", 7)):
            metrics = task[name]
            assert metrics["lossless"] is True and 1.0 <= metrics["tau"] <= depth + 1
            # τ over the task weighs each prompt by its steps, so it lies between the prompts' own
            assert len(metrics["tau_by_prompt"]) == 2
            assert min(metrics["tau_by_prompt"]) - 1e-9 <= metrics["tau"] <= max(metrics["tau_by_prompt"]) + 1e-9
            assert metrics["tau_standard_error"] >= 0
            assert len(metrics["accept_rate_by_position"]) == depth
            assert metrics["verify_rate"] == pytest.approx(metrics["proposals"] / metrics["tokens"])
            if name != "tiny-dspark+scheduler":  # the scheduler's choice depends on this machine's step costs
                assert metrics["verified_per_step"] == depth
            assert 0 <= metrics["verified_per_step"] <= depth
        calibration = task["tiny-dspark"]["calibration"]
        assert [r["position"] for r in calibration] == [1, 2, 3]
        assert calibration[0]["n"] == task["tiny-dspark"]["proposals"]  # position 1 is judged at every step
        assert task["ngram"]["calibration"] is None


def test_eval_sampling_runs_the_greedy_check(drafter_dir, tmp_path):
    out = tmp_path / "report"
    cli.main(["eval", "--target", TINY, "--drafter", str(drafter_dir), "--tasks", "mt-bench", "--limit", "2",
              "--max-new-tokens", "8", "--temperature", "1", "--output", str(out)])
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["temperature"] == 1.0
    assert results["tasks"]["mt-bench"]["tiny-dspark"]["lossless"] is True


def test_bench_prints_the_grid(drafter_dir, tmp_path, capsys):
    cli.main(["bench", "--target", TINY, "--drafter", str(drafter_dir), "--batch-sizes", "1,2", "--temperatures", "0",
              "--max-new-tokens", "6", "--output", str(tmp_path / "bench.json"), "--plot", str(tmp_path / "tp.png")])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 0 |")]
    rows = json.loads((tmp_path / "bench.json").read_text())
    assert [r["batch_size"] for r in rows] == [1, 2]
    for line, row in zip(lines, rows, strict=True):
        drafted = row["tiny-dspark"]
        assert drafted["speedup"] == pytest.approx(drafted["tokens_per_s"] / row["autoregressive"])
        assert 1.0 <= drafted["tau"] <= 4  # block size 3 plus the bonus token
        assert drafted["tokens_per_s_per_row"] == pytest.approx(drafted["tokens_per_s"] / row["batch_size"])
        assert line == (f"| 0 | {row['batch_size']} | {row['autoregressive']:.1f} "
                        f"({row['autoregressive_per_row']:.1f}) | {drafted['tokens_per_s']:.1f} "
                        f"({drafted['tokens_per_s_per_row']:.1f}; {drafted['speedup']:.2f}x, {drafted['tau']:.2f}) |")
    assert (tmp_path / "tp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv, message", [
    (["--tasks", "nosuch"], "neither a shipped task"),
    (["--limit", "0"], "--limit must be >= 1"),
    (["--drafter", "none"], "every --drafter must name a drafter"),
    (["--drafter", "ngram", "--gamma", "3", "--tree", "2x4"], "contradicts"),
    (["--schedule", "hardware"], "needs a drafter with a confidence head"),
    (["--schedule", "full,sometimes"], "unknown schedule 'sometimes'"),
])
def test_bad_eval_requests_fail_before_loading(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["eval", "--target", TINY, "--drafter", "ngram", *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_user_task_files_are_validated(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"turns": ["fine"]}\n{"prompt": "no turns"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: each line must be a JSON object with a \"turns\" list"):
        load_tasks([str(bad)])
    empty_turn = tmp_path / "empty.jsonl"
    empty_turn.write_text('{"turns": [""]}\n')
    with pytest.raises(ValueError, match="non-empty string"):
        load_tasks([str(empty_turn)])
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes('{"turns": ["caf\u00e9"]}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.jsonl is not UTF-8 text \(byte 15\)"):
        load_tasks([str(latin1)])
    assert [t.name for t in load_tasks(["gsm8k", "humaneval"], limit=3)] == ["gsm8k", "humaneval"]


@pytest.fixture
def drafter_copy(drafter_dir, tmp_path):
    """A private copy: calibrating writes into the drafter's directory."""
    return Path(shutil.copytree(drafter_dir, tmp_path / "tiny-dspark"))


def test_calibrate_fits_what_eval_then_measures(drafter_copy, tmp_path, capsys):
    """The fit is stored per decoding temperature; eval decoding the same prompts the same way sees the same
    whole drafts, so its survival ECE (raw and with STS) repeats the one calibrate printed."""
    prompts = tmp_path / "held_out.jsonl"
    prompts.write_text("".join(json.dumps({"turns": [t]}) + "\n" for t in ("Hello there.", "Name a colour.", "2+2?")))
    cli.main(["calibrate", "--target", TINY, "--drafter", str(drafter_copy), "--prompts", str(prompts),
              "--temperatures", "0,1", "--max-new-tokens", "8", "--batch-size", "1"])
    printed = capsys.readouterr().out
    calibration = DrafterCalibration.read(drafter_copy)
    assert [t for t, _ in calibration.fits] == [0.0, 1.0] and all(fit.depth == 3 for _, fit in calibration.fits)
    greedy_table = printed.split("temperature 0:")[1].split("temperature 1:")[0]
    rows = [line.split("|")[1:-1] for line in greedy_table.splitlines()
            if line.startswith("| ") and "position" not in line]
    assert [int(r[0]) for r in rows] == [1, 2, 3]
    assert [float(r[3]) for r in rows] == pytest.approx(calibration.for_temperature(0).temperatures, rel=1e-2)
    raw, with_sts = [float(r[4]) for r in rows], [float(r[5]) for r in rows]
    # Only position 1 is guaranteed: T_1 = 1 is on the grid, so the fit cannot be worse there. Later positions
    # are fitted on the calibrated prefix, which can leave a_k further from the labels than the raw product.
    assert with_sts[0] <= raw[0]

    out = tmp_path / "report"
    cli.main(["eval", "--target", TINY, "--drafter", str(drafter_copy), "--tasks", str(prompts),
              "--max-new-tokens", "8", "--schedule", "full,hardware", "--output", str(out)])
    captured = capsys.readouterr()
    assert "no STS calibration" not in captured.err and "Prefix survival calibration of tiny-dspark" in captured.out
    measured = json.loads((out / "results.json").read_text())["tasks"]["held_out"]["tiny-dspark"]["survival_ece"]
    assert measured["raw"] == pytest.approx(raw, abs=1e-3) and measured["sts"] == pytest.approx(with_sts, abs=1e-3)


def test_scheduling_without_a_fit_says_so(drafter_copy, tmp_path, capsys, stop_at_load):
    stop_at_load(eval_commands)
    argv = ["eval", "--target", TINY, "--drafter", str(drafter_copy), "--tasks", "gsm8k", "--schedule", "hardware"]
    with pytest.raises(TargetLoaded):
        cli.main(argv)
    note = "tiny-dspark+scheduler has no STS calibration for temperature 0 (calibrated: none)"
    assert note in capsys.readouterr().err
    DrafterCalibration(()).with_fit(1.0, SequentialTemperatures((1.0, 1.0, 1.0))).write(drafter_copy)
    with pytest.raises(TargetLoaded):
        cli.main([*argv, "--temperature", "0.5"])
    assert "for temperature 0.5 (calibrated: 1)" in capsys.readouterr().err
    with pytest.raises(TargetLoaded):
        cli.main([*argv, "--temperature", "1", "--schedule", "full,hardware"])
    assert "STS" not in capsys.readouterr().err  # a fit for the run's temperature: nothing to say
    # A fit shallower than the draft is refused.
    DrafterCalibration(()).with_fit(0.0, SequentialTemperatures((1.0, 1.0))).write(drafter_copy)
    with pytest.raises(SystemExit):
        cli.main(argv)
    assert "covers draft depth 2, not 3" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--drafter", "ngram"], "not a DSpark drafter directory"),
    (["--limit", "0"], "--limit must be >= 1"),
    (["--temperatures", ""], "at least one decoding temperature"),
    (["--prompts", "nosuch.jsonl"], "neither a shipped task"),
])
def test_bad_calibrate_requests_fail_before_loading(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["calibrate", "--target", TINY, *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_merged_stats_drop_the_rows_that_fill_the_last_batch():
    batch = lambda accepted: SpecStats(np.array(accepted), np.full_like(np.array(accepted), 2),
                                       np.full((*np.shape(accepted), 2), 0.5, np.float32), 2, 1.0, 2.0)
    merged = merge_stats([batch([[2, 0], [1, -1]]), batch([[0, 1, 1], [0, 1, 1]])], rows=3)  # row 4 repeats row 3
    assert merged.accepted.tolist() == [[2, 0, -1], [1, -1, -1], [0, 1, 1]]
    assert merged.confidence.shape == (3, 3, 2) and np.isnan(merged.confidence[0, 2]).all()
    assert merged.tau == np.mean([3, 1, 2, 1, 2, 2]) and merged.decode_seconds == 4.0


def test_bench_on_a_mesh_drafts_as_on_one_device(drafter_dir, tmp_path, capsys):
    runs = {}
    for name, mesh in (("one", []), ("mesh", ["--mesh", "2x4"])):
        cli.main(["bench", "--target", TINY, "--drafter", str(drafter_dir), "--batch-sizes", "2", "--temperatures",
                  "0", "--max-new-tokens", "6", "--output", str(tmp_path / f"{name}.json"), *mesh])
        runs[name] = json.loads((tmp_path / f"{name}.json").read_text())[0]["tiny-dspark"]
    assert runs["mesh"]["tau"] == runs["one"]["tau"]
