"""What a target step over T tokens per row costs against a one-token decode step, per weight form.

    .venv/bin/python benchmarks/verify_cost.py [--batches 1,4,8] [--tokens 1,2,4,8,16] [--repeats 7]

Gemma 3 270M, each weight form of `load_target` that this machine has (xla: float32 arrays and XLA's dot;
float32 and gguf: the C++ CPU kernels over float32 rows and over the GGUF's stored blocks), loaded one
after another. A step is what the speculative loop runs to verify: the forward pass over B x T new tokens
against a 256-slot cache holding 100 tokens, the LM head over all of them and the greedy pick; best of
`--repeats` jitted calls. Below each table: the floors of a batch-1 step, (weight bytes) / (streaming read
bandwidth, measured by summing a 1 GiB array) and (2 x parameters x tokens) / (the float32 GEMM rate
XLA reaches here on a 2048^3 product); the last line is the default form's verify(8) / decode(1).
"""

from __future__ import annotations

import argparse
import math

import jax
import jax.numpy as jnp
from timing import best_ms

from dspark_jax.kernels.cpu_kernels import unavailable_reason
from dspark_jax.models.kv_cache import KVCache
from dspark_jax.models.transformer import forward, logits
from dspark_jax.sampling import argmax
from dspark_jax.target import describe_target, load_target, resolve_weights

CACHE, FILLED = 256, 100


def step_ms(target, batch: int, tokens: int, repeats: int) -> float:
    config, params = target.config, target.params
    cache = KVCache.empty(config, batch, CACHE)
    prompt = jnp.ones((batch, FILLED), jnp.int32)
    cache = jax.jit(lambda p, c: forward(p, prompt, jnp.broadcast_to(jnp.arange(FILLED), prompt.shape), c,
                                         config=config).cache)(params, cache)
    new = jnp.ones((batch, tokens), jnp.int32)
    positions = jnp.broadcast_to(FILLED + jnp.arange(tokens), new.shape)
    step = jax.jit(lambda p, c: argmax(logits(p, forward(p, new, positions, c, config=config).hidden,
                                              config=config)))
    return best_ms(lambda: step(params, cache), repeats)


def machine_rates() -> tuple[float, float]:
    """(streaming read bytes/s, float32 GEMM FLOP/s) of this machine as XLA reaches them."""
    stream = jnp.ones(2**28, jnp.float32)
    a = jnp.ones((2048, 2048), jnp.float32)
    return (stream.nbytes / (best_ms(lambda: jax.jit(jnp.sum)(stream)) / 1000),
            2 * 2048**3 / (best_ms(lambda: jax.jit(jnp.matmul)(a, a)) / 1000))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda text: tuple(int(x) for x in text.split(","))
    parser.add_argument("--batches", type=ints, default=(1, 4, 8))
    parser.add_argument("--tokens", type=ints, default=(1, 2, 4, 8, 16))
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    spec = describe_target()
    forms = ["xla"] if unavailable_reason() else ["xla", "float32", "gguf"]
    default = resolve_weights("auto", spec)  # at one token a step: the form the last line reports on
    print(f"weight forms: {', '.join(forms)} (default for a batch-1 step: {default}); CPU kernels: "
          f"{unavailable_reason() or 'built'}\n")

    bandwidth, gemm = machine_rates()
    ratios = {}
    for form in forms:
        target = load_target(spec, weights=form)
        weight_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(target.params))
        parameters = sum(math.prod(getattr(leaf, "shape", ())) for leaf in
                         jax.tree.leaves(target.params, is_leaf=lambda x: hasattr(x, "format")))
        print(f"### {form}: {weight_bytes / 2**20:.0f} MiB of weights\n")
        print("| batch | " + " | ".join(f"{t} tok ms (x decode)" for t in args.tokens) + " |")
        print("|---:|" + "---:|" * len(args.tokens))
        for batch in args.batches:
            times = {t: step_ms(target, batch, t, args.repeats) for t in args.tokens}
            base = times.get(1) or step_ms(target, batch, 1, args.repeats)
            ratios[form, batch] = {t: times[t] / base for t in times}
            print(f"| {batch} | " + " | ".join(f"{times[t]:.1f} ({times[t] / base:.2f}x)" for t in args.tokens) + " |")
        floor = 1000 * weight_bytes / bandwidth
        print(f"\nbatch-1 floors: bandwidth {floor:.1f} ms ({weight_bytes / 2**20:.0f} MiB at "
              f"{bandwidth / 1e9:.1f} GB/s); compute {1000 * 2 * parameters / gemm:.1f} ms per token "
              f"({gemm / 1e9:.0f} GFLOP/s, XLA's 2048^3 float32 GEMM)\n")
        del target
    for form in forms:
        if 8 in ratios[form, args.batches[0]]:
            print(f"{form}: verify(8)/decode(1) = {ratios[form, args.batches[0]][8]:.2f} at batch {args.batches[0]}")
    if 8 in ratios[default, args.batches[0]]:
        print(f"verify(8)/decode(1) = {ratios[default, args.batches[0]][8]:.2f}")


if __name__ == "__main__":
    main()
