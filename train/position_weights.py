"""Per-position loss weights inside a draft block.

Under prefix verification a token only counts if every earlier one was accepted, so early positions matter
more. DFlash and DSpark weight position k = 1..γ by exp(-(k - 1) / decay); the paper writes decay = γ,
DeepSpec's training code (and our default) uses decay = 4. EAGLE-3's training-time test weights its
unrolled steps by 0.8^k instead (see eagle3_loss.py).
"""

import jax.numpy as jnp


def exponential_weights(block_size: int, decay: float = 4.0) -> jnp.ndarray:
    """float32[γ]: exp(-(k - 1) / decay) for k = 1..γ."""
    if decay <= 0:
        raise ValueError(f"decay must be positive, got {decay}")
    return jnp.exp(-jnp.arange(block_size, dtype=jnp.float32) / decay)
