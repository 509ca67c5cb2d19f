"""What storing the target cache's features in float8 costs: bytes, error, decode time, and a float8 copy.

    .venv/bin/python benchmarks/cache_encoding.py --cache runs/cache [--shards 2] [--copy-to runs/cache-float8]

Reads bfloat16 shards written by `dspark-jax prepare-cache`, encodes their features as `prepare-cache
--feature-dtype float8` does (`train/target_cache.py`: e4m3 with one scale per token and layer) and prints,
per fused layer, the relative RMS error of the decoded features against the bfloat16 ones and the largest
element error relative to its token's largest |x|; then bytes per sequence in both encodings and the time to
decode one training batch (8 rows). With --copy-to it writes a float8 copy of the whole cache, shard by
shard (each renamed into place whole), so a training run can be compared on the same sequences without a
second target pass (from bfloat16 rather than float32 values: one more rounding, 2^-9 relative, far below
float8's). Results: docs/results.md, "Cache at scale".
"""

import argparse
import json
import shutil
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from dspark_jax.command_names import FEATURE_DTYPES
from dspark_jax.train.target_cache import BF16, as_bits, decode, encode, estimate_bytes


def encoded(features_bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(float8 bits, scales) of a shard's bfloat16 feature bits [n, K, T, E]."""
    parts = encode(jnp.asarray(features_bits.view(BF16)), "float8")
    return as_bits(parts["values"]), np.asarray(parts["scale"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, required=True, help="a bfloat16 cache written by prepare-cache")
    parser.add_argument("--shards", type=int, default=2, help="shards measured")
    parser.add_argument("--copy-to", type=Path, default=None, help="write a float8 copy of the cache here")
    args = parser.parse_args()
    shards = sorted(p for p in args.cache.glob("shard-?????") if p.is_dir())
    if not shards or (shards[0] / "features_scale.npy").exists():
        raise SystemExit(f"{args.cache} holds no bfloat16 shards of prepare-cache")

    squared_error, squared, worst = 0.0, 0.0, 0.0
    for shard in shards[: args.shards]:
        bits = np.load(shard / "features.npy")
        values, scale = encoded(bits)
        exact = bits.view(BF16).astype(np.float32)
        error = decode(values, scale).astype(np.float32) - exact
        squared_error = squared_error + (error**2).sum(axis=(0, 2, 3))
        squared = squared + (exact**2).sum(axis=(0, 2, 3))
        worst = np.maximum(worst, (np.abs(error) / np.abs(exact).max(-1, keepdims=True)).max(axis=(0, 2, 3)))
    meta = args.cache / "cache.json"  # written when prepare-cache finishes
    layers = json.loads(meta.read_text())["target_layers"] if meta.exists() else range(len(worst))
    print("fused layer            " + " ".join(f"{layer:>8}" for layer in layers))
    print("relative RMS error     " + " ".join(f"{e:8.4f}" for e in np.sqrt(squared_error / squared)))
    print("max error / token max  " + " ".join(f"{e:8.4f}" for e in worst))

    n, k, t, e = np.load(shards[0] / "features.npy", mmap_mode="r").shape
    per_sequence = {dtype: estimate_bytes(1, t, k, e, dtype) for dtype in FEATURE_DTYPES}
    print("bytes per sequence: " + ", ".join(f"{dtype} {size:,}" for dtype, size in per_sequence.items()))
    rows = np.sort(np.random.default_rng(0).choice(n, 8, replace=False))
    values, scale = encoded(np.load(shards[0] / "features.npy"))
    decode(values[rows], scale[rows])
    began = time.perf_counter()
    for _ in range(5):
        decode(values[rows], scale[rows])
    print(f"decoding one batch of 8 rows: {(time.perf_counter() - began) / 5 * 1e3:.0f} ms")

    if args.copy_to is not None:
        args.copy_to.mkdir(parents=True, exist_ok=True)
        for shard in shards:
            final = args.copy_to / shard.name
            if final.exists():
                continue
            partial = args.copy_to / f"{shard.name}.tmp"
            shutil.rmtree(partial, ignore_errors=True)
            shutil.copytree(shard, partial, ignore=shutil.ignore_patterns("features.npy"))
            values, scale = encoded(np.load(shard / "features.npy"))
            np.save(partial / "features.npy", values)
            np.save(partial / "features_scale.npy", scale)
            partial.rename(final)
        if not meta.exists():
            raise SystemExit(f"{args.cache} is unfinished (no cache.json): let prepare-cache finish, then copy")
        (args.copy_to / "cache.json").write_text(json.dumps(json.loads(meta.read_text()) | {"feature_dtype": "float8"}))
        print(f"float8 copy of {len(shards)} shards in {args.copy_to}")


if __name__ == "__main__":
    main()
