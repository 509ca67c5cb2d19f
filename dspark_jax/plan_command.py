"""`dspark-jax plan`: memory per device of training and speculative generation for a large target on a
mesh, compiled ahead of time on virtual CPU devices from abstract shapes (dspark_jax/planning.py).

    dspark-jax plan --target-config qwen3-8b --mesh 1x8

XLA's CPU compiler stands in for the accelerator's: the sharding, and so what each device holds of the
parameters, optimizer state and caches, is the same; temporaries are XLA:CPU's and differ somewhat from a
GPU's or TPU's.
"""

from __future__ import annotations

import argparse

import jax

H100_BYTES = 80 * 10**9


def plan_command(args: argparse.Namespace) -> None:
    data, model = args.mesh
    if args.batch < 1 or args.length < 1:
        raise ValueError(f"--batch and --length must be >= 1, got {args.batch} and {args.length}")
    try:
        jax.config.update("jax_num_cpu_devices", data * model)
    except RuntimeError:
        pass  # JAX already started (a test, a notebook): the devices it has must do
    from dspark_jax import planning
    from dspark_jax.drafter_kinds import kind_named
    from dspark_jax.models.presets import preset_config
    from dspark_jax.models.sharding import Placement, ShardingRules, make_mesh

    target = preset_config(args.target_config)
    kind = kind_named(args.drafter)
    drafter = kind.new_config(target, depth=args.block_size)
    draft_vocab = min(args.draft_vocab or target.vocab_size, target.vocab_size)
    rules = ShardingRules(embed="data", fsdp="data") if args.fsdp else ShardingRules()
    placement = Placement(make_mesh(data, model, jax.devices("cpu")), rules)
    placement.check_batch(args.batch, "--batch")
    steps = [step for step, wanted in (("train", args.train), ("generate", args.generate)) if wanted]
    plans = []
    for step in steps or ("train", "generate"):
        make = planning.plan_training if step == "train" else planning.plan_generation
        plans.append(make(target, kind, drafter, draft_vocab, placement, args.batch, args.length))
    verify, decode = planning.verify_decode_flops(target, placement, args.batch, args.length,
                                                  1 + drafter.depth)
    print(f"{args.target_config} on a {data}x{model} mesh{' (FSDP)' if args.fsdp else ''}, {kind.name} drafter "
          f"(gamma {drafter.depth}, draft vocabulary {draft_vocab}), batch {args.batch} x {args.length} tokens, "
          "bfloat16 target; GB (10^9 bytes) per device")
    print(planning.format_plans(plans))
    for plan in plans:
        verdict = "fits" if plan.total < H100_BYTES else "does not fit"
        print(f"{plan.step}: {plan.total / 1e9:.2f} GB per device {verdict} an 80 GB H100")
    print(f"verify pass over {1 + drafter.depth} tokens / decode pass, FLOPs at {args.length} cached tokens: "
          f"{verify / decode:.2f}x")
