"""Pallas Mosaic GPU kernel for the speculative verify step: a few query tokens against a long KV cache.

Semantics are those of `attention_reference.attention` (including the uniform average a query with nothing
visible gets); docs/kernels.md explains the design. In short, flash-decoding:

* grid (batch, kv_head, m_tile, split): every program owns one KV head, a 64-row tile of that head's
  queries (all T tokens × H/KVH grouped heads, so each K/V block is read once for the whole group) and
  one contiguous split of the cache slots, so a batch of one still fills the GPU;
* `plgpu.emit_pipeline` streams K, V and mask blocks of `block_s` slots GMEM→SMEM (TMA) while the
  warpgroup computes Q·Kᵀ and P·V on the TensorCore (`plgpu.wgmma`) with an online float32 softmax;
* each program writes its normalised partial output and log-sum-exp, and a small XLA epilogue merges the
  splits.

The same body runs on CPU through the Mosaic GPU interpreter (`interpret=True`), which is how the tests
check it; `tests/test_attention_kernels.py` also lowers it for sm_90 to catch Mosaic GPU lowering errors.
`decode_attention.py` reuses `partial_attention` with one mask row shared by all query rows (T == 1).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.experimental.pallas as pl
import jax.experimental.pallas.mosaic_gpu as plgpu
import jax.numpy as jnp
from jax import lax

from dspark_jax.kernels.soft_cap import soft_cap

BLOCK_M = 64  # query rows per program: the M granularity of Hopper's wgmma
DEFAULT_BLOCK_S = 64  # cache slots per pipeline step: double-buffers head_dim-256 K/V blocks in shared memory
MASK_VALUE = float(jnp.finfo(jnp.float32).min)  # the reference's fill: keeps fully masked rows finite
SMEM_BUDGET = 220 * 1024  # of H100's 227 KiB per block, leaving room for Mosaic's reduction scratch
MAX_STAGES = 3
SUPPORTED_DTYPES = (jnp.bfloat16, jnp.float16)
DEFAULT_PROGRAMS = 2 * 132  # two waves of H100 SMs
MIN_BLOCKS_PER_SPLIT = 2


@dataclasses.dataclass(frozen=True)
class Plan:
    """Static tiling of one call; every field is a Python int so it can shape the kernel."""

    batch: int
    kv_heads: int
    rows: int  # real query rows per KV head: T * H/KVH
    head_dim: int
    slots: int
    block_s: int
    num_splits: int
    stages: int

    @property
    def m_tiles(self) -> int:
        return pl.cdiv(self.rows, BLOCK_M)

    @property
    def rows_out(self) -> int:
        """Rows each program writes back: a lone tile stores only its real rows (rounded to the 8-row TMA
        granule), which keeps the split partials of a decode step small."""
        return BLOCK_M if self.m_tiles > 1 else -(-self.rows // 8) * 8

    @property
    def blocks_per_split(self) -> int:
        return self.slots // self.block_s // self.num_splits


def unsupported_reason(q: jax.Array, k: jax.Array, v: jax.Array, *, block_s: int) -> str | None:
    """Why the kernels cannot take these operands (None when they can); the dispatcher falls back then.

    wgmma wants 16-bit operands (its tf32 mode cannot read V transposed) whose contraction dims are
    multiples of 16 (head_dim for Q·Kᵀ, block_s for P·V) and N dims of at most 256 (block_s for Q·Kᵀ,
    head_dim for P·V); block_s must tile S, and one pipeline stage must fit in shared memory.
    """
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in SUPPORTED_DTYPES:
        return f"dtypes {q.dtype}/{k.dtype}/{v.dtype}: the kernels take matching bfloat16 or float16 operands"
    head_dim, slots = q.shape[-1], k.shape[1]
    if head_dim % 16 or head_dim > 256:
        return f"head_dim {head_dim}: wgmma needs a multiple of 16, at most 256"
    if block_s % 16 or block_s > 256 or slots % block_s:
        return f"block_s {block_s} must be a multiple of 16, at most 256, and divide S = {slots}"
    if pipeline_stages(head_dim, block_s, q.dtype.itemsize) < 1:
        return f"head_dim {head_dim} with block_s {block_s} does not fit in shared memory"
    return None


def pipeline_stages(head_dim: int, block_s: int, itemsize: int) -> int:
    """How many K/V/mask blocks can be in flight: shared memory holds Q and P for the whole kernel, then
    either the pipeline buffers or the float32 epilogue tile (they never coexist)."""
    resident = BLOCK_M * (head_dim + block_s) * itemsize
    per_stage = 2 * block_s * head_dim * itemsize + BLOCK_M * block_s
    epilogue = BLOCK_M * (head_dim + 1) * 4
    if resident + epilogue > SMEM_BUDGET:
        return 0
    return min(MAX_STAGES, (SMEM_BUDGET - resident) // per_stage)


def default_num_splits(programs: int, num_blocks: int, target_programs: int) -> int:
    """Largest divisor of `num_blocks` that brings the grid of `programs` × splits to about
    `target_programs`: with few rows (batch × KV heads), splitting the cache is the only way to use more
    than a handful of SMs. Splits keep at least MIN_BLOCKS_PER_SPLIT blocks so each program's pipeline
    overlaps a copy with compute."""
    wanted = min(-(-target_programs // programs), max(1, num_blocks // MIN_BLOCKS_PER_SPLIT))
    return max(d for d in range(1, wanted + 1) if num_blocks % d == 0)


def _target_programs() -> int:
    """Two waves of the GPU's SMs (of an H100's when no GPU is visible, e.g. in interpret mode)."""
    if jax.default_backend() == "gpu":
        return 2 * getattr(jax.devices()[0], "core_count", DEFAULT_PROGRAMS // 2)
    return DEFAULT_PROGRAMS


def make_plan(q_rows: jax.Array, k: jax.Array, *, block_s: int, num_splits: int | None) -> Plan:
    """q_rows: [B, KVH, M, D] (M = T·G); k: [B, S, KVH, D]; operands already passed `unsupported_reason`."""
    batch, kv_heads, rows, head_dim = q_rows.shape
    slots = k.shape[1]
    num_blocks = slots // block_s
    programs = batch * kv_heads * pl.cdiv(rows, BLOCK_M)
    splits = default_num_splits(programs, num_blocks, _target_programs()) if num_splits is None else num_splits
    if num_blocks * block_s != slots or num_blocks % splits:
        raise ValueError(f"S = {slots} must split into {splits} splits of whole {block_s}-slot blocks")
    stages = min(pipeline_stages(head_dim, block_s, q_rows.dtype.itemsize), num_blocks // splits)
    return Plan(batch, kv_heads, rows, head_dim, slots, block_s, splits, stages)


def _kernel(
    q_ref, k_ref, v_ref, mask_ref, o_ref, lse_ref, q_smem, p_smem, q_barrier,
    *, plan: Plan, mask_per_row: bool, scale: float, logit_softcap: float | None, interpret: bool,
):  # fmt: skip
    """One program: 64 query rows of one KV head against one split of the cache.

    GMEM refs: q [B, KVH, Mpad, D]; k, v [B, S, KVH, D]; mask int8 [B, Mpad, S] (per row) or [B, S]
    (shared by all rows); o float32 [B, KVH, splits, m_tiles·rows_out, D]; lse float32 [..., rows].
    """
    b, h = lax.axis_index("batch"), lax.axis_index("kv_head")
    m_tile, split = lax.axis_index("m_tile"), lax.axis_index("split")
    block_s, head_dim = plan.block_s, plan.head_dim
    plgpu.copy_gmem_to_smem(q_ref.at[b, h, pl.ds(m_tile * BLOCK_M, BLOCK_M)], q_smem, q_barrier)
    plgpu.barrier_wait(q_barrier)
    first_block = split * plan.blocks_per_split

    def step(_, k_blk, v_blk, mask_blk, carry):
        acc, m_prev, l_prev = carry  # [64, D] unnormalised output, [64] running max and sum

        def q_kt(acc_ref):
            plgpu.wgmma(acc_ref, q_smem, k_blk.transpose((1, 0)))
            return acc_ref[...]

        scores = pl.run_scoped(q_kt, plgpu.ACC((BLOCK_M, block_s), jnp.float32)) * scale
        scores = soft_cap(scores, logit_softcap)
        visible = mask_blk[...] != 0
        if not mask_per_row:
            visible = lax.broadcast_in_dim(visible, scores.shape, [1])
        # Filling with finfo.min rather than -inf makes a row with nothing visible softmax to uniform weights,
        # exactly as in the reference; any visible slot outweighs the fill by exp(-huge) == 0.
        scores = jnp.where(visible, scores, MASK_VALUE)
        m_next = jnp.maximum(m_prev, scores.max(axis=1))
        rescale = jnp.exp(m_prev - m_next)
        probs = jnp.exp(scores - lax.broadcast_in_dim(m_next, scores.shape, [0]))
        l_next = l_prev * rescale + probs.sum(axis=1)
        # P goes through SMEM (wgmma's A operand); the Mosaic GPU interpreter only takes SMEM operands.
        p_smem[...] = probs.astype(p_smem.dtype)
        plgpu.commit_smem()

        acc = acc * lax.broadcast_in_dim(rescale, acc.shape, [0])

        def p_v(acc_ref):
            plgpu.wgmma(acc_ref, p_smem, v_blk)

        def fresh_p_v(acc_ref):
            p_v(acc_ref)
            return acc_ref[...]

        if interpret:  # the interpreter cannot run a pre-initialised accumulator (pl.run_state): add a fresh one
            acc = acc + pl.run_scoped(fresh_p_v, plgpu.ACC(acc.shape, jnp.float32))
        else:  # accumulate in place, so a head_dim-256 accumulator occupies its 128 registers only once
            acc = pl.run_state(p_v)(plgpu.ACC.init(acc))
        return acc, m_next, l_next

    kv_spec = plgpu.BlockSpec((block_s, head_dim), lambda j: (first_block + j, 0))
    if mask_per_row:
        mask_spec = plgpu.BlockSpec((BLOCK_M, block_s), lambda j: (m_tile, first_block + j))
    else:
        mask_spec = plgpu.BlockSpec((block_s,), lambda j: (first_block + j,))
    init = (
        jnp.zeros((BLOCK_M, head_dim), jnp.float32),
        jnp.full((BLOCK_M,), -jnp.inf, jnp.float32),
        jnp.zeros((BLOCK_M,), jnp.float32),
    )
    pipeline = plgpu.emit_pipeline(
        step,
        grid=(plan.blocks_per_split,),
        in_specs=[kv_spec, kv_spec, mask_spec],
        max_concurrent_steps=plan.stages,
        init_carry=init,
    )
    acc, m_fin, l_fin = pipeline(k_ref.at[b, :, h], v_ref.at[b, :, h], mask_ref.at[b])

    def epilogue(o_smem, lse_smem):
        # l >= 1: the row maximum itself contributes exp(0).
        o_smem[...] = acc / lax.broadcast_in_dim(l_fin, acc.shape, [0])
        lse_smem[...] = m_fin + jnp.log(l_fin)
        plgpu.commit_smem()
        rows_out = plan.rows_out
        dst_rows = pl.ds(m_tile * rows_out, rows_out)
        plgpu.copy_smem_to_gmem(o_smem.at[pl.ds(0, rows_out)], o_ref.at[b, h, split, dst_rows])
        plgpu.copy_smem_to_gmem(lse_smem.at[pl.ds(0, rows_out)], lse_ref.at[b, h, split, dst_rows])
        plgpu.wait_smem_to_gmem(0)

    # Scoped after the pipeline so the float32 tile reuses the K/V buffers' shared memory.
    pl.run_scoped(epilogue, plgpu.SMEM((BLOCK_M, head_dim), jnp.float32), plgpu.SMEM((BLOCK_M,), jnp.float32))


def partial_attention(
    q_rows: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask_i8: jax.Array,
    *,
    scale: float,
    logit_softcap: float | None,
    block_s: int,
    num_splits: int | None,
    interpret: bool,
) -> jax.Array:
    """Grouped-query attention of query rows against the cache, merged over cache splits.

    q_rows: [B, KVH, M, D], row m of KV head h being any (token, grouped head) pair the caller chose;
    k, v: [B, S, KVH, D]; mask_i8: int8 [B, M, S] (one mask row per query row) or [B, S] (one mask for all
    rows, the decode case). Returns float32 [B, KVH, M, D].
    """
    if (reason := unsupported_reason(q_rows, k, v, block_s=block_s)) is not None:
        raise ValueError(reason)
    plan = make_plan(q_rows, k, block_s=block_s, num_splits=num_splits)
    padded_rows = plan.m_tiles * BLOCK_M
    row_pad = padded_rows - plan.rows
    q_rows = jnp.pad(q_rows, ((0, 0), (0, 0), (0, row_pad), (0, 0)))
    mask_per_row = mask_i8.ndim == 3
    if mask_per_row:
        mask_i8 = jnp.pad(mask_i8, ((0, 0), (0, row_pad), (0, 0)))  # padding rows: nothing visible
    out_rows = plan.m_tiles * plan.rows_out
    kernel = plgpu.kernel(
        functools.partial(
            _kernel,
            plan=plan, mask_per_row=mask_per_row, scale=scale, logit_softcap=logit_softcap, interpret=interpret,
        ),  # fmt: skip
        out_type=(
            jax.ShapeDtypeStruct((plan.batch, plan.kv_heads, plan.num_splits, out_rows, plan.head_dim), jnp.float32),
            jax.ShapeDtypeStruct((plan.batch, plan.kv_heads, plan.num_splits, out_rows), jnp.float32),
        ),
        scratch_types=(
            plgpu.SMEM((BLOCK_M, plan.head_dim), q_rows.dtype),
            plgpu.SMEM((BLOCK_M, plan.block_s), q_rows.dtype),
            plgpu.Barrier(),
        ),
        grid=(plan.batch, plan.kv_heads, plan.m_tiles, plan.num_splits),
        grid_names=("batch", "kv_head", "m_tile", "split"),
        compiler_params=plgpu.CompilerParams(approx_math=True),
        interpret=plgpu.InterpretGPUParams() if interpret else None,
    )
    out, lse = kernel(q_rows, k, v, mask_i8)
    return merge_splits(out, lse)[:, :, : plan.rows]


def merge_splits(out: jax.Array, lse: jax.Array) -> jax.Array:
    """out: float32 [B, KVH, splits, M, D] (each split normalised), lse: [B, KVH, splits, M] → [B, KVH, M, D].

    Weights are exp(lse - max lse). A row with nothing visible has lse ≈ finfo.min in every split, so the
    equal-sized splits get equal weights and the merge stays the uniform average over all S slots.
    """
    weights = jnp.exp(lse - lse.max(axis=2, keepdims=True))[..., None]
    # A multiply-and-sum rather than an einsum: XLA could run a float32 dot in TF32 on the GPU.
    return (weights * out).sum(axis=2) / weights.sum(axis=2)


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array,
    *,
    scale: float,
    logit_softcap: float | None = None,
    interpret: bool = False,
    block_s: int = DEFAULT_BLOCK_S,
    num_splits: int | None = None,
) -> jax.Array:
    """Same contract as `attention_reference.attention`, for T >= 1 query tokens with an arbitrary mask.

    q: [B, T, H, D]; k, v: [B, S, KVH, D]; mask: bool[B, T, S] (tree + causal + padding, True = visible).
    Returns [B, T, H, D] in q's dtype. block_s: cache slots per pipeline step; num_splits: cache splits
    per row (default: enough to fill the GPU).
    interpret: run on CPU through the Mosaic GPU interpreter.
    """
    b, t, h, d = q.shape
    kv_heads = k.shape[2]
    groups = h // kv_heads
    # Row m = t·G + g of KV head h holds query head h·G + g of token t, so mask row m is token m // G.
    q_rows = q.reshape(b, t, kv_heads, groups, d).transpose(0, 2, 1, 3, 4).reshape(b, kv_heads, t * groups, d)
    mask_rows = jnp.repeat(mask.astype(jnp.int8), groups, axis=1)
    out = partial_attention(
        q_rows, k, v, mask_rows,
        scale=scale, logit_softcap=logit_softcap, block_s=block_s, num_splits=num_splits, interpret=interpret,
    )  # fmt: skip
    return out.reshape(b, kv_heads, t, groups, d).transpose(0, 2, 1, 3, 4).reshape(b, t, h, d).astype(q.dtype)
