"""What the public layouts store of the target, and their draft-vocabulary maps, in both directions.

Our drafters keep neither embedding nor LM head: they use the target's (the embedding scaled as the family
requires, `transformer.embed`). The public layouts give the drafter tensors of its own, `embed_tokens`
[V, E] and `lm_head` [Vd, E], which their trainers copy from the target and freeze. Export writes the
target's; import accepts a file's only when they are the target's (else the drafter learned its own, which
ours cannot hold) and reads nothing more from them.

A reduced draft vocabulary is EAGLE-3's pair: `d2t` int64[Vd], the offset from a draft id to its target id
(target = draft + d2t[draft]), and `t2d` bool[V], which target tokens are draft tokens.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from dspark_jax.kernels.linear import lookup
from dspark_jax.models.config import ConfigError, ModelConfig
from dspark_jax.models.params import TransformerParams
from dspark_jax.models.transformer import embed

# bfloat16 keeps 8 significant bits: a stored copy of the target's tensors may differ by that much.
SHARED_TOLERANCE = 2.0**-7


def target_embeddings(config: ModelConfig, params: TransformerParams) -> np.ndarray:
    """float32[V, E]: the input embedding of every token as our drafters see it (scale included)."""
    return np.asarray(embed(params, jnp.arange(config.vocab_size), config=config), np.float32)


def target_head_rows(params: TransformerParams, vocab: np.ndarray) -> np.ndarray:
    """float32[Vd, E]: the target head's rows of the draft tokens."""
    return np.asarray(lookup(params.head, jnp.asarray(vocab)), np.float32)


def draft_offsets(vocab: np.ndarray) -> np.ndarray:
    """d2t: int64[Vd], target id minus draft id."""
    return (np.asarray(vocab, np.int64) - np.arange(len(vocab), dtype=np.int64))


def target_is_draft(vocab: np.ndarray, vocab_size: int) -> np.ndarray:
    """t2d: bool[V]."""
    mask = np.zeros(vocab_size, bool)
    mask[np.asarray(vocab)] = True
    return mask


def draft_vocab_from(tensors: dict[str, np.ndarray], draft_size: int, vocab_size: int) -> np.ndarray:
    """The target ids of the draft tokens, in the file's draft order (int64[Vd]): from d2t, else the whole
    vocabulary."""
    if "d2t" in tensors:
        offsets = tensors["d2t"].astype(np.int64)
        if offsets.shape != (draft_size,):
            raise ConfigError(f"d2t has shape {offsets.shape}, not ({draft_size},) (draft_vocab_size)")
        ids = np.arange(draft_size) + offsets
        if ids.min(initial=0) < 0 or ids.max(initial=0) >= vocab_size or len(np.unique(ids)) != draft_size:
            raise ConfigError("d2t does not map the draft vocabulary onto distinct tokens of the target")
        return ids
    if draft_size != vocab_size:
        raise ConfigError(f"draft_vocab_size {draft_size} < vocab_size {vocab_size} but the file has no d2t map")
    return np.arange(vocab_size, dtype=np.int64)


def check_shared(tensors: dict[str, np.ndarray], config: ModelConfig, params: TransformerParams,
                 draft_ids: np.ndarray, source: str) -> None:
    """Refuses a file whose embed_tokens or lm_head are not the target's (absent ones are shared)."""
    expected = {}
    if "embed_tokens.weight" in tensors:
        expected["embed_tokens.weight"] = target_embeddings(config, params)
    if "lm_head.weight" in tensors:
        expected["lm_head.weight"] = target_head_rows(params, draft_ids)
    for name, want in expected.items():
        have = tensors[name]
        if have.shape != want.shape:
            raise ConfigError(f"{source}: {name} has shape {have.shape}, the target's is {want.shape}: "
                              "is this drafter for another target?")
        error = np.max(np.abs(have - want)) / max(float(np.max(np.abs(want))), 1e-30)
        if error > SHARED_TOLERANCE:
            raise ConfigError(
                f"{source}: {name} is not the target's (relative difference {error:.3g}): dspark-jax drafters "
                "use the target's embedding and head, so a drafter that trained its own cannot be loaded; "
                "check that --target is the model this drafter was trained for")
