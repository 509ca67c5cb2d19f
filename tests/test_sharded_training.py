"""Drafter training on a mesh of 8 virtual CPU devices takes the unsharded step: same loss, same updated
parameters (float32 rounding), for every drafter kind and mesh shape, with the layout kept across steps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny_models import tiny_config

from dspark_jax.drafter_kinds import new_drafter
from dspark_jax.models.params import init_params
from dspark_jax.models.sharding import Placement, ShardingRules, make_mesh, place_state, shard_params
from dspark_jax.train.drafter_step import TrainConfig, make_optimizer, train_step

CONFIG = tiny_config("gemma3")
PARAMS = init_params(CONFIG, jax.random.key(0), std=0.3)
TOKENS = jax.random.randint(jax.random.key(1), (8, 16), 1, CONFIG.vocab_size)
LOSS_MASK = jnp.broadcast_to(jnp.arange(16) >= 3, TOKENS.shape)
TRAIN = TrainConfig(learning_rate=3e-3, warmup_steps=1, total_steps=10, anchors_per_sequence=4)
STEPS = 2


def _trained(kind: str, placement: Placement | None):
    vocab = np.sort(np.random.default_rng(0).choice(CONFIG.vocab_size, 160, replace=False))
    options = {"markov_rank": 8} if kind == "dspark" else {}
    model = new_drafter(kind, CONFIG, vocab, depth=3, target_layers=(0, 2), **options)
    optimizer = make_optimizer(model, TRAIN)
    params, tokens, mask = PARAMS, TOKENS, LOSS_MASK
    if placement is not None:
        params = shard_params(PARAMS, placement.mesh, placement.rules)
        tokens, mask = placement.put_batch(TOKENS), placement.put_batch(LOSS_MASK)
        place_state(model, optimizer, placement=placement)
    placed = nnx.state(model)
    losses = []
    for step in range(STEPS):
        metrics = train_step(model, optimizer, CONFIG, params, tokens, mask, jax.random.key(step), TRAIN, placement)
        losses.append(float(metrics["loss"]))
    kept = jax.tree.map(lambda a, b: a.sharding.is_equivalent_to(b.sharding, a.ndim), nnx.state(model), placed)
    assert all(jax.tree.leaves(kept))  # the step left the drafter as it found it: no resharding, no recompile
    return losses, jax.tree.map(np.asarray, nnx.state(model, nnx.Param))


@pytest.fixture(scope="module")
def unsharded():
    return {kind: _trained(kind, None) for kind in ("dflash", "dspark", "eagle3")}


@pytest.mark.parametrize("kind", ["dflash", "dspark", "eagle3"])
@pytest.mark.parametrize("mesh_shape", [(8, 1), (4, 2), (2, 4), (1, 8)])
def test_sharded_step_is_the_unsharded_step(unsharded, kind, mesh_shape):
    placement = Placement(make_mesh(*mesh_shape), ShardingRules(fsdp="data"))
    losses, params = _trained(kind, placement)
    expected_losses, expected_params = unsharded[kind]
    np.testing.assert_allclose(losses, expected_losses, rtol=2e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), params, expected_params)


def test_fsdp_splits_the_drafter_and_its_optimizer_state():
    placement = Placement(make_mesh(4, 2), ShardingRules(fsdp="data"))
    model = new_drafter("dspark", CONFIG, depth=3, target_layers=(0, 2), markov_rank=8)
    optimizer = make_optimizer(model, TRAIN)
    place_state(model, optimizer, placement=placement)
    arrays = jax.tree.leaves(nnx.state(optimizer)) + jax.tree.leaves(nnx.state(model))
    matrices = [a for a in arrays if a.ndim >= 2]
    assert matrices and all(a.sharding.spec.count("data") == 1 for a in matrices)
    assert all(a.addressable_shards[0].data.size * 4 == a.size for a in matrices)


def test_a_batch_that_does_not_split_is_refused():
    with pytest.raises(ValueError, match="--batch-size 6 does not split over the mesh's 4 data rows"):
        Placement(make_mesh(4, 2)).check_batch(6)
