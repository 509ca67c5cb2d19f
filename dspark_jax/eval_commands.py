"""`dspark-jax eval` (DeepSpec's evaluation with report files) and `dspark-jax bench` (tokens/s grid).

    dspark-jax eval --drafter dspark,dflash,eagle3 --tasks gsm8k,humaneval,mt-bench --limit 10 --output out/
    dspark-jax bench --drafter dspark --batch-sizes 1,4,8 --temperatures 0,1

Requests are validated (tasks, drafters, sampling) before the target loads.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dspark_jax.atomic_file import write_atomically
from dspark_jax.drafter_choice import resolve_drafter
from dspark_jax.eval_report import throughput_plot, write_report
from dspark_jax.evaluation import EvalConfig, Evaluator, benchmark, load_tasks
from dspark_jax.models.sharding import make_mesh
from dspark_jax.sampling import SamplingConfig
from dspark_jax.speculative import SpeculativeMethod
from dspark_jax.target import describe_target, load_target, resolve_weights


def _methods(args: argparse.Namespace, spec, temperatures: tuple[float, ...]):
    choices = [resolve_drafter(d, spec, args.gamma, args.tree) for d in args.drafter]
    if any(c is None for c in choices):
        raise ValueError("every --drafter must name a drafter (none / default without a shipped drafter cannot "
                         "be evaluated against autoregressive decoding, which always runs)")
    # A drafter without a confidence head skips "hardware", unless that is the only schedule asked for.
    choices = [c.with_schedule(s) for c in choices
               for s in ([s for s in args.schedule if s != "hardware" or c.has_confidence] or args.schedule)]
    names = [c.name for c in choices]
    if len(set(names)) != len(names):
        raise ValueError(f"drafter names must differ, got {names}")
    for note in filter(None, (c.calibration_note(t) for c in choices for t in temperatures)):
        print(note, file=sys.stderr)
    return choices


def _step_tokens(choices, batch_size: int) -> int:
    """Tokens of the largest target step a run makes: one form of the weights serves every method."""
    return batch_size * max(c.template.num_nodes for c in choices)


def _build(choices, target) -> list[SpeculativeMethod]:
    return [c.method(target) for c in choices]


def evaluate_command(args: argparse.Namespace) -> None:
    sampling = SamplingConfig(args.temperature, args.top_k, args.top_p)
    config = EvalConfig(args.max_new_tokens, sampling, args.batch_size, args.seed)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    tasks = load_tasks(list(args.tasks), args.limit)
    spec = describe_target(args.target)
    choices = _methods(args, spec, (args.temperature,))
    weights = resolve_weights(args.weights, spec, step_tokens=_step_tokens(choices, args.batch_size))
    target = load_target(spec, weights=weights)
    results = Evaluator(target, config, tasks).evaluate(_build(choices, target))
    written = write_report(results, args.output)
    print((args.output / "results.md").read_text())
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)


def bench_command(args: argparse.Namespace) -> None:
    if not args.batch_sizes or min(args.batch_sizes) < 1:
        raise ValueError(f"--batch-sizes must be positive, got {args.batch_sizes}")
    for t in args.temperatures:
        SamplingConfig(t)  # validates each temperature before anything loads
    task = load_tasks([args.task])[0]
    if len(task.prompts) < max(args.batch_sizes):
        raise ValueError(f"task {task.name} has {len(task.prompts)} prompts, fewer than batch {max(args.batch_sizes)}")
    spec = describe_target(args.target)
    choices = _methods(args, spec, args.temperatures)
    mesh = make_mesh(*args.mesh) if args.mesh else None
    weights = resolve_weights(args.weights, spec, mesh=mesh, step_tokens=_step_tokens(choices, max(args.batch_sizes)))
    target = load_target(spec, weights=weights, mesh=mesh)
    rows = benchmark(target, _build(choices, target), task, args.batch_sizes, args.temperatures, args.max_new_tokens)
    names = [c.name for c in choices]
    print("| T | batch | AR tok/s (per row) | " + " | ".join(f"{n} tok/s (per row; x AR, tau)" for n in names) + " |")
    print("|---|---|---|" + "---|" * len(names))
    for row in rows:
        cells = [f"{row[n]['tokens_per_s']:.1f} ({row[n]['tokens_per_s_per_row']:.1f}; {row[n]['speedup']:.2f}x, "
                 f"{row[n]['tau']:.2f})" for n in names]
        print(f"| {row['temperature']:g} | {row['batch_size']} | {row['autoregressive']:.1f} "
              f"({row['autoregressive_per_row']:.1f}) | " + " | ".join(cells) + " |")
    if args.output is not None:
        write_atomically(args.output, lambda tmp: Path(tmp).write_text(json.dumps(rows, indent=2)))
    if args.plot is not None:
        throughput_plot(rows, names, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
