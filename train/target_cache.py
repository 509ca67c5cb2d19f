"""Offline target cache: per training sequence, the K fused-layer features and the final normed hidden
state of the frozen target (target logits = its LM head applied to the latter), plus the statistics of its
full-vocabulary logits (log normaliser, greedy token; float32 / int32) at the positions valid slots take
their targets from, so training forms the target's logits only over the draft vocabulary.

The fused-layer features are stored in one of two encodings (`FEATURE_DTYPES`): bfloat16, or float8 (e4m3)
with one float32 scale per token and layer (its largest |x| maps to float8's largest value). The target's
features are dominated by a few huge dimensions whose size varies from token to token, so a scale per
token keeps every element's relative error within float8's 2^-4; the drafter only reads them through its
learned `fuse` projection. The final hidden state stays bfloat16 in both: it forms the target's
distribution, the training label, which float8 would move by a few percent. float8 takes 0.59x the disk:
20K sequences of 384 tokens are 35 GB instead of 59 (docs/results.md, "Cache at scale").
At DeepSpec scale this is tens of terabytes, so `estimate_bytes` is printed before anything is written.
Each shard is a directory of .npy files written under a temporary name and renamed into place, so a kill
leaves either a whole shard or none; a rerun skips finished shards and clears stale temporaries. Shards are
read back memory-mapped, so training touches only the rows it samples.
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from dspark_jax.command_names import FEATURE_DTYPES
from dspark_jax.models.config import ModelConfig
from dspark_jax.models.params import TransformerParams
from dspark_jax.models.sharding import Placement
from dspark_jax.train.blocks import predicts_loss_token
from dspark_jax.train.drafter_step import TargetStatistics, target_features, target_statistics

BF16 = ml_dtypes.bfloat16
FLOAT8 = ml_dtypes.float8_e4m3fn
_FLOAT8_MAX = float(ml_dtypes.finfo(FLOAT8).max)


def estimate_bytes(num_sequences: int, length: int, num_features: int, hidden_size: int,
                   feature_dtype: str = "bfloat16") -> int:
    """Disk the cache will take: K features x E values per token (2 bytes in bfloat16, 1 in float8 plus a
    4-byte scale per vector), the final hidden state in bfloat16, ids, mask, log normaliser and greedy token."""
    feature = hidden_size * 2 if feature_dtype == "bfloat16" else hidden_size + 4
    return num_sequences * length * (num_features * feature + hidden_size * 2 + 4 + 1 + 4 + 4)


@functools.partial(jax.jit, static_argnums=1)
def encode(x: jax.Array, feature_dtype: str) -> dict[str, jax.Array]:
    """Features [..., E] as stored: {"values": bfloat16 [..., E]} or {"values": float8 [..., E],
    "scale": float32 [...]} with x ~= values * scale."""
    if feature_dtype == "bfloat16":
        return {"values": x.astype(jnp.bfloat16)}
    largest = jnp.max(jnp.abs(x), axis=-1)
    scale = jnp.where(largest > 0, largest / _FLOAT8_MAX, 1.0).astype(jnp.float32)
    values = jnp.clip(x / scale[..., None], -_FLOAT8_MAX, _FLOAT8_MAX)  # the division may round past the max
    return {"values": values.astype(jnp.float8_e4m3fn), "scale": scale}


def decode(values: np.ndarray, scale: np.ndarray | None) -> np.ndarray:
    """The bfloat16 features of `encode`'s stored form: values as stored on disk (uint16 bits of bfloat16, or
    uint8 bits of float8 with its scale)."""
    if scale is None:
        return values.view(BF16)
    return np.asarray(_decode_float8(values, scale))


@jax.jit
def _decode_float8(bits: jax.Array, scale: jax.Array) -> jax.Array:
    # XLA's threads decode a training batch in a third of numpy's time, to the same bits.
    values = jax.lax.bitcast_convert_type(bits, jnp.float8_e4m3fn).astype(jnp.float32)
    return (values * scale[..., None]).astype(jnp.bfloat16)


def _stored_dtype(shard: Path) -> str:
    return "float8" if (shard / "features_scale.npy").exists() else "bfloat16"


@functools.partial(jax.jit, static_argnums=(0, 1))
def batch_features(target: ModelConfig, layers: tuple[int, ...], params: TransformerParams, tokens: jax.Array,
                   loss_mask: jax.Array) -> tuple[jax.Array, jax.Array, TargetStatistics]:
    """What the cache stores of one batch of write_cache, before `encode`: features [K, B, T, E],
    final hidden states [B, T, E] and the target's statistics at the positions a valid slot reads."""
    features, hidden = target_features(target, params, tokens, layers)
    return features, hidden, target_statistics(target, params, hidden, predicts_loss_token(loss_mask))


def write_cache(target: ModelConfig, params: TransformerParams, layers: tuple[int, ...], tokens: np.ndarray,
                loss_mask: np.ndarray, out_dir: Path, shard_size: int = 64, batch_size: int = 8,
                placement: Placement | None = None, feature_dtype: str = "bfloat16") -> list[Path]:
    """Writes (or completes) the shards for tokens / loss_mask [N, T], features encoded as `feature_dtype`
    (one of FEATURE_DTYPES); returns the shard directories. On a mesh (`placement`, the
    target placed by the same rules) each batch is split over its data axis."""
    if feature_dtype not in FEATURE_DTYPES:
        raise ValueError(f"feature_dtype must be one of {FEATURE_DTYPES}, got {feature_dtype!r}")
    put = jnp.asarray if placement is None else placement.put_batch
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*.tmp"):
        shutil.rmtree(stale)

    shards = []
    for index, start in enumerate(range(0, len(tokens), shard_size)):
        final = out_dir / f"shard-{index:05d}"
        shards.append(final)
        rows = slice(start, start + shard_size)
        if final.exists():
            stored = _stored_dtype(final)
            if stored != feature_dtype:
                raise ValueError(f"{final} holds {stored} features, not {feature_dtype}: pass --feature-dtype "
                                 f"{stored} or write the cache into a new --out directory")
            written = np.load(final / "tokens.npy", mmap_mode="r")
            if np.array_equal(written, tokens[rows]):
                continue
            if len(written) >= len(tokens[rows]) or not np.array_equal(written, tokens[rows][: len(written)]):
                raise ValueError(f"{final} holds other sequences than these (other data, --length or "
                                 "--shard-size): write the cache into a new --out directory")
            # else a shorter last shard of fewer sequences: it is written again, whole
        arrays: dict[str, list[np.ndarray]] = {}
        for b in range(rows.start, min(rows.stop, len(tokens)), batch_size):
            batch = slice(b, min(b + batch_size, rows.stop))
            f, h, stats = batch_features(target, layers, params, put(tokens[batch]), put(loss_mask[batch]))
            encoded = encode(jnp.swapaxes(f, 0, 1), feature_dtype)  # [n, K, T, E]
            arrays.setdefault("features", []).append(as_bits(encoded["values"]))
            if "scale" in encoded:
                arrays.setdefault("features_scale", []).append(np.asarray(encoded["scale"]))
            arrays.setdefault("hidden", []).append(as_bits(h.astype(jnp.bfloat16)))
            arrays.setdefault("log_normalizer", []).append(np.asarray(stats.log_normalizer, np.float32))
            arrays.setdefault("greedy", []).append(np.asarray(stats.greedy, np.int32))
        partial = out_dir / f"shard-{index:05d}.tmp"
        partial.mkdir()
        np.save(partial / "tokens.npy", np.asarray(tokens[rows], np.int32))
        np.save(partial / "loss_mask.npy", np.asarray(loss_mask[rows], bool))
        for name, parts in arrays.items():
            np.save(partial / f"{name}.npy", np.concatenate(parts))
        replaced = out_dir / f"shard-{index:05d}.old.tmp"
        if final.exists():  # killed between these renames, both are .tmp: the next run writes the shard again
            final.rename(replaced)
        partial.rename(final)
        shutil.rmtree(replaced, ignore_errors=True)
    return shards


def as_bits(values: jax.Array) -> np.ndarray:
    """The unsigned-integer bits of bfloat16 / float8 values, as .npy files store them portably."""
    values = np.asarray(values)
    return values.view(np.uint16 if values.dtype == BF16 else np.uint8)


def open_cache(directory: Path, tokens: np.ndarray) -> list[CachedShard]:
    """The finished shards (unfinished `.tmp` ones are not shards) whose first rows are exactly `tokens`
    [N, T]: a cache written from more sequences serves their first N."""
    shards, start = [], 0
    for path in sorted(Path(directory).glob("shard-*")):
        if start == len(tokens):
            break
        if path.name.endswith(".tmp"):
            continue
        shard = CachedShard(path, rows=len(tokens) - start)
        if not np.array_equal(shard.tokens, tokens[start : start + len(shard)]):
            raise ValueError(f"{path} holds other sequences than --data (other data or --length): rebuild the "
                             "cache with prepare-cache from the same --data and --length into a new --out")
        shards.append(shard)
        start += len(shard)
    if start < len(tokens):
        raise ValueError(f"{directory} caches {start} sequences, fewer than the {len(tokens)} asked for: complete it "
                         "with prepare-cache (same --data, --out and --max-sequences) or lower --max-sequences")
    return shards


class CachedShard:
    """One shard, memory-mapped: rows are read from disk only when indexed."""

    def __init__(self, directory: Path, rows: int | None = None):
        """rows: serve only the first ones."""
        directory = Path(directory)
        if not (directory / "log_normalizer.npy").exists():
            raise ValueError(f"{directory} has no log_normalizer.npy: it was written by an older prepare-cache; "
                             "rerun `dspark-jax prepare-cache` into a new --out directory")
        load = lambda name: np.load(directory / f"{name}.npy", mmap_mode="r")
        self.tokens, self.loss_mask = load("tokens")[:rows], load("loss_mask")[:rows]
        self.feature_dtype = _stored_dtype(directory)
        self._features, self._hidden = load("features"), load("hidden")
        self._features_scale = load("features_scale") if self.feature_dtype == "float8" else None
        self._log_normalizer, self._greedy = load("log_normalizer"), load("greedy")

    def __len__(self) -> int:
        return len(self.tokens)

    def batch(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, TargetStatistics]:
        """(tokens [n, T], loss_mask [n, T], features bf16 [K, n, T, E], final hidden bf16 [n, T, E],
        target statistics [n, T])."""
        scale = None if self._features_scale is None else np.asarray(self._features_scale[rows])
        features = decode(np.asarray(self._features[rows]), scale).swapaxes(0, 1)
        hidden = np.asarray(self._hidden[rows]).view(BF16)
        statistics = TargetStatistics(np.asarray(self._log_normalizer[rows]), np.asarray(self._greedy[rows]))
        return np.asarray(self.tokens[rows]), np.asarray(self.loss_mask[rows]), features, hidden, statistics
