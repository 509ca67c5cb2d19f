"""Target cache: exact bfloat16 round trip, float8 features within float8's precision, no half shard after a
kill (a many-shard cache resumed equals one written whole), training from it works and takes the same step
as online training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny_models import tiny_config

from dspark_jax.drafter_kinds import new_drafter
from dspark_jax.models.dspark import DSparkConfig, DSparkDrafter
from dspark_jax.models.params import init_params
from dspark_jax.models.transformer import logits
from dspark_jax.train import drafter_step, target_cache
from dspark_jax.train.blocks import predicts_loss_token
from dspark_jax.train.drafter_step import (
    TrainConfig,
    make_optimizer,
    target_features,
    target_statistics,
    train_step,
    train_step_cached,
)
from dspark_jax.train.target_cache import CachedShard, batch_features, estimate_bytes, open_cache, write_cache

CONFIG = tiny_config("gemma3")
PARAMS = init_params(CONFIG, jax.random.key(0), std=0.3)
TOKENS = np.asarray(jax.random.randint(jax.random.key(1), (10, 16), 1, CONFIG.vocab_size))
LOSS_MASK = np.broadcast_to(np.arange(16) >= 3, TOKENS.shape)
LAYERS = (0, 2)


def test_round_trip_is_exact_in_bfloat16(tmp_path):
    shards = write_cache(CONFIG, PARAMS, LAYERS, TOKENS, LOSS_MASK, tmp_path, shard_size=4, batch_size=3)
    assert [s.name for s in shards] == ["shard-00000", "shard-00001", "shard-00002"]
    # Shard 1 holds rows 4-7, computed in batches of 3 and 1. The reference is the same computation on the
    # same batches: float32 sums of another batch shape may differ in the last bit and round to another
    # bfloat16 value.
    batches = [batch_features(CONFIG, LAYERS, PARAMS, jnp.asarray(TOKENS[b]), jnp.asarray(LOSS_MASK[b]))
               for b in (slice(4, 7), slice(7, 8))]
    features = jnp.concatenate([f for f, _, _ in batches], axis=1)
    hidden = jnp.concatenate([h for _, h, _ in batches])
    rows = np.array([3, 1])
    tokens, mask, cached_features, cached_hidden, statistics = CachedShard(shards[1]).batch(rows)
    np.testing.assert_array_equal(tokens, TOKENS[4 + rows])
    np.testing.assert_array_equal(mask, LOSS_MASK[4 + rows])
    np.testing.assert_array_equal(cached_features, np.asarray(features[:, rows].astype(jnp.bfloat16)))
    np.testing.assert_array_equal(cached_hidden, np.asarray(hidden[rows].astype(jnp.bfloat16)))
    full = np.asarray(logits(PARAMS, hidden[rows], config=CONFIG), np.float64)  # from float32, not bfloat16
    top = full.max(-1)
    needed = np.zeros_like(mask)
    needed[:, :-1] = mask[:, 1:]  # where a valid slot takes its target
    np.testing.assert_allclose(statistics.log_normalizer[needed],
                               (top + np.log(np.exp(full - top[..., None]).sum(-1)))[needed], rtol=1e-5)
    np.testing.assert_array_equal(statistics.greedy[needed], full.argmax(-1)[needed])
    assert np.all(statistics.log_normalizer[~needed] == np.inf) and np.all(statistics.greedy[~needed] == -1)
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
    drafter = DSparkConfig(target_layers=LAYERS, hidden_size=CONFIG.hidden_size, mask_token_id=0, block_size=3,
                           num_heads=4, num_kv_heads=2, head_dim=16, intermediate_size=64, markov_rank=8)
    model = DSparkDrafter(drafter, CONFIG.vocab_size, rngs=nnx.Rngs(0))
    train = TrainConfig(learning_rate=3e-3, warmup_steps=2, total_steps=40, anchors_per_sequence=4)
    optimizer = make_optimizer(model, train)
    losses = []
    for step in range(train.total_steps):
        tokens, mask, features, hidden, statistics = shard.batch(np.arange(10))
        metrics = train_step_cached(model, optimizer, CONFIG, PARAMS, tokens, mask, features, hidden, statistics,
                                    jax.random.key(step), train)
        losses.append(float(metrics["loss"]))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


def test_statistics_are_computed_chunk_by_chunk_where_needed(monkeypatch):
    monkeypatch.setattr(drafter_step, "STATISTICS_ROWS", 7)  # 10 x 16 positions: 23 chunks, the last one padded
    _, hidden = target_features(CONFIG, PARAMS, jnp.asarray(TOKENS), LAYERS)
    full = logits(PARAMS, hidden, config=CONFIG)
    everywhere = target_statistics(CONFIG, PARAMS, hidden)
    np.testing.assert_allclose(everywhere.log_normalizer, jax.nn.logsumexp(full, axis=-1), rtol=1e-6)
    np.testing.assert_array_equal(everywhere.greedy, jnp.argmax(full, axis=-1))
    needed = np.zeros(TOKENS.shape, bool)
    needed[2, 5:9] = needed[7, 15] = True  # inside one chunk, across two, and the last position of a row
    some = target_statistics(CONFIG, PARAMS, hidden, jnp.asarray(needed))
    np.testing.assert_array_equal(some.log_normalizer[needed], everywhere.log_normalizer[needed])
    np.testing.assert_array_equal(some.greedy[needed], everywhere.greedy[needed])
    assert np.all(np.asarray(some.log_normalizer)[~needed] == np.inf) and np.all(np.asarray(some.greedy)[~needed] == -1)


def _drafter(kind: str, vocab: np.ndarray):
    options = {"markov_rank": 8} if kind == "dspark" else {}
    return new_drafter(kind, CONFIG, vocab, depth=3, target_layers=LAYERS, **options)


@pytest.mark.parametrize("kind", ["dflash", "dspark", "eagle3"])
def test_cached_step_is_the_online_step(kind):
    vocab = np.sort(np.random.default_rng(0).choice(CONFIG.vocab_size, CONFIG.vocab_size // 2, replace=False))
    train = TrainConfig(learning_rate=3e-3, warmup_steps=2, total_steps=10, anchors_per_sequence=4)
    models = [_drafter(kind, vocab) for _ in range(2)]
    optimizers = [make_optimizer(m, train) for m in models]
    tokens, mask = jnp.asarray(TOKENS), jnp.asarray(LOSS_MASK)
    features, hidden = target_features(CONFIG, PARAMS, tokens, LAYERS)
    for step in range(3):
        key = jax.random.key(step)
        online = train_step(models[0], optimizers[0], CONFIG, PARAMS, tokens, mask, key, train)
        cached = train_step_cached(models[1], optimizers[1], CONFIG, PARAMS, tokens, mask, features, hidden,
                                   target_statistics(CONFIG, PARAMS, hidden, predicts_loss_token(mask)), key, train)
        assert online.keys() == cached.keys()
        for name in online:
            np.testing.assert_allclose(cached[name], online[name], rtol=2e-5, atol=1e-6, err_msg=name)


def test_a_cache_without_statistics_is_refused(tmp_path):
    shard = write_cache(CONFIG, PARAMS, LAYERS, TOKENS, LOSS_MASK, tmp_path, shard_size=10)[0]
    (shard / "log_normalizer.npy").unlink()
    with pytest.raises(ValueError, match="older prepare-cache.*rerun `dspark-jax prepare-cache`"):
        CachedShard(shard)


def test_a_cache_serves_the_first_sequences_of_its_data_and_refuses_other_data(tmp_path):
    write_cache(CONFIG, PARAMS, LAYERS, TOKENS[:7], LOSS_MASK[:7], tmp_path, shard_size=4)
    shards = open_cache(tmp_path, TOKENS[:6])  # the second shard holds rows 4-6; only 4 and 5 are served
    assert [len(s) for s in shards] == [4, 2]
    np.testing.assert_array_equal(shards[1].batch(np.array([0, 1]))[0], TOKENS[4:6])
    with pytest.raises(ValueError, match="caches 7 sequences, fewer than the 10 asked for"):
        open_cache(tmp_path, TOKENS)
    with pytest.raises(ValueError, match="shard-00000 holds other sequences than --data"):
        open_cache(tmp_path, TOKENS[1:5])
    with pytest.raises(ValueError, match="shard-00000 holds other sequences than these"):
        write_cache(CONFIG, PARAMS, LAYERS, TOKENS[1:], LOSS_MASK[1:], tmp_path, shard_size=4)
    before = CachedShard(tmp_path / "shard-00000").batch(np.arange(4))
    write_cache(CONFIG, PARAMS, LAYERS, TOKENS, LOSS_MASK, tmp_path, shard_size=4)  # the same data, extended
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-00000", "shard-00001", "shard-00002"]
    shards = open_cache(tmp_path, TOKENS)
    assert [len(s) for s in shards] == [4, 4, 2]
    for kept, again in zip(jax.tree.leaves(before), jax.tree.leaves(shards[0].batch(np.arange(4)))):
        np.testing.assert_array_equal(kept, again)
    np.testing.assert_array_equal(shards[1].batch(np.arange(4))[0], TOKENS[4:8])  # the short shard, rewritten


def test_float8_round_trip_keeps_each_element_within_float8_precision(tmp_path):
    shards = write_cache(CONFIG, PARAMS, LAYERS, TOKENS, LOSS_MASK, tmp_path, shard_size=4, feature_dtype="float8")
    features, hidden, _ = batch_features(CONFIG, LAYERS, PARAMS, jnp.asarray(TOKENS[4:8]), jnp.asarray(LOSS_MASK[4:8]))
    rows = np.array([3, 0, 2])
    shard = CachedShard(shards[1])
    assert shard.feature_dtype == "float8"
    tokens, _, cached_features, cached_hidden, _ = shard.batch(rows)
    np.testing.assert_array_equal(tokens, TOKENS[4 + rows])
    exact, cached = np.asarray(features[:, rows]), np.asarray(cached_features, np.float32)
    largest = np.abs(exact).max(-1, keepdims=True)
    # e4m3 keeps 3 mantissa bits (half an ulp: 2^-4 relative); below its smallest normal, steps of
    # 2^-9 x scale, scale = largest / 448; then the bfloat16 of the decoded value (2^-8 relative).
    bound = 2**-4 * np.abs(exact) + 2**-10 * largest / 448 + 2**-8 * np.abs(cached)
    assert np.all(np.abs(cached - exact) <= bound)
    assert np.max(np.abs(cached - exact) / largest) > 1e-3  # float8, not the bfloat16 of the exact values
    np.testing.assert_array_equal(cached_hidden, np.asarray(hidden[rows].astype(jnp.bfloat16)))  # the label, exact
    on_disk = sum(f.stat().st_size for s in shards for f in s.iterdir())
    estimate = estimate_bytes(len(TOKENS), TOKENS.shape[1], len(LAYERS), CONFIG.hidden_size, "float8")
    assert 0.9 < estimate / on_disk < 1.1
    bf16 = estimate_bytes(len(TOKENS), TOKENS.shape[1], len(LAYERS), CONFIG.hidden_size)
    assert estimate < 0.75 * bf16  # 0.59x at the real model's sizes


def test_a_cache_is_completed_only_in_its_own_encoding(tmp_path):
    write_cache(CONFIG, PARAMS, LAYERS, TOKENS[:4], LOSS_MASK[:4], tmp_path, shard_size=4)
    with pytest.raises(ValueError, match="holds bfloat16 features, not float8: pass --feature-dtype bfloat16"):
        write_cache(CONFIG, PARAMS, LAYERS, TOKENS, LOSS_MASK, tmp_path, shard_size=4, feature_dtype="float8")
    with pytest.raises(ValueError, match="feature_dtype must be one of"):
        write_cache(CONFIG, PARAMS, LAYERS, TOKENS, LOSS_MASK, tmp_path / "new", feature_dtype="float16")


def test_a_many_shard_float8_cache_resumed_after_a_kill_equals_one_written_whole(tmp_path, monkeypatch):
    tokens = np.asarray(jax.random.randint(jax.random.key(2), (96, 16), 1, CONFIG.vocab_size))
    loss_mask = np.broadcast_to(np.arange(16) >= 5, tokens.shape)
    whole = write_cache(CONFIG, PARAMS, LAYERS, tokens, loss_mask, tmp_path / "whole", shard_size=8,
                        feature_dtype="float8")
    saved, original = [], np.save

    def dying_save(path, array):
        saved.append(path)
        if len(saved) == 7 * 5 + 3:  # inside the sixth shard (7 files a float8 shard)
            raise KeyboardInterrupt
        original(path, array)

    monkeypatch.setattr(target_cache.np, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        write_cache(CONFIG, PARAMS, LAYERS, tokens, loss_mask, tmp_path / "resumed", shard_size=8,
                    feature_dtype="float8")
    monkeypatch.setattr(target_cache.np, "save", original)
    assert len(list((tmp_path / "resumed").glob("shard-?????"))) == 5
    write_cache(CONFIG, PARAMS, LAYERS, tokens, loss_mask, tmp_path / "resumed", shard_size=8, feature_dtype="float8")
    served = open_cache(tmp_path / "resumed", tokens)
    assert len(served) == len(whole) == 12
    for path, shard in zip(whole, served):
        for kept, again in zip(jax.tree.leaves(CachedShard(path).batch(np.arange(8))),
                               jax.tree.leaves(shard.batch(np.arange(8)))):
            np.testing.assert_array_equal(kept, again)


def test_a_step_from_float8_features_is_the_exact_step_within_a_tenth_of_a_percent():
    vocab = np.arange(CONFIG.vocab_size)
    train = TrainConfig(learning_rate=3e-3, warmup_steps=2, total_steps=10, anchors_per_sequence=4)
    tokens, mask = jnp.asarray(TOKENS), jnp.asarray(LOSS_MASK)
    features, hidden = target_features(CONFIG, PARAMS, tokens, LAYERS)
    statistics = target_statistics(CONFIG, PARAMS, hidden, predicts_loss_token(mask))
    encoded = target_cache.encode(features, "float8")
    stored = target_cache.decode(target_cache.as_bits(encoded["values"]), np.asarray(encoded["scale"]))
    results = []
    for f in (features, stored):
        model = _drafter("dspark", vocab)
        results.append(train_step_cached(model, make_optimizer(model, train), CONFIG, PARAMS, tokens, mask, f, hidden,
                                         statistics, jax.random.key(0), train))
    # The continuous terms: the confidence loss and the agreement count discrete matches, which a random tiny
    # drafter's near-ties could flip.
    for name in ("ce", "tv"):
        np.testing.assert_allclose(results[1][name], results[0][name], rtol=1e-3, err_msg=name)
    assert results[1]["ce"] != results[0]["ce"]
