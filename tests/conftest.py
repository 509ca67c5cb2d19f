"""Test-wide set-up: 8 virtual CPU devices (for the sharding tests) before any JAX backend starts."""

import jax

jax.config.update("jax_num_cpu_devices", 8)
