"""The hardware-aware scheduler's cost table on this machine: one engine step's wall time by verified depth.

    .venv/bin/python benchmarks/scheduler_profile.py [--drafter dspark] [--batch-sizes 1,4,8] [--temperature 0] \
        [--weights auto]

For each batch size, `profile_scheduler` times a whole step (draft, verify ℓ tokens per row, accept, drafter
update) for ℓ = 0..γ, as `--schedule hardware` does at start, and prints it with the mean survival
probability a_1 over the rows that verifying one token needs to raise throughput (Θ1 > Θ0 ⇔ 1 + a_1 > t1 / t0),
and beside it what a depth-0 step adds to plain decoding: the drafter's pass (`propose` alone) and one
autoregressive decode step of the same batch, both best of 10 jitted calls.
Results: docs/results.md ("Confidence-scheduled verification").
"""

import argparse

import jax
from timing import best_ms

from dspark_jax.drafter_choice import resolve_drafter
from dspark_jax.evaluation import load_tasks
from dspark_jax.generate import Decoder, GenerationConfig
from dspark_jax.proposers.base import DraftContext
from dspark_jax.sampling import SamplingConfig
from dspark_jax.speculative import prepare, profile_scheduler
from dspark_jax.target import describe_target, load_target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--drafter", default="dspark")
    parser.add_argument("--batch-sizes", default="1,4,8")
    parser.add_argument("--weights", default="auto", help="the target's weight form (load_target's WEIGHTS)")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    args = parser.parse_args()
    spec = describe_target("default")
    choice = resolve_drafter(args.drafter, spec)
    target = load_target(spec, weights=args.weights)
    method = choice.method(target)
    tokenizer = target.tokenizer
    prompts = [tokenizer.encode(tokenizer.chat_prompt(p)) for p in load_tasks(["mt-bench"])[0].prompts]
    generation = GenerationConfig(args.max_new_tokens, SamplingConfig(args.temperature), tokenizer.eos_ids)
    print(f"ms per step by verified depth ({args.drafter}, T = {args.temperature:g}, {choice.template.width}x"
          f"{choice.template.depth})")
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        decoder, prompt, lengths = prepare(target.config, prompts[:batch], generation, method.proposer, method.template)
        costs = profile_scheduler(decoder, target.params, method.params, prompt, lengths, jax.random.key(0),
                                  on_disk=False).step_seconds  # measured now, not a stored table
        cells = " ".join(f"{1000 * s:.1f}" for s in costs)
        need = costs[1] / costs[0] - 1
        print(f"batch {batch}: {cells}   (depth 1 pays off when the mean a_1 > {need:.2f})")
        key = jax.random.key(0)
        state = jax.jit(decoder.prefill)(target.params, method.params, prompt, lengths, key)
        context = DraftContext(history=state.history, length=state.length, done=state.done)
        proposer = method.proposer
        propose = jax.jit(lambda p, s, c: proposer.propose(p, s, c, method.template, generation.sampling, key)[0])
        draft_ms = best_ms(lambda: propose(method.params, state.proposer_state, context))
        plain = Decoder(target.config, generation, decoder.cache_size)
        plain_state = jax.jit(plain.prefill)(target.params, prompt, lengths, jax.random.split(key, batch))
        plain_step = jax.jit(plain.step)
        step_ms = best_ms(lambda: plain_step(target.params, plain_state))
        print(f"batch {batch}: drafter pass {draft_ms:.1f} ms, autoregressive step {step_ms:.1f} ms")


if __name__ == "__main__":
    main()
