"""A few real training steps against Gemma 3 270M (DSpark online and from the target cache, EAGLE-3 from
the cache), through the CLI."""

import json

from dspark_jax import cli


def test_real_target_trains_online_and_from_cache(tmp_path, capsys):
    data, cache = tmp_path / "data", tmp_path / "cache"
    cli.main(["prepare-data", "--out", str(data), "--num-prompts", "2", "--max-prompt-tokens", "48",
              "--max-new-tokens", "12", "--shard-size", "2", "--batch-size", "2"])
    common = ["--data", str(data), "--length", "64", "--num-features", "3"]
    cli.main(["prepare-cache", *common, "--out", str(cache), "--shard-size", "2"])
    train = ["train", "--drafter", "dspark", *common, "--steps", "2", "--batch-size", "2", "--block-size", "3",
             "--rank", "16", "--checkpoint-every", "1"]
    cli.main([*train, "--out", str(tmp_path / "online")])
    cli.main([*train, "--cache", str(cache), "--out", str(tmp_path / "cached")])
    cli.main(["train", "--drafter", "eagle3", *common, "--steps", "2", "--batch-size", "2", "--block-size", "3",
              "--cache", str(cache), "--out", str(tmp_path / "eagle3")])
    out = capsys.readouterr().out
    assert out.count("trained 2/2 steps") == 3
    for run in ("online", "cached", "eagle3"):
        losses = [json.loads(line)["loss"] for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        assert len(losses) == 2 and all(0 < loss < 100 for loss in losses)
        meta = json.loads((tmp_path / run / "drafter" / "drafter.json").read_text())
        assert meta["target"]["name"] == "gemma-3-270m-q4_k_m.gguf" and meta["drafter"]["target_layers"] == [1, 8, 15]
