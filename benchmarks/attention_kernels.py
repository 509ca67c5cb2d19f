"""Pallas Mosaic GPU attention kernels vs the XLA reference: error and time per call, on an sm_90 GPU.

    .venv/bin/python benchmarks/attention_kernels.py                # Gemma 3 270M shapes, all combinations
    .venv/bin/python benchmarks/attention_kernels.py --tokens 1 --slots 8192 --batch 1 --num-splits 16 32 64

Shapes default to Gemma 3 270M attention (H=4, KVH=1, D=256, bfloat16); T=1 runs the decode kernel, T>1
the verify kernel. Each row's mask is a committed prefix of 3/4 of the cache plus a chain of T draft tokens,
the shape of a verify step. Before timing, every kernel's output is compared with the float32 reference
(max abs error is printed). Times are the median of `--repeats` calls of a jitted function after a warm-up;
`speedup` is XLA time / Pallas time. Without an sm_90 GPU the script refuses, unless `--reference-only`
(which times XLA alone, e.g. to smoke-test the script on CPU).
"""

from __future__ import annotations

import argparse
import itertools
import sys

import jax
import jax.numpy as jnp
import numpy as np
from timing import median_seconds

from dspark_jax.kernels import attention, attention_reference, decode_attention, verify_attention

HEADS, KV_HEADS, HEAD_DIM = 4, 1, 256  # Gemma 3 270M
SCALE = HEAD_DIM**-0.5


def operands(batch: int, tokens: int, slots: int, heads: int = HEADS, kv_heads: int = KV_HEADS,
             head_dim: int = HEAD_DIM) -> tuple[jax.Array, ...]:
    """q [B, T, H, D], k/v [B, S, KVH, D] in bfloat16 and a verify-step mask bool[B, T, S]."""
    kq, kk, kv = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(kq, (batch, tokens, heads, head_dim), jnp.bfloat16)
    k = jax.random.normal(kk, (batch, slots, kv_heads, head_dim), jnp.bfloat16)
    v = jax.random.normal(kv, (batch, slots, kv_heads, head_dim), jnp.bfloat16)
    prefix = 3 * slots // 4
    slot, token = np.arange(slots), np.arange(tokens)
    mask = (slot[None, :] < prefix) | ((slot[None, :] >= prefix) & (slot[None, :] - prefix <= token[:, None]))
    return q, k, v, jnp.broadcast_to(jnp.asarray(mask), (batch, tokens, slots))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--slots", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--block-s", type=int, default=verify_attention.DEFAULT_BLOCK_S)
    parser.add_argument("--num-splits", type=int, nargs="+", default=[None], help="default: the kernel's heuristic")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--reference-only", action="store_true", help="time XLA only (works without a GPU)")
    args = parser.parse_args()

    q, k, _, _ = operands(1, 1, min(args.slots))
    reason = attention.kernel_unavailable_reason(q, k, k)
    if reason is not None and not args.reference_only:
        sys.exit(f"refusing to benchmark the Pallas kernels on {jax.devices()[0].device_kind}: {reason}. "
                 "Run on an H100/H200, or pass --reference-only to time XLA alone.")  # fmt: skip
    print(f"device: {jax.devices()[0].device_kind}; H={HEADS} KVH={KV_HEADS} D={HEAD_DIM} bfloat16")

    reference = jax.jit(lambda q, k, v, m: attention_reference.attention(q, k, v, m, scale=SCALE))
    print(f"{'B':>2} {'T':>3} {'S':>5} {'splits':>6} {'xla_us':>9} {'pallas_us':>9} {'speedup':>7} {'max_err':>8}")
    for batch, tokens, slots in itertools.product(args.batch, args.tokens, args.slots):
        q, k, v, mask = operands(batch, tokens, slots)
        xla_us = median_seconds(reference, (q, k, v, mask), args.repeats) * 1e6
        if args.reference_only:
            print(f"{batch:>2} {tokens:>3} {slots:>5} {'-':>6} {xla_us:>9.1f} {'-':>9} {'-':>7} {'-':>8}")
            continue
        expected = attention_reference.attention(*(x.astype(jnp.float32) for x in (q, k, v)), mask, scale=SCALE)
        module = decode_attention if tokens == 1 else verify_attention
        for splits in args.num_splits:
            kernel = jax.jit(
                lambda q, k, v, m, splits=splits: module.attention(
                    q, k, v, m, scale=SCALE, block_s=args.block_s, num_splits=splits
                )
            )
            error = float(jnp.abs(kernel(q, k, v, mask).astype(jnp.float32) - expected).max())
            pallas_us = median_seconds(kernel, (q, k, v, mask), args.repeats) * 1e6
            q_rows = jax.ShapeDtypeStruct((batch, KV_HEADS, tokens * HEADS // KV_HEADS, HEAD_DIM), q.dtype)
            plan = verify_attention.make_plan(q_rows, k, block_s=args.block_s, num_splits=splits)
            print(f"{batch:>2} {tokens:>3} {slots:>5} {plan.num_splits:>6} {xla_us:>9.1f} {pallas_us:>9.1f} "
                  f"{xla_us / pallas_us:>7.2f} {error:>8.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
