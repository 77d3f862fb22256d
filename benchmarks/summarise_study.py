"""Collect the per-task comparison reports of a study into one table (markdown), with the six-task average.

Usage: python benchmarks/summarise_study.py OUT_DIR [--tasks triviaqa,nq,...] [--plot FILE.png] [--deltas]
Reads OUT_DIR/<task>/report.json written by `adafuse compare`; prints the table to stdout. With --plot, also draws
the average score against the average cost (tokens evaluated per output token) of every method that ran on every
task: the six-task frontier. With --deltas, prints instead each AdaFuse option's score minus plain AdaFuse's per
task, with the averages and costs side by side.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

TASKS = ("triviaqa", "nq", "squad", "gsm8k", "flores-en-de", "flores-de-en")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--plot", type=Path, help="write the average-score vs cost frontier here")
    ap.add_argument("--deltas", action="store_true", help="print each option against plain adafuse instead")
    args = ap.parse_args()
    tasks = [t for t in args.tasks.split(",") if (args.out / t / "report.json").is_file()]
    scores: dict[str, dict[str, tuple[float, int, float]]] = {}
    for task in tasks:
        report = json.loads((args.out / task / "report.json").read_text())
        for row in report["methods"]:
            # Calibrated weights differ per task (each task is calibrated on its own held-apart rows): one row.
            calibrated = re.match(r"adafuse@weights=[0-9.]", row["label"]) is not None
            label = "adafuse, calibrated weights" if calibrated else row["label"]
            scores.setdefault(label, {})[task] = (row["score"], row["n"], row["tokens_per_output_token"])
    if args.deltas:
        print_deltas(scores, tasks)
        return
    metric = {t: json.loads((args.out / t / "report.json").read_text())["methods"][0]["metric"] for t in tasks}
    head = " | ".join(f"{t} ({metric[t]}, n={max(s[t][1] for s in scores.values() if t in s)})" for t in tasks)
    print(f"| method | {head} | average of the {len(tasks)} tasks | tokens eval / output token (mean) |")
    print("|---" * (len(tasks) + 3) + "|")
    points: list[tuple[str, float, float]] = []
    for label, per in scores.items():
        cells = [f"{per[t][0]:.1f}" if t in per else "-" for t in tasks]
        full = all(t in per for t in tasks)
        avg = f"{sum(per[t][0] for t in tasks) / len(tasks):.2f}" if full else "-"
        cost = sum(v[2] for v in per.values()) / len(per)
        print(f"| {label} | {' | '.join(cells)} | {avg} | {cost:.1f} |")
        if full:
            points.append((label, cost, sum(per[t][0] for t in tasks) / len(tasks)))
    if args.plot and points:
        plot(points, args.plot, len(tasks))


def print_deltas(scores: dict[str, dict[str, tuple[float, int, float]]], tasks: list[str]) -> None:
    def mean(label: str, at: int) -> float:
        return sum(scores[label][t][at] for t in tasks) / len(tasks)

    print(f"| option | {' | '.join(tasks)} | average | tokens eval / output token |")
    print("|---" * (len(tasks) + 3) + "|")
    base = "adafuse"
    for label, per in scores.items():
        if not label.startswith("adafuse") or label == base or any(t not in per for t in tasks):
            continue
        cells = " | ".join(f"{per[t][0] - scores[base][t][0]:+.1f}" for t in tasks)
        score, plain = mean(label, 0), mean(base, 0)
        name = label.removeprefix("adafuse@")
        print(
            f"| {name} | {cells} | {score - plain:+.2f} ({score:.2f} vs {plain:.2f}) | "
            f"{mean(label, 2):.1f} vs {mean(base, 2):.1f} |"
        )


def plot(points: list[tuple[str, float, float]], path: Path, n_tasks: int) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5.5))
    for label, cost, score in points:
        fused = label.startswith("adafuse")
        ax.scatter(cost, score, marker="o" if fused else "s", color="tab:blue" if fused else "tab:gray")
        ax.annotate(label, (cost, score), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel("tokens evaluated per output token (mean over tasks)")
    ax.set_ylabel(f"average score over the {n_tasks} tasks")
    ax.set_title("Six-task average against compute")
    ax.margins(x=0.35, y=0.1)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
