"""Atomic writes: complete file or none, no temporary left behind, ordinary permissions."""

import os
import stat

import pytest

from dspark_jax.atomic_file import write_atomically


def test_written_file_has_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_atomically(tmp_path / "a.txt", lambda tmp: open(tmp, "w").write("x"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")

    def fail(tmp):
        open(tmp, "w").write("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_atomically(target, fail)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]
