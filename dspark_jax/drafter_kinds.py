"""The drafter kinds: one entry per kind, and everything the rest of the project asks about a drafter.

A kind is a name, a config type (a `models.drafter_config.DrafterConfig` subclass: its fields, defaults
and draft depth), the NNX module built from it, its teacher-forced pass and objective for training, and
its proposer for the engine. The CLI's choices, checkpoints, the shipped drafters, the training step and
the engine all ask this table, so a new drafter is three files (its model, its training pass and loss,
its proposer) plus one `register` call (docs/design-notes.md, "Adding a drafter kind").

A kind is found from a model by the exact type of its config, so each kind has a config type of its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dspark_jax.models.config import ModelConfig
from dspark_jax.models.dflash import DFlashConfig, DFlashDrafter
from dspark_jax.models.draft_vocab import DraftHead
from dspark_jax.models.drafter_checkpoint import export_drafter, import_drafter
from dspark_jax.models.drafter_config import DrafterConfig
from dspark_jax.models.dspark import DSparkConfig, DSparkDrafter
from dspark_jax.models.eagle3 import Eagle3Config, Eagle3Drafter
from dspark_jax.models.params import TransformerParams
from dspark_jax.proposers.base import Proposer
from dspark_jax.proposers.block_drafter import make_dflash_proposer, make_dspark_proposer
from dspark_jax.proposers.eagle3 import make_eagle3_proposer
from dspark_jax.train.block_teacher_forcing import dflash_teacher_forced, dspark_teacher_forced
from dspark_jax.train.blocks import Blocks
from dspark_jax.train.dflash_loss import dflash_loss
from dspark_jax.train.dspark_loss import dspark_loss
from dspark_jax.train.eagle3_loss import eagle3_loss
from dspark_jax.train.eagle3_ttt import eagle3_teacher_forced

if TYPE_CHECKING:
    from dspark_jax.train.drafter_step import TrainConfig

# (model, target, target params, tokens [B, T], features [K, B, T, E], blocks, head) ->
#   (draft logits float32[B, N, γ, Vd], confidence logits [B, N, γ] or None)
TeacherForced = Callable[[nnx.Module, ModelConfig, TransformerParams, jax.Array, jax.Array, Blocks, DraftHead],
                         tuple[jax.Array, jax.Array | None]]
# (draft logits [B, N, γ, Vd], target log-probs [B, N, γ, Vd], confidence logits or None, targets int[B, N, γ]
#  in draft ids (-1 outside the draft vocabulary), valid bool[B, N, γ], train config) -> (loss, named parts)
Objective = Callable[[jax.Array, jax.Array, jax.Array | None, jax.Array, jax.Array, "TrainConfig"],
                     tuple[jax.Array, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class DrafterKind:
    name: str
    config_type: type[DrafterConfig]
    build: Callable[..., nnx.Module]  # (config, vocab: int | np.ndarray, *, rngs) -> a fresh module
    teacher_forced: TeacherForced
    objective: Objective
    proposer: Callable[[ModelConfig, nnx.Module, TransformerParams], tuple[Proposer, Any]]
    has_confidence: bool = False  # scores its drafts: the hardware-aware scheduler and STS need that
    loss_terms: tuple[str, ...] = ()  # objective terms whose weights a user may set (TrainConfig.loss)

    @property
    def fields(self) -> frozenset[str]:
        return frozenset(field.name for field in dataclasses.fields(self.config_type))

    def new_config(self, target: ModelConfig, **options: Any) -> DrafterConfig:
        """This kind's config for `target` (`DrafterConfig.for_target`); an option that is no field of it
        raises ValueError naming the kind."""
        generic = {"num_features", "depth"}
        foreign = sorted(set(options) - self.fields - generic)
        if foreign:
            raise ValueError(f"a {self.name} drafter has no {', '.join(foreign)}")
        return self.config_type.for_target(target, **options)

    def new_drafter(self, config: DrafterConfig, vocab: int | np.ndarray, seed: int = 0) -> nnx.Module:
        return self.build(config, vocab, rngs=nnx.Rngs(seed))


KINDS: dict[str, DrafterKind] = {}


def register(kind: DrafterKind) -> DrafterKind:
    if kind.name in KINDS or any(k.config_type is kind.config_type for k in KINDS.values()):
        raise ValueError(f"a drafter kind named {kind.name!r} or with config {kind.config_type.__name__} exists")
    KINDS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    del KINDS[name]


def kind_named(name: str) -> DrafterKind:
    if name not in KINDS:
        raise ValueError(f"unknown drafter kind {name!r}; kinds are {', '.join(KINDS)}")
    return KINDS[name]


def kind_of(model: nnx.Module) -> DrafterKind:
    for kind in KINDS.values():
        if type(model.config) is kind.config_type:
            return kind
    raise ValueError(f"{type(model).__name__} (config {type(model.config).__name__}) is no registered drafter kind")


def new_drafter(name: str, target: ModelConfig, vocab: int | np.ndarray | None = None, *, seed: int = 0,
                **options: Any) -> nnx.Module:
    """A fresh drafter of kind `name` for `target` (vocab None: the target's whole vocabulary); options as
    for `DrafterKind.new_config`."""
    kind = kind_named(name)
    return kind.new_drafter(kind.new_config(target, **options), target.vocab_size if vocab is None else vocab, seed)


def drafter_proposer(target: ModelConfig, model: nnx.Module, target_params: TransformerParams):
    """(proposer, params) for the speculative engine."""
    return kind_of(model).proposer(target, model, target_params)


def save_drafter(directory: Path, model: nnx.Module, target: ModelConfig, target_params: TransformerParams,
                 target_name: str, weights_dtype: str = "float32") -> None:
    export_drafter(directory, model, kind_of(model).name, target, target_params, target_name, weights_dtype)


def stored_config(meta: dict) -> tuple[DrafterKind, DrafterConfig]:
    """(kind, config) of an exported drafter from its `drafter.json` (`read_drafter_config`), no weights."""
    kind = kind_named(meta["kind"])
    return kind, kind.config_type.from_dict(meta["drafter"])


def load_drafter(directory: Path, target: ModelConfig, target_params: TransformerParams) -> nnx.Module:
    """The exported drafter in `directory`, checked against the target it was trained for."""
    def build(kind: str, fields: dict, vocab: np.ndarray) -> nnx.Module:
        # Built abstract (shapes only), since the file sets every variable: initialising the weights for
        # real compiles each initialiser, ~4 s of a one-off `generate`.
        found = kind_named(kind)
        return nnx.eval_shape(lambda: found.new_drafter(found.config_type.from_dict(fields), vocab))

    return import_drafter(directory, target, target_params, build)


def _flat(a: jax.Array) -> jax.Array:
    return a.reshape(-1, *a.shape[2:])


def _dflash_objective(draft_logits, target_log_probs, confidence, targets, valid, train):
    value = dflash_loss(_flat(draft_logits), _flat(targets), _flat(valid), train.loss.decay)
    return value, {"ce": value}


def _dspark_objective(draft_logits, target_log_probs, confidence, targets, valid, train):
    return dspark_loss(_flat(draft_logits), _flat(target_log_probs), _flat(confidence), _flat(targets), _flat(valid),
                       train.loss)


def _eagle3_objective(draft_logits, target_log_probs, confidence, targets, valid, train):
    steps_first = lambda a: jnp.moveaxis(a, 2, 0)  # eagle3_loss takes the unrolled steps first
    value = eagle3_loss(steps_first(draft_logits), steps_first(target_log_probs), steps_first(valid),
                        train.eagle3_step_decay)
    return value, {"soft_ce": value}


register(DrafterKind("dspark", DSparkConfig, DSparkDrafter, dspark_teacher_forced, _dspark_objective,
                     make_dspark_proposer, has_confidence=True, loss_terms=("ce", "tv", "conf")))
register(DrafterKind("dflash", DFlashConfig, DFlashDrafter, dflash_teacher_forced, _dflash_objective,
                     make_dflash_proposer))
register(DrafterKind("eagle3", Eagle3Config, Eagle3Drafter, eagle3_teacher_forced, _eagle3_objective,
                     make_eagle3_proposer))
