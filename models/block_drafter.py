"""A trainable DFlash or DSpark drafter: the DFlash backbone plus, for DSpark, the Markov and confidence
heads, and the draft vocabulary they predict over. The unit that training optimises and that checkpoints
export."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from dspark_jax.models.dflash import DFlashBackbone, DrafterConfig
from dspark_jax.models.draft_vocab import VocabMap, full_vocab
from dspark_jax.models.dspark import DSparkHeads


class BlockDrafter(nnx.Module):
    """The trainable part of a DFlash (heads None) or DSpark drafter.

    vocab: the target's vocabulary size (draft over all of it) or the sorted target ids of a reduced draft
    vocabulary (`draft_vocab.most_frequent_tokens`).
    """

    def __init__(self, config: DrafterConfig, vocab: int | np.ndarray, dspark_rank: int | None, *, rngs: nnx.Rngs):
        draft_to_target = full_vocab(vocab) if isinstance(vocab, int) else np.asarray(vocab, np.int32)
        self.config = config
        self.vocab = VocabMap(jnp.asarray(draft_to_target))
        self.backbone = DFlashBackbone(config, rngs=rngs)
        self.heads = (DSparkHeads(len(draft_to_target), config.hidden_size, dspark_rank, rngs=rngs)
                      if dspark_rank else None)
