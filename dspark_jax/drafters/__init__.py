"""Drafters trained for the default target (Gemma 3 270M, Q4_K_M), shipped inside the package so that
`dspark-jax generate` drafts with DSpark out of the box. Each is an exported drafter directory
(`drafter.json` + `drafter.safetensors`, see models/drafter_checkpoint.py); docs/results.md says how they
were trained and how well they draft."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from dspark_jax.drafter_kinds import KINDS

TARGET_FILE = "gemma-3-270m-q4_k_m.gguf"  # the file name of the default target they were trained for


def shipped_drafter(kind: str) -> Path | None:
    """Directory of the shipped drafter of this kind, None when the package holds none."""
    if kind not in KINDS:
        raise ValueError(f"unknown drafter kind {kind!r}; kinds are {', '.join(KINDS)}")
    directory = Path(str(resources.files(__package__).joinpath(kind)))
    return directory if (directory / "drafter.json").is_file() else None
