"""Target cache: exact bfloat16 round trip, no half shard after a kill, training from it works."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny_models import tiny_config

from dspark_jax.models.block_drafter import BlockDrafter
from dspark_jax.models.dflash import DrafterConfig
from dspark_jax.models.params import init_params
from dspark_jax.train import target_cache
from dspark_jax.train.drafter_step import TrainConfig, make_optimizer, target_features, train_step_cached
from dspark_jax.train.target_cache import CachedShard, estimate_bytes, write_cache

CONFIG = tiny_config("gemma3")
PARAMS = init_params(CONFIG, jax.random.key(0), std=0.3)
TOKENS = np.asarray(jax.random.randint(jax.random.key(1), (10, 16), 1, CONFIG.vocab_size))
LOSS_MASK = np.broadcast_to(np.arange(16) >= 3, TOKENS.shape)
LAYERS = (0, 2)


def test_round_trip_is_exact_in_bfloat16(tmp_path):
    shards = write_cache(CONFIG, PARAMS, LAYERS, TOKENS, LOSS_MASK, tmp_path, shard_size=4, batch_size=3)
    assert [s.name for s in shards] == ["shard-00000", "shard-00001", "shard-00002"]
    features, hidden = target_features(CONFIG, PARAMS, jnp.asarray(TOKENS), LAYERS)
    rows = np.array([3, 1])
    tokens, mask, cached_features, cached_hidden = CachedShard(shards[1]).batch(rows)
    np.testing.assert_array_equal(tokens, TOKENS[4 + rows])
    np.testing.assert_array_equal(mask, LOSS_MASK[4 + rows])
    np.testing.assert_array_equal(cached_features, np.asarray(features[:, 4 + rows].astype(jnp.bfloat16)))
    np.testing.assert_array_equal(cached_hidden, np.asarray(hidden[4 + rows].astype(jnp.bfloat16)))
    on_disk = sum(f.stat().st_size for s in shards for f in s.iterdir())
    estimate = estimate_bytes(len(TOKENS), TOKENS.shape[1], len(LAYERS), CONFIG.hidden_size)
    assert 0.9 < estimate / on_disk < 1.1


def test_killed_write_leaves_no_half_shard(tmp_path, monkeypatch):
    saved = []
    original = np.save

    def dying_save(path, array):
        saved.append(path)
        if len(saved) == 7:  # inside the second shard
            raise KeyboardInterrupt
        original(path, array)

    monkeypatch.setattr(target_cache.np, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        write_cache(CONFIG, PARAMS, LAYERS, TOKENS, LOSS_MASK, tmp_path, shard_size=4)
    monkeypatch.setattr(target_cache.np, "save", original)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-00000", "shard-00001.tmp"]
    shards = write_cache(CONFIG, PARAMS, LAYERS, TOKENS, LOSS_MASK, tmp_path, shard_size=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == [s.name for s in shards]  # temporary cleared
    assert sum(len(CachedShard(s)) for s in shards) == len(TOKENS)


def test_training_from_the_cache_lowers_the_loss(tmp_path):
    shard = CachedShard(write_cache(CONFIG, PARAMS, LAYERS, TOKENS, LOSS_MASK, tmp_path, shard_size=10)[0])
    drafter = DrafterConfig(target_layers=LAYERS, hidden_size=CONFIG.hidden_size, mask_token_id=0, block_size=3,
                            num_heads=4, num_kv_heads=2, head_dim=16, intermediate_size=64)
    model = BlockDrafter(drafter, CONFIG.vocab_size, 8, rngs=nnx.Rngs(0))
    train = TrainConfig(learning_rate=3e-3, warmup_steps=2, total_steps=40, anchors_per_sequence=4)
    optimizer = make_optimizer(model, train)
    losses = []
    for step in range(train.total_steps):
        tokens, mask, features, hidden = shard.batch(np.arange(10))
        metrics = train_step_cached(model, optimizer, CONFIG, PARAMS, tokens, mask, features, hidden,
                                    jax.random.key(step), train)
        losses.append(float(metrics["loss"]))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
