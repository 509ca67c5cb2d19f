"""The proposer for any trained drafter: DFlash / DSpark (block drafters) or EAGLE-3."""

from __future__ import annotations

from dspark_jax.models.block_drafter import BlockDrafter
from dspark_jax.models.config import ModelConfig
from dspark_jax.models.eagle3 import Eagle3Drafter
from dspark_jax.models.params import TransformerParams
from dspark_jax.proposers.block_drafter import make_block_proposer
from dspark_jax.proposers.eagle3 import make_eagle3_proposer


def drafter_proposer(target: ModelConfig, model: BlockDrafter | Eagle3Drafter, target_params: TransformerParams):
    """(proposer, params) for the speculative engine."""
    if isinstance(model, Eagle3Drafter):
        return make_eagle3_proposer(target, model, target_params)
    return make_block_proposer(target, model, target_params)
