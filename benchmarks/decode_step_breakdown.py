"""Where one Gemma 3 270M decode step spends its time: LM head, decoder layers, whole step, and the floor
that memory bandwidth puts under it.

    .venv/bin/python benchmarks/decode_step_breakdown.py

Batch 1, float32, one new token and a speculative verify pass of 8 tokens against a 256-slot cache holding
100 tokens, then the greedy pick and greedy acceptance two ways each, and a sampled draw two ways (1 row and
prepare-data's 64); best of 10 jitted runs. A batch-1 step
must read every weight once, so no float32 implementation can beat (weight bytes) / (the
machine's streaming read bandwidth, measured here by summing a 1 GiB array).
"""

import jax
import jax.numpy as jnp
from timing import best_ms

from dspark_jax.acceptance import accept, accept_greedy
from dspark_jax.models.kv_cache import KVCache
from dspark_jax.models.transformer import forward, logits
from dspark_jax.sampling import SamplingConfig, argmax, categorical, probabilities
from dspark_jax.target import load_target
from dspark_jax.tree import TreeTemplate

VERIFY_WIDTH = 8


def main() -> None:
    target = load_target(weights="xla")  # the float32 XLA path; benchmarks/verify_cost.py compares the others
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
    greedy_verify(config.vocab_size)
    sampled_draw(config.vocab_size)

    weight_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(params))
    stream = jnp.ones(2**28, jnp.float32)
    read_ms = best_ms(lambda: jax.jit(jnp.sum)(stream))
    bandwidth = stream.nbytes / (read_ms / 1000)
    print(f"| bandwidth floor: {weight_bytes / 2**20:.0f} MiB of weights at {bandwidth / 1e9:.1f} GB/s "
          f"| {1000 * weight_bytes / bandwidth:.1f} |")


def greedy_verify(vocab_size: int) -> None:
    """The greedy pick (one row, and the 8 / 64 rows of a verified 1x7 chain at batch 1 / 8) and that chain's
    acceptance: `jnp.argmax` against `sampling.argmax`, `accept` over one-hot distributions against
    `accept_greedy`."""
    template, greedy = TreeTemplate(1, VERIFY_WIDTH - 1), SamplingConfig()
    one_hot_accept = jax.jit(lambda x, tokens: accept(template, probabilities(x, greedy), tokens, None,
                                                      jax.random.key(0)).bonus)
    token_accept = jax.jit(lambda x, tokens: accept_greedy(template, argmax(x), tokens).bonus)
    picks = (("jnp.argmax", jax.jit(lambda x: jnp.argmax(x, axis=-1))), ("sampling.argmax", jax.jit(argmax)))
    row = jax.random.normal(jax.random.key(0), (1, vocab_size))
    for name, pick in picks:
        print(f"| greedy pick, 1 row of {vocab_size} logits, {name} | {best_ms(lambda: pick(row)):.2f} |")
    for batch in (1, 8):
        scores = jax.random.normal(jax.random.key(batch), (batch, VERIFY_WIDTH, vocab_size))
        tokens = argmax(scores)
        for name, pick in picks:
            rows = f"{batch * VERIFY_WIDTH} rows of {vocab_size} logits"
            print(f"| greedy pick, {rows}, {name} | {best_ms(lambda: pick(scores)):.2f} |")
        for name, verify in (("one-hot accept", one_hot_accept), ("accept_greedy", token_accept)):
            verify_ms = best_ms(lambda: verify(scores, tokens))
            print(f"| pick + acceptance, batch {batch} (1x7 chain), {name} | {verify_ms:.2f} |")


def sampled_draw(vocab_size: int) -> None:
    """One draw per row from softmax(logits): Gumbel-max (`jax.random.categorical`) against the inverse CDF
    of `sampling.categorical`."""
    draws = (("jax.random.categorical", jax.jit(jax.vmap(jax.random.categorical))),
             ("sampling.categorical", jax.jit(categorical)))
    for rows in (1, 64):
        scores = jax.random.normal(jax.random.key(rows), (rows, vocab_size))
        keys = jax.random.split(jax.random.key(0), rows)
        for name, draw in draws:
            print(f"| sampled draw, {rows} row{'s' if rows > 1 else ''} of {vocab_size} logits, {name} "
                  f"| {best_ms(lambda: draw(keys, scores)):.2f} |")


if __name__ == "__main__":
    main()
