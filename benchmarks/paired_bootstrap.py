"""Is method A's six-task average really above method B's? A paired bootstrap over each task's items.

Usage: python benchmarks/paired_bootstrap.py STUDY_DIR A B [--sizes triviaqa=50,nq=30,...] [--resamples 2000]
       [--tasks triviaqa,nq,squad]

Reads STUDY_DIR/<task>/<label>/predictions.jsonl (the runs `adafuse compare` writes) for the two labels, keeps the
items both have (the first N by index when --sizes gives N), and resamples each task's items with replacement, the
same draw for both methods (`adafuse.evaluation.compare.bootstrap_values`, one seed per task): EM for the QA tasks,
numeric match for GSM8K, corpus BLEU for Flores. Prints the observed difference of the six-task averages and its
95% interval. ``--tasks`` compares the average over fewer tasks, where one method was run on those alone.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from adafuse.evaluation.compare import bootstrap_values, item_scores
from adafuse.evaluation.metrics import corpus_bleu

#: task -> (kind, primary metric), as the study reports them.
TASKS = {
    "triviaqa": ("qa", "em"),
    "nq": ("qa", "em"),
    "squad": ("qa", "em"),
    "gsm8k": ("math", "accuracy"),
    "flores-en-de": ("translation", "bleu"),
    "flores-de-en": ("translation", "bleu"),
}
STUDY_SIZES = "triviaqa=50,nq=30,squad=15,gsm8k=4,flores-en-de=6,flores-de-en=6"


def load(path: Path) -> dict[int, dict]:
    rows = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["index"]] = row
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("study", type=Path)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--sizes", default=STUDY_SIZES, help="task=N,... (items per task, from the first index)")
    ap.add_argument("--tasks", default=",".join(TASKS), help="the tasks to average over (default: all six)")
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sizes = {k: int(v) for k, v in (kv.split("=") for kv in args.sizes.split(","))}
    tasks = args.tasks.split(",")
    unknown = [t for t in tasks if t not in TASKS or t not in sizes]
    if unknown:
        raise SystemExit(f"--tasks: {', '.join(unknown)} not among {', '.join(TASKS)} or missing from --sizes")
    paired: dict[str, list[tuple[dict, dict]]] = {}
    for task in tasks:
        a, b = (load(args.study / task / label / "predictions.jsonl") for label in (args.a, args.b))
        common = sorted(set(a) & set(b))[: sizes[task]]
        if len(common) < sizes[task]:
            raise SystemExit(f"{task}: only {len(common)} items in both runs, {sizes[task]} asked")
        paired[task] = [(a[i], b[i]) for i in common]

    diffs = np.zeros(args.resamples)
    observed = 0.0
    scores: dict[str, list[float]] = {args.a: [], args.b: []}
    for seed, (task, pairs) in enumerate(paired.items(), start=args.seed):
        kind, metric = TASKS[task]
        golds = [a["gold"] for a, _ in pairs]
        per_method = []
        for side, label in enumerate((args.a, args.b)):
            preds = [p[side]["prediction"] for p in pairs]
            per_method.append(bootstrap_values(kind, metric, preds, golds, args.resamples, seed))
            # The observed score: the whole corpus, drawn once in order.
            scores[label].append(_whole(kind, metric, preds, golds))
            observed += (1 if side == 0 else -1) * scores[label][-1] / len(paired)
        diffs += (per_method[0] - per_method[1]) / len(paired)
    for label, values in scores.items():
        shown = ", ".join(f"{task} {v:.1f}" for task, v in zip(paired, values, strict=True))
        print(f"{label}: {shown}; average {np.mean(values):.2f}")
    lo, hi = np.quantile(diffs, [0.025, 0.975])
    above = float((diffs > 0).mean())
    print(
        f"{args.a} minus {args.b}, {len(paired)}-task average: {observed:+.2f} (95% interval [{lo:+.2f}, {hi:+.2f}]; "
        f"above zero in {100 * above:.1f}% of {len(diffs)} resamples)"
    )


def _whole(kind: str, metric: str, predictions: list[str], golds: list) -> float:
    if metric == "bleu":
        return corpus_bleu(predictions, golds)
    return float(np.mean(item_scores(kind, metric, predictions, golds)))


if __name__ == "__main__":
    main()
