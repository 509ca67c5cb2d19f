"""DeepSpec-style evaluation: every drafter against plain autoregressive decoding, task by task, one run.

For each task (a shipped benchmark or a user's JSONL file of `{"turns": [...]}`) the first turns are
chat-formatted with the target's template and answered by autoregressive decoding and by each drafter with
the same sampling settings. Per drafter and task: τ (bonus token included) per prompt and over the task,
with its standard error over prompts, proposals (verify steps),
accept rate by position, verify rate (target verify passes per generated token, 1/τ up to budget cuts),
tokens/s and the speedup over the autoregressive run measured beside it, the calibration of the confidence
head when the drafter has one (per position, and of the prefix survival products the scheduler uses, raw and
with the drafter's STS fit), and the losslessness check: greedy output equal to the target's own.

Timing excludes compilation: all prompts pad to one width, so each method compiles once, on a warm-up
call before its first timed task.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dspark_jax.calibration import calibration_by_position, reliability_bins
from dspark_jax.eval_data import TASKS, load_prompts
from dspark_jax.generate import GenerationConfig, bucketed_width, generate
from dspark_jax.sampling import SamplingConfig
from dspark_jax.speculative import SpecStats, SpeculativeMethod, speculative_generate
from dspark_jax.target import Target
from dspark_jax.temperature_scaling import SequentialTemperatures, survival_ece

# The greedy losslessness check of a sampled evaluation: a few prompts, a short budget.
LOSSLESS_PROMPTS, LOSSLESS_TOKENS = 2, 32


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    prompts: tuple[str, ...]  # first turns


def load_tasks(specs: list[str], limit: int | None = None) -> list[Task]:
    """Shipped task names or paths to JSONL files of {"turns": [...]} records; validated, nothing loaded yet."""
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    tasks = []
    for spec in specs:
        if spec in TASKS:
            tasks.append(Task(spec, tuple(load_prompts(spec, limit))))
            continue
        path = Path(spec)
        if not path.is_file():
            raise ValueError(f"task {spec!r} is neither a shipped task ({', '.join(TASKS)}) nor a JSONL file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"{path} is not UTF-8 text (byte {error.start}): re-encode it as UTF-8") from None
        prompts = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                turns = json.loads(line)["turns"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"{path}:{number}: each line must be a JSON object with a \"turns\" list") from None
            if not (isinstance(turns, list) and turns and isinstance(turns[0], str) and turns[0].strip()):
                raise ValueError(f"{path}:{number}: \"turns\" must be a list whose first item is a non-empty string")
            prompts.append(turns[0])
        if not prompts:
            raise ValueError(f"{path} holds no prompts")
        tasks.append(Task(path.stem, tuple(prompts[:limit])))
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"task names must be unique, got {names}")
    return tasks


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    max_new_tokens: int = 256
    sampling: SamplingConfig = SamplingConfig()
    batch_size: int = 1
    seed: int = 0


def merge_stats(stats: list[SpecStats], rows: int | None = None) -> SpecStats:
    """One SpecStats over several generations (steps padded with idle entries), keeping the first `rows`
    rows (the rest repeat prompts to fill the last batch)."""
    steps = max(s.accepted.shape[1] for s in stats)
    pad = lambda a, value: np.pad(a, [(0, 0), (0, steps - a.shape[1])] + [(0, 0)] * (a.ndim - 2),
                                  constant_values=value)
    merged = lambda field, value: np.concatenate([pad(getattr(s, field), value) for s in stats])[:rows]
    return SpecStats(accepted=merged("accepted", -1), verified_depth=merged("verified_depth", 0),
                     confidence=merged("confidence", np.nan),
                     depth=stats[0].depth, prefill_seconds=sum(s.prefill_seconds for s in stats),
                     decode_seconds=sum(s.decode_seconds for s in stats))


def drafter_metrics(stats: SpecStats, generated_tokens: int, fit: SequentialTemperatures | None = None) -> dict:
    """`fit`: the drafter's STS calibration for this decoding temperature, judged on the drafts of a run that
    verified every draft whole (a scheduler's whole drafts are a sample it chose, not a test set)."""
    confidence, survived, position = stats.confidence_outcomes()
    whole_confidence, whole_accepted = stats.whole_drafts()
    survival = None
    if whole_accepted.size and stats.mean_verified_depth == stats.depth:
        survival = {"raw": survival_ece(whole_confidence, whole_accepted).tolist(),
                    "sts": (survival_ece(np.asarray(fit.apply(whole_confidence)), whole_accepted).tolist()
                            if fit is not None else None)}
    proposals = int(stats.acceptance_lengths.size)
    return {
        "tau": stats.tau,
        "tau_standard_error": stats.tau_standard_error,
        "tau_by_prompt": stats.tau_by_row.tolist(),
        "proposals": proposals,
        "accept_rate_by_position": stats.accept_rate_by_position.tolist(),
        "verify_rate": proposals / max(generated_tokens, 1),
        "verified_per_step": stats.mean_verified_depth,
        "calibration": (calibration_by_position(confidence, survived, position, stats.depth)
                        if confidence.size else None),
        "reliability": ({k: np.asarray(v).tolist()
                         for k, v in dataclasses.asdict(reliability_bins(confidence, survived)).items()}
                        if confidence.size else None),
        "survival_ece": survival,
    }


class Evaluator:
    """Runs the methods over the tasks; prompts are encoded and padded identically for every method."""

    def __init__(self, target: Target, config: EvalConfig, tasks: list[Task]):
        self.target, self.config = target, config
        tokenizer = target.tokenizer
        self.prompts = {t.name: [tokenizer.encode(tokenizer.chat_prompt(p)) for p in t.prompts] for t in tasks}
        longest = max(len(p) for prompts in self.prompts.values() for p in prompts)
        self.width = bucketed_width(longest)
        self.warm: set[str] = set()

    def _generation(self, max_new_tokens: int, sampling: SamplingConfig) -> GenerationConfig:
        return GenerationConfig(max_new_tokens, sampling, self.target.tokenizer.eos_ids, min_prompt_width=self.width)

    def _batches(self, prompts: list[list[int]]) -> list[list[list[int]]]:
        size = self.config.batch_size
        batches = [prompts[i : i + size] for i in range(0, len(prompts), size)]
        if len(batches[-1]) < size:  # pad the last batch with repeats so every call has the compiled shape
            batches[-1] = batches[-1] + [batches[-1][-1]] * (size - len(batches[-1]))
        return batches

    def run(self, method: SpeculativeMethod | None, prompts: list[list[int]], max_new_tokens: int,
            sampling: SamplingConfig, timed: bool = True,
            progress: str | None = None) -> tuple[list[list[int]], float, SpecStats | None]:
        """(tokens per prompt, seconds, merged stats or None for autoregressive decoding); `progress` names a
        progress bar over the batches."""
        generation = self._generation(max_new_tokens, sampling)
        key = f"{method.name if method else 'ar'}/{max_new_tokens}/{sampling}"
        batches = self._batches(prompts)
        call = lambda batch: (generate(self.target.params, self.target.config, batch, generation, self.config.seed)
                              if method is None else
                              speculative_generate(self.target.params, self.target.config, batch, generation,
                                                   method, self.config.seed))
        if timed and key not in self.warm:
            call(batches[0])  # compile outside the timed region
        self.warm.add(key)
        tokens, stats, start = [], [], time.perf_counter()
        for batch in tqdm(batches, desc=progress, disable=progress is None):
            out = call(batch)
            if method is None:
                tokens += out
            else:
                tokens += out.tokens
                stats.append(out.stats)
        seconds = time.perf_counter() - start
        return tokens[: len(prompts)], seconds, (merge_stats(stats, rows=len(prompts)) if stats else None)

    def evaluate(self, methods: list[SpeculativeMethod], progress: bool = True) -> dict:
        """{"tasks": {task: {"autoregressive": {...}, drafter: {...}}}, "settings": {...}}."""
        config = self.config
        results = {}
        bar = tqdm(total=len(self.prompts) * (len(methods) + 1), disable=not progress, desc="eval")
        for task, prompts in self.prompts.items():
            bar.set_postfix_str(f"{task}: autoregressive")
            ar_tokens, ar_seconds, _ = self.run(None, prompts, config.max_new_tokens, config.sampling)
            ar_count = sum(len(t) for t in ar_tokens)
            ar_rate = ar_count / ar_seconds
            task_results = {"autoregressive": {"tokens": ar_count, "seconds": ar_seconds, "tokens_per_s": ar_rate,
                                               "prompts": len(prompts)}}
            bar.update()
            reference = None  # greedy target output for the losslessness check of sampled runs
            for method in methods:
                bar.set_postfix_str(f"{task}: {method.name}")
                tokens, seconds, stats = self.run(method, prompts, config.max_new_tokens, config.sampling)
                count = sum(len(t) for t in tokens)
                if config.sampling.greedy:
                    lossless = tokens == ar_tokens
                else:
                    check = prompts[:LOSSLESS_PROMPTS]
                    if reference is None:
                        reference = self.run(None, check, LOSSLESS_TOKENS, SamplingConfig(), timed=False)[0]
                    lossless = self.run(method, check, LOSSLESS_TOKENS, SamplingConfig(), timed=False)[0] == reference
                task_results[method.name] = {
                    "tokens": count, "seconds": seconds, "tokens_per_s": count / seconds,
                    "speedup": (count / seconds) / ar_rate, "lossless": lossless,
                    **drafter_metrics(stats, count, method.calibration.for_temperature(config.sampling.temperature)),
                }
                bar.update()
            results[task] = task_results
        bar.close()
        settings = {"max_new_tokens": config.max_new_tokens, "temperature": config.sampling.temperature,
                    "top_k": config.sampling.top_k, "top_p": config.sampling.top_p,
                    "batch_size": config.batch_size, "seed": config.seed,
                    "drafters": {m.name: f"{m.template.width}x{m.template.depth}" for m in methods}}
        return {"settings": settings, "tasks": results}


def benchmark(target: Target, methods: list[SpeculativeMethod], task: Task, batch_sizes: tuple[int, ...],
              temperatures: tuple[float, ...], max_new_tokens: int, progress: bool = True) -> list[dict]:
    """Tokens/s of autoregressive decoding and of each drafter for every (temperature, batch size), one row
    each; batch b decodes the task's first b prompts, every method timed after its own warm-up. Per row:
    the speed one user of the batch sees (all tokens / wall time / batch size), the paper's per-user speed."""
    rows = []
    bar = tqdm(total=len(temperatures) * len(batch_sizes) * (len(methods) + 1), disable=not progress, desc="bench")
    for temperature in temperatures:
        sampling = SamplingConfig(temperature)
        for batch_size in batch_sizes:
            evaluator = Evaluator(target, EvalConfig(max_new_tokens, sampling, batch_size),
                                  [Task(task.name, task.prompts[:batch_size])])
            prompts = evaluator.prompts[task.name]
            tokens, seconds, _ = evaluator.run(None, prompts, max_new_tokens, sampling)
            ar_rate = sum(len(t) for t in tokens) / seconds
            row = {"temperature": temperature, "batch_size": batch_size, "autoregressive": ar_rate,
                   "autoregressive_per_row": ar_rate / batch_size}
            bar.update()
            for method in methods:
                tokens, seconds, stats = evaluator.run(method, prompts, max_new_tokens, sampling)
                rate = sum(len(t) for t in tokens) / seconds
                row[method.name] = {"tokens_per_s": rate, "tokens_per_s_per_row": rate / batch_size,
                                    "speedup": rate / ar_rate, "tau": stats.tau,
                                    "verified_per_step": stats.mean_verified_depth}
                bar.update()
            rows.append(row)
    bar.close()
    return rows
