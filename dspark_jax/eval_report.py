"""The evaluation's report: results.json, results.md (tables) and PNG plots, written into one directory.

Plots: accept rate by draft position per drafter (averaged over tasks), reliability diagrams of the
confidence heads (pooled over tasks), and the speedup of each drafter per task.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dspark_jax.atomic_file import write_atomically

AR = "autoregressive"


def _drafters(results: dict) -> list[str]:
    return list(results["settings"]["drafters"])


def _mean(values: list[float]) -> float:
    values = [v for v in values if v is not None and not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def markdown(results: dict) -> str:
    tasks, drafters = list(results["tasks"]), _drafters(results)
    s = results["settings"]
    out = [f"Settings: temperature {s['temperature']}, max new tokens {s['max_new_tokens']}, batch {s['batch_size']}, "
           f"drafts " + ", ".join(f"{d} {t}" for d, t in s["drafters"].items()) + ".\n"]
    cell = lambda d, t, key, fmt: fmt.format(results["tasks"][t][d][key])
    rows = [[d] + [_with_error(results["tasks"][t][d]["tau"], results["tasks"][t][d]["tau_standard_error"])
                   for t in tasks] + [_mean_with_error([results["tasks"][t][d] for t in tasks])] for d in drafters]
    out += ["\n### τ (accepted tokens per verify step, bonus included; ± standard error over prompts)\n\n",
            _table(["drafter", *tasks, "mean"], rows)]
    for title, key, fmt in [("Speedup over autoregressive decoding (tokens/s ratio)", "speedup", "{:.2f}x"),
                            ("Draft tokens verified per step (the draft depth unless a scheduler cuts it)",
                             "verified_per_step", "{:.2f}")]:
        rows = [[d] + [cell(d, t, key, fmt) for t in tasks]
                + [fmt.format(_mean([results["tasks"][t][d][key] for t in tasks]))] for d in drafters]
        out += [f"\n### {title}\n\n", _table(["drafter", *tasks, "mean"], rows)]
    rows = [[AR] + [f"{results['tasks'][t][AR]['tokens_per_s']:.1f}" for t in tasks]]
    rows += [[d] + [f"{results['tasks'][t][d]['tokens_per_s']:.1f}" for t in tasks] for d in drafters]
    out += ["\n### Tokens/s\n\n", _table(["method", *tasks], rows)]
    rows = [[d] + ["yes" if results["tasks"][t][d]["lossless"] else "**NO**" for t in tasks] for d in drafters]
    out += ["\n### Lossless (greedy output identical to the target's)\n\n", _table(["drafter", *tasks], rows)]
    depth = max(len(results["tasks"][t][d]["accept_rate_by_position"]) for t in tasks for d in drafters)
    rows = [[d] + [f"{_mean([_at(results['tasks'][t][d]['accept_rate_by_position'], k) for t in tasks]):.2f}"
                   for k in range(depth)] for d in drafters]
    out += ["\n### Accept rate by position (mean over tasks)\n\n", _table(["drafter", *map(str, range(1, depth + 1))],
                                                                          rows)]
    for d in drafters:
        measured = _tasks_with(results, d, "calibration")
        if not measured:
            continue
        rows = []
        for k in range(len(results["tasks"][measured[0]][d]["calibration"])):
            per_task = [results["tasks"][t][d]["calibration"][k] for t in measured]
            rows.append([str(k + 1), str(sum(r["n"] for r in per_task))]
                        + [f"{_mean([r[m] for r in per_task]):.3f}" for m in ("ece", "auroc", "brier")])
        out += [f"\n### Confidence calibration of {d} (raw head, mean over {_which(measured, tasks)})\n\n",
                _table(["position", "n", "ECE", "AUROC", "Brier"], rows)]
    for d in drafters:
        measured = _tasks_with(results, d, "survival_ece")
        if not measured:
            continue
        per_task = [results["tasks"][t][d]["survival_ece"] for t in measured]
        has_sts = per_task[0]["sts"] is not None
        rows = [[str(k + 1), f"{_mean([r['raw'][k] for r in per_task]):.3f}"]
                + ([f"{_mean([r['sts'][k] for r in per_task]):.3f}"] if has_sts else [])
                for k in range(len(per_task[0]["raw"]))]
        out += [f"\n### Prefix survival calibration of {d} (ECE of a_k = c_1...c_k on whole drafts, mean over "
                f"{_which(measured, tasks)})\n\n",
                _table(["position k", "raw", *(["with STS"] if has_sts else [])], rows)]
    return "".join(out)


def _tasks_with(results: dict, drafter: str, key: str) -> list[str]:
    """The tasks where `drafter` has `key` measured: a scheduler that verified no draft of a task leaves
    nothing to calibrate on there."""
    return [t for t, methods in results["tasks"].items() if methods[drafter].get(key)]


def _which(measured: list[str], tasks: list[str]) -> str:
    return "tasks" if measured == tasks else "the tasks with verified drafts: " + ", ".join(measured)


def _with_error(value: float, error: float) -> str:
    return f"{value:.2f}" if np.isnan(error) else f"{value:.2f} ± {error:.2f}"


def mean_tau(per_task: list[dict]) -> tuple[float, float]:
    """(mean τ over tasks, its standard error) from each task's result of one method (tasks are independent
    samples)."""
    errors = [m["tau_standard_error"] for m in per_task]
    return _mean([m["tau"] for m in per_task]), float(np.sqrt(np.sum(np.square(errors)))) / len(errors)


def _mean_with_error(per_task: list[dict]) -> str:
    return _with_error(*mean_tau(per_task))


def _at(values: list[float], k: int) -> float:
    return values[k] if k < len(values) else float("nan")


def plots(results: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, drafters = list(results["tasks"]), _drafters(results)
    written = []

    fig, ax = plt.subplots(figsize=(6, 4))
    for d in drafters:
        rates = [results["tasks"][t][d]["accept_rate_by_position"] for t in tasks]
        depth = max(len(r) for r in rates)
        ax.plot(range(1, depth + 1), [_mean([_at(r, k) for r in rates]) for k in range(depth)], marker="o", label=d)
    ax.set(xlabel="draft position", ylabel="accept rate (given earlier accepted)", ylim=(0, 1),
           title="Accept rate by position")
    ax.legend()
    written.append(_save(fig, out_dir / "accept_rate_by_position.png"))

    calibrated = [d for d in drafters if _tasks_with(results, d, "reliability")]
    if calibrated:
        fig, axes = plt.subplots(1, len(calibrated), figsize=(4.5 * len(calibrated), 4), squeeze=False)
        for ax, d in zip(axes[0], calibrated):
            bins = [results["tasks"][t][d]["reliability"] for t in _tasks_with(results, d, "reliability")]
            count = np.sum([np.asarray(b["count"]) for b in bins], axis=0)
            weighted = lambda key: np.nansum([np.nan_to_num(np.asarray(b[key], float)) * np.asarray(b["count"])
                                              for b in bins], axis=0) / np.maximum(count, 1)
            filled = count > 0
            ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
            ax.plot(weighted("confidence")[filled], weighted("accuracy")[filled], marker="o")
            ax.set(xlabel="confidence", ylabel="observed accept rate", xlim=(0, 1), ylim=(0, 1),
                   title=f"Reliability: {d}")
        written.append(_save(fig, out_dir / "reliability.png"))

    fig, ax = plt.subplots(figsize=(max(6, 1.5 * len(tasks)), 4))
    width = 0.8 / max(len(drafters), 1)
    for i, d in enumerate(drafters):
        ax.bar(np.arange(len(tasks)) + i * width, [results["tasks"][t][d]["speedup"] for t in tasks], width, label=d)
    ax.axhline(1.0, color="grey", linewidth=1)
    ax.set_xticks(np.arange(len(tasks)) + width * (len(drafters) - 1) / 2, tasks)
    ax.set(ylabel="speedup over autoregressive", title="Speedup per task")
    ax.legend()
    written.append(_save(fig, out_dir / "speedup.png"))
    return written


def throughput_plot(rows: list[dict], methods: list[str], path: Path) -> Path:
    """`bench`'s rows as the paper's throughput figure: total tokens/s against the per-row (per-user) speed,
    one line per method through the batch sizes, one panel per temperature."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    temperatures = sorted({row["temperature"] for row in rows})
    fig, axes = plt.subplots(1, len(temperatures), figsize=(6 * len(temperatures), 4.5), squeeze=False)
    for ax, temperature in zip(axes[0], temperatures):
        at = sorted((row for row in rows if row["temperature"] == temperature), key=lambda row: row["batch_size"])
        lines = [("autoregressive", [(r["autoregressive_per_row"], r["autoregressive"]) for r in at])]
        lines += [(m, [(r[m]["tokens_per_s_per_row"], r[m]["tokens_per_s"]) for r in at]) for m in methods]
        for name, points in lines:
            ax.plot(*zip(*points), marker="o", label=name)
        for row, (x, y) in zip(at, lines[0][1]):
            ax.annotate(f"b={row['batch_size']}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set(xlabel="per-row tokens/s (one user's speed)", ylabel="total tokens/s (throughput)",
               title=f"Throughput vs per-user speed, T = {temperature:g}")
        ax.legend()
    return _save(fig, Path(path))


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path


def write_report(results: dict, out_dir: Path) -> list[Path]:
    """results.json, results.md and the plots; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "results.json", out_dir / "results.md"
    write_atomically(json_path, lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2)))
    write_atomically(md_path, lambda tmp: Path(tmp).write_text(markdown(results)))
    return [json_path, md_path, *plots(results, out_dir)]
