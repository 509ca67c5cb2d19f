"""Speculative decoding with the n-gram drafter vs plain autoregressive decoding on Gemma 3 270M.

    .venv/bin/python benchmarks/spec_throughput.py [--tasks humaneval,gsm8k] [--batches 1,8] [--gamma 5] \
        [--weights xla,gguf]

Greedy, same prompts (first turns of the shipped eval sets, chat-formatted), same run, for each weight form
of `load_target` asked for: tokens/s of both loops (compiled beforehand; best of --repeats), tau, the
speedup over the first form's plain decoding, whether the output equals it, and the verify cost ratio
time(target pass over γ+1 tokens) / time(target pass over 1 token) at the same cache size, which bounds the
speedup of any drafter on this machine: speedup <= tau / cost_ratio (ignoring drafting cost).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from timing import best_time

from dspark_jax.eval_data import load_prompts
from dspark_jax.generate import GenerationConfig, generate
from dspark_jax.models.kv_cache import KVCache
from dspark_jax.models.transformer import forward, logits
from dspark_jax.proposers.ngram import NgramProposer
from dspark_jax.speculative import SpeculativeMethod, speculative_generate
from dspark_jax.target import load_target
from dspark_jax.tree import TreeTemplate


def verify_cost_ratio(target, tokens: int, cache_size: int = 512, repeats: int = 5) -> float:
    """Time of one target pass over `tokens` new tokens vs over 1, both against a half-full cache."""
    config = target.config

    @jax.jit
    def step(params, cache, new_tokens):
        positions = 256 + jnp.arange(new_tokens.shape[1])[None]
        out = forward(params, new_tokens, positions, cache, config=config)
        return logits(params, out.hidden, config=config)

    cache = KVCache.empty(config, 1, cache_size)
    cache = forward(target.params, jnp.ones((1, 256), jnp.int32), jnp.arange(256)[None], cache, config=config).cache
    one = best_time(lambda: step(target.params, cache, jnp.ones((1, 1), jnp.int32)), repeats)[0]
    many = best_time(lambda: step(target.params, cache, jnp.ones((1, tokens), jnp.int32)),
                     repeats)[0]
    return many / one


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="humaneval,gsm8k,mt-bench")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--gamma", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--weights", default="xla,gguf", help="weight forms to compare (load_target's WEIGHTS)")
    args = parser.parse_args()

    template = TreeTemplate(1, args.gamma)
    generation = GenerationConfig(max_new_tokens=args.new_tokens)  # no stop tokens: equal work for both loops
    forms = args.weights.split(",")
    print(f"Gemma 3 270M, greedy, {args.new_tokens} new tokens, n-gram chain γ={args.gamma}, "
          f"jax {jax.__version__} on {jax.devices()[0].device_kind}; speedups against {forms[0]} plain decoding")
    baseline: dict[tuple[str, int], tuple[float, list]] = {}
    rows = []
    for form in forms:
        target = load_target(weights=form)
        print(f"{form}: verify cost ratio time({args.gamma + 1} tokens) / time(1 token): "
              f"{verify_cost_ratio(target, args.gamma + 1):.2f}")
        for task in args.tasks.split(","):
            for batch in (int(b) for b in args.batches.split(",")):
                texts = load_prompts(task, limit=batch)
                prompts = [target.tokenizer.encode(target.tokenizer.chat_prompt(t)) for t in texts]
                plain_s, plain = best_time(lambda: generate(target.params, target.config, prompts, generation),
                                           args.repeats)
                spec_s, spec = best_time(lambda: speculative_generate(target.params, target.config, prompts, generation,
                                                                      SpeculativeMethod(NgramProposer(), None,
                                                                                        template)),
                                         args.repeats)
                base_s, base = baseline.setdefault((task, batch), (plain_s, plain))
                tokens = sum(len(r) for r in plain)
                rows.append(f"| {form} | {task} | {batch} | {tokens / plain_s:.1f} | {tokens / spec_s:.1f} | "
                            f"{spec.stats.tau:.2f} | {base_s / plain_s:.2f} | {base_s / spec_s:.2f} | "
                            f"{spec.tokens == plain == base} |")
    print(f"| weights | task | batch | AR tok/s | n-gram tok/s | tau | AR x {forms[0]} AR | n-gram x {forms[0]} AR "
          "| identical |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
