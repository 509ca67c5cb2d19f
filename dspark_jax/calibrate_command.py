"""`dspark-jax calibrate`: fit sequential temperature scaling for a DSpark drafter's scheduler.

    dspark-jax calibrate --drafter dspark --temperatures 0,1 --limit 32

Decodes held-out prompts (by default ShareGPT's held-out split, which no drafter trains on) with whole
drafts verified, fits the per-position temperatures (`temperature_scaling.py`) for each decoding
temperature, and stores them in the drafter's directory (`sts.json`), where `--schedule hardware` finds
them. Each temperature's fit is written as soon as it is done, so a killed run keeps what it finished.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

import numpy as np

from dspark_jax.command_names import HELD_OUT
from dspark_jax.drafter_choice import resolve_drafter
from dspark_jax.evaluation import EvalConfig, Evaluator, Task, load_tasks
from dspark_jax.models.drafter_calibration import CALIBRATION_FILE
from dspark_jax.sampling import SamplingConfig
from dspark_jax.target import describe_target, load_target, resolve_weights
from dspark_jax.temperature_scaling import fit_sequential_temperatures, survival_ece
from dspark_jax.train.sharegpt import held_out_prompts, human_turns


def _prompts(source: str) -> tuple[str, ...]:
    if source == HELD_OUT:
        return tuple(held_out_prompts(human_turns()))
    return load_tasks([source])[0].prompts


def calibrate_command(args: argparse.Namespace) -> None:
    for name in ("limit", "max_prompt_tokens", "max_new_tokens", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    samplings = [SamplingConfig(t) for t in args.temperatures]
    if not samplings:
        raise ValueError("--temperatures needs at least one decoding temperature")
    texts = _prompts(args.prompts)
    spec = describe_target(args.target)
    choice = resolve_drafter(args.drafter, spec, args.gamma)
    if choice is None or not choice.has_confidence or choice.directory is None:
        raise ValueError(f"--drafter {args.drafter} is not a DSpark drafter directory: only DSpark has a confidence "
                         "head to calibrate")
    weights = resolve_weights(args.weights, spec, step_tokens=args.batch_size * choice.template.num_nodes)
    if not os.access(choice.directory, os.W_OK):
        raise ValueError(f"cannot write {choice.directory / CALIBRATION_FILE}: copy the drafter directory somewhere "
                         "writable and pass that")
    tokenizer = spec.tokenizer
    fits = (p for p in texts if len(tokenizer.encode(tokenizer.chat_prompt(p))) <= args.max_prompt_tokens)
    prompts = list(itertools.islice(fits, args.limit))  # tokenizes only until the limit is reached
    if not prompts:
        raise ValueError(f"no prompt of {args.prompts} fits --max-prompt-tokens {args.max_prompt_tokens}")

    target = load_target(spec, weights=weights)
    method = choice.method(target)
    config = EvalConfig(args.max_new_tokens, batch_size=args.batch_size, seed=args.seed)
    evaluator = Evaluator(target, config, [Task("calibration", tuple(prompts))])
    calibration = choice.calibration
    print(f"{choice.name}: {len(prompts)} prompts of {args.prompts}, {args.max_new_tokens} new tokens, "
          f"γ = {choice.template.depth}, whole drafts verified")
    for sampling in samplings:
        _, _, stats = evaluator.run(method, evaluator.prompts["calibration"], args.max_new_tokens, sampling,
                                    timed=False, progress=f"temperature {sampling.temperature:g}")
        confidence, accepted = stats.whole_drafts()
        fit = fit_sequential_temperatures(confidence, accepted)
        calibration = calibration.with_fit(sampling.temperature, fit)
        calibration.write(choice.directory)
        raw, calibrated = survival_ece(confidence, accepted), survival_ece(np.asarray(fit.apply(confidence)), accepted)
        print(f"\ntemperature {sampling.temperature:g}: {len(accepted)} drafts")
        print("| position k | P(first k accepted) | mean raw a_k | T_k | ECE of a_k raw | ECE of a_k with STS |")
        print("|---|---|---|---|---|---|")
        survival = np.cumprod(confidence, axis=1).mean(axis=0)
        for k in range(choice.template.depth):
            print(f"| {k + 1} | {np.mean(accepted >= k + 1):.3f} | {survival[k]:.3f} | {fit.temperatures[k]:.3g} "
                  f"| {raw[k]:.3f} | {calibrated[k]:.3f} |")
    print(f"\nwrote {choice.directory / CALIBRATION_FILE}", file=sys.stderr)

