"""A drafter directory in the Hugging Face layout other projects load: `config.json` + `model.safetensors`.

Written atomically (a killed export leaves the previous files or none, never half of one). Read with the
JAX backend of safetensors, since DeepSpec saves bfloat16, which NumPy cannot hold; every float tensor comes
back as float32 NumPy, integers and booleans as they are.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.flax import load_file
from safetensors.numpy import save_file

from dspark_jax.atomic_file import write_atomically
from dspark_jax.models.config import ConfigError

CONFIG, WEIGHTS = "config.json", "model.safetensors"


def is_hf_drafter(directory: Path) -> bool:
    return (Path(directory) / CONFIG).is_file()


def read_config(directory: Path) -> dict:
    path = Path(directory) / CONFIG
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: not a readable JSON config ({error})") from None


def read_tensors(directory: Path) -> dict[str, np.ndarray]:
    """Every tensor of the directory's safetensors files (one, or the shards of a sharded save)."""
    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        raise ConfigError(f"{directory}: no *.safetensors file beside {CONFIG}")
    tensors = {}
    for path in files:
        try:
            loaded = load_file(path)
        except (SafetensorError, OSError) as error:
            raise ConfigError(f"{path}: file is truncated or corrupt ({error})") from None
        for name, value in loaded.items():
            array = np.asarray(value.astype("float32") if np.issubdtype(value.dtype, np.floating) else value)
            tensors[name] = array
    return tensors


def write_drafter(directory: Path, config: dict, tensors: dict[str, np.ndarray], dtype: str) -> None:
    """Float tensors in `dtype` (float32 or float16), then config.json last: a directory with a config
    always has the weights it describes."""
    if dtype not in ("float32", "float16"):
        raise ValueError(f"--dtype must be float32 or float16, got {dtype!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cast = {name: np.ascontiguousarray(t.astype(dtype) if np.issubdtype(t.dtype, np.floating) else t)
            for name, t in tensors.items()}
    write_atomically(directory / WEIGHTS, lambda tmp: save_file(cast, tmp, metadata={"format": "pt"}))
    config = config | {"torch_dtype": dtype}
    write_atomically(directory / CONFIG, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"))
