"""Evaluation prompts shipped with the package (first-turn prompts of gsm8k, math500, humaneval, mbpp,
mt-bench; each line is {"turns": [...]}), copied from DeepSpec's evaluation sets."""

import json
from importlib import resources

TASKS = ("gsm8k", "math500", "humaneval", "mbpp", "mt-bench")


def load_prompts(task: str, limit: int | None = None) -> list[str]:
    """First turn of each record of a shipped task, in file order."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; shipped tasks are {', '.join(TASKS)}")
    text = resources.files(__package__).joinpath(f"{task}.jsonl").read_text(encoding="utf-8")
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [r["turns"][0] for r in records[:limit]]
