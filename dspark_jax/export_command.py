"""`dspark-jax export`: a trained drafter in DeepSpec's, vLLM's or SGLang's format.

    dspark-jax export --drafter runs/dspark/drafter --format vllm --out runs/dspark-vllm

Checks, from the drafter's config alone and before the target loads, that the format can hold the drafter
exactly (`interop/formats.py`, Format.problems), then writes config.json and model.safetensors with the
target's embedding and head rows the format expects.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dspark_jax import drafter_files
from dspark_jax.drafter_kinds import KINDS, stored_config
from dspark_jax.drafters import shipped_drafter
from dspark_jax.interop.formats import FORMATS, export_as
from dspark_jax.target import describe_target, load_target


def export_command(args: argparse.Namespace) -> None:
    directory = shipped_drafter(args.drafter) if args.drafter in KINDS else Path(args.drafter)
    if directory is None or not directory.is_dir():
        raise ValueError(f"--drafter {args.drafter}: no such drafter directory (or shipped drafter kind)")
    if args.out.resolve() == directory.resolve():
        raise ValueError("--out is the drafter's own directory: pass a new one")
    meta = drafter_files.read_meta(directory)
    kind, config = stored_config(meta)
    spec = describe_target(args.target)
    problems = FORMATS[args.format].problems(kind.name, config, meta["draft_vocab_size"], spec.config)
    if problems:
        raise ValueError(f"this {kind.name} drafter cannot be written in the {args.format} format exactly: "
                         + "; ".join(problems))
    target = load_target(spec, weights="xla")  # dense arrays: the embedding and head rows are written out
    model = drafter_files.load(directory, target.config, target.params)
    export_as(args.format, model, target.config, target.params, args.out, args.dtype)
    architecture = FORMATS[args.format].architectures[kind.name]
    print(f"wrote {args.out}: {kind.name} as {architecture} ({args.format})", file=sys.stderr)
