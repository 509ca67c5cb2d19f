"""One training step of a drafter of any kind (`drafter_kinds.py`), target features online.

The frozen target runs first (no gradient) and yields the K fused-layer features and its final hidden
states; the drafter is trained on random anchor blocks of the same sequences. With a target cache the first
half is replaced by reading stored features (same loss).

The losses need the target's log-probabilities of the draft tokens normalised over its whole vocabulary,
and the agreement metric its argmax. Both come from `TargetStatistics` (log normaliser and greedy token per
position), so a step forms the target's logits only over the draft vocabulary: with Gemma's 262,144-token
head, the full logits at a step's 512 block positions cost more than the rest of the step. Online, the
statistics are computed at the block positions; a target cache stores them for every position, once for
all the drafters trained from it.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from dspark_jax.drafter_kinds import kind_of
from dspark_jax.models.config import ModelConfig
from dspark_jax.models.draft_vocab import DraftHead
from dspark_jax.models.kv_cache import KVCache
from dspark_jax.models.params import TransformerParams
from dspark_jax.models.sharding import Placement, constrain_state
from dspark_jax.models.transformer import forward, logits
from dspark_jax.sampling import argmax
from dspark_jax.train.blocks import Blocks, at_positions, make_blocks, sample_anchors
from dspark_jax.train.dspark_loss import DSparkLossWeights


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    learning_rate: float = 6e-4
    warmup_steps: int = 20
    total_steps: int = 1000
    clip_norm: float = 1.0
    weight_decay: float = 0.01
    anchors_per_sequence: int = 8
    loss: DSparkLossWeights = DSparkLossWeights()  # DFlash uses its position decay, DSpark all of it
    eagle3_step_decay: float = 0.8


def make_optimizer(model: nnx.Module, config: TrainConfig) -> nnx.Optimizer:
    schedule = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, config.warmup_steps,
                                                  max(config.total_steps, config.warmup_steps + 1))
    tx = optax.chain(optax.clip_by_global_norm(config.clip_norm),
                     optax.adamw(schedule, weight_decay=config.weight_decay))
    return nnx.Optimizer(model, tx, wrt=nnx.Param)


def target_features(target: ModelConfig, params: TransformerParams, tokens: jax.Array,
                    layers: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """(features [K, B, T, E], final normed hidden [B, T, E]) of the frozen target over full sequences."""
    batch, length = tokens.shape
    out = forward(params, tokens, jnp.broadcast_to(jnp.arange(length), (batch, length)),
                  KVCache.empty(target, batch, length, params.embed.dtype), config=target, capture_layers=layers)
    return jax.lax.stop_gradient(out.captured), jax.lax.stop_gradient(out.hidden)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TargetStatistics:
    """What training needs from the target's full-vocabulary logits at each position, without them."""

    log_normalizer: jax.Array  # float32[...]: logsumexp of the target's logits over its whole vocabulary
    greedy: jax.Array  # int32[...]: the target's argmax token


STATISTICS_ROWS = 64  # positions per chunk of full-vocabulary logits (64 x 262,144 float32 = 67 MB)


def target_statistics(target: ModelConfig, params: TransformerParams, hidden: jax.Array,
                      needed: jax.Array | None = None) -> TargetStatistics:
    """Statistics [...] from final normed hidden states [..., E], the full logits formed `STATISTICS_ROWS`
    positions at a time so a whole batch of sequences fits in memory.

    needed: bool[...], the positions whose statistics are used (None: all). The others hold log normaliser
    +inf and greedy -1 (probability 0, never the draft's token), and chunks without a needed position are
    skipped: a target cache needs them only where a valid slot takes its target, about half of a sequence.
    """
    leading, size = hidden.shape[:-1], hidden.shape[-1]
    count = math.prod(leading)
    pad = -count % STATISTICS_ROWS
    rows = jnp.pad(hidden.reshape(count, size), ((0, pad), (0, 0))).reshape(-1, STATISTICS_ROWS, size)
    needed = jnp.ones(leading, bool) if needed is None else needed
    wanted = jnp.pad(needed.reshape(count), (0, pad)).reshape(-1, STATISTICS_ROWS)
    unused = TargetStatistics(jnp.full(STATISTICS_ROWS, jnp.inf, jnp.float32), jnp.full(STATISTICS_ROWS, -1, jnp.int32))

    def compute(h: jax.Array, want: jax.Array) -> TargetStatistics:
        full = logits(params, h, config=target)
        stats = TargetStatistics(jax.nn.logsumexp(full, axis=-1), argmax(full))
        return jax.tree.map(lambda value, default: jnp.where(want, value, default), stats, unused)

    def chunk(args) -> TargetStatistics:
        h, want = args
        return jax.lax.cond(jnp.any(want), compute, lambda *_: unused, h, want)

    stats = jax.lax.map(chunk, (jax.lax.stop_gradient(rows), wanted))
    return jax.tree.map(lambda a: a.reshape(-1)[:count].reshape(leading), stats)


def drafter_loss(model: nnx.Module, target: ModelConfig, params: TransformerParams, tokens: jax.Array,
                 features: jax.Array, source_hidden: jax.Array, statistics: TargetStatistics, blocks: Blocks,
                 train: TrainConfig):
    """(loss, metrics) for the blocks of one batch of sequences: the drafter kind's objective.
    source_hidden [B, N, γ, E] and statistics [B, N, γ]: the target at each slot's source position."""
    kind = kind_of(model)
    head = DraftHead.from_target(target, params, model.vocab.get_value())
    target_log_probs = head.target_log_probs(source_hidden, statistics.log_normalizer)  # [B, N, γ, Vd]
    targets = head.to_draft(blocks.targets)
    targets = jnp.where(targets == head.size, -1, targets)
    draft_logits, confidence = kind.teacher_forced(model, target, params, tokens, features, blocks, head)
    value, parts = kind.objective(draft_logits, target_log_probs, confidence, targets, blocks.valid, train)
    accepted = head.to_target(argmax(draft_logits)) == statistics.greedy
    parts["top1_agreement"] = jnp.sum(accepted & blocks.valid) / jnp.maximum(jnp.sum(blocks.valid), 1)
    return value, parts


def _update(model: nnx.Module, optimizer: nnx.Optimizer, target: ModelConfig, params: TransformerParams,
            tokens: jax.Array, loss_mask: jax.Array, features: jax.Array, final_hidden: jax.Array, key: jax.Array,
            config: TrainConfig, placement: Placement | None, statistics: TargetStatistics | None = None
            ) -> dict[str, jax.Array]:
    anchors = sample_anchors(key, loss_mask, config.anchors_per_sequence)
    blocks = make_blocks(tokens, loss_mask, anchors, model.config.depth)
    source_hidden = at_positions(final_hidden, blocks.source)
    if statistics is None:  # online: the full-vocabulary head at the blocks' positions only
        source_statistics = target_statistics(target, params, source_hidden)
    else:
        source_statistics = jax.tree.map(lambda table: at_positions(table, blocks.source), statistics)
    grad_fn = nnx.value_and_grad(drafter_loss, has_aux=True)
    (value, metrics), grads = grad_fn(model, target, params, tokens, features, source_hidden, source_statistics,
                                      blocks, config)
    optimizer.update(model, grads)
    if placement is not None:
        constrain_state(model, optimizer, placement=placement)
    return metrics | {"loss": value}


@nnx.jit(static_argnames=("target", "config", "placement"))
def train_step(model: nnx.Module, optimizer: nnx.Optimizer, target: ModelConfig, params: TransformerParams,
               tokens: jax.Array, loss_mask: jax.Array, key: jax.Array, config: TrainConfig,
               placement: Placement | None = None):
    """Online mode: one optimizer step on a batch of sequences (tokens, loss_mask: [B, T]), the target's
    features computed on the fly; returns the metrics. On a mesh (`placement`), the batch arrives split
    over the data axis, the target as `shard_params` placed it, the drafter and optimizer as `place_state`
    did, and the updated ones leave in the same layout."""
    features, final_hidden = target_features(target, params, tokens, model.config.target_layers)
    return _update(model, optimizer, target, params, tokens, loss_mask, features, final_hidden, key, config,
                   placement)


@nnx.jit(static_argnames=("target", "config", "placement"))
def train_step_cached(model: nnx.Module, optimizer: nnx.Optimizer, target: ModelConfig, params: TransformerParams,
                      tokens: jax.Array, loss_mask: jax.Array, features: jax.Array, final_hidden: jax.Array,
                      statistics: TargetStatistics, key: jax.Array, config: TrainConfig,
                      placement: Placement | None = None):
    """Offline mode: the same step with features [K, B, T, E], final hidden [B, T, E] (bfloat16; computed in
    float32) and the target's statistics [B, T] read from the target cache."""
    return _update(model, optimizer, target, params, tokens, loss_mask, features.astype(jnp.float32),
                   final_hidden.astype(jnp.float32), key, config, placement, statistics)
