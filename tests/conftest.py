"""Test-wide set-up: 8 virtual CPU devices (for the sharding tests) before any JAX backend starts, and
compiled code released after every test module."""

import jax
import pytest

jax.config.update("jax_num_cpu_devices", 8)


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
