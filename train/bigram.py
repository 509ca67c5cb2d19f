"""The bigram baseline: what a drafter that knows only the previous token would draft.

Counted on the training responses (each response token with the token before it, which may be the prompt's
last), the table maps every token to the response token that most often followed it. Chained from the
anchor it drafts a block: slot 1 = table[anchor], slot i + 1 = table[slot i]. A trained drafter that is no
better per slot than this chain draws nothing useful from the target's features.
"""

from __future__ import annotations

import numpy as np


def bigram_table(tokens: np.ndarray, loss_mask: np.ndarray, vocab_size: int) -> np.ndarray:
    """int32[V]: the most frequent next response token after each token (ties: the smaller id); tokens never
    seen before a response token map to the most frequent response token.
    tokens: int[B, T]; loss_mask: [B, T], nonzero on response tokens."""
    following = loss_mask[:, 1:].astype(bool)
    previous, following_token = tokens[:, :-1][following], tokens[:, 1:][following]
    if following_token.size == 0:
        raise ValueError("no response tokens to count: the loss mask is empty")
    counts = np.bincount(following_token, minlength=vocab_size)
    table = np.full(vocab_size, np.argmax(counts), np.int32)
    pairs, pair_counts = np.unique(previous.astype(np.int64) * vocab_size + following_token, return_counts=True)
    # Highest count first, then the smaller next token: the first row per previous token is its choice.
    order = np.lexsort((pairs % vocab_size, -pair_counts, pairs // vocab_size))
    ordered = pairs[order]
    first = np.ones(len(ordered), bool)
    first[1:] = ordered[1:] // vocab_size != ordered[:-1] // vocab_size
    table[ordered[first] // vocab_size] = ordered[first] % vocab_size
    return table


def bigram_chain(table: np.ndarray, anchors: np.ndarray, depth: int) -> np.ndarray:
    """int32[..., depth]: the bigram draft of `depth` tokens after each anchor token int[...]."""
    slots, token = [], np.asarray(anchors)
    for _ in range(depth):
        token = table[token]
        slots.append(token)
    return np.stack(slots, axis=-1).astype(np.int32)
