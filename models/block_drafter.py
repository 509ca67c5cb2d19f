"""A trainable DFlash or DSpark drafter: the DFlash backbone plus, for DSpark, the Markov and confidence
heads. The unit that training optimises and that checkpoints export."""

from __future__ import annotations

from flax import nnx

from dspark_jax.models.dflash import DFlashBackbone, DrafterConfig
from dspark_jax.models.dspark import DSparkHeads


class BlockDrafter(nnx.Module):
    """The trainable part of a DFlash (heads None) or DSpark drafter."""

    def __init__(self, config: DrafterConfig, vocab_size: int, dspark_rank: int | None, *, rngs: nnx.Rngs):
        self.config = config
        self.backbone = DFlashBackbone(config, rngs=rngs)
        self.heads = DSparkHeads(vocab_size, config.hidden_size, dspark_rank, rngs=rngs) if dspark_rank else None
