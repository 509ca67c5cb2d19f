"""Exporting and importing a trained drafter of any kind: `drafter.safetensors` + `drafter.json`.

Only the drafter's own weights and its draft vocabulary are stored (embedding and LM head stay the target's);
the JSON names the kind and holds its config, and the caller that knows the kinds
(`dspark_jax/drafter_kinds.py`) builds the module the weights are read into. The JSON names the target the
drafter was trained against by a fingerprint of its config and embedding, so loading a drafter against another
target fails with a message instead of drafting garbage. Both files are written atomically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from dspark_jax.atomic_file import write_atomically
from dspark_jax.kernels.linear import lookup
from dspark_jax.models.config import ConfigError, ModelConfig
from dspark_jax.models.draft_vocab import VocabMap
from dspark_jax.models.params import TransformerParams

WEIGHTS, CONFIG = "drafter.safetensors", "drafter.json"
VOCAB_KEY = "vocab"  # every drafter's attribute holding the draft → target id map
FORMAT_VERSION = 3
# (kind, config fields, draft → target ids) -> a module of that kind for the file to fill (it may be abstract:
# nnx.eval_shape)
BuildDrafter = Callable[[str, dict, np.ndarray], nnx.Module]


def _host(array) -> np.ndarray:
    """The whole value of an array, also of one that spans devices of other processes (then a collective:
    every process calls it, as every process runs the same export)."""
    if isinstance(array, jax.Array) and not array.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return np.asarray(array)


def target_fingerprint(config: ModelConfig, params: TransformerParams) -> str:
    """Identity of a target: its architecture plus a sample of its embedding (distinguishes fine-tunes)."""
    rows = jnp.arange(0, params.embed.shape[0], max(1, params.embed.shape[0] // 64))
    sample = _host(lookup(params.embed, rows)[:, :64]).astype(np.float32)
    return hashlib.sha256(repr(config).encode() + sample.tobytes()).hexdigest()[:16]


def export_drafter(directory: Path, model: nnx.Module, kind: str, target: ModelConfig,
                   target_params: TransformerParams, target_name: str, weights_dtype: str = "float32") -> None:
    """Writes `model` (a drafter of `kind`, its dataclass config at `model.config`). weights_dtype "float16"
    halves the file (for shipping); loading casts back to float32. Across processes every one calls it
    (the sharded arrays are gathered) and process 0 writes."""
    if weights_dtype not in ("float32", "float16"):
        raise ValueError(f"weights_dtype must be float32 or float16, got {weights_dtype!r}")
    cast = lambda a: a.astype(weights_dtype) if np.issubdtype(a.dtype, np.floating) else a
    arrays = {name: cast(_host(variable.get_value())) for name, variable in _stored(model)}
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "drafter": dataclasses.asdict(model.config),
        "draft_vocab_size": int(model.vocab.get_value().shape[0]),
        "target": {"name": target_name, "family": target.family, "vocab_size": target.vocab_size,
                   "hidden_size": target.hidden_size, "fingerprint": target_fingerprint(target, target_params)},
    }
    if jax.process_index() != 0:
        return
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_atomically(directory / WEIGHTS, lambda tmp: save_file(arrays, tmp))
    write_atomically(directory / CONFIG, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2)))


def read_drafter_config(directory: Path) -> dict:
    """The JSON description alone (cheap: used to validate a request before loading anything)."""
    path = Path(directory) / CONFIG
    if not path.exists():
        raise FileNotFoundError(f"{directory} is not an exported drafter: {CONFIG} is missing")
    meta = json.loads(path.read_text())
    if meta.get("format_version") == 2:
        meta = _from_format_2(meta)
    if meta.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{path}: unsupported drafter format {meta.get('format_version')!r}")
    return meta


def _from_format_2(meta: dict) -> dict:
    """Format 2 (to 2026-12-01) gave every kind DFlash's config, DSpark's Markov rank beside it; the weights
    are the same."""
    drafter = dict(meta["drafter"])
    if meta["kind"] == "dspark":
        drafter["markov_rank"] = meta["dspark_rank"]
    if meta["kind"] == "eagle3":
        drafter["steps"] = drafter.pop("block_size")
        del drafter["mask_token_id"], drafter["num_layers"]
    upgraded = {key: value for key, value in meta.items() if key != "dspark_rank"}
    return upgraded | {"format_version": FORMAT_VERSION, "drafter": drafter}


def check_drafter_target(meta: dict, target: ModelConfig, target_params: TransformerParams) -> None:
    expected, actual = meta["target"]["fingerprint"], target_fingerprint(target, target_params)
    if expected != actual:
        raise ConfigError(
            f"this drafter was trained for target {meta['target']['name']!r} ({meta['target']['family']}, "
            f"fingerprint {expected}) but the target given has fingerprint {actual}: load it with the target "
            "it was trained for, or train a drafter for this target"
        )


def import_drafter(directory: Path, target: ModelConfig, target_params: TransformerParams,
                   build: BuildDrafter) -> nnx.Module:
    """The drafter stored in `directory`, checked against the target, built by `build` and filled."""
    meta = read_drafter_config(directory)
    check_drafter_target(meta, target, target_params)
    try:
        arrays = load_file(Path(directory) / WEIGHTS)
    except (SafetensorError, OSError) as error:
        raise ConfigError(f"{Path(directory) / WEIGHTS}: file is truncated or corrupt ({error})") from None
    vocab = arrays.get(VOCAB_KEY)
    if vocab is None or vocab.shape != (meta["draft_vocab_size"],) or vocab.max(initial=0) >= target.vocab_size:
        raise ConfigError(f"{directory}: the draft vocabulary map {VOCAB_KEY!r} is missing or does not fit the target")
    model = build(meta["kind"], meta["drafter"], vocab)
    stored = _stored(model)
    if len(stored) != len(nnx.to_flat_state(nnx.state(model))):
        raise ValueError(f"{type(model).__name__} holds state a drafter file does not store: `build` may return "
                         "it abstract (nnx.eval_shape) only when the file sets all of it")
    missing = [name for name, _ in stored if name not in arrays]
    if missing or len(arrays) != len(stored):
        raise ConfigError(f"{directory}: weights do not match {CONFIG} (missing e.g. {missing[:3]})")
    for name, variable in stored:
        variable.set_value(jax.numpy.asarray(arrays[name], variable.get_value().dtype))
    return model


def _stored(model: nnx.Module) -> list[tuple[str, nnx.Variable]]:
    """(name, variable) of everything a drafter file holds: trained parameters and the vocabulary map."""
    flat = nnx.to_flat_state(nnx.state(model, (nnx.Param, VocabMap)))
    return [("/".join(map(str, path)), variable) for path, variable in flat]
