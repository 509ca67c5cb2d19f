"""Drafter export/import: exact round trip, wrong target and damaged files refused, format 2 still read."""

import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import nnx
from tiny_models import tiny_config

from dspark_jax.drafter_kinds import kind_of, load_drafter, new_drafter, save_drafter
from dspark_jax.models.config import ConfigError
from dspark_jax.models.drafter_checkpoint import CONFIG as CONFIG_FILE
from dspark_jax.models.drafter_checkpoint import WEIGHTS
from dspark_jax.models.params import init_params

CONFIG = tiny_config("qwen2")
PARAMS = init_params(CONFIG, jax.random.key(0))


@pytest.mark.parametrize("kind, vocab", [("dflash", None), ("dspark", None), ("dspark", np.array([1, 4, 9, 30])),
                                         ("eagle3", np.array([2, 3]))],
                         ids=["dflash", "dspark", "dspark-reduced-vocab", "eagle3-reduced-vocab"])
def test_round_trip(tmp_path, kind, vocab):
    options = {"eagle3": {}, "dflash": {"num_layers": 2}, "dspark": {"num_layers": 2, "markov_rank": 8}}[kind]
    model = new_drafter(kind, CONFIG, vocab, seed=4, depth=5, num_features=2, **options)
    save_drafter(tmp_path, model, CONFIG, PARAMS, "tiny-qwen2")
    loaded = load_drafter(tmp_path, CONFIG, PARAMS)
    assert loaded.config == model.config and type(loaded) is type(model) and kind_of(loaded).name == kind
    if vocab is not None:
        np.testing.assert_array_equal(loaded.vocab.get_value(), vocab)
    for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(loaded))):
        np.testing.assert_array_equal(a, b)
    assert not list(tmp_path.glob("*.tmp"))


def test_wrong_target_is_refused(tmp_path):
    save_drafter(tmp_path, new_drafter("dspark", CONFIG, depth=3, num_features=2, markov_rank=8), CONFIG, PARAMS, "a")
    other_weights = init_params(CONFIG, jax.random.key(1))
    with pytest.raises(ConfigError, match="trained for target 'a'"):
        load_drafter(tmp_path, CONFIG, other_weights)
    other_arch = dataclasses.replace(CONFIG, rms_norm_eps=1e-5)
    with pytest.raises(ConfigError, match="fingerprint"):
        load_drafter(tmp_path, other_arch, PARAMS)


def test_truncated_weights_are_refused(tmp_path):
    save_drafter(tmp_path, new_drafter("dflash", CONFIG, depth=3, num_features=2), CONFIG, PARAMS, "a")
    weights = tmp_path / WEIGHTS
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ConfigError, match="truncated or corrupt"):
        load_drafter(tmp_path, CONFIG, PARAMS)


def test_missing_drafter_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="drafter.json"):
        load_drafter(tmp_path, CONFIG, PARAMS)


def test_float16_export_loads_as_float32(tmp_path):
    model = new_drafter("dspark", CONFIG, depth=3, num_features=2, markov_rank=8)
    save_drafter(tmp_path, model, CONFIG, PARAMS, "a", weights_dtype="float16")
    loaded = load_drafter(tmp_path, CONFIG, PARAMS)
    for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(loaded))):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(b, np.asarray(a).astype(np.float16).astype(a.dtype), rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["dspark", "eagle3"])
def test_format_2_files_still_load(tmp_path, kind):
    """Drafters exported before the kinds had configs of their own (format 2) load unchanged."""
    model = new_drafter(kind, CONFIG, depth=5, num_features=2, **({"markov_rank": 8} if kind == "dspark" else {}))
    save_drafter(tmp_path, model, CONFIG, PARAMS, "a")
    meta = json.loads((tmp_path / CONFIG_FILE).read_text())
    old = dict(meta["drafter"], mask_token_id=0, block_size=5, num_layers=1)
    old.pop("markov_rank", None), old.pop("steps", None)
    meta = meta | {"format_version": 2, "drafter": old, "dspark_rank": 8 if kind == "dspark" else None}
    (tmp_path / CONFIG_FILE).write_text(json.dumps(meta))
    loaded = load_drafter(tmp_path, CONFIG, PARAMS)
    assert loaded.config == model.config
    for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(loaded))):
        np.testing.assert_array_equal(a, b)
