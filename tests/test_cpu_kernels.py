"""CPU kernels over packed (GGUF-stored) weights against gguf-py's dequantize and XLA's dot.

Tolerance of the matrix products: the kernel and XLA sum the same K float32 products in different orders,
so each is within K * 2^-24 * sum|x w| of the exact sum (recursive summation; a fused multiply-add rounds
less, never more); the two differ by at most twice that. Decoded weights must be bit-identical.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_gguf_loader import family_config, random_arrays, write_gguf
from tiny_models import FAMILIES, tiny_config

from dspark_jax import cli, generate_command, speculative
from dspark_jax.generate import GenerationConfig, generate
from dspark_jax.kernels import cpu_kernels
from dspark_jax.kernels.linear import linear, lookup
from dspark_jax.kernels.packed_matrix import FORMATS, PackedMatrix, decode, matmul
from dspark_jax.models.gguf_loader import load_gguf, read_gguf_header
from dspark_jax.models.kv_cache import KVCache
from dspark_jax.models.params import init_params, pack_float32
from dspark_jax.models.transformer import forward, logits
from dspark_jax.proposers.ngram import NgramProposer
from dspark_jax.target import GGUF_MAX_STEP_TOKENS, describe_target, load_target, resolve_target, resolve_weights
from dspark_jax.tree import TreeTemplate

pytestmark = pytest.mark.skipif(cpu_kernels.unavailable_reason() is not None,
                                reason=f"CPU kernels unavailable: {cpu_kernels.unavailable_reason()}")
QTYPES = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q5_0": gguf.GGMLQuantizationType.Q5_0,
          "q4_k": gguf.GGMLQuantizationType.Q4_K, "q6_k": gguf.GGMLQuantizationType.Q6_K}
SCALE_OFFSETS = {"q8_0": (0,), "q5_0": (0,), "q4_k": (0, 2), "q6_k": (208,)}  # float16 fields of a block


def random_blocks(fmt: str, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """uint8[rows, row_bytes] of valid blocks: random quants, random float16 scales of either sign (some
    zero or subnormal)."""
    _, block, block_bytes = FORMATS[fmt]
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (rows, cols // block, block_bytes), dtype=np.uint8)
    scales = (rng.choice([-1, 1], (rows, cols // block)) * 10.0 ** rng.uniform(-6, -1, (rows, cols // block)))
    scales[0, 0] = 0.0
    for offset in SCALE_OFFSETS[fmt]:
        data[:, :, offset:offset + 2] = scales.astype(np.float16)[..., None].view(np.uint8)
    return data.reshape(rows, -1)


def reference(fmt: str, data: np.ndarray, cols: int) -> np.ndarray:
    return gguf.quants.dequantize(data, QTYPES[fmt]).reshape(data.shape[0], cols)


def assert_close_products(got, x, w):
    """|got - x w^T| within the summation bound of the module docstring, element by element."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    bound = 2 * x.shape[-1] * 2.0**-24 * (np.abs(x) @ np.abs(w).T)
    error = np.abs(np.asarray(got, np.float64) - x @ w.T)
    assert (error <= bound + 1e-30).all(), f"max error / bound {np.max(error / (bound + 1e-30)):.3g}"


@pytest.mark.parametrize("fmt", sorted(QTYPES))
def test_decode_is_bit_identical_to_gguf_py(fmt):
    data = random_blocks(fmt, 9, 512)
    w = PackedMatrix.pack(data, fmt, (9, 512))
    expected = reference(fmt, data, 512)
    np.testing.assert_array_equal(np.asarray(jax.jit(decode)(w)).view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize("fmt", sorted(QTYPES) + ["f32"])
def test_products_match_xla_within_rounding(fmt):
    rows, cols = 37, 512  # row counts that leave partial tiles; 70 tokens cross a 64-token panel
    if fmt == "f32":
        values = np.random.default_rng(1).standard_normal((rows, cols)).astype(np.float32)
        w = PackedMatrix.pack(values, "f32", (rows, cols))
    else:
        data = random_blocks(fmt, rows, cols)
        values = reference(fmt, data, cols)
        w = PackedMatrix.pack(data, fmt, (rows, cols))
    for tokens in (1, 3, 8, 9, 70):
        x = np.random.default_rng(tokens).standard_normal((tokens, cols)).astype(np.float32)
        assert_close_products(jax.jit(matmul)(jnp.asarray(x), w), x, values)


def test_a_rows_result_does_not_depend_on_its_batch():
    """One summation order for every N: row i alone and inside 70 rows gives the same bits."""
    data = random_blocks("q4_k", 21, 256)
    w = PackedMatrix.pack(data, "q4_k", (21, 256))
    x = jnp.asarray(np.random.default_rng(2).standard_normal((70, 256)).astype(np.float32))
    batch = np.asarray(matmul(x, w))
    for i in (0, 7, 8, 63, 64, 69):
        np.testing.assert_array_equal(np.asarray(matmul(x[i:i + 1], w))[0], batch[i])


def test_packed_matrix_views_and_rows():
    data = random_blocks("q8_0", 12, 64)
    w = PackedMatrix.pack(data, "q8_0", (3, 4, 64))
    values = reference("q8_0", data, 64)
    assert w.reshape(12, 64).shape == (12, 64) and w.reshape(-1, 64).shape == (12, 64)
    with pytest.raises(ValueError, match="rows stay rows"):
        w.reshape(3, 256)
    ids = jnp.asarray([[5, 0], [11, 5]])
    np.testing.assert_array_equal(np.asarray(lookup(w, ids)), values[np.asarray(ids)])
    x = jnp.ones((2, 64), jnp.float32)
    assert_close_products(linear(x, w.reshape(12, 64).take_rows(jnp.asarray([3, 1]))), x, values[[3, 1]])
    with pytest.raises(ValueError, match="not a q8_0 matrix"):
        PackedMatrix.pack(data[:, :-1], "q8_0", (12, 64))


def test_real_weights_of_every_stored_format():
    header = read_gguf_header(resolve_target("default"))
    seen = set()
    for tensor in header.tensors.values():
        fmt = tensor.qtype.name.lower()
        if fmt not in QTYPES or fmt in seen or len(tensor.shape) != 2:
            continue
        seen.add(fmt)
        rows = np.memmap(header.path, np.uint8, "r", tensor.offset, (tensor.nbytes,)).reshape(tensor.shape[0], -1)
        data = np.asarray(rows[:64])
        w = PackedMatrix.pack(data, fmt, (64, tensor.shape[1]))
        expected = reference(fmt, data, tensor.shape[1])
        np.testing.assert_array_equal(np.asarray(decode(w)).view(np.uint32), expected.view(np.uint32))
        x = np.random.default_rng(3).standard_normal((8, tensor.shape[1])).astype(np.float32)
        assert_close_products(matmul(jnp.asarray(x), w), x, expected)
    assert seen == set(QTYPES)


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_gguf_model_equals_the_dequantized_one(tmp_path, family):
    """Tiny GGUF files mixing Q8_0 / Q5_0 (packed) with F16 / BF16 / Q4_0 (float32 rows): same greedy
    tokens as the dequantized arrays, logits within float32 rounding (llama's permuted q/k rows too)."""
    config = family_config(family)
    write_gguf(tmp_path / "m.gguf", config, random_arrays(config))
    _, dense = load_gguf(tmp_path / "m.gguf")
    _, packed = load_gguf(tmp_path / "m.gguf", packed=True)
    assert isinstance(packed.embed, PackedMatrix) and packed.embed.format == "q8_0"
    assert packed.layers[0].k.format == "q5_0" and packed.layers[0].v.format == "f32"
    tokens = jnp.arange(12)[None] % config.vocab_size
    out = {}
    for name, params in (("dense", dense), ("packed", packed)):
        hidden = forward(params, tokens, tokens, KVCache.empty(config, 1, 16), config=config).hidden
        out[name] = np.asarray(logits(params, hidden, config=config))
    np.testing.assert_allclose(out["packed"], out["dense"], rtol=1e-4, atol=1e-4 * np.abs(out["dense"]).max())
    generation = GenerationConfig(max_new_tokens=12)
    prompts = [[3, 4, 5], [9, 8, 7, 6, 5]]
    assert generate(packed, config, prompts, generation) == generate(dense, config, prompts, generation)


def test_speculative_decoding_on_packed_weights_is_lossless():
    config = tiny_config("llama")
    params = pack_float32(init_params(config, jax.random.key(0), std=0.3))
    assert isinstance(params.layers[0].q, PackedMatrix) and isinstance(params.lm_head, PackedMatrix)
    generation = GenerationConfig(max_new_tokens=16)
    prompts = [[5, 6, 7, 8, 5, 6, 7, 8], [1, 2, 3]]
    expected = generate(params, config, prompts, generation)
    result = speculative.speculative_generate(params, config, prompts, generation,
                                              speculative.SpeculativeMethod(NgramProposer(), None, TreeTemplate(1, 4)))
    assert result.tokens == expected


def test_real_model_greedy_tokens_equal_across_weight_forms():
    spec = describe_target()
    prompts = [spec.tokenizer.encode(p) for p in ("The capital of France is", "def fibonacci(n):")]
    generation = GenerationConfig(max_new_tokens=24)
    results = {}
    for weights in ("gguf", "xla"):
        target = load_target(spec, weights=weights)
        results[weights] = generate(target.params, target.config, prompts, generation)
    assert isinstance(target.params.embed, jax.Array)
    assert results["gguf"] == results["xla"]


def test_weights_choice_and_errors():
    spec = describe_target()
    assert resolve_weights("auto", spec) == "gguf"
    assert resolve_weights("auto", spec, step_tokens=GGUF_MAX_STEP_TOKENS) == "gguf"
    assert resolve_weights("auto", spec, step_tokens=GGUF_MAX_STEP_TOKENS + 1) == "xla"  # XLA's GEMM is faster
    assert resolve_weights("gguf", spec, step_tokens=64) == "gguf"  # asked for: served, just slower
    assert resolve_weights("auto", spec, jnp.bfloat16) == "xla"
    with pytest.raises(ValueError, match="bfloat16.*--weights xla"):
        resolve_weights("gguf", spec, jnp.bfloat16)
    with pytest.raises(ValueError, match="weights must be one of"):
        resolve_weights("int4", spec)


@pytest.mark.parametrize("flags, problem", [(["--weights", "gguf", "--dtype", "bfloat16"], "bfloat16"),
                                            (["--weights", "float32", "--mesh", "1x2"], "mesh")])
def test_cli_refuses_a_weight_form_before_loading(flags, problem, stop_at_load, capsys):
    stop_at_load(generate_command)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["generate", "--prompt", "hi", "--drafter", "none", *flags])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert problem in err and "--weights xla" in err


def _run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=os.environ | env, timeout=300)


def test_without_the_kernels_everything_runs_on_xla():
    """DSPARK_JAX_CPU_KERNELS=0 stands for a machine where the library could not be built."""
    result = _run("""
        import pytest
        from dspark_jax.generate import GenerationConfig, generate
        from dspark_jax.target import describe_target, load_target, resolve_weights
        spec = describe_target()
        assert resolve_weights("auto", spec) == "xla"
        with pytest.raises(ValueError, match="DSPARK_JAX_CPU_KERNELS=0.*--weights xla"):
            resolve_weights("gguf", spec)
        target = load_target("tests/data/tiny/gemma3")
        print(generate(target.params, target.config, [[2, 5, 9]], GenerationConfig(max_new_tokens=4)))
    """, DSPARK_JAX_CPU_KERNELS="0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("[[")


def test_concurrent_first_builds_share_one_library(tmp_path):
    """Two processes building into an empty cache at once: one compiles, both load the same file."""
    code = """
        from dspark_jax.kernels import cpu_kernels
        assert cpu_kernels.unavailable_reason() is None, cpu_kernels.unavailable_reason()
        print(cpu_kernels.build())
    """
    env = {"XDG_CACHE_HOME": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=os.environ | env) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    paths = {out.strip() for out, _ in outputs}
    assert len(paths) == 1 and Path(paths.pop()).is_file()
    assert [p.name for p in (tmp_path / "dspark-jax").iterdir() if not p.name.endswith(".lock")] == [
        Path(outputs[0][0].strip()).name]
