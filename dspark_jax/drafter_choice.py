"""Turning a `--drafter` choice into a proposer: one place for generate, eval and bench.

Choices: `none` (plain decoding), `ngram` (prompt lookup), `model:PATH` (an independent small model with the
target's vocabulary), the directory of an exported drafter, `default` (for the default target the fastest
measured choice, see `resolve_drafter`; else plain decoding), a drafter kind's name (`drafter_kinds.py`: the
shipped drafter of that kind), or any drafter choice + `+ngram` (that drafter and prompt lookup, chosen per
row and step: `proposers/hybrid.py`). Everything is validated from metadata before any weights load;
`build(target)` loads later.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from dspark_jax import drafter_files
from dspark_jax.drafter_kinds import KINDS, drafter_proposer, stored_config
from dspark_jax.drafters import TARGET_FILE, shipped_drafter
from dspark_jax.models.drafter_calibration import DrafterCalibration
from dspark_jax.models.sharding import place_proposer, placement_of
from dspark_jax.proposers.draft_model import DraftModelProposer
from dspark_jax.proposers.hybrid import HybridProposer
from dspark_jax.proposers.ngram import NgramProposer
from dspark_jax.speculative import SCHEDULES, SpeculativeMethod
from dspark_jax.target import Target, TargetSpec, describe_target, load_target
from dspark_jax.tree import TreeTemplate

DEFAULT_DEPTH = 7
HYBRID_SUFFIX = "+ngram"
DEFAULT_GREEDY = "dspark" + HYBRID_SUFFIX  # what `default` drafts with at T = 0 (measured fastest)


@dataclasses.dataclass(frozen=True)
class DrafterChoice:
    name: str
    template: TreeTemplate
    build: Callable[[Target], tuple[Any, Any]]  # target -> (proposer, proposer params)
    has_confidence: bool = False  # the drafter scores its drafts (DSpark's confidence head)
    schedule: str = "full"  # one of SCHEDULES: "hardware" verifies the prefix the scheduler picks
    calibration: DrafterCalibration = DrafterCalibration(())  # STS fits of the confidence head
    directory: Path | None = None  # where an exported drafter lives

    def calibration_note(self, temperature: float) -> str | None:
        """Why a scheduled run at this decoding temperature will use raw confidences, or None. Raises when
        the fit is shallower than the draft."""
        if self.schedule == "full":
            return None
        fit = self.calibration.for_temperature(temperature)
        if fit is not None:
            if fit.depth < self.template.depth:
                raise ValueError(f"{self.name}'s STS calibration covers draft depth {fit.depth}, not "
                                 f"{self.template.depth}: recalibrate with `dspark-jax calibrate --gamma "
                                 f"{self.template.depth}` or draft at most {fit.depth} tokens")
            return None
        fitted = ", ".join(f"{t:g}" for t, _ in self.calibration.fits) or "none"
        return (f"note: {self.name} has no STS calibration for temperature {temperature:g} (calibrated: {fitted}); "
                f"the scheduler uses raw confidences. `dspark-jax calibrate --drafter {self.directory or self.name} "
                f"--temperatures {temperature:g}` fits one")

    def with_schedule(self, schedule: str) -> DrafterChoice:
        """This drafter under `schedule` (one of SCHEDULES); the scheduled variant is named NAME+scheduler."""
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}: use one of {', '.join(SCHEDULES)}")
        if schedule == "full":
            return self
        if not self.has_confidence:
            raise ValueError(f"--schedule hardware needs a drafter with a confidence head (dspark or a DSpark "
                             f"drafter directory); {self.name} has none")
        return dataclasses.replace(self, name=f"{self.name}+scheduler", schedule=schedule)

    def method(self, target: Target) -> SpeculativeMethod:
        """The speculative method for the loaded target (loads the drafter's weights), on its mesh if it
        has one."""
        proposer, params = self.build(target)
        placement = placement_of(target.params)
        if placement is not None:
            params = place_proposer(params, placement)
        return SpeculativeMethod(proposer, params, self.template, self.schedule, self.calibration, self.name)


def resolve_drafter(choice: str, spec: TargetSpec, gamma: int | None = None, tree: TreeTemplate | None = None,
                    dtype=jnp.float32, temperature: float | None = None, schedule: str = "full"
                    ) -> DrafterChoice | None:
    """None means plain decoding. gamma / tree override the drafter's default chain of its block size.

    `default` is the fastest choice measured for the default target (docs/results.md, "Default
    generation"): DSpark with prompt lookup (`dspark+ngram`) for greedy decoding; plain decoding when
    `temperature` > 0, unless --gamma / --tree ask for drafts: whole drafts lose there, and DSpark under the
    hardware scheduler gains at most ~15 % once running but starts ~10-50 s later (profiling its step costs,
    compiling a verify pass per depth); the shipped DSpark alone under an explicit hardware schedule.
    `temperature` None (eval, bench: one choice for every temperature) means the greedy default."""
    if gamma is not None and gamma < 1:
        raise ValueError(f"--gamma must be >= 1, got {gamma}")
    if gamma is not None and tree is not None and gamma != tree.depth:
        raise ValueError(f"--gamma {gamma} contradicts --tree {tree.width}x{tree.depth}: give one")
    if choice.endswith(HYBRID_SUFFIX):
        return _hybrid(choice, spec, gamma, tree, dtype)
    depth = tree.depth if tree else gamma
    template = lambda default_depth: TreeTemplate(tree.width if tree else 1, depth or default_depth)
    if choice == "default":
        directory = shipped_drafter("dspark")
        if directory is None or spec.path.name != TARGET_FILE:
            if gamma is not None or tree is not None:
                raise ValueError("no shipped drafter for this target: pass --drafter ngram, model:PATH or a "
                                 "drafter directory with --gamma/--tree, or --drafter none")
            if directory is not None:
                print(f"note: the shipped drafter is for {TARGET_FILE}; decoding without one", file=sys.stderr)
            return None
        if schedule == "hardware":
            return _exported(directory, "dspark", spec, depth, template)
        if temperature and gamma is None and tree is None:
            print(f"note: at temperature {temperature:g} decoding plainly: no drafter here repays its start-up when "
                  "sampling (docs/results.md, \"Default generation\"); --schedule hardware speculates anyway",
                  file=sys.stderr)
            return None
        return _hybrid(DEFAULT_GREEDY, spec, gamma, tree, dtype)
    if choice == "none":
        if gamma is not None or tree is not None:
            raise ValueError("--gamma and --tree need a drafter: add --drafter ngram, model:PATH or a drafter dir")
        return None
    if choice == "ngram":
        return DrafterChoice("ngram", template(DEFAULT_DEPTH), lambda target: (NgramProposer(), None))
    if choice.startswith("model:"):
        draft = describe_target(choice.removeprefix("model:"))
        if draft.config.vocab_size != spec.config.vocab_size:
            raise ValueError(
                f"draft model vocabulary ({draft.config.vocab_size}) differs from the target's "
                f"({spec.config.vocab_size}): a draft model must share the target's tokenizer"
            )
        return DrafterChoice(choice, template(DEFAULT_DEPTH),
                             lambda target: (DraftModelProposer(draft.config), load_target(draft, dtype).params))
    if choice in KINDS:
        directory = shipped_drafter(choice)
        if directory is None:
            raise ValueError(f"no shipped {choice} drafter in this installation: train one (`dspark-jax train`) "
                             "and pass its directory")
        return _exported(directory, choice, spec, depth, template)
    if Path(choice).is_dir():
        return _exported(Path(choice), Path(choice).name, spec, depth, template)
    raise ValueError(f"unknown --drafter {choice!r}: use none, default, ngram, {', '.join(KINDS)}, model:PATH "
                     "or an exported drafter directory, optionally followed by +ngram")


def _hybrid(choice: str, spec: TargetSpec, gamma: int | None, tree: TreeTemplate | None, dtype) -> DrafterChoice:
    base_name = choice.removesuffix(HYBRID_SUFFIX)
    if base_name in ("none", "ngram"):
        raise ValueError(f"--drafter {choice}: +ngram joins prompt lookup to a drafter (e.g. dspark+ngram); "
                         f"for lookup alone pass --drafter ngram")
    base = resolve_drafter(base_name, spec, gamma, tree, dtype)
    if base is None:
        raise ValueError(f"--drafter {choice}: {base_name} is no drafter for this target; pass --drafter ngram")

    def build(target: Target):
        proposer, params = base.build(target)
        return HybridProposer(proposer), params

    return DrafterChoice(f"{base.name}{HYBRID_SUFFIX}", base.template, build, directory=base.directory)


def _exported(directory: Path, name: str, spec: TargetSpec, depth: int | None, template) -> DrafterChoice:
    meta = drafter_files.read_meta(directory)
    kind, config = stored_config(meta)
    if depth and depth > config.depth:
        raise ValueError(f"this {kind.name} drafter drafts at most {config.depth} tokens; --gamma/--tree depth must "
                         "be <= that")
    if meta["target"]["vocab_size"] != spec.config.vocab_size:
        raise ValueError(f"drafter {directory} was trained for target {meta['target']['name']!r} with a "
                         f"vocabulary of {meta['target']['vocab_size']}, not this target's {spec.config.vocab_size}")

    def build(target: Target):
        model = drafter_files.load(directory, target.config, target.params)
        return drafter_proposer(target.config, model, target.params)

    calibration = DrafterCalibration.read(directory) if kind.has_confidence else DrafterCalibration(())
    return DrafterChoice(name, template(config.depth), build, kind.has_confidence, calibration=calibration,
                         directory=directory)
