"""The drafter-kind registry: a fourth kind, registered from outside the package, trains, exports, loads and
drafts end to end through the same commands as the shipped three, and nothing outside the registry asks
which class a drafter is."""

import dataclasses
import json
import subprocess
from pathlib import Path

import jax.numpy as jnp
import pytest
from flax import nnx

from dspark_jax import cli, drafter_kinds
from dspark_jax.drafter_kinds import DrafterKind, drafter_proposer, kind_of, load_drafter
from dspark_jax.generate import GenerationConfig, generate
from dspark_jax.models.dflash import DFlashConfig, DFlashDrafter
from dspark_jax.proposers.block_drafter import make_dflash_proposer
from dspark_jax.speculative import SpeculativeMethod, speculative_generate
from dspark_jax.target import load_target
from dspark_jax.train.block_teacher_forcing import dflash_teacher_forced
from dspark_jax.train.dflash_loss import cross_entropy
from dspark_jax.tree import TreeTemplate

ROOT = Path(__file__).parent.parent
TINY = str(ROOT / "tests" / "data" / "tiny" / "gemma3")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ToyConfig(DFlashConfig):
    """A test double's config: DFlash's fields under a type of its own (the registry keys kinds by it)."""


class ToyDrafter(DFlashDrafter):
    """A test double: DFlash's backbone trained with an unweighted cross-entropy of its own."""


CALLS = {"teacher_forced": 0, "objective": 0}


def toy_teacher_forced(*args):
    CALLS["teacher_forced"] += 1  # counted while tracing: the step asked the registry for this kind's pass
    return dflash_teacher_forced(*args)


def toy_objective(draft_logits, target_log_probs, confidence, targets, valid, train):
    CALLS["objective"] += 1
    counted = valid & (targets >= 0)
    value = jnp.sum(cross_entropy(draft_logits, targets) * counted) / jnp.maximum(jnp.sum(counted), 1)
    return value, {"ce": value}


@pytest.fixture
def toy_kind():
    kind = drafter_kinds.register(DrafterKind("toy", ToyConfig, ToyDrafter, toy_teacher_forced, toy_objective,
                                              make_dflash_proposer))
    yield kind
    drafter_kinds.unregister("toy")


def test_a_fourth_kind_trains_exports_loads_and_drafts(toy_kind, tmp_path, capsys):
    data, run = tmp_path / "data", tmp_path / "run"
    cli.main(["prepare-data", "--target", TINY, "--out", str(data), "--num-prompts", "4", "--max-prompt-tokens",
              "80", "--max-new-tokens", "8", "--shard-size", "4", "--batch-size", "4"])
    cli.main(["train", "--drafter", "toy", "--target", TINY, "--data", str(data), "--out", str(run), "--length", "96",
              "--num-features", "2", "--steps", "2", "--batch-size", "2", "--block-size", "3", "--layers", "1"])
    assert "trained 2/2 steps" in capsys.readouterr().out
    assert CALLS["teacher_forced"] > 0 and CALLS["objective"] > 0
    assert json.loads((run / "drafter" / "drafter.json").read_text())["kind"] == "toy"

    target = load_target(TINY)
    model = load_drafter(run / "drafter", target.config, target.params)
    assert type(model) is ToyDrafter and kind_of(model) is toy_kind and model.config.depth == 3
    prompts = [[5, 6, 7, 8, 5, 6], [9, 3]]
    generation = GenerationConfig(max_new_tokens=10)
    proposer, params = drafter_proposer(target.config, model, target.params)
    result = speculative_generate(target.params, target.config, prompts, generation,
                                  SpeculativeMethod(proposer, params, TreeTemplate(1, 3)))
    assert result.tokens == generate(target.params, target.config, prompts, generation)  # lossless

    cli.main(["generate", "--target", TINY, "--prompt", "hello", "--max-new-tokens", "6", "--drafter",
              str(run / "drafter")])
    drafted = capsys.readouterr()
    cli.main(["generate", "--target", TINY, "--prompt", "hello", "--max-new-tokens", "6", "--drafter", "none"])
    assert drafted.out == capsys.readouterr().out and "tau" in drafted.err


def test_kinds_are_unique_and_unknown_ones_are_named(toy_kind):
    with pytest.raises(ValueError, match="exists"):
        drafter_kinds.register(dataclasses.replace(toy_kind, name="other"))  # the same config type
    with pytest.raises(ValueError, match="unknown drafter kind 'nope'; kinds are dspark, dflash, eagle3, toy"):
        drafter_kinds.kind_named("nope")


def test_an_unregistered_drafter_is_named():
    config = load_target(TINY).config
    stray = ToyDrafter(ToyConfig.for_target(config, num_features=1), config.vocab_size, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="ToyDrafter \\(config ToyConfig\\) is no registered drafter kind"):
        kind_of(stray)


def test_only_the_registry_asks_which_class_a_drafter_is():
    pattern = r"isinstance(.*\(DSpark\|DFlash\|Eagle3\)"
    found = subprocess.run(["git", "grep", "-n", pattern, "--", "*.py", ":!tests/test_drafter_kinds.py"],
                           cwd=ROOT, capture_output=True, text=True)
    assert found.returncode == 1 and found.stdout == "", found.stdout  # 1: git grep found nothing
