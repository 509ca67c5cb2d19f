"""The three trainable drafter kinds in one place: their union type, the kind of a model, a fresh model of
a kind. DSpark and DFlash are `BlockDrafter`s (with and without heads); EAGLE-3 is `Eagle3Drafter`."""

from __future__ import annotations

import numpy as np
from flax import nnx

from dspark_jax.models.block_drafter import BlockDrafter
from dspark_jax.models.dflash import DrafterConfig
from dspark_jax.models.eagle3 import Eagle3Drafter

Drafter = BlockDrafter | Eagle3Drafter
KINDS = ("dspark", "dflash", "eagle3")


def drafter_kind(model: Drafter) -> str:
    if isinstance(model, Eagle3Drafter):
        return "eagle3"
    return "dspark" if model.heads is not None else "dflash"


def new_drafter(kind: str, config: DrafterConfig, vocab: int | np.ndarray, dspark_rank: int | None,
                rngs: nnx.Rngs) -> Drafter:
    """A freshly initialised drafter; dspark_rank is used by DSpark only."""
    if kind == "eagle3":
        return Eagle3Drafter(config, vocab, rngs=rngs)
    if kind in ("dspark", "dflash"):
        return BlockDrafter(config, vocab, dspark_rank if kind == "dspark" else None, rngs=rngs)
    raise ValueError(f"unknown drafter kind {kind!r}; kinds are {', '.join(KINDS)}")
