"""Attention entry point of the model: Pallas Mosaic GPU kernels on Hopper, the XLA reference elsewhere.

The choice is made while tracing, from static facts only (backend, GPU generation, shapes, dtypes), so a
jitted forward pass compiles to exactly one implementation and never branches at run time.
"""

from __future__ import annotations

import jax

from dspark_jax.kernels import attention_reference, decode_attention, verify_attention


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array,
    *,
    scale: float,
    logit_softcap: float | None = None,
) -> jax.Array:
    """Same contract as `attention_reference.attention`: q [B, T, H, D], k/v [B, S, KVH, D], mask
    bool[B, T, S] → [B, T, H, D]. T == 1 takes the decode kernel, T > 1 the verify kernel."""
    if kernel_unavailable_reason(q, k, v) is not None:
        return attention_reference.attention(q, k, v, mask, scale=scale, logit_softcap=logit_softcap)
    kernel = decode_attention.attention if q.shape[1] == 1 else verify_attention.attention
    return kernel(q, k, v, mask, scale=scale, logit_softcap=logit_softcap)


def kernel_unavailable_reason(q: jax.Array, k: jax.Array, v: jax.Array) -> str | None:
    """Why `attention` would use the XLA reference for these operands (None: it uses a Pallas kernel).

    The kernels issue Hopper wgmma instructions, which only sm_90 (H100/H200) has: Blackwell replaced them
    with tcgen05, Ampere predates them. Concrete arrays are checked where they live; under `jit` the
    operands are tracers and the default device decides.
    """
    device = jax.devices()[0] if isinstance(q, jax.core.Tracer) else next(iter(q.devices()))
    if device.platform != "gpu":
        return f"backend {device.platform}: the kernels target GPUs"
    capability = getattr(device, "compute_capability", "")
    if not capability.startswith("9."):
        return f"compute capability {capability or 'unknown'}: the kernels need sm_90 (wgmma)"
    return verify_attention.unsupported_reason(q, k, v, block_s=verify_attention.DEFAULT_BLOCK_S)
