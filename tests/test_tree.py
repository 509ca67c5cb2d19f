"""Tree template, verify mask and positions against hand-worked examples."""

import jax.numpy as jnp
import numpy as np
import pytest

from dspark_jax.models.kv_cache import EMPTY_POSITION
from dspark_jax.tree import TreeTemplate, verify_mask, verify_positions


def test_two_by_two_template_by_hand():
    # Node 0 anchor; depth 1: 1 (main), 2; depth 2 hangs off node 1: 3 (main), 4.
    t = TreeTemplate(width=2, depth=2)
    assert t.num_nodes == 5
    np.testing.assert_array_equal(t.parents, [-1, 0, 0, 1, 1])
    np.testing.assert_array_equal(t.depths, [0, 1, 1, 2, 2])
    np.testing.assert_array_equal(t.has_children, [True, True, False, False, False])
    np.testing.assert_array_equal(t.ancestors.astype(int), [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 0, 1, 0, 0],
        [1, 1, 0, 1, 0],
        [1, 1, 0, 0, 1],
    ])


def test_chain_is_lower_triangular():
    t = TreeTemplate(width=1, depth=4)
    np.testing.assert_array_equal(t.ancestors, np.tril(np.ones((5, 5), bool)))
    np.testing.assert_array_equal(t.depths, np.arange(5))


def test_mask_and_positions_by_hand():
    t = TreeTemplate(width=2, depth=2)
    e = EMPTY_POSITION
    # Row 0: 3 committed tokens, anchor at position 3. Row 1: 1 committed token, anchor at position 1, and a
    # stale slot (position 7 at slot 8) left from an earlier step that must stay invisible.
    cache_positions = jnp.asarray([[0, 1, 2, e, e, e, e, e, e, e],
                                   [0, e, e, e, e, e, e, e, 7, e]], jnp.int32)
    anchor = jnp.asarray([3, 1], jnp.int32)
    np.testing.assert_array_equal(verify_positions(t, anchor), [[3, 4, 4, 5, 5], [1, 2, 2, 3, 3]])
    mask = np.asarray(verify_mask(t, anchor, cache_positions)).astype(int)
    expected_row0 = [
        # slots 0 1 2 | 3 4 5 6 7 (nodes 0..4) | 8 9
        [1, 1, 1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0, 1, 0, 0],
    ]
    expected_row1 = [
        [1, 1, 0, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 1, 0, 0, 0, 0],
    ]
    np.testing.assert_array_equal(mask[0], expected_row0)
    np.testing.assert_array_equal(mask[1], expected_row1)


@pytest.mark.parametrize("text,expected", [("1x7", (1, 7)), ("3X4", (3, 4))])
def test_parse(text, expected):
    t = TreeTemplate.parse(text)
    assert (t.width, t.depth) == expected


@pytest.mark.parametrize("text", ["7", "0x3", "2x0", "axb"])
def test_parse_rejects_bad_templates(text):
    with pytest.raises(ValueError, match="x"):
        TreeTemplate.parse(text)
