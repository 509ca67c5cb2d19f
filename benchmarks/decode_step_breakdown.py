"""Where one Gemma 3 270M decode step spends its time: LM head, decoder layers, whole step, and the floor
that memory bandwidth puts under it.

    .venv/bin/python benchmarks/decode_step_breakdown.py

Batch 1, float32, one new token and a speculative verify pass of 8 tokens against a 256-slot cache holding
100 tokens, then the greedy pick of the next token two ways; best of 10 jitted runs. A batch-1 step
must read every weight once, so no float32 implementation can beat (weight bytes) / (the
machine's streaming read bandwidth, measured here by summing a 1 GiB array).
"""

import jax
import jax.numpy as jnp
from timing import best_ms

from dspark_jax.models.kv_cache import KVCache
from dspark_jax.models.transformer import forward, logits
from dspark_jax.sampling import argmax
from dspark_jax.target import load_target

VERIFY_WIDTH = 8


def main() -> None:
    target = load_target()
    config, params = target.config, target.params
    cache = KVCache.empty(config, 1, 256)
    cache = forward(params, jnp.ones((1, 100), jnp.int32), jnp.arange(100)[None], cache, config=config).cache
    head = jax.jit(lambda p, h: logits(p, h, config=config))
    print("| part | ms |\n| --- | ---: |")
    for width in (1, VERIFY_WIDTH):  # one decode token; one speculative verify pass (γ = 7 plus the anchor)
        tokens, positions = jnp.ones((1, width), jnp.int32), 100 + jnp.arange(width)[None]
        layers = jax.jit(lambda p, c, t, pos=positions: forward(p, t, pos, c, config=config).hidden)
        step = jax.jit(lambda p, c, t, pos=positions: logits(p, forward(p, t, pos, c, config=config).hidden,
                                                               config=config))
        label = f"{width} token{'s' if width > 1 else ''}"
        head_ms = best_ms(lambda: head(params, jnp.ones((1, width, config.hidden_size))))
        print(f"| {label}: LM head ({config.vocab_size} x {config.hidden_size} float32) | {head_ms:.1f} |")
        print(f"| {label}: {config.num_layers} decoder layers | {best_ms(lambda: layers(params, cache, tokens)):.1f} |")
        print(f"| {label}: whole step | {best_ms(lambda: step(params, cache, tokens)):.1f} |")
    scores = jax.random.normal(jax.random.key(0), (1, config.vocab_size))
    for name, pick in (("jnp.argmax", jax.jit(jnp.argmax)), ("sampling.argmax", jax.jit(argmax))):
        print(f"| greedy pick over {config.vocab_size} logits, {name} | {best_ms(lambda: pick(scores)):.2f} |")

    weight_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(params))
    stream = jnp.ones(2**28, jnp.float32)
    read_ms = best_ms(lambda: jax.jit(jnp.sum)(stream))
    bandwidth = stream.nbytes / (read_ms / 1000)
    print(f"| bandwidth floor: {weight_bytes / 2**20:.0f} MiB of weights at {bandwidth / 1e9:.1f} GB/s "
          f"| {1000 * weight_bytes / bandwidth:.1f} |")


if __name__ == "__main__":
    main()
