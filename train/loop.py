"""The drafter training run: deterministic batches, orbax checkpoints, resume after a kill, metrics log.

Batch and anchor randomness for step s is derived from (seed, s) alone, so a run resumed from the
checkpoint of step s replays exactly the steps an uninterrupted run would have taken: the parameters come
out bit-identical. Checkpoints are written every `checkpoint_every` steps, at the end, and when SIGTERM
arrives (the run then stops cleanly after the current step). Orbax writes each checkpoint into a temporary
directory and renames it, so a kill mid-write leaves the previous checkpoint intact. Metrics go to
`metrics.jsonl`, one line per step; on resume, lines past the checkpoint are dropped first.

Across processes (`jax.distributed`) every process runs the same loop and draws the same batch keys; each
reads its own rows of a batch, all write their pieces of each checkpoint (orbax coordinates them), and
process 0 alone writes the log.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from tqdm import tqdm

from dspark_jax.atomic_file import write_atomically
from dspark_jax.models.config import ModelConfig
from dspark_jax.models.params import TransformerParams
from dspark_jax.models.sharding import Placement
from dspark_jax.train.drafter_step import TrainConfig, train_step, train_step_cached
from dspark_jax.train.target_cache import CachedShard

# One optimizer step given the step's batch key and anchor key; returns (metrics, tokens in the batch).
StepFn = Callable[[jax.Array, jax.Array], tuple[dict, int]]


def _local_part(placement: Placement | None, batch_size: int):
    """(the part of a batch's row list this process reads, the function that makes a global array of a
    batch from this process's rows of it, with the batch along `axis`)."""
    if placement is None:
        return slice(None), lambda array, axis=0: jnp.asarray(array)
    return (placement.local_rows(batch_size),
            lambda array, axis=0: placement.put_local_batch(array, batch_size, axis))


def online_steps(model: nnx.Module, optimizer: nnx.Optimizer, target: ModelConfig, params: TransformerParams,
                 tokens: np.ndarray, loss_mask: np.ndarray, batch_size: int, train: TrainConfig,
                 placement: Placement | None = None) -> StepFn:
    """Steps that sample `batch_size` sequences and compute the target's features on the fly; on a mesh
    (`placement`) each batch is split over its data axis, each process reading only its own rows."""
    if batch_size > tokens.shape[0]:
        raise ValueError(f"batch_size {batch_size} exceeds the {tokens.shape[0]} training sequences")
    mine, put = _local_part(placement, batch_size)

    def step(batch_key, anchor_key):
        rows = np.asarray(jax.random.choice(batch_key, tokens.shape[0], (batch_size,), replace=False))[mine]
        metrics = train_step(model, optimizer, target, params, put(tokens[rows]), put(loss_mask[rows]), anchor_key,
                             train, placement)
        return metrics, batch_size * tokens.shape[1]

    return step


def cached_steps(model: nnx.Module, optimizer: nnx.Optimizer, target: ModelConfig, params: TransformerParams,
                 shards: list[CachedShard], batch_size: int, train: TrainConfig,
                 feature_index: tuple[int, ...] | None = None, placement: Placement | None = None) -> StepFn:
    """Steps that read features from the target cache: one shard per step, `batch_size` rows of it.
    feature_index picks the drafter's layers among the cached ones (None: all, in order). On a mesh
    (`placement`) each batch is split over its data axis, each process reading only its own rows."""
    if batch_size > min(len(s) for s in shards):
        raise ValueError(f"batch_size {batch_size} exceeds the rows of the smallest cache shard")
    mine, put = _local_part(placement, batch_size)

    def step(batch_key, anchor_key):
        shard_key, row_key = jax.random.split(batch_key)
        shard = shards[int(jax.random.randint(shard_key, (), 0, len(shards)))]
        rows = np.sort(np.asarray(jax.random.choice(row_key, len(shard), (batch_size,), replace=False)))
        tokens, loss_mask, features, hidden, statistics = shard.batch(rows[mine])
        if feature_index is not None:
            features = features[list(feature_index)]
        statistics = jax.tree.map(put, statistics)
        metrics = train_step_cached(model, optimizer, target, params, put(tokens), put(loss_mask), put(features, 1),
                                    put(hidden), statistics, anchor_key, train, placement)
        return metrics, batch_size * tokens.shape[1]

    return step


@dataclasses.dataclass(frozen=True)
class RunConfig:
    checkpoint_every: int = 100
    seed: int = 0
    progress: bool = True


def _truncate_log(path: Path, last_step: int) -> None:
    """Keeps the lines of steps <= last_step, rewritten atomically."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= last_step]
    write_atomically(path, lambda tmp: Path(tmp).write_text("".join(line + "\n" for line in kept)))


def run_training(model: nnx.Module, optimizer: nnx.Optimizer, take_step: StepFn, train: TrainConfig,
                 run: RunConfig, out_dir: Path, after_step: Callable[[int, dict], None] | None = None) -> int:
    """Trains until `train.total_steps` (resuming from the newest checkpoint in out_dir); returns the step
    reached, which is smaller when SIGTERM stopped the run. `take_step` comes from `online_steps` or
    `cached_steps` over the same model and optimizer."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False)
    manager = ocp.CheckpointManager((out_dir / "checkpoints").resolve(), options=options)
    state = {"model": nnx.state(model), "optimizer": nnx.state(optimizer)}
    start = manager.latest_step() or 0
    if start:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        restored = manager.restore(start, args=ocp.args.StandardRestore(abstract))
        nnx.update(model, restored["model"])
        nnx.update(optimizer, restored["optimizer"])
    log_path = out_dir / "metrics.jsonl"
    primary = jax.process_index() == 0  # across processes, one writes the log (all write checkpoints)
    if primary:
        _truncate_log(log_path, start)

    def save(step: int) -> None:
        manager.save(step, args=ocp.args.StandardSave({"model": nnx.state(model), "optimizer": nnx.state(optimizer)}))

    stop_requested = []
    previous_handler = signal.signal(signal.SIGTERM, lambda *_: stop_requested.append(True))
    base_key = jax.random.key(run.seed)
    step = start
    try:
        with open(log_path if primary else os.devnull, "a") as log, tqdm(
                total=train.total_steps, initial=start, disable=not (run.progress and primary), desc="train",
                unit="step") as bar:
            while step < train.total_steps and not stop_requested:
                began = time.perf_counter()
                metrics, tokens_per_step = take_step(*jax.random.split(jax.random.fold_in(base_key, step)))
                metrics = {k: float(v) for k, v in metrics.items()}
                step += 1
                seconds = time.perf_counter() - began
                log.write(json.dumps({"step": step, **metrics, "tokens_per_second": tokens_per_step / seconds}) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{metrics['loss']:.3f}", tok_s=f"{tokens_per_step / seconds:.0f}")
                bar.update()
                if step % run.checkpoint_every == 0:
                    save(step)
                if after_step is not None:
                    after_step(step, metrics)
        # The last step is always saved: the end of the run, or wherever SIGTERM stopped it.
        if manager.latest_step() != step:
            save(step)
    finally:
        manager.wait_until_finished()
        manager.close()
        signal.signal(signal.SIGTERM, previous_handler)
    return step
