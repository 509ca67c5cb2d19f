"""τ and unseen agreement against the number of training conversations: the table and the PNG of
docs/results.md's "τ against data".

    .venv/bin/python benchmarks/data_curve.py --point 232=data-232 --point 464=data-464 ... \
        --eval runs/curve-t0/results.json --eval runs/curve-t1/results.json \
        --diagnostics runs/curve-diagnostics.json --out docs/results/tau_vs_data.png

Each --point names the drafter trained on the first N conversations as `dspark-jax eval` and
`benchmarks/drafter_diagnostics.py --json` name it (an exported directory is named by its last path
component). τ per temperature is the mean over the tasks of that eval run, with its standard error, as
`eval`'s results.md gives it; agreement is the diagnostics' teacher-forced top-1 agreement on the target's
greedy answers to unseen prompts (first slot, mean of all slots, and the first slot where prompt lookup has
no 4-token match), beside the bigram chain counted on the diagnostics' training data. Runs no model.
"""

import argparse
import json
from pathlib import Path

import numpy as np

from dspark_jax.atomic_file import write_atomically
from dspark_jax.eval_report import mean_tau

UNSEEN = "unseen greedy answers"


def tau_by_point(results: dict, names: dict[int, str]) -> dict[int, tuple[float, float]]:
    """{N: (mean τ over the tasks, standard error)} of one eval results.json, as its results.md states it."""
    return {n: mean_tau([task[name] for task in results["tasks"].values()]) for n, name in names.items()}


def agreement_by_point(diagnostics: dict, names: dict[int, str]) -> dict[int, dict[str, float]]:
    """{N: {"first slot", "mean of slots", "first slot, no lookup match", "bigram first slot"}}."""
    by_name = {Path(key).name: lines for key, lines in diagnostics.items()}
    out = {}
    for n, name in names.items():
        lines = by_name[name]
        drafter = lines[f"{UNSEEN}, drafter"]
        elsewhere = next(v for k, v in lines.items() if k.startswith(UNSEEN + ", drafter elsewhere"))
        out[n] = {"first slot": drafter[0], "mean of slots": float(np.mean(drafter)),
                  "first slot, no lookup match": elsewhere[0], "bigram first slot": lines[f"{UNSEEN}, bigram chain"][0]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--point", action="append", required=True, help="N=NAME, one per curve point")
    parser.add_argument("--eval", type=Path, action="append", default=[], help="an eval results.json")
    parser.add_argument("--diagnostics", type=Path, help="drafter_diagnostics.py --json output")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args()
    names = dict(sorted((int(n), name) for n, name in (p.split("=", 1) for p in args.point)))
    taus = {}
    for path in args.eval:
        results = json.loads(path.read_text())
        taus[results["settings"]["temperature"]] = tau_by_point(results, names)
    agreement = agreement_by_point(json.loads(args.diagnostics.read_text()), names) if args.diagnostics else {}

    columns = [f"τ T = {t:g}" for t in taus] + (list(next(iter(agreement.values()))) if agreement else [])
    print("| conversations | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for n in names:
        cells = [f"{taus[t][n][0]:.2f} ± {taus[t][n][1]:.2f}" for t in taus]
        cells += [f"{v:.2f}" for v in agreement.get(n, {}).values()]
        print(f"| {n:,} | " + " | ".join(cells) + " |")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 1 + bool(agreement)
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), squeeze=False)
    xs = list(names)
    for t, by_n in taus.items():
        axes[0, 0].errorbar(xs, [by_n[n][0] for n in xs], yerr=[by_n[n][1] for n in xs], marker="o", capsize=3,
                            label=f"T = {t:g}")
    axes[0, 0].set(xscale="log", xlabel="training conversations", ylabel="τ (γ = 7, five tasks)",
                   title="DSpark τ against data (fixed recipe and budget)")
    axes[0, 0].legend()
    if agreement:
        for key in next(iter(agreement.values())):
            axes[0, 1].plot(xs, [agreement[n][key] for n in xs], marker="o", label=key,
                            linestyle="--" if key.startswith("bigram") else "-")
        axes[0, 1].set(xscale="log", xlabel="training conversations", ylabel="top-1 agreement, unseen text",
                       ylim=(0, 1), title="teacher-forced on unseen greedy answers")
        axes[0, 1].legend(fontsize=8)
    for ax in axes[0]:
        ax.set_xticks(xs, [f"{n:,}" for n in xs])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    write_atomically(args.out, lambda tmp: fig.savefig(tmp, dpi=110, format="png"), suffix=".png")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
