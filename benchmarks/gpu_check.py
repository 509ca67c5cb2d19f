"""The prepared GPU check: attention kernels against XLA at Llama-3-8B shapes, and the decode and speculative
steps of a random-weight Llama-3-8B on the devices JAX sees (sharded over all of them), as one table.

    python benchmarks/gpu_check.py            # on an H100/H200: jax with CUDA, no network, no download
    python benchmarks/gpu_check.py --tiny     # anywhere: tiny shapes, kernels in the Pallas interpreter

Kernel rows: q [B, T, 32, 128], k/v [B, S, 8, 128] bfloat16, a verify-step mask (3/4 of the cache
committed, then a chain of T draft tokens); XLA's reference and the Pallas kernel (decode kernel at T = 1,
verify kernel at T > 1), median of --repeats calls, and the kernel's max error against the float32
reference. Step rows: the whole model on a ('data', 'model') = 1 x N mesh of all devices, a prompt of
--prompt tokens per row; one plain decode step, and one DSpark draft -> verify -> accept step (gamma 7,
random drafter: what is timed is the work, not the acceptance), best of --repeats. Weights are drawn on the
device, so nothing is read from disk. Uses only APIs present in jax 0.11.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tiny_models, for --tiny
sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling benchmarks, also when imported

from attention_kernels import operands  # noqa: E402
from timing import best_ms, median_seconds  # noqa: E402

from dspark_jax import generate, speculative  # noqa: E402
from dspark_jax.drafter_kinds import drafter_proposer, new_drafter  # noqa: E402
from dspark_jax.kernels import attention, attention_reference, decode_attention, verify_attention  # noqa: E402
from dspark_jax.models.params import expected_shapes, params_from_arrays  # noqa: E402
from dspark_jax.models.presets import preset_config  # noqa: E402
from dspark_jax.models.sharding import make_mesh, placement_of, shard_params  # noqa: E402
from dspark_jax.tree import TreeTemplate  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Shapes:
    heads: int
    kv_heads: int
    head_dim: int
    slots: tuple[int, ...]
    batches: tuple[int, ...]
    tokens: tuple[int, ...]
    block_s: int


FULL = Shapes(32, 8, 128, (2048, 8192), (1, 8), (1, 8), verify_attention.DEFAULT_BLOCK_S)
TINY = Shapes(4, 2, 64, (256,), (1,), (1, 8), 128)


def kernel_rows(shapes: Shapes, interpret: bool, repeats: int) -> list[tuple[str, str, str, str]]:
    scale = shapes.head_dim**-0.5
    reference = jax.jit(lambda q, k, v, m: attention_reference.attention(q, k, v, m, scale=scale))
    rows = []
    for batch in shapes.batches:
        for tokens in shapes.tokens:
            for slots in shapes.slots:
                q, k, v, mask = operands(batch, tokens, slots, shapes.heads, shapes.kv_heads, shapes.head_dim)
                module = decode_attention if tokens == 1 else verify_attention
                kernel = jax.jit(lambda q, k, v, m, module=module: module.attention(
                    q, k, v, m, scale=scale, block_s=shapes.block_s, interpret=interpret))
                expected = attention_reference.attention(*(x.astype(jnp.float32) for x in (q, k, v)), mask,
                                                         scale=scale)
                name = f"attention {'decode' if tokens == 1 else 'verify'} B={batch} T={tokens} S={slots}"
                xla = median_seconds(reference, (q, k, v, mask), repeats) * 1e6
                try:  # one failing kernel must not cost the rest of a rare GPU run
                    error = float(jnp.abs(kernel(q, k, v, mask).astype(jnp.float32) - expected).max())
                    pallas = median_seconds(kernel, (q, k, v, mask), repeats) * 1e6
                except Exception as failure:  # noqa: BLE001
                    rows.append((name, f"{xla:.1f} us", "failed", f"{type(failure).__name__}: {failure}"[:160]))
                    continue
                rows.append((name, f"{xla:.1f} us", f"{pallas:.1f} us", f"{xla / pallas:.2f}x, err {error:.1e}"))
    return rows


def random_params(config, key: jax.Array, dtype=jnp.bfloat16):
    """Random weights drawn on the device (an 8B model never exists on the host)."""
    shapes = sorted(expected_shapes(config).items())

    def draw():
        keys = jax.random.split(key, len(shapes))
        arrays = {name: (jnp.ones(shape, dtype) if name.endswith("norm")
                         else 0.02 * jax.random.normal(k, shape, dtype)) for (name, shape), k in zip(shapes, keys)}
        return params_from_arrays(config, arrays, dtype)

    return jax.jit(draw)()


def step_rows(config, batches: tuple[int, ...], prompt: int, repeats: int) -> list[tuple[str, str, str, str]]:
    mesh = make_mesh(1, len(jax.devices()))
    params = shard_params(random_params(config, jax.random.key(0)), mesh)
    drafter = new_drafter("dspark", config, np.arange(min(32768, config.vocab_size)), depth=7)
    method = speculative.SpeculativeMethod(*drafter_proposer(config, drafter, params), TreeTemplate(1, 7))
    decode_step = jax.jit(generate.Decoder.step, static_argnums=0)
    rows = []
    for batch in batches:
        prompts = [[1] * prompt] * batch
        plain = generate.GenerationConfig(max_new_tokens=64, min_prompt_width=prompt)
        prepared = generate.prepare(config, prompts, plain, 0, placement_of(params))
        state = generate._prefill(prepared.decoder, params, prepared.prompt, prepared.prompt_lengths, prepared.keys)
        decode = best_ms(lambda: decode_step(prepared.decoder, params, state), repeats)
        decoder, padded, lengths, key = speculative._decoder(params, config, prompts, plain, method, 0)
        spec_state = speculative._prefill(decoder, params, method.params, padded, lengths, key)
        spec = best_ms(lambda: speculative._step(decoder, params, method.params, spec_state), repeats)
        rows.append((f"step B={batch} (prompt {prompt}, {len(jax.devices())} device(s))", f"{decode:.2f} ms",
                     f"{spec:.2f} ms", f"spec/decode {spec / decode:.2f}x"))
    return rows


def main(argv: list[str] | None = None) -> list[tuple[str, str, str, str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes; runs without a GPU")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--batches", type=lambda t: tuple(int(x) for x in t.split(",")), default=(1, 8, 32))
    parser.add_argument("--prompt", type=int, default=1024, help="prompt tokens per row of the step rows")
    args = parser.parse_args(argv)
    shapes = TINY if args.tiny else FULL
    q, k, v, _ = operands(1, 1, shapes.slots[0], shapes.heads, shapes.kv_heads, shapes.head_dim)
    reason = attention.kernel_unavailable_reason(q, k, v)
    if reason is not None and not args.tiny:
        sys.exit(f"no GPU kernels here ({reason}): run on an H100/H200, or pass --tiny")
    interpret = reason is not None
    if args.tiny:
        from tiny_models import tiny_config

        config = tiny_config("llama")
        batches, prompt = (1, 8), 32
    else:
        config, batches, prompt = preset_config("llama3-8b"), args.batches, args.prompt
    print(f"jax {jax.__version__}, {len(jax.devices())} x {jax.devices()[0].device_kind}; kernels "
          f"{'in the interpreter (' + reason + ')' if interpret else 'compiled'}", flush=True)
    rows = kernel_rows(shapes, interpret, args.repeats) + step_rows(config, batches, prompt, args.repeats)
    header = ("what", "XLA / decode", "Pallas / speculative", "ratio")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |")
    return rows


if __name__ == "__main__":
    main()
