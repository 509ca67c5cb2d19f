"""Offline target cache: per training sequence, the K fused-layer features and the final normed hidden
state of the frozen target (target logits = its LM head applied to the latter), in bfloat16, plus the
statistics of its full-vocabulary logits (log normaliser, greedy token; float32 / int32) at the positions
valid slots take their targets from, so training forms the target's logits only over the draft vocabulary.

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

from dspark_jax.models.config import ModelConfig
from dspark_jax.models.params import TransformerParams
from dspark_jax.models.sharding import Placement
from dspark_jax.train.blocks import predicts_loss_token
from dspark_jax.train.drafter_step import TargetStatistics, target_features, target_statistics

BF16 = ml_dtypes.bfloat16


def estimate_bytes(num_sequences: int, length: int, num_features: int, hidden_size: int) -> int:
    """Disk the cache will take: (K features + final hidden) x E bfloat16 values per token, plus ids, mask,
    log normaliser and greedy token."""
    return num_sequences * length * ((num_features + 1) * hidden_size * 2 + 4 + 1 + 4 + 4)


@functools.partial(jax.jit, static_argnums=(0, 1))
def batch_features(target: ModelConfig, layers: tuple[int, ...], params: TransformerParams, tokens: jax.Array,
                   loss_mask: jax.Array) -> tuple[jax.Array, jax.Array, TargetStatistics]:
    """What the cache stores of one batch of write_cache, before the bfloat16 rounding: features [K, B, T, E],
    final hidden states [B, T, E] and the target's statistics at the positions a valid slot reads."""
    features, hidden = target_features(target, params, tokens, layers)
    return features, hidden, target_statistics(target, params, hidden, predicts_loss_token(loss_mask))


def write_cache(target: ModelConfig, params: TransformerParams, layers: tuple[int, ...], tokens: np.ndarray,
                loss_mask: np.ndarray, out_dir: Path, shard_size: int = 64, batch_size: int = 8,
                placement: Placement | None = None) -> list[Path]:
    """Writes (or completes) the shards for tokens / loss_mask [N, T]; returns the shard directories. On a
    mesh (`placement`, the target placed by the same rules) each batch is split over its data axis."""
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
            written = np.load(final / "tokens.npy", mmap_mode="r")
            if np.array_equal(written, tokens[rows]):
                continue
            if len(written) >= len(tokens[rows]) or not np.array_equal(written, tokens[rows][: len(written)]):
                raise ValueError(f"{final} holds other sequences than these (other data, --length or "
                                 "--shard-size): write the cache into a new --out directory")
            # else a shorter last shard of fewer sequences: it is written again, whole
        features, hidden, log_normalizer, greedy = [], [], [], []
        for b in range(rows.start, min(rows.stop, len(tokens)), batch_size):
            batch = slice(b, min(b + batch_size, rows.stop))
            f, h, stats = batch_features(target, layers, params, put(tokens[batch]), put(loss_mask[batch]))
            features.append(np.asarray(f.astype(jnp.bfloat16)).swapaxes(0, 1))  # [n, K, T, E]
            hidden.append(np.asarray(h.astype(jnp.bfloat16)))
            log_normalizer.append(np.asarray(stats.log_normalizer, np.float32))
            greedy.append(np.asarray(stats.greedy, np.int32))
        partial = out_dir / f"shard-{index:05d}.tmp"
        partial.mkdir()
        np.save(partial / "tokens.npy", np.asarray(tokens[rows], np.int32))
        np.save(partial / "loss_mask.npy", np.asarray(loss_mask[rows], bool))
        np.save(partial / "features.npy", np.concatenate(features).view(np.uint16))
        np.save(partial / "hidden.npy", np.concatenate(hidden).view(np.uint16))
        np.save(partial / "log_normalizer.npy", np.concatenate(log_normalizer))
        np.save(partial / "greedy.npy", np.concatenate(greedy))
        replaced = out_dir / f"shard-{index:05d}.old.tmp"
        if final.exists():  # killed between these renames, both are .tmp: the next run writes the shard again
            final.rename(replaced)
        partial.rename(final)
        shutil.rmtree(replaced, ignore_errors=True)
    return shards


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
        self._features, self._hidden = load("features"), load("hidden")
        self._log_normalizer, self._greedy = load("log_normalizer"), load("greedy")

    def __len__(self) -> int:
        return len(self.tokens)

    def batch(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, TargetStatistics]:
        """(tokens [n, T], loss_mask [n, T], features bf16 [K, n, T, E], final hidden bf16 [n, T, E],
        target statistics [n, T])."""
        features = np.asarray(self._features[rows]).view(BF16).swapaxes(0, 1)
        statistics = TargetStatistics(np.asarray(self._log_normalizer[rows]), np.asarray(self._greedy[rows]))
        return (np.asarray(self.tokens[rows]), np.asarray(self.loss_mask[rows]), features,
                np.asarray(self._hidden[rows]).view(BF16), statistics)
