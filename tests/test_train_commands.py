"""prepare-data -> (prepare-cache) -> train -> generate with the exported drafter, end to end on a tiny target."""

import json
import shutil
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from conftest import TINY, TargetLoaded

from dspark_jax import cli, train_commands
from dspark_jax.train.regenerate import load_sequences


def test_prepared_data(data):
    assert sorted(p.name for p in data.glob("sequences-*.npz")) == ["sequences-00000.npz", "sequences-00001.npz"]
    held_out = [json.loads(line) for line in (data / "held_out.jsonl").read_text().splitlines()]
    assert len(held_out) > 100 and all(len(r["turns"]) == 1 for r in held_out)


@pytest.mark.parametrize("drafter, mode", [("dspark", "online"), ("dspark", "cache"), ("eagle3", "cache-float8")])
def test_train_then_generate(data, tmp_path, drafter, mode, capsys):
    common = ["--target", TINY, "--data", str(data), "--length", "96", "--num-features", "2"]
    extra = ["--bf16", "--draft-vocab", "40"]  # online mode also exercises bf16 and a reduced draft vocabulary
    if mode.startswith("cache"):
        dtype = "float8" if mode == "cache-float8" else "bfloat16"
        cli.main(["prepare-cache", *common, "--out", str(tmp_path / "cache"), "--shard-size", "3",
                  "--feature-dtype", dtype])
        assert f"{dtype} -> " in capsys.readouterr().out
        assert json.loads((tmp_path / "cache" / "cache.json").read_text())["feature_dtype"] == dtype
        assert (tmp_path / "cache" / "shard-00000" / "features_scale.npy").exists() == (dtype == "float8")
        extra = ["--cache", str(tmp_path / "cache")]
    extra += ["--rank", "8"] if drafter == "dspark" else []
    cli.main(["train", "--drafter", drafter, *common, *extra, "--out", str(tmp_path / "run"), "--steps", "3",
              "--batch-size", "2", "--block-size", "3", "--checkpoint-every", "2", "--anchors", "3"])
    assert "trained 3/3 steps" in capsys.readouterr().out
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 3
    exported = json.loads((tmp_path / "run" / "drafter" / "drafter.json").read_text())
    assert exported["draft_vocab_size"] == (40 if mode == "online" else 256) and exported["kind"] == drafter
    cli.main(["generate", "--target", TINY, "--prompt", "hello", "--max-new-tokens", "5",
              "--drafter", str(tmp_path / "run" / "drafter")])
    assert "tau" in capsys.readouterr().err


def test_train_needs_prepared_data(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--drafter", "dflash", "--target", TINY, "--data", str(tmp_path), "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "prepare-data" in capsys.readouterr().err


@pytest.mark.parametrize("command, flag, value", [
    ("train", "--anchors", "0"), ("train", "--steps", "0"), ("train", "--steps", "-5"),
    ("train", "--checkpoint-every", "0"), ("train", "--batch-size", "0"), ("prepare-cache", "--length", "0"),
    ("prepare-data", "--shard-size", "0"), ("prepare-data", "--batch-size", "0")])
def test_counts_must_be_positive_before_anything_loads(data, tmp_path, command, flag, value, capsys, stop_at_load):
    """--steps 0 used to export an untrained drafter with exit 0; the others failed after loading."""
    stop_at_load(train_commands)
    args = {"train": ["--drafter", "dflash", "--data", str(data)], "prepare-cache": ["--data", str(data)],
            "prepare-data": []}[command]
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, *args, "--target", TINY, "--out", str(tmp_path / "out"), flag, value])
    assert exit_info.value.code == 2 and f"{flag} must be >= 1, got {value}" in capsys.readouterr().err


def test_dspark_loss_weights_reach_the_logged_loss(data, tmp_path, capsys):
    cli.main(["train", "--drafter", "dspark", "--target", TINY, "--data", str(data), "--out", str(tmp_path / "run"),
              "--length", "96", "--num-features", "2", "--steps", "2", "--batch-size", "2", "--block-size", "3",
              "--rank", "8", "--draft-vocab", "40", "--ce-weight", "1", "--confidence-weight", "0.5"])
    for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        assert m["loss"] == pytest.approx(1.0 * m["ce"] + 0.9 * m["tv"] + 0.5 * m["conf"], rel=1e-5)


@pytest.mark.parametrize("drafter, weights, message", [
    ("dflash", ["--ce-weight", "1"], "--ce-weight weigh loss terms a dflash drafter does not have"),
    ("dspark", ["--tv-weight", "-1"], "loss weights must be >= 0"),
    ("eagle3", ["--rank", "8"], "--rank does not apply to a eagle3 drafter"),
    ("eagle3", ["--layers", "2"], "--layers does not apply to a eagle3 drafter"),
    ("dflash", ["--rank", "8"], "--rank does not apply to a dflash drafter"),
    ("eagle3", ["--lookup-inputs"], "--lookup-inputs does not apply to a eagle3 drafter"),
    ("dspark", ["--layers", "0"], "--layers must be >= 1, got 0"),
])
def test_options_of_another_kind_fail_before_loading(data, tmp_path, capsys, stop_at_load, drafter, weights, message):
    stop_at_load(train_commands)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--drafter", drafter, "--target", TINY, "--data", str(data), "--out", str(tmp_path),
                  *weights])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_cache_must_match_the_drafter_layers(data, tmp_path, capsys):
    cli.main(["prepare-cache", "--target", TINY, "--data", str(data), "--out", str(tmp_path / "cache"),
              "--length", "96", "--num-features", "2"])
    meta = tmp_path / "cache" / "cache.json"
    meta.write_text(json.dumps(json.loads(meta.read_text()) | {"target_layers": [0]}))  # made for other layers
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--drafter", "dspark", "--target", TINY, "--data", str(data), "--cache",
                  str(tmp_path / "cache"), "--out", str(tmp_path / "run"), "--num-features", "2"])
    assert exit_info.value.code == 2 and "rebuild the cache" in capsys.readouterr().err


def test_max_sequences_takes_the_first_ones_and_a_cache_must_hold_them(data, tmp_path, capsys):
    common = ["--target", TINY, "--data", str(data), "--length", "96", "--num-features", "2"]
    cache = tmp_path / "cache"
    cli.main(["prepare-cache", *common, "--out", str(cache), "--shard-size", "3", "--max-sequences", "4"])
    assert "4 sequences" in capsys.readouterr().out
    train = ["train", "--drafter", "dflash", *common, "--cache", str(cache), "--steps", "1", "--batch-size", "1",
             "--block-size", "3", "--draft-vocab", "16"]
    cli.main([*train, "--out", str(tmp_path / "run"), "--max-sequences", "4"])
    assert "trained 1/1 steps" in capsys.readouterr().out
    for bad, message in [(["--max-sequences", "5"], "caches 4 sequences, fewer than the 5 asked for"),
                         (["--max-sequences", "7"], "--max-sequences 7 exceeds the 6 sequences"),
                         (["--max-sequences", "0"], "--max-sequences must be >= 1"),
                         (["--max-sequences", "4", "--length", "64"], "pass --length 96")]:
        with pytest.raises(SystemExit) as exit_info:
            cli.main([*train, "--out", str(tmp_path / "bad"), *bad])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_a_run_directory_resumes_only_its_own_drafter(data, tmp_path, capsys, stop_at_load):
    """Training an EAGLE-3 into a DSpark run's directory used to die in orbax's restore with 169 lines."""
    stop_at_load(train_commands)
    run = ["--target", TINY, "--data", str(data), "--out", str(tmp_path / "run"), "--length", "96", "--batch-size", "2"]
    with pytest.raises(TargetLoaded):
        cli.main(["train", "--drafter", "dspark", *run])
    with pytest.raises(TargetLoaded):  # the same settings: resumable
        cli.main(["train", "--drafter", "dspark", *run, "--steps", "5"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--drafter", "eagle3", *run])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "holds the checkpoints of a drafter written with other settings: drafter 'dspark' (now 'eagle3')" in err
    assert "steps None (now 7)" in err  # EAGLE-3 counts its depth in steps


def test_a_stopped_run_exits_non_zero(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(train_commands, "run_training", lambda *args, **kwargs: 1)  # SIGTERM after step 1
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--drafter", "dflash", "--target", TINY, "--data", str(data), "--out", str(tmp_path / "run"),
                  "--length", "96", "--num-features", "2", "--steps", "4", "--batch-size", "2", "--block-size", "3"])
    assert exit_info.value.code == train_commands.STOPPED_EXIT_CODE == 143
    assert "stopped by SIGTERM at step 1 of 4" in capsys.readouterr().err
    assert (tmp_path / "run" / "drafter" / "drafter.json").exists()


def test_prepare_data_resumes_only_with_its_own_settings(data, tmp_path, capsys, stop_at_load):
    """Another --shard-size used to be accepted and report the old shards as if they held the new layout."""
    stop_at_load(train_commands)
    out = shutil.copytree(data, tmp_path / "data")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["prepare-data", "--target", TINY, "--out", str(out), "--num-prompts", "6", "--max-prompt-tokens",
                  "80", "--max-new-tokens", "8", "--shard-size", "8", "--batch-size", "3"])
    assert exit_info.value.code == 2
    assert "holds sequences written with other settings: shard_size 4 (now 8)" in capsys.readouterr().err


def test_sharegpt_answers_need_no_target_and_never_mix_with_the_targets(data, tmp_path, capsys, stop_at_load):
    """--answers sharegpt writes shards without loading the target; neither kind of directory resumes as
    the other."""
    stop_at_load(train_commands)  # loading the target would raise
    out = tmp_path / "sharegpt"
    common = ["--target", TINY, "--num-prompts", "5", "--max-prompt-tokens", "80", "--max-new-tokens", "8",
              "--shard-size", "4"]
    cli.main(["prepare-data", *common, "--out", str(out), "--answers", "sharegpt"])
    tokens, loss_mask = load_sequences(sorted(out.glob("sequences-*.npz")), 200)
    assert tokens.shape == (5, 200) and (loss_mask.sum(1) == 8).all()  # ShareGPT's answers are long: cut to 8
    for directory, answers in ((out, []), (shutil.copytree(data, tmp_path / "data"), ["--answers", "sharegpt"])):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["prepare-data", *common, "--out", str(directory), *answers])
        assert exit_info.value.code == 2 and "holds sequences written with other settings" in capsys.readouterr().err


def test_more_prompts_complete_the_last_shard(data, tmp_path):
    out = shutil.copytree(data, tmp_path / "data")
    first = (out / "sequences-00000.npz").read_bytes()
    cli.main(["prepare-data", "--target", TINY, "--out", str(out), "--num-prompts", "8", "--max-prompt-tokens",
              "80", "--max-new-tokens", "8", "--shard-size", "4", "--batch-size", "3"])
    assert (out / "sequences-00000.npz").read_bytes() == first  # complete shards are kept
    with np.load(out / "sequences-00001.npz") as shard:
        assert len(shard["lengths"]) == 4  # it held prompts 4-5 of 6; now 4-7


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_mesh_writes_the_same_cache_and_takes_the_same_steps(data, tmp_path, capsys):
    common = ["--target", TINY, "--data", str(data), "--length", "96", "--num-features", "2"]
    for name, mesh in (("one", []), ("mesh", ["--mesh", "2x4"])):
        cli.main(["prepare-cache", *common, "--out", str(tmp_path / f"cache-{name}"), "--shard-size", "3", *mesh])
    one, meshed = (np.load(tmp_path / f"cache-{name}" / "shard-00000" / "features.npy").view(ml_dtypes.bfloat16)
                   for name in ("one", "mesh"))
    np.testing.assert_allclose(meshed.astype(np.float32), one.astype(np.float32), rtol=2**-7, atol=1e-5)
    train = ["train", "--drafter", "dspark", *common, "--cache", str(tmp_path / "cache-one"), "--steps", "3",
             "--batch-size", "2", "--block-size", "3", "--anchors", "3", "--rank", "8"]
    cli.main([*train, "--out", str(tmp_path / "run-one")])
    cli.main([*train, "--out", str(tmp_path / "run-mesh"), "--mesh", "2x4", "--fsdp"])
    assert "trained 3/3 steps" in capsys.readouterr().out
    np.testing.assert_allclose(_losses(tmp_path / "run-mesh"), _losses(tmp_path / "run-one"), rtol=1e-4)


@pytest.mark.parametrize("flags, message", [
    (["--mesh", "4x2", "--batch-size", "6"], "--batch-size 6 does not split over the mesh's 4 data rows"),
    (["--fsdp"], "--fsdp splits parameters over the data axis of --mesh: pass --mesh DATAxMODEL too"),
    (["--distributed"], "--distributed shards over --mesh: pass --mesh DATAxMODEL too"),
    (["--mesh", "4x4"], "a 4x4 mesh needs 16 devices but 8 are available"),
])
def test_a_mesh_that_cannot_hold_the_run_fails_before_loading(data, tmp_path, capsys, stop_at_load, flags, message):
    stop_at_load(train_commands)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--drafter", "dflash", "--target", TINY, "--data", str(data), "--out", str(tmp_path),
                  *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
