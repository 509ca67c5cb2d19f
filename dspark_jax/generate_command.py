"""`dspark-jax generate`: text from the target, plainly or speculatively with the drafter `--drafter` names.

Everything that can be wrong with the request is checked before weights are loaded or code compiled.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax.numpy as jnp

from dspark_jax import speculative
from dspark_jax.batch_generation import generate_file, read_requests
from dspark_jax.drafter_choice import DrafterChoice, resolve_drafter
from dspark_jax.generate import GenerationConfig, generate_stream, pad_prompts
from dspark_jax.models.sharding import make_mesh
from dspark_jax.sampling import SamplingConfig
from dspark_jax.target import describe_target, load_target, resolve_weights

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}  # the names of command_names.DTYPE_NAMES


def generate_command(args: argparse.Namespace) -> None:
    if args.input is not None:
        _generate_file(args)
        return
    if args.output is not None or args.batch_size is not None:
        raise ValueError("--output and --batch-size go with --input FILE (a JSONL file of prompts)")
    if not args.prompt:
        raise ValueError("nothing to generate from: pass --prompt TEXT, --prompt-file PATH (- for stdin) or "
                         "--input FILE.jsonl")
    sampling = SamplingConfig(args.temperature, args.top_k, args.top_p)
    spec = describe_target(args.target)
    generation = GenerationConfig(args.max_new_tokens, sampling, spec.tokenizer.eos_ids)
    texts = [spec.tokenizer.chat_prompt(p) if args.chat else p for p in args.prompt]
    prompts = [spec.tokenizer.encode(t) for t in texts]
    choice = _drafter_choice(args, spec, args.temperature)
    pad_prompts(spec.config, prompts, generation, reserve=choice.template.num_nodes if choice else 0)
    mesh = make_mesh(*args.mesh) if args.mesh else None
    step_tokens = len(prompts) * (choice.template.num_nodes if choice else 1)
    weights = resolve_weights(args.weights, spec, DTYPES[args.dtype], mesh, step_tokens)  # fails before loading

    target = load_target(spec, dtype=DTYPES[args.dtype], mesh=mesh, weights=weights)
    if choice is not None:
        _speculate(args, target, prompts, generation, choice.method(target))
        return
    start, printed, rows = time.perf_counter(), "", []
    for rows in generate_stream(target.params, target.config, prompts, generation, seed=args.seed):
        if len(prompts) == 1:
            text = target.tokenizer.decode(rows[0])
            sys.stdout.write(text[len(printed):])
            sys.stdout.flush()
            printed = text
    seconds = time.perf_counter() - start
    if len(prompts) > 1:
        for i, row in enumerate(rows):
            print(f"--- [{i}] {args.prompt[i]!r}\n{target.tokenizer.decode(row)}")
    else:
        print()
    total = sum(len(r) for r in rows)
    print(f"[{total} tokens in {seconds:.2f}s, {total / seconds:.1f} tok/s including compilation]", file=sys.stderr)


def _drafter_choice(args: argparse.Namespace, spec, temperature: float) -> DrafterChoice | None:
    """--drafter under --schedule for lines decoded at `temperature` (None: plain decoding), its notes printed."""
    choice = resolve_drafter(args.drafter, spec, args.gamma, args.tree, DTYPES[args.dtype], temperature,
                             args.schedule)
    if choice is None and args.schedule != "full":
        raise ValueError("--schedule hardware needs a drafter with a confidence head: --drafter dspark")
    if choice is not None:
        choice = choice.with_schedule(args.schedule)
        if note := choice.calibration_note(temperature):
            print(note, file=sys.stderr)
    return choice


def _generate_file(args: argparse.Namespace) -> None:
    """--input FILE --output FILE: every line of the file, resumable (batch_generation.py)."""
    if args.prompt:
        raise ValueError("--input excludes --prompt and --prompt-file: put every prompt in the file")
    if args.output is None:
        raise ValueError("--input needs --output PATH (JSONL; resumed when it exists)")
    batch_size = 8 if args.batch_size is None else args.batch_size
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    spec = describe_target(args.target)
    defaults = GenerationConfig(args.max_new_tokens, SamplingConfig(args.temperature, args.top_k, args.top_p),
                                spec.tokenizer.eos_ids)
    requests, errors = read_requests(args.input, spec, defaults, args.chat)  # checked before the target loads
    temperatures = sorted({r.generation.sampling.temperature for r in requests}) or [args.temperature]
    choices = {t: _drafter_choice(args, spec, t) for t in temperatures}
    mesh = make_mesh(*args.mesh) if args.mesh else None
    nodes = max(c.template.num_nodes if c else 1 for c in choices.values())
    weights = resolve_weights(args.weights, spec, DTYPES[args.dtype], mesh, batch_size * nodes)

    target = load_target(spec, dtype=DTYPES[args.dtype], mesh=mesh, weights=weights)
    methods = {t: c.method(target) if c else None for t, c in choices.items()}
    summary = generate_file(target, args.input, args.output, defaults, lambda t: methods[t], batch_size,
                            args.chat, args.seed, read=(requests, errors))
    print(f"[{summary.describe()}; wrote {args.output}]", file=sys.stderr)


def _speculate(args, target, prompts, generation, method: speculative.SpeculativeMethod) -> None:
    if len(prompts) == 1:  # tokens appear as the target accepts them
        printed = ""
        for result in speculative.speculative_stream(target.params, target.config, prompts, generation, method,
                                                     seed=args.seed):
            text = target.tokenizer.decode(result.tokens[0])
            sys.stdout.write(text[len(printed):])
            sys.stdout.flush()
            printed = text
        print()
    else:
        result = speculative.speculative_generate(target.params, target.config, prompts, generation, method,
                                                  seed=args.seed, split_timing=True)
        for i, row in enumerate(result.tokens):
            print(f"--- [{i}] {args.prompt[i]!r}")
            print(target.tokenizer.decode(row))
    s = result.stats
    total = sum(len(r) for r in result.tokens)
    rates = " ".join(f"{r:.2f}" for r in s.accept_rate_by_position)
    verified = f", {s.mean_verified_depth:.2f} draft tokens verified per step" if method.scheduled else ""
    print(f"[{total} tokens, {s.target_steps} target steps, tau {s.tau:.2f}{verified}, accept rate by position "
          f"{rates}; prefill {s.prefill_seconds:.2f}s, decode {s.decode_seconds:.2f}s including compilation]",
          file=sys.stderr)
