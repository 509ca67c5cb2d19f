"""`dspark-jax prepare-data`, `prepare-cache` and `train`: the DeepSpec recipe for every drafter kind.

    dspark-jax prepare-data --out data/ --num-prompts 512        # ShareGPT prompts, responses by the target
    dspark-jax prepare-cache --data data/ --out cache/            # optional offline target features
    dspark-jax train --drafter dspark --data data/ --out run/ [--cache cache/]

Every command checks its arguments before loading the target. `train` resumes from run/checkpoints when
started again, stops cleanly on SIGTERM, logs run/metrics.jsonl and exports the drafter to run/drafter/
(loadable with `dspark-jax generate --drafter run/drafter`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from dspark_jax.atomic_file import write_atomically
from dspark_jax.command_names import DATA_FILE, RUN_FILE, STOPPED_EXIT_CODE
from dspark_jax.distributed import join
from dspark_jax.drafter_kinds import DrafterKind, kind_named, save_drafter
from dspark_jax.models.draft_vocab import most_frequent_tokens
from dspark_jax.models.drafter_config import DrafterConfig, fused_layers
from dspark_jax.models.sharding import Placement, ShardingRules, make_mesh, place_state
from dspark_jax.sampling import SamplingConfig
from dspark_jax.target import describe_target, load_target
from dspark_jax.train.drafter_step import TrainConfig, make_optimizer
from dspark_jax.train.dspark_loss import DSparkLossWeights
from dspark_jax.train.loop import RunConfig, cached_steps, online_steps, run_training
from dspark_jax.train.regenerate import RegenerateConfig, load_sequences, regenerate, write_answers
from dspark_jax.train.sharegpt import (
    first_exchanges,
    held_out_prompts,
    human_turns,
    training_exchanges,
    training_prompts,
)
from dspark_jax.train.target_cache import estimate_bytes, open_cache, write_cache

# Training differentiates through the target's head (the drafters' logits), which the CPU kernels cannot,
# and its features and data must not change with the machine's kernels: prepare-data, prepare-cache and
# train hold the target as XLA arrays (at prepare-data's batch 64, XLA's matrix products are also faster).
TRAINING_WEIGHTS = "xla"


def _require_positive(args: argparse.Namespace, *flags: str) -> None:
    """Refuses, before anything loads, a value below 1 for any of these integer flags (named as typed)."""
    for flag in flags:
        value = getattr(args, flag.removeprefix("--").replace("-", "_"))
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")


def _placement(args: argparse.Namespace) -> Placement | None:
    """The mesh --mesh asks for (checked before anything loads), over the devices of every process of the job
    when --distributed joins one; --fsdp splits the target's parameters and the drafter's parameters and
    optimizer state over its data axis too."""
    if args.mesh is None:
        for flag, why in (("fsdp", "splits parameters over the data axis of"), ("distributed", "shards over")):
            if getattr(args, flag, False):
                raise ValueError(f"--{flag} {why} --mesh: pass --mesh DATAxMODEL too")
        return None
    if getattr(args, "distributed", False):
        join()
    rules = ShardingRules(embed="data", fsdp="data") if args.fsdp else ShardingRules()
    return Placement(make_mesh(*args.mesh), rules)


def _load_target(spec, placement: Placement | None):
    if placement is None:
        return load_target(spec, weights=TRAINING_WEIGHTS)
    return load_target(spec, weights=TRAINING_WEIGHTS, mesh=placement.mesh, rules=placement.rules)


def _sequences(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, loss_mask) [N, --length] of the first --max-sequences prepared sequences."""
    shards = sorted(Path(args.data).glob("sequences-*.npz"))
    if not shards:
        raise FileNotFoundError(f"{args.data} holds no sequences-*.npz: run `dspark-jax prepare-data --out "
                                f"{args.data}` first")
    if args.max_sequences is not None and args.max_sequences < 1:
        raise ValueError(f"--max-sequences must be >= 1, got {args.max_sequences}")
    tokens, loss_mask = load_sequences(shards, args.length, args.max_sequences)
    if args.max_sequences is not None and len(tokens) < args.max_sequences:
        raise ValueError(f"--max-sequences {args.max_sequences} exceeds the {len(tokens)} sequences in {args.data}: "
                         "lower it or extend the data with prepare-data")
    return tokens, loss_mask


def prepare_data(args: argparse.Namespace) -> None:
    config = RegenerateConfig(args.max_new_tokens, args.max_prompt_tokens,
                              SamplingConfig(args.temperature, args.top_k, args.top_p), args.shard_size,
                              args.batch_size)
    _require_positive(args, "--num-prompts", "--max-prompt-tokens", "--max-new-tokens", "--batch-size",
                      "--shard-size")
    placement = _placement(args)
    spec = describe_target(args.target)
    settings = {"target": spec.path.name, "shard_size": args.shard_size, "max_prompt_tokens": args.max_prompt_tokens,
                "max_new_tokens": args.max_new_tokens}
    # Directories of the target's answers predate the "answers" key; a key only one kind records tells them apart.
    settings |= ({"answers": "sharegpt"} if args.answers == "sharegpt" else
                 {"temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k})
    _claim_directory(args.out, DATA_FILE, settings, "sequences")
    conversations = human_turns()
    held_out = held_out_prompts(conversations)
    held_out_text = "".join(json.dumps({"turns": [p]}) + "\n" for p in held_out)  # the eval format
    write_atomically(args.out / "held_out.jsonl", lambda tmp: Path(tmp).write_text(held_out_text))
    if args.answers == "sharegpt":
        exchanges = training_exchanges(first_exchanges())[: args.num_prompts]
        shards = write_answers(spec.tokenizer, exchanges, args.out, config, spec.config.pad_token_id)
        written = "sequences with ShareGPT's own answers"
    else:
        target = _load_target(spec, placement)
        shards = regenerate(target, training_prompts(conversations)[: args.num_prompts], args.out, config)
        written = "regenerated sequences"
    print(f"{len(shards)} shards of {written} in {args.out}; {len(held_out)} held-out prompts in "
          f"{args.out / 'held_out.jsonl'}")


def prepare_cache(args: argparse.Namespace) -> None:
    _require_positive(args, "--length", "--num-features", "--shard-size")
    placement = _placement(args)
    tokens, loss_mask = _sequences(args)
    spec = describe_target(args.target)
    layers = fused_layers(spec.config, args.num_features)
    need = estimate_bytes(len(tokens), args.length, len(layers), spec.config.hidden_size, args.feature_dtype)
    print(f"target cache: {len(tokens)} sequences x {args.length} tokens x {len(layers) + 1} x "
          f"{spec.config.hidden_size} {args.feature_dtype} -> {need / 2**30:.2f} GiB in {args.out}")
    target = _load_target(spec, placement)
    written = write_cache(target.config, target.params, layers, tokens, loss_mask, args.out, args.shard_size,
                          placement=placement, feature_dtype=args.feature_dtype)
    meta = json.dumps({"target_layers": list(layers), "length": args.length, "feature_dtype": args.feature_dtype})
    write_atomically(args.out / "cache.json", lambda tmp: Path(tmp).write_text(meta))
    print(f"{len(written)} cache shards in {args.out}")


def _loss_weights(args: argparse.Namespace, kind: DrafterKind) -> DSparkLossWeights:
    given = {field: value for field, value in (("ce", args.ce_weight), ("tv", args.tv_weight),
                                                ("conf", args.confidence_weight)) if value is not None}
    foreign = sorted(set(given) - set(kind.loss_terms))
    if foreign:
        flags = ", ".join(f"--{'confidence' if term == 'conf' else term}-weight" for term in foreign)
        raise ValueError(f"{flags} weigh loss terms a {kind.name} drafter does not have: drop them")
    if any(value < 0 for value in given.values()):
        raise ValueError(f"loss weights must be >= 0, got {given}")
    return dataclasses.replace(DSparkLossWeights(), **given)


# train's kind-specific flags and the config field each sets
KIND_FLAGS = (("--layers", "num_layers"), ("--rank", "markov_rank"))


def _drafter_config(args: argparse.Namespace, kind: DrafterKind, spec) -> DrafterConfig:
    """The config --drafter's kind gets from the flags; a flag of another kind is refused by name."""
    options = {}
    for flag, field in KIND_FLAGS:
        value = getattr(args, flag.removeprefix("--"))
        if value is None:
            continue
        if field not in kind.fields:
            raise ValueError(f"{flag} does not apply to a {kind.name} drafter: drop it")
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
        options[field] = value
    if args.lookup_inputs:
        if "lookup_inputs" not in kind.fields:
            raise ValueError(f"--lookup-inputs does not apply to a {kind.name} drafter: drop it")
        options["lookup_inputs"] = True
    return kind.new_config(spec.config, depth=args.block_size, num_features=args.num_features,
                           compute_dtype="bfloat16" if args.bf16 else "float32", qk_norm=args.qk_norm, **options)


def train(args: argparse.Namespace) -> None:
    _require_positive(args, "--steps", "--batch-size", "--length", "--block-size", "--anchors", "--checkpoint-every")
    if args.num_features is not None and args.num_features < 1:
        raise ValueError(f"--num-features must be >= 1, got {args.num_features}")
    kind = kind_named(args.drafter)
    placement = _placement(args)
    if placement is not None:
        placement.check_batch(args.batch_size)
    spec = describe_target(args.target)
    drafter = _drafter_config(args, kind, spec)
    layers = drafter.target_layers
    if args.cache is not None:
        meta_path = args.cache / "cache.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{args.cache} is not a target cache: run `dspark-jax prepare-cache` first")
        meta = json.loads(meta_path.read_text())
        cached_layers = meta["target_layers"]
        if not set(layers) <= set(cached_layers):
            raise ValueError(f"the cache holds target layers {cached_layers}, but --num-features "
                             f"{len(layers)} needs {list(layers)}: rebuild the cache or match --num-features")
        if meta["length"] != args.length:
            raise ValueError(f"the cache holds sequences of {meta['length']} tokens: pass --length {meta['length']}")
        feature_index = tuple(cached_layers.index(layer) for layer in layers)
    train_config = TrainConfig(learning_rate=args.learning_rate, warmup_steps=max(1, args.steps // 25),
                               total_steps=args.steps, anchors_per_sequence=args.anchors,
                               loss=_loss_weights(args, kind))
    run = RunConfig(checkpoint_every=args.checkpoint_every, seed=args.seed)

    if args.draft_vocab < 0:
        raise ValueError(f"--draft-vocab must be >= 0 (0: the whole vocabulary), got {args.draft_vocab}")
    # Data and cache are opened (memory-mapped, cheap) before the target loads, so bad input fails first.
    tokens, loss_mask = _sequences(args)
    if args.cache is None:
        if args.batch_size > len(tokens):
            raise ValueError(f"--batch-size {args.batch_size} exceeds the {len(tokens)} prepared sequences")
    else:
        cache_shards = open_cache(args.cache, tokens)
        if args.batch_size > min(len(s) for s in cache_shards):
            raise ValueError(f"--batch-size {args.batch_size} exceeds the rows of the smallest cache shard; "
                             "lower it or rebuild the cache with a larger --shard-size")
    drafter_settings = {"drafter": args.drafter, "target": spec.path.name, "draft_vocab": args.draft_vocab,
                        **json.loads(json.dumps(dataclasses.asdict(drafter)))}  # JSON's lists, as recorded
    _claim_directory(args.out, RUN_FILE, drafter_settings, "the checkpoints of a drafter")
    target = _load_target(spec, placement)
    vocab = spec.config.vocab_size
    if args.draft_vocab:
        vocab = most_frequent_tokens(tokens, loss_mask, args.draft_vocab, vocab, always=target.tokenizer.eos_ids)
    model = kind.new_drafter(drafter, vocab, args.seed)
    optimizer = make_optimizer(model, train_config)
    if placement is not None:
        place_state(model, optimizer, placement=placement)
    if args.cache is None:
        steps = online_steps(model, optimizer, target.config, target.params, tokens, loss_mask, args.batch_size,
                             train_config, placement)
    else:
        steps = cached_steps(model, optimizer, target.config, target.params, cache_shards, args.batch_size,
                             train_config, feature_index, placement)
    reached = run_training(model, optimizer, steps, train_config, run, args.out)
    save_drafter(args.out / "drafter", model, target.config, target.params, str(spec.path.name), args.export_dtype)
    print(f"trained {reached}/{args.steps} steps; drafter exported to {args.out / 'drafter'}")
    if reached < args.steps:
        print(f"stopped by SIGTERM at step {reached} of {args.steps}: run the same command again to continue",
              file=sys.stderr)
        raise SystemExit(STOPPED_EXIT_CODE)


def _claim_directory(out: Path, record: str, settings: dict, holds: str) -> None:
    """A directory that resumes holds one kind of content: the first start records its settings in `record`,
    later starts must match them, before anything loads (resuming with other settings would fail deep inside
    a checkpoint restore, or silently mix data written two ways)."""
    path = out / record
    if path.exists():
        recorded = json.loads(path.read_text())
        differs = [f"{key} {recorded.get(key)!r} (now {value!r})" for key, value in settings.items()
                   if recorded.get(key) != value]
        if differs:
            raise ValueError(f"--out {out} holds {holds} written with other settings: {', '.join(differs)}. "
                             f"Pass a new --out, or the recorded settings ({path}) to resume")
        return
    write_atomically(path, lambda tmp: Path(tmp).write_text(json.dumps(settings, indent=1) + "\n"))
