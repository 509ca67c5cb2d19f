"""Standardising the target's hidden states before a drafter fuses them.

Gemma's residual stream carries a few huge, nearly constant dimensions ("massive activations"): in Gemma 3
270M the 5 largest of 640 dimensions hold 75-99 % of a fused layer's energy, and the features of two
positions have cosine 0.7-0.98 (docs/results.md, "What the drafters learn"). Concatenated raw, projected and
RMS-normalised, those dimensions set the norm and leave what tells one position from another a few per
cent of the fused vector, so a drafter trained on little data learns to read its block tokens instead of
the target. Each fused layer is therefore standardised per dimension, with the mean and standard deviation
measured on training data once before training and stored with the drafter like its weights.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class FeatureStatistic(nnx.Variable):
    """Non-trainable, measured on training data, saved with the drafter's weights."""


class FeatureStandardizer(nnx.Module):
    """x -> (x - mean) * inv_std per fused layer and dimension; the identity until `fit`."""

    def __init__(self, num_features: int, hidden_size: int):
        self.mean = FeatureStatistic(jnp.zeros((num_features, hidden_size), jnp.float32))
        self.inv_std = FeatureStatistic(jnp.ones((num_features, hidden_size), jnp.float32))

    def __call__(self, features: jax.Array) -> jax.Array:
        """float32 [K, ..., E] from target layer outputs [K, ..., E] (any float dtype)."""
        shape = (features.shape[0],) + (1,) * (features.ndim - 2) + (features.shape[-1],)
        mean, inv_std = self.mean.get_value().reshape(shape), self.inv_std.get_value().reshape(shape)
        return (features.astype(jnp.float32) - mean) * inv_std

    def fit(self, features: np.ndarray, valid: np.ndarray, epsilon: float = 1e-6) -> None:
        """Sets the statistics from a sample: features [K, N, T, E] at the positions where valid bool[N, T]."""
        valid = np.asarray(valid, bool)
        if not valid.any():
            raise ValueError("no valid positions to measure the target's feature statistics on")
        sample = np.asarray(features, np.float32)[:, valid].astype(np.float64)  # [K, P, E]
        self.mean.set_value(jnp.asarray(sample.mean(axis=1), jnp.float32))
        self.inv_std.set_value(jnp.asarray(1.0 / np.sqrt(sample.var(axis=1) + epsilon), jnp.float32))
