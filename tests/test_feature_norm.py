"""Feature standardisation: statistics measured on valid positions only, the identity before fitting, and a
fitted drafter blind to per-dimension shifts and scales of the target's hidden states."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny_models import tiny_config

from dspark_jax.models.block_drafter import BlockDrafter
from dspark_jax.models.dflash import DrafterConfig
from dspark_jax.models.drafters import feature_standardizer
from dspark_jax.models.eagle3 import Eagle3Drafter
from dspark_jax.models.feature_norm import FeatureStandardizer

CONFIG = tiny_config("gemma3")


def massive_features(rng, shape):
    """[K, N, T, E] like Gemma's: a few dimensions with large, nearly constant values over a small signal."""
    features = rng.normal(size=shape)
    features[..., :3] = rng.normal(loc=[900.0, -400.0, 2500.0], scale=[5.0, 2.0, 30.0], size=shape[:-1] + (3,))
    return features.astype(np.float32)


def test_identity_until_fitted():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 5, 8)), jnp.bfloat16)
    out = FeatureStandardizer(2, 8)(x)
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(out, x.astype(jnp.float32))


def test_fit_standardises_the_valid_positions_and_ignores_the_others():
    rng = np.random.default_rng(1)
    features = massive_features(rng, (2, 4, 50, 16))
    valid = np.ones((4, 50), bool)
    valid[:, 40:] = False  # padding, filled with junk that must not move the statistics
    features[:, ~valid] = 1e6
    norm = FeatureStandardizer(2, 16)
    norm.fit(features, valid)
    out = np.asarray(norm(jnp.asarray(features)))[:, valid]  # [K, P, E]
    np.testing.assert_allclose(out.mean(axis=1), 0.0, atol=1e-3)
    np.testing.assert_allclose(out.std(axis=1), 1.0, atol=1e-3)
    with pytest.raises(ValueError, match="no valid positions"):
        norm.fit(features, np.zeros_like(valid))


@pytest.mark.parametrize("kind", ["dspark", "eagle3"])
def test_a_fitted_drafter_sees_the_same_features_through_any_per_dimension_affine_map(kind):
    drafter = DrafterConfig.for_target(CONFIG, num_layers=1, block_size=3, num_features=2)
    rng, k, e = np.random.default_rng(2), len(drafter.target_layers), CONFIG.hidden_size
    features = massive_features(rng, (k, 2, 12, e))
    scale = rng.uniform(0.01, 100.0, size=(k, 1, 1, e)).astype(np.float32)
    shift = rng.normal(scale=1e3, size=(k, 1, 1, e)).astype(np.float32)
    valid = np.ones((2, 12), bool)

    def fused(x):
        model = (Eagle3Drafter(drafter, CONFIG.vocab_size, rngs=nnx.Rngs(0)) if kind == "eagle3"
                 else BlockDrafter(drafter, CONFIG.vocab_size, 4, rngs=nnx.Rngs(0)))
        feature_standardizer(model).fit(x, valid)
        x = jnp.asarray(x)
        if kind == "eagle3":
            return model.fuse_features(x)
        return model.backbone.context(x, jnp.broadcast_to(jnp.arange(12), (2, 12)))[0][0]

    np.testing.assert_allclose(fused(features * scale + shift), fused(features), rtol=2e-3, atol=2e-3)
    # ... while other features give another output (the check above could not pass by ignoring them).
    assert not np.allclose(fused(massive_features(rng, features.shape)), fused(features), atol=1e-2)
