"""The bigram baseline against counts done by hand."""

import numpy as np
import pytest

from dspark_jax.train.bigram import bigram_chain, bigram_table


def test_table_and_chain_by_hand():
    # Response pairs (previous -> next): 5->1, 1->2, 2->1, 1->2, 2->1, 1->3 | 4->3, 3->0 | 3->2. Pairs whose
    # next token is a prompt token (4->4) or padding are not counted.
    tokens = np.array([[5, 1, 2, 1, 2, 1, 3], [4, 4, 3, 0, 0, 0, 0], [3, 2, 0, 0, 0, 0, 0]])
    mask = np.array([[0, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 0, 0, 0], [0, 1, 0, 0, 0, 0, 0]])
    table = bigram_table(tokens, mask, vocab_size=6)
    # 1 -> 2 (twice, against 3 once); 3 -> 0 or 2, once each: the smaller id; 0 never precedes a response
    # token: the most frequent response token, 1 and 2 tied at three: 1.
    np.testing.assert_array_equal(table, [1, 2, 1, 0, 3, 1])
    np.testing.assert_array_equal(bigram_chain(table, np.array([5, 3]), 4), [[1, 2, 1, 2], [0, 1, 2, 1]])


def test_an_empty_mask_is_refused():
    with pytest.raises(ValueError, match="no response tokens"):
        bigram_table(np.zeros((1, 4), np.int32), np.zeros((1, 4)), vocab_size=4)
