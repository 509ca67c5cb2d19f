"""HF `transformers` side of `ar_throughput.py`: greedy `generate()` tokens/s on the same prompts.

Runs under an interpreter that has torch (see `ar_throughput.py --hf-python`). Reads a JSON request
{"gguf": path, "prompts": [[ids...], ...], "batches": [1, 8], "new_tokens": N, "repeats": R, "threads": T}
on stdin and prints one JSON line {"versions": ..., "results": {batch: tokens_per_second}}.
"""

import json
import sys
import time
from pathlib import Path

import torch
import transformers


def main() -> None:
    request = json.load(sys.stdin)
    torch.set_num_threads(request["threads"])
    gguf = Path(request["gguf"])
    model = transformers.AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    ).eval()
    new_tokens = request["new_tokens"]
    results = {}
    with torch.inference_mode():
        for batch in request["batches"]:
            ids = torch.tensor(request["prompts"][:batch])
            run = lambda n: model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                           max_new_tokens=n, min_new_tokens=n, pad_token_id=0)
            run(4)  # warm-up: first-call allocations
            seconds = []
            for _ in range(request["repeats"]):
                start = time.perf_counter()
                out = run(new_tokens)
                seconds.append(time.perf_counter() - start)
                assert out.shape == (batch, ids.shape[1] + new_tokens)
            results[batch] = batch * new_tokens / min(seconds)
    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    print(json.dumps({"versions": versions, "results": results}))


if __name__ == "__main__":
    main()
