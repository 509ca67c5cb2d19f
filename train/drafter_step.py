"""One training step of a block drafter (DFlash, or DSpark with its heads), target features online.

The frozen target runs first (no gradient) and yields the K fused-layer features plus its own logits at
every position; the drafter is trained on random anchor blocks of the same sequences. With a target cache
the first half is replaced by reading stored features (same loss).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from dspark_jax.models.config import ModelConfig
from dspark_jax.models.draft_vocab import DraftHead
from dspark_jax.models.drafters import Drafter
from dspark_jax.models.eagle3 import Eagle3Drafter
from dspark_jax.models.kv_cache import KVCache
from dspark_jax.models.params import TransformerParams
from dspark_jax.models.transformer import embed, forward, logits
from dspark_jax.sampling import argmax
from dspark_jax.train.blocks import Blocks, make_blocks, sample_anchors
from dspark_jax.train.dflash_loss import dflash_loss
from dspark_jax.train.dspark_loss import DSparkLossWeights, dspark_loss
from dspark_jax.train.eagle3_loss import eagle3_loss
from dspark_jax.train.eagle3_ttt import training_time_test


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


def make_optimizer(model: Drafter, config: TrainConfig) -> nnx.Optimizer:
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


def drafter_loss(model: Drafter, target: ModelConfig, params: TransformerParams, tokens: jax.Array,
                 features: jax.Array, final_hidden: jax.Array, blocks: Blocks, train: TrainConfig):
    """(loss, metrics) for the blocks of one batch of sequences: the DFlash, DSpark or EAGLE-3 objective."""
    head, loss = DraftHead.from_target(target, params, model.vocab.get_value()), train.loss
    source_hidden = jnp.take_along_axis(final_hidden[:, None], blocks.source[..., None], axis=2)
    target_logits = logits(params, source_hidden, config=target)  # [B, N, γ, V]
    targets = head.to_draft(blocks.targets)
    targets = jnp.where(targets == head.size, -1, targets)
    flat = lambda a: a.reshape(-1, *a.shape[2:])
    if isinstance(model, Eagle3Drafter):
        step_logits = training_time_test(model, target, params, tokens, features, blocks, head)  # [γ, B, N, Vd]
        steps_first = lambda a: jnp.moveaxis(a, 2, 0)
        value = eagle3_loss(step_logits, steps_first(head.target_log_probs(target_logits)),
                            steps_first(blocks.valid), train.eagle3_step_decay)
        draft_logits, parts = jnp.moveaxis(step_logits, 0, 2), {"soft_ce": value}
    else:
        batch, length = tokens.shape
        context = model.backbone.context(features, jnp.broadcast_to(jnp.arange(length), (batch, length)))
        hidden = model.backbone(embed(params, blocks.inputs, config=target), blocks.positions, context,
                                blocks.context_visible)  # [B, N, γ, E]
        draft_logits = head.logits(hidden)
        if model.heads is None:
            value = dflash_loss(flat(draft_logits), flat(targets), flat(blocks.valid), loss.decay)
            parts = {"ce": value}
        else:
            draft_logits, confidence = model.heads.teacher_forced(draft_logits, hidden, head.to_draft(blocks.previous))
            value, parts = dspark_loss(flat(draft_logits), flat(head.target_log_probs(target_logits)),
                                       flat(confidence), flat(targets), flat(blocks.valid), loss)
    accepted = head.to_target(argmax(draft_logits)) == argmax(target_logits)
    parts["top1_agreement"] = jnp.sum(accepted & blocks.valid) / jnp.maximum(jnp.sum(blocks.valid), 1)
    return value, parts


def _update(model: Drafter, optimizer: nnx.Optimizer, target: ModelConfig, params: TransformerParams,
            tokens: jax.Array, loss_mask: jax.Array, features: jax.Array, final_hidden: jax.Array, key: jax.Array,
            config: TrainConfig) -> dict[str, jax.Array]:
    anchors = sample_anchors(key, loss_mask, config.anchors_per_sequence)
    blocks = make_blocks(tokens, loss_mask, anchors, model.config.block_size, model.config.mask_token_id)
    grad_fn = nnx.value_and_grad(drafter_loss, has_aux=True)
    (value, metrics), grads = grad_fn(model, target, params, tokens, features, final_hidden, blocks, config)
    optimizer.update(model, grads)
    return metrics | {"loss": value}


@nnx.jit(static_argnames=("target", "config"))
def train_step(model: Drafter, optimizer: nnx.Optimizer, target: ModelConfig, params: TransformerParams,
               tokens: jax.Array, loss_mask: jax.Array, key: jax.Array, config: TrainConfig):
    """Online mode: one optimizer step on a batch of sequences (tokens, loss_mask: [B, T]), the target's
    features computed on the fly; returns the metrics."""
    features, final_hidden = target_features(target, params, tokens, model.config.target_layers)
    return _update(model, optimizer, target, params, tokens, loss_mask, features, final_hidden, key, config)


@nnx.jit(static_argnames=("target", "config"))
def train_step_cached(model: Drafter, optimizer: nnx.Optimizer, target: ModelConfig, params: TransformerParams,
                      tokens: jax.Array, loss_mask: jax.Array, features: jax.Array, final_hidden: jax.Array,
                      key: jax.Array, config: TrainConfig):
    """Offline mode: the same step with features [K, B, T, E] and final hidden [B, T, E] read from the
    target cache (bfloat16; computed in float32)."""
    return _update(model, optimizer, target, params, tokens, loss_mask, features.astype(jnp.float32),
                   final_hidden.astype(jnp.float32), key, config)
