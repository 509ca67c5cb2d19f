"""`generate --input/--output` (batch_generation.generate_file) against the same work done by one `generate`
call per batch, side by side in one run, plain greedy decoding of Gemma 3 270M.

    .venv/bin/python benchmarks/batch_generation.py [--prompts 1000] [--max-new-tokens 64] [--batch-size 8]

The prompts are the first turns of the shipped mt-bench and gsm8k sets, repeated to --prompts lines. Both
sides decode the same batches (generate_file's plan: grouped, sorted by length) with the same seeds, after one
untimed pass that compiles every shape; the file side also reads, plans, decodes text and appends with
fsync. Prints tokens/s of both and their ratio (issue 26's goal: >= 0.9).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from dspark_jax.batch_generation import generate_file, plan_batches, read_requests
from dspark_jax.eval_data import load_prompts
from dspark_jax.generate import GenerationConfig, generate
from dspark_jax.target import load_target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=1000)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    target = load_target()
    texts = load_prompts("mt-bench") + load_prompts("gsm8k")
    texts = [texts[i % len(texts)] for i in range(args.prompts)]
    work = Path(tempfile.mkdtemp())
    source = work / "prompts.jsonl"
    source.write_text("".join(json.dumps({"turns": [t]}) + "\n" for t in texts))
    defaults = GenerationConfig(args.max_new_tokens, stop_tokens=target.tokenizer.eos_ids)

    requests, _ = read_requests(source, target, defaults)
    batches = plan_batches(requests, args.batch_size)

    def direct() -> int:
        tokens = 0
        for batch in batches:
            prompts = [list(r.tokens) for r in batch.requests]
            prompts += [prompts[0]] * (args.batch_size - len(prompts))
            rows = generate(target.params, target.config, prompts, batch.requests[0].generation, batch.number)
            tokens += sum(len(row) for row in rows[: len(batch.requests)])
        return tokens

    def from_file(name: str) -> int:
        return generate_file(target, source, work / name, defaults, batch_size=args.batch_size,
                             progress=False).completion_tokens

    direct(), from_file("warm.jsonl")  # compile every shape on both sides
    start = time.perf_counter()
    direct_tokens = direct()
    direct_rate = direct_tokens / (time.perf_counter() - start)
    start = time.perf_counter()
    file_tokens = from_file("timed.jsonl")
    file_rate = file_tokens / (time.perf_counter() - start)
    print(f"{args.prompts} prompts x {args.max_new_tokens} tokens, batch {args.batch_size}, {len(batches)} batches")
    print(f"one generate call per batch: {direct_rate:.1f} tok/s ({direct_tokens} tokens)")
    print(f"generate_file:               {file_rate:.1f} tok/s ({file_tokens} tokens)")
    print(f"ratio: {file_rate / direct_rate:.3f}")


if __name__ == "__main__":
    main()
