"""`dspark-jax` command line (also `python -m dspark_jax`)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax.numpy as jnp

from dspark_jax import calibrate_command, eval_commands, speculative, train_commands
from dspark_jax.drafter_choice import SCHEDULES, resolve_drafter, tree_argument
from dspark_jax.generate import GenerationConfig, generate_stream, pad_prompts
from dspark_jax.models.sharding import make_mesh
from dspark_jax.sampling import SamplingConfig
from dspark_jax.target import DEFAULT_TARGET, add_weights_argument, describe_target, load_target, resolve_weights

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _mesh_shape(text: str) -> tuple[int, int]:
    try:
        data, model = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--mesh takes DATAxMODEL, e.g. 1x8; got {text!r}") from None
    return data, model


def _prompt_text(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # argv bytes that are not UTF-8 arrive as lone surrogates
        raise argparse.ArgumentTypeError("the prompt is not valid UTF-8 text: re-encode it, or pass it in a "
                                         "UTF-8 file with --prompt-file") from None
    return text


def _prompt_file(path: str) -> str:
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot read prompt file {path}: {error.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        where = "standard input" if path == "-" else path
        raise argparse.ArgumentTypeError(f"{where} is not UTF-8 text (byte {error.start}): re-encode it as "
                                         "UTF-8") from None


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate text with the target model")
    p.add_argument("--prompt", action="append", type=_prompt_text, default=[],
                   help="prompt text; repeat the flag (or mix it with --prompt-file) for a batch of prompts")
    p.add_argument("--prompt-file", action="append", type=_prompt_file, dest="prompt", metavar="PATH",
                   help="a UTF-8 file whose whole text is one prompt; - reads standard input")
    p.add_argument("--target", default=DEFAULT_TARGET,
                   help="'default' (Gemma 3 270M from its PyPI package), a .gguf file or an HF directory")
    p.add_argument("--chat", action="store_true", help="wrap each prompt as a user turn of the chat template")
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate per prompt")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="compute and cache dtype of the target")
    p.add_argument("--mesh", type=_mesh_shape, default=None,
                   help="DATAxMODEL device mesh to shard over, e.g. 1x8 (default: one device)")
    add_weights_argument(p)
    p.add_argument("--drafter", default="default",
                   help="speculative drafter: default (for the default target the fastest measured: dspark+ngram "
                        "when greedy, none when sampling, dspark under --schedule hardware; for other targets "
                        "none), none (plain decoding), dspark / dflash / eagle3 (a shipped drafter), ngram (prompt "
                        "lookup), model:PATH (a small .gguf or HF model with the target's vocabulary), the "
                        "directory of an exported drafter, or any of these drafters + '+ngram' (with prompt lookup, "
                        "per row whichever draft is expected to last longer)")
    p.add_argument("--gamma", type=int, default=None,
                   help="draft tokens per step, chain (default: the drafter's block size, else 7)")
    p.add_argument("--tree", type=tree_argument, default=None,
                   help="draft tree WIDTHxDEPTH (top-WIDTH candidates per depth), e.g. 3x4; 1xN is a chain")
    p.add_argument("--schedule", choices=SCHEDULES, default="full",
                   help="full: verify the whole draft; hardware: verify the prefix DSpark's hardware-aware "
                        "scheduler picks from the drafter's confidences and step costs profiled at start")


def _generate(args: argparse.Namespace) -> None:
    # Everything that can be wrong with the request is checked before weights are loaded or code compiled.
    if not args.prompt:
        raise ValueError("nothing to generate from: pass --prompt TEXT or --prompt-file PATH (- for stdin)")
    sampling = SamplingConfig(args.temperature, args.top_k, args.top_p)
    spec = describe_target(args.target)
    generation = GenerationConfig(args.max_new_tokens, sampling, spec.tokenizer.eos_ids)
    texts = [spec.tokenizer.chat_prompt(p) if args.chat else p for p in args.prompt]
    prompts = [spec.tokenizer.encode(t) for t in texts]
    choice = resolve_drafter(args.drafter, spec, args.gamma, args.tree, DTYPES[args.dtype], args.temperature,
                             args.schedule)
    if choice is None and args.schedule != "full":
        raise ValueError("--schedule hardware needs a drafter with a confidence head: --drafter dspark")
    if choice is not None:
        choice = choice.with_schedule(args.schedule)
        if note := choice.calibration_note(args.temperature):
            print(note, file=sys.stderr)
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


def _speculate(args, target, prompts, generation, method: speculative.SpeculativeMethod) -> None:
    result = speculative.speculative_generate(target.params, target.config, prompts, generation, method,
                                              seed=args.seed, split_timing=True)
    for i, row in enumerate(result.tokens):
        if len(prompts) > 1:
            print(f"--- [{i}] {args.prompt[i]!r}")
        print(target.tokenizer.decode(row))
    s = result.stats
    total = sum(len(r) for r in result.tokens)
    rates = " ".join(f"{r:.2f}" for r in s.accept_rate_by_position)
    verified = f", {s.mean_verified_depth:.2f} draft tokens verified per step" if method.scheduled else ""
    print(f"[{total} tokens, {s.target_steps} target steps, tau {s.tau:.2f}{verified}, accept rate by position "
          f"{rates}; prefill {s.prefill_seconds:.2f}s, decode {s.decode_seconds:.2f}s including compilation]",
          file=sys.stderr)


class _HelpWithDefaults(argparse.HelpFormatter):
    """--help shows each option's default, unless it has none or its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        default = action.default
        unset = default is None or default is False or default == [] or default == argparse.SUPPRESS
        if action.option_strings and not unset and "default" not in help_text:
            if isinstance(default, tuple):
                default = ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in default)
            help_text += f" (default: {default})"
        return help_text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="dspark-jax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    commands = ({"generate": _generate} | train_commands.add_commands(sub) | eval_commands.add_commands(sub)
                | calibrate_command.add_commands(sub))
    for command in sub.choices.values():
        command.formatter_class = _HelpWithDefaults
    args = parser.parse_args(argv)
    try:
        commands[args.command](args)
    except (ValueError, FileNotFoundError) as error:
        parser.exit(2, f"dspark-jax {args.command}: error: {error}\n")


if __name__ == "__main__":
    main()
