"""Pallas attention kernels against the XLA reference, on CPU.

The kernels run through the Mosaic GPU interpreter (slow, so shapes are small: S of 256/512 with 128-slot
blocks), and are lowered for sm_90 to catch Mosaic GPU lowering errors without a GPU. Nothing here runs
them on a real GPU; benchmarks/attention_kernels.py does that.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_models import tiny_config

from dspark_jax.kernels import attention, attention_reference, decode_attention, verify_attention
from dspark_jax.models.kv_cache import KVCache
from dspark_jax.models.params import init_params
from dspark_jax.models.transformer import forward
from dspark_jax.tree import TreeTemplate

# Max abs error against the float32 reference: about twice what the reference itself shows when run in the
# same low precision (it too rounds P to the input dtype before P·V), on outputs of magnitude ~1.
TOLERANCE = {jnp.bfloat16: 8e-3, jnp.float16: 1e-3}


def random_operands(seed, *, batch, tokens, heads, kv_heads, head_dim, slots, dtype):
    """Standard-normal q [B, T, H, D] and k, v [B, S, KVH, D] (NumPy's generator: no jit per shape)."""
    rng = np.random.default_rng(seed)
    normal = lambda *shape: jnp.asarray(rng.standard_normal(shape, np.float32)).astype(dtype)
    return (
        normal(batch, tokens, heads, head_dim),
        normal(batch, slots, kv_heads, head_dim),
        normal(batch, slots, kv_heads, head_dim),
    )


def random_mask(seed, batch, tokens, slots, density=0.3):
    """bool[B, T, S] with query 0 of row 0 fully masked (it must come out as the uniform average)."""
    mask = np.random.default_rng(seed).random((batch, tokens, slots)) < density
    mask[0, 0] = False
    return jnp.asarray(mask)


def tree_mask(batch, slots, template):
    """Verify-step mask: row b has a committed prefix of 37 + 50·b slots, then the draft tree's nodes in the
    next slots, each seeing its own ancestors; the rest of the cache is empty."""
    nodes = template.num_nodes
    mask = np.zeros((batch, nodes, slots), bool)
    for b in range(batch):
        prefix = 37 + 50 * b
        mask[b, :, :prefix] = True
        mask[b, :, prefix : prefix + nodes] = template.ancestors
    return jnp.asarray(mask)


def reference(q, k, v, mask, *, scale, logit_softcap):
    """The reference in float32 on the same (rounded) inputs: the kernels' ideal answer."""
    f32 = lambda x: x.astype(jnp.float32)
    return attention_reference.attention(f32(q), f32(k), f32(v), mask, scale=scale, logit_softcap=logit_softcap)


def assert_matches_reference(out, q, k, v, mask, *, scale, logit_softcap):
    assert out.shape == q.shape and out.dtype == q.dtype
    expected = reference(q, k, v, mask, scale=scale, logit_softcap=logit_softcap)
    tol = TOLERANCE[q.dtype.type]
    np.testing.assert_allclose(np.asarray(out, np.float32), expected, atol=tol, rtol=0)


VERIFY_CASES = [
    # batch, tokens, heads, kv_heads, head_dim, slots, splits, softcap, dtype, mask
    pytest.param(2, 5, 4, 1, 64, 512, 1, None, jnp.bfloat16, "random", id="gqa4-d64-t5-random"),
    pytest.param(2, 16, 4, 4, 256, 512, 2, 30.0, jnp.bfloat16, "tree", id="mha-d256-t16-tree-softcap"),
    pytest.param(1, 16, 8, 2, 64, 512, 1, None, jnp.float16, "tree", id="gqa4-d64-t16-tree-f16"),
    pytest.param(1, 20, 4, 1, 64, 256, 1, 20.0, jnp.bfloat16, "random", id="gqa4-two-row-tiles"),
]


@pytest.mark.parametrize("batch,tokens,heads,kv_heads,head_dim,slots,splits,softcap,dtype,mask_kind", VERIFY_CASES)
def test_verify_kernel_matches_reference(
    batch, tokens, heads, kv_heads, head_dim, slots, splits, softcap, dtype, mask_kind
):
    q, k, v = random_operands(
        0, batch=batch, tokens=tokens, heads=heads, kv_heads=kv_heads, head_dim=head_dim, slots=slots, dtype=dtype
    )
    if mask_kind == "tree":
        template = TreeTemplate(width=3, depth=5)
        assert template.num_nodes == tokens
        mask = tree_mask(batch, slots, template)
    else:
        mask = random_mask(1, batch, tokens, slots)
    scale = head_dim**-0.5
    out = verify_attention.attention(
        q, k, v, mask, scale=scale, logit_softcap=softcap, block_s=128, num_splits=splits, interpret=True
    )
    assert_matches_reference(out, q, k, v, mask, scale=scale, logit_softcap=softcap)


DECODE_CASES = [
    pytest.param(2, 4, 1, 256, 512, 1, None, jnp.bfloat16, id="gqa4-d256"),
    pytest.param(2, 4, 4, 64, 256, 1, 50.0, jnp.float16, id="mha-d64-softcap-f16"),
]


@pytest.mark.parametrize("batch,heads,kv_heads,head_dim,slots,splits,softcap,dtype", DECODE_CASES)
def test_decode_kernel_matches_reference(batch, heads, kv_heads, head_dim, slots, splits, softcap, dtype):
    q, k, v = random_operands(
        2, batch=batch, tokens=1, heads=heads, kv_heads=kv_heads, head_dim=head_dim, slots=slots, dtype=dtype
    )
    # Row 0 sees nothing (uniform average over all slots), row 1 a causal prefix of 200 slots.
    mask = jnp.arange(slots)[None, None, :] < jnp.array([0, 200])[:, None, None]
    scale = head_dim**-0.5
    out = decode_attention.attention(
        q, k, v, mask, scale=scale, logit_softcap=softcap, block_s=128, num_splits=splits, interpret=True
    )
    assert_matches_reference(out, q, k, v, mask, scale=scale, logit_softcap=softcap)


def test_fully_masked_query_is_uniform_average_of_all_slots():
    """The reference's contract for a query with nothing visible, which padding rows rely on."""
    q, k, v = random_operands(3, batch=1, tokens=1, heads=4, kv_heads=1, head_dim=64, slots=256, dtype=jnp.bfloat16)
    mask = jnp.zeros((1, 1, 256), bool)
    out = decode_attention.attention(q, k, v, mask, scale=0.125, block_s=128, num_splits=2, interpret=True)
    expected = jnp.broadcast_to(v.astype(jnp.float32).mean(axis=1, keepdims=True), out.shape)
    np.testing.assert_allclose(np.asarray(out, np.float32), expected, atol=1e-2)


@pytest.mark.parametrize(
    "kernel,tokens,head_dim",
    [(verify_attention.attention, 16, 256), (decode_attention.attention, 1, 256), (verify_attention.attention, 5, 64)],
)
def test_kernels_lower_for_hopper(kernel, tokens, head_dim):
    """Cross-lowering for CUDA runs Mosaic GPU's layout inference and dialect lowering for sm_90 on CPU; only
    the final PTX compilation needs a GPU."""
    q = jax.ShapeDtypeStruct((2, tokens, 4, head_dim), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((2, 2048, 1, head_dim), jnp.bfloat16)
    mask = jax.ShapeDtypeStruct((2, tokens, 2048), jnp.bool_)
    call = lambda q, k, v, m: kernel(q, k, v, m, scale=0.0625, logit_softcap=30.0)
    text = jax.jit(call).trace(q, kv, kv, mask).lower(lowering_platforms=("cuda",)).as_text()
    assert "mosaic_gpu" in text


def test_kernels_reject_float32():
    """float32 would need wgmma's tf32 mode, which cannot read V transposed; the dispatcher sends it to XLA."""
    q, kv = jnp.zeros((1, 2, 4, 64)), jnp.zeros((1, 256, 1, 64))
    assert "dtypes" in verify_attention.unsupported_reason(q, kv, kv, block_s=64)
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        verify_attention.attention(q, kv, kv, jnp.ones((1, 2, 256), bool), scale=0.125, interpret=True)


def test_unsupported_shapes_are_reported():
    def reason(head_dim, slots, block_s):
        q = jax.ShapeDtypeStruct((1, 2, 4, head_dim), jnp.bfloat16)
        kv = jax.ShapeDtypeStruct((1, slots, 1, head_dim), jnp.bfloat16)
        return verify_attention.unsupported_reason(q, kv, kv, block_s=block_s)

    assert "head_dim 72" in reason(72, 256, 64)
    assert "divide S" in reason(64, 200, 64)
    assert "shared memory" in reason(256, 512, 256)
    assert reason(256, 512, 64) is None
    assert verify_attention.pipeline_stages(256, 64, 2) >= 2  # the dispatcher's block_s double-buffers D=256


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="checks the CPU choice")
def test_dispatcher_uses_reference_on_cpu():
    q, k, v = random_operands(6, batch=2, tokens=3, heads=4, kv_heads=1, head_dim=64, slots=256, dtype=jnp.bfloat16)
    mask = random_mask(7, 2, 3, 256)
    assert "backend cpu" in attention.kernel_unavailable_reason(q, k, v)
    call = lambda q, k, v, m: attention.attention(q, k, v, m, scale=0.125, logit_softcap=30.0)
    jaxpr = str(jax.make_jaxpr(call)(q, k, v, mask))
    assert "mpmd" not in jaxpr and "mosaic" not in jaxpr
    expected = attention_reference.attention(q, k, v, mask, scale=0.125, logit_softcap=30.0)
    np.testing.assert_array_equal(jax.jit(call)(q, k, v, mask), expected)


def test_default_splits_divide_the_cache_and_fill_the_machine():
    assert verify_attention.default_num_splits(programs=1, num_blocks=128, target_programs=264) == 64
    assert verify_attention.default_num_splits(programs=8, num_blocks=128, target_programs=264) == 32
    assert verify_attention.default_num_splits(programs=512, num_blocks=128, target_programs=264) == 1
    assert verify_attention.default_num_splits(programs=1, num_blocks=7, target_programs=264) == 1


def recording(kernel, name, calls):
    def call(*args, **kwargs):
        calls.append(name)
        return kernel(*args, **kwargs)

    return call


def test_transformer_with_kernels_matches_reference(monkeypatch):
    """The tiny Gemma 3 (sliding window, GQA, bfloat16) prefills through the verify kernel and decodes
    through the decode kernel, the dispatcher made to pick them on CPU and run them interpreted."""
    config = tiny_config("gemma3")
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), init_params(config, jax.random.key(0), std=0.2))
    tokens = jax.random.randint(jax.random.key(1), (1, 9), 0, config.vocab_size)
    positions = jnp.arange(9)[None]

    def run():
        step = jax.jit(lambda t, p, c: forward(params, t, p, c, config=config))
        cache = KVCache.empty(config, 1, 64, jnp.bfloat16)
        prefill = step(tokens[:, :8], positions[:, :8], cache)
        decode = step(tokens[:, 8:], positions[:, 8:], prefill.cache)
        return jnp.concatenate([prefill.hidden, decode.hidden], axis=1).astype(jnp.float32)

    expected = run()
    traced = []
    monkeypatch.setattr(attention, "kernel_unavailable_reason", lambda q, k, v: None)
    for module in (decode_attention, verify_attention):
        kernel = functools.partial(module.attention, interpret=True, num_splits=1)
        monkeypatch.setattr(module, "attention", recording(kernel, module.__name__.rsplit(".", 1)[1], traced))
    np.testing.assert_allclose(run(), expected, atol=0.0625, rtol=0)  # 4 bfloat16 ulps at |hidden| ~ 3
    layers = config.num_layers
    assert traced == ["verify_attention"] * layers + ["decode_attention"] * layers
