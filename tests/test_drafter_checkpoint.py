"""Drafter export/import: exact round trip, wrong target and damaged files refused."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx
from tiny_models import tiny_config

from dspark_jax.models.block_drafter import BlockDrafter
from dspark_jax.models.config import ConfigError
from dspark_jax.models.dflash import DrafterConfig
from dspark_jax.models.drafter_checkpoint import WEIGHTS, export_drafter, import_drafter
from dspark_jax.models.drafters import drafter_kind
from dspark_jax.models.eagle3 import Eagle3Drafter
from dspark_jax.models.params import init_params

CONFIG = tiny_config("qwen2")
PARAMS = init_params(CONFIG, jax.random.key(0))


@pytest.mark.parametrize("kind, vocab", [("dflash", None), ("dspark", None), ("dspark", np.array([1, 4, 9, 30])),
                                         ("eagle3", np.array([2, 3]))],
                         ids=["dflash", "dspark", "dspark-reduced-vocab", "eagle3-reduced-vocab"])
def test_round_trip(tmp_path, kind, vocab):
    drafter = DrafterConfig.for_target(CONFIG, num_layers=1 if kind == "eagle3" else 2, block_size=5, num_features=2)
    vocab_arg = CONFIG.vocab_size if vocab is None else vocab
    if kind == "eagle3":
        model = Eagle3Drafter(drafter, vocab_arg, rngs=nnx.Rngs(4))
    else:
        model = BlockDrafter(drafter, vocab_arg, 8 if kind == "dspark" else None, rngs=nnx.Rngs(4))
    export_drafter(tmp_path, model, CONFIG, PARAMS, "tiny-qwen2")
    loaded = import_drafter(tmp_path, CONFIG, PARAMS)
    assert loaded.config == drafter and type(loaded) is type(model) and drafter_kind(loaded) == kind
    if vocab is not None:
        np.testing.assert_array_equal(loaded.vocab.get_value(), vocab)
    for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(loaded))):
        np.testing.assert_array_equal(a, b)
    assert not list(tmp_path.glob("*.tmp"))


def test_wrong_target_is_refused(tmp_path):
    drafter = DrafterConfig.for_target(CONFIG, num_layers=1, block_size=3, num_features=2)
    export_drafter(tmp_path, BlockDrafter(drafter, CONFIG.vocab_size, 8, rngs=nnx.Rngs(0)), CONFIG, PARAMS, "a")
    other_weights = init_params(CONFIG, jax.random.key(1))
    with pytest.raises(ConfigError, match="trained for target 'a'"):
        import_drafter(tmp_path, CONFIG, other_weights)
    other_arch = dataclasses.replace(CONFIG, rms_norm_eps=1e-5)
    with pytest.raises(ConfigError, match="fingerprint"):
        import_drafter(tmp_path, other_arch, PARAMS)


def test_truncated_weights_are_refused(tmp_path):
    drafter = DrafterConfig.for_target(CONFIG, num_layers=1, block_size=3, num_features=2)
    export_drafter(tmp_path, BlockDrafter(drafter, CONFIG.vocab_size, None, rngs=nnx.Rngs(0)), CONFIG, PARAMS, "a")
    weights = tmp_path / WEIGHTS
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ConfigError, match="truncated or corrupt"):
        import_drafter(tmp_path, CONFIG, PARAMS)


def test_missing_drafter_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="drafter.json"):
        import_drafter(tmp_path, CONFIG, PARAMS)


def test_float16_export_loads_as_float32(tmp_path):
    drafter = DrafterConfig.for_target(CONFIG, num_layers=1, block_size=3, num_features=2)
    model = BlockDrafter(drafter, CONFIG.vocab_size, 8, rngs=nnx.Rngs(0))
    export_drafter(tmp_path, model, CONFIG, PARAMS, "a", weights_dtype="float16")
    loaded = import_drafter(tmp_path, CONFIG, PARAMS)
    for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(loaded))):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(b, np.asarray(a).astype(np.float16).astype(a.dtype), rtol=0, atol=0)
