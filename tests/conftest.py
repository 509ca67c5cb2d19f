"""Test-wide set-up: 8 virtual CPU devices (for the sharding tests) before any JAX backend starts,
compiled code released after every test module, and nothing cached on disk between tests."""

import os
from pathlib import Path

os.environ["JAX_COMPILATION_CACHE_DIR"] = ""  # no persistent compilation cache (cli.main's) inside the suite

import jax  # noqa: E402
import pytest  # noqa: E402

from dspark_jax import speculative  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)


@pytest.fixture(autouse=True)
def scheduler_profiles(tmp_path, monkeypatch):
    """Scheduler cost tables are stored per test, never in the user's cache."""
    monkeypatch.setattr(speculative, "PROFILE_DIR", tmp_path / "scheduler-profiles")


@pytest.fixture(autouse=True, scope="module")
def release_compiled_code():
    """Every XLA:CPU executable kept in JAX's caches holds memory maps; the whole suite's would pass the
    kernel's vm.max_map_count (65530) and abort the process, so each module's compiled code is dropped."""
    yield
    jax.clear_caches()


class TargetLoaded(Exception):
    """Raised where a command would load the target: everything before it (validation, notes) has run."""


@pytest.fixture
def stop_at_load(monkeypatch):
    """stop_at_load(module): that module's `load_target` raises TargetLoaded instead of loading."""
    def patch(module):
        def stop(*args, **kwargs):
            raise TargetLoaded
        monkeypatch.setattr(module, "load_target", stop)
    return patch


TINY = str(Path(__file__).parent / "data" / "tiny" / "gemma3")  # a tiny random Gemma 3 checkpoint directory


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A prepare-data directory of 6 conversations (2 shards) answered by the tiny target; copy it before
    writing into it."""
    from dspark_jax import cli

    out = tmp_path_factory.mktemp("data")
    cli.main(["prepare-data", "--target", TINY, "--out", str(out), "--num-prompts", "6", "--max-prompt-tokens",
              "80", "--max-new-tokens", "8", "--shard-size", "4", "--batch-size", "3"])
    return out
