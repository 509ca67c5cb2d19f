"""`dspark-jax` command line (also `python -m dspark_jax`)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax.numpy as jnp

from dspark_jax import speculative, train_commands
from dspark_jax.generate import GenerationConfig, generate_stream, pad_prompts
from dspark_jax.models.drafter_checkpoint import import_drafter, read_drafter_config
from dspark_jax.models.sharding import make_mesh
from dspark_jax.proposers.draft_model import DraftModelProposer
from dspark_jax.proposers.ngram import NgramProposer
from dspark_jax.proposers.trained import drafter_proposer
from dspark_jax.sampling import SamplingConfig
from dspark_jax.target import DEFAULT_TARGET, TargetSpec, describe_target, load_target
from dspark_jax.tree import TreeTemplate

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _mesh_shape(text: str) -> tuple[int, int]:
    try:
        data, model = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--mesh takes DATAxMODEL, e.g. 1x8; got {text!r}") from None
    return data, model


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate text with the target model")
    p.add_argument("--prompt", action="append", required=True,
                   help="prompt text; repeat the flag for a batch of prompts")
    p.add_argument("--target", default=DEFAULT_TARGET,
                   help="'default' (Gemma 3 270M from its PyPI package), a .gguf file or an HF directory")
    p.add_argument("--chat", action="store_true", help="wrap each prompt as a user turn of the chat template")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--mesh", type=_mesh_shape, default=None,
                   help="DATAxMODEL device mesh to shard over, e.g. 1x8 (default: one device)")
    p.add_argument("--drafter", default="none",
                   help="speculative drafter: none (plain decoding), ngram (prompt lookup), model:PATH "
                        "(a small .gguf or HF model with the target's vocabulary), or the directory of an "
                        "exported DFlash/DSpark drafter")
    p.add_argument("--gamma", type=int, default=None,
                   help="draft tokens per step, chain (default: the drafter's block size, else 7)")
    p.add_argument("--tree", type=TreeTemplate.parse, default=None,
                   help="draft tree WIDTHxDEPTH (top-WIDTH candidates per depth), e.g. 3x4; 1xN is a chain")


def _drafter(args: argparse.Namespace, spec: TargetSpec):
    """(template, build) for --drafter/--gamma/--tree, validated before any weights load; `build(target)`
    later returns (proposer, proposer params). (None, None) means plain decoding."""
    if args.drafter == "none":
        if args.gamma is not None or args.tree is not None:
            raise ValueError("--gamma and --tree need a drafter: add --drafter ngram, model:PATH or a drafter dir")
        return None, None
    if args.gamma is not None and args.tree is not None and args.gamma != args.tree.depth:
        raise ValueError(f"--gamma {args.gamma} contradicts --tree {args.tree.width}x{args.tree.depth}: give one")
    chosen_depth = args.tree.depth if args.tree else args.gamma
    template = lambda default_depth: TreeTemplate(args.tree.width if args.tree else 1, chosen_depth or default_depth)
    dtype = DTYPES[args.dtype]
    if args.drafter == "ngram":
        return template(7), lambda target: (NgramProposer(), None)
    if args.drafter.startswith("model:"):
        draft = describe_target(args.drafter.removeprefix("model:"))
        if draft.config.vocab_size != spec.config.vocab_size:
            raise ValueError(
                f"draft model vocabulary ({draft.config.vocab_size}) differs from the target's "
                f"({spec.config.vocab_size}): a draft model must share the target's tokenizer"
            )
        return template(7), lambda target: (DraftModelProposer(draft.config), load_target(draft, dtype).params)
    if Path(args.drafter).is_dir():
        meta = read_drafter_config(Path(args.drafter))
        block_size = meta["drafter"]["block_size"]
        if chosen_depth and chosen_depth > block_size:
            raise ValueError(f"this drafter drafts blocks of {block_size} tokens; --gamma/--tree depth must be <= that")
        if meta["target"]["vocab_size"] != spec.config.vocab_size:
            raise ValueError(f"drafter {args.drafter} was trained for target {meta['target']['name']!r} with a "
                             f"vocabulary of {meta['target']['vocab_size']}, not this target's "
                             f"{spec.config.vocab_size}")

        def build(target):
            model = import_drafter(Path(args.drafter), target.config, target.params)
            return drafter_proposer(target.config, model, target.params)

        return template(block_size), build
    raise ValueError(f"unknown --drafter {args.drafter!r}: use none, ngram, model:PATH or an exported drafter dir")


def _generate(args: argparse.Namespace) -> None:
    # Everything that can be wrong with the request is checked before weights are loaded or code compiled.
    sampling = SamplingConfig(args.temperature, args.top_k, args.top_p)
    spec = describe_target(args.target)
    generation = GenerationConfig(args.max_new_tokens, sampling, spec.tokenizer.eos_ids)
    texts = [spec.tokenizer.chat_prompt(p) if args.chat else p for p in args.prompt]
    prompts = [spec.tokenizer.encode(t) for t in texts]
    template, build_proposer = _drafter(args, spec)
    pad_prompts(spec.config, prompts, generation, reserve=template.num_nodes if template else 0)
    mesh = make_mesh(*args.mesh) if args.mesh else None

    target = load_target(spec, dtype=DTYPES[args.dtype], mesh=mesh)
    if build_proposer is not None:
        proposer, proposer_params = build_proposer(target)
        _speculate(args, target, prompts, generation, proposer, proposer_params, template)
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


def _speculate(args, target, prompts, generation, proposer, draft_params, template) -> None:
    result = speculative.speculative_generate(target.params, target.config, prompts, generation, proposer,
                                              draft_params, template, seed=args.seed, split_timing=True)
    for i, row in enumerate(result.tokens):
        if len(prompts) > 1:
            print(f"--- [{i}] {args.prompt[i]!r}")
        print(target.tokenizer.decode(row))
    s = result.stats
    total = sum(len(r) for r in result.tokens)
    rates = " ".join(f"{r:.2f}" for r in s.accept_rate_by_position)
    print(f"[{total} tokens, {s.target_steps} target steps, tau {s.tau:.2f}, accept rate by position {rates}; "
          f"prefill {s.prefill_seconds:.2f}s, decode {s.decode_seconds:.2f}s including compilation]",
          file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="dspark-jax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    commands = {"generate": _generate} | train_commands.add_commands(sub)
    args = parser.parse_args(argv)
    try:
        commands[args.command](args)
    except (ValueError, FileNotFoundError) as error:
        parser.exit(2, f"dspark-jax {args.command}: error: {error}\n")


if __name__ == "__main__":
    main()
