"""Autoregressive tokens/s of the JAX target vs HF `transformers` greedy `generate()`, side by side.

    .venv/bin/python benchmarks/ar_throughput.py --hf-python /tmp/venv311/bin/python

Both sides decode the same token ids (GSM8K prompts cut to one common length, so neither pads), greedy,
exactly `--new-tokens` tokens per row, best of `--repeats` timed runs after a warm-up; tokens/s counts
generated tokens over wall time including the prefill. HF runs in a subprocess under `--hf-python`, an
interpreter with torch and transformers (the project's own environment has no torch).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from dspark_jax.eval_data import load_prompts
from dspark_jax.generate import GenerationConfig, generate
from dspark_jax.target import describe_target, load_target

WORKER = Path(__file__).with_name("hf_generate_worker.py")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def common_length_prompts(tokenizer, count: int, length: int) -> list[list[int]]:
    prompts = [tokenizer.encode(text)[:length] for text in load_prompts("gsm8k", limit=4 * count)]
    prompts = [p for p in prompts if len(p) == length][:count]
    if len(prompts) < count:
        raise SystemExit(f"fewer than {count} GSM8K prompts have {length} tokens; lower --prompt-tokens")
    return prompts


def jax_tokens_per_second(target, prompts, batch: int, new_tokens: int, repeats: int) -> float:
    config = GenerationConfig(max_new_tokens=new_tokens)  # no stop tokens: exactly new_tokens per row
    rows = prompts[:batch]
    generate(target.params, target.config, rows, config)  # compile
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = generate(target.params, target.config, rows, config)
        seconds.append(time.perf_counter() - start)
        assert all(len(r) == new_tokens for r in out)
    return batch * new_tokens / min(seconds)


def hf_tokens_per_second(python: str, gguf: Path, prompts, batches, new_tokens: int, repeats: int) -> dict:
    request = {"gguf": str(gguf), "prompts": prompts, "batches": batches, "new_tokens": new_tokens,
               "repeats": repeats, "threads": os.cpu_count()}
    done = subprocess.run([python, str(WORKER)], input=json.dumps(request), capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"HF worker failed under {python}:\n{done.stderr[-3000:]}")
    reply = json.loads(done.stdout.strip().splitlines()[-1])
    return {"versions": reply["versions"], "results": {int(b): v for b, v in reply["results"].items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hf-python", required=True, help="python with torch + transformers for the HF side")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]

    spec = describe_target()
    prompts = common_length_prompts(spec.tokenizer, max(batches), args.prompt_tokens)
    hf = hf_tokens_per_second(args.hf_python, spec.path, prompts, batches, args.new_tokens, args.repeats)
    target = load_target(spec, dtype=DTYPES[args.dtype])
    ours = {b: jax_tokens_per_second(target, prompts, b, args.new_tokens, args.repeats) for b in batches}

    print(f"Gemma 3 270M Q4_K_M, {args.prompt_tokens}-token prompts, {args.new_tokens} greedy tokens, "
          f"{os.cpu_count()} CPU cores; jax {jax.__version__} ({args.dtype}), "
          f"torch {hf['versions']['torch']} / transformers {hf['versions']['transformers']} (float32)")
    print("| batch | dspark-jax tok/s | transformers tok/s | ratio |")
    print("| ---: | ---: | ---: | ---: |")
    for b in batches:
        print(f"| {b} | {ours[b]:.1f} | {hf['results'][b]:.1f} | {ours[b] / hf['results'][b]:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
