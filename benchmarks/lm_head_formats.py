"""The LM head matrix-vector product on XLA:CPU in three storage formats, same shapes as Gemma 3 270M.

    .venv/bin/python benchmarks/lm_head_formats.py

float32 [V, E]; Q8_0-style int8 blocks of 32 with a float32 scale each (dequantized inside the jitted
function, whole and in 64 vocabulary chunks); bfloat16. Random weights: only the speed matters. Best of 10.
"""

import jax
import jax.numpy as jnp
import numpy as np
from timing import best_ms

V, E = 262_144, 640


def main() -> None:
    rng = np.random.default_rng(0)
    w8 = jnp.asarray(rng.integers(-127, 127, (V, E // 32, 32), dtype=np.int8))
    scales = jnp.asarray(rng.random((V, E // 32), dtype=np.float32))
    w32 = (w8.astype(jnp.float32) * scales[..., None]).reshape(V, E)
    w16 = w32.astype(jnp.bfloat16)
    h = jnp.asarray(rng.standard_normal((1, E), dtype=np.float32))

    def q8(h, w8, scales):
        part = jnp.einsum("bnj,vnj->bvn", h.reshape(1, E // 32, 32), w8.astype(jnp.float32))
        return jnp.einsum("bvn,vn->bv", part, scales)

    def q8_chunked(h, w8, scales, chunks=64):
        out = jax.lax.map(lambda args: q8(h, *args),
                          (w8.reshape(chunks, V // chunks, E // 32, 32), scales.reshape(chunks, V // chunks, E // 32)))
        return jnp.moveaxis(out, 0, 1).reshape(1, V)

    f32 = jax.jit(lambda h, w: jnp.einsum("be,ve->bv", h, w))
    bf16 = jax.jit(lambda h, w: jnp.einsum("be,ve->bv", h.astype(jnp.bfloat16), w, preferred_element_type=jnp.float32))
    print("| format | ms |\n| --- | ---: |")
    print(f"| float32 | {best_ms(lambda: f32(h, w32)):.1f} |")
    print(f"| Q8_0, dequantized in the dot | {best_ms(lambda: jax.jit(q8)(h, w8, scales)):.1f} |")
    print(f"| Q8_0, 64 vocabulary chunks | {best_ms(lambda: jax.jit(q8_chunked)(h, w8, scales)):.1f} |")
    print(f"| bfloat16 | {best_ms(lambda: bf16(h, w16)):.1f} |")


if __name__ == "__main__":
    main()
