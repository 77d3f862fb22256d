"""Is method A's six-task average really above method B's? A paired bootstrap over each task's items.

Usage: python benchmarks/paired_bootstrap.py STUDY_DIR A B [--sizes triviaqa=50,nq=30,...] [--resamples 2000]

Reads STUDY_DIR/<task>/<label>/predictions.jsonl (the runs `adafuse compare` writes) for the two labels, keeps the
items both have (the first N by index when --sizes gives N), and resamples each task's items with replacement, the
same draw for both methods: the QA tasks and GSM8K score the mean of `correct`, Flores the corpus BLEU of the
drawn sentences. Prints the observed difference of the six-task averages and its 95% interval.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from adafuse.evaluation.metrics import corpus_bleu

TASKS = ("triviaqa", "nq", "squad", "gsm8k", "flores-en-de", "flores-de-en")
STUDY_SIZES = "triviaqa=50,nq=30,squad=15,gsm8k=4,flores-en-de=6,flores-de-en=6"


def load(path: Path) -> dict[int, dict]:
    rows = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["index"]] = row
    return rows


def score(task: str, rows: list[dict]) -> float:
    if task.startswith("flores"):
        return corpus_bleu([r["prediction"] for r in rows], [r["gold"] for r in rows])
    return 100.0 * sum(float(r["correct"]) for r in rows) / len(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("study", type=Path)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--sizes", default=STUDY_SIZES, help="task=N,... (items per task, from the first index)")
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sizes = {k: int(v) for k, v in (kv.split("=") for kv in args.sizes.split(","))}
    paired: dict[str, list[tuple[dict, dict]]] = {}
    for task in TASKS:
        a, b = (load(args.study / task / label / "predictions.jsonl") for label in (args.a, args.b))
        common = sorted(set(a) & set(b))[: sizes[task]]
        if len(common) < sizes[task]:
            raise SystemExit(f"{task}: only {len(common)} items in both runs, {sizes[task]} asked")
        paired[task] = [(a[i], b[i]) for i in common]

    def difference(draw: dict[str, list[int]]) -> float:
        total = 0.0
        for task, pairs in paired.items():
            picked = [pairs[i] for i in draw[task]]
            total += score(task, [p[0] for p in picked]) - score(task, [p[1] for p in picked])
        return total / len(paired)

    observed = difference({t: list(range(len(p))) for t, p in paired.items()})
    rng = random.Random(args.seed)
    diffs = sorted(
        difference({t: [rng.randrange(len(p)) for _ in p] for t, p in paired.items()}) for _ in range(args.resamples)
    )
    lo, hi = diffs[int(0.025 * len(diffs))], diffs[int(0.975 * len(diffs)) - 1]
    above = sum(d > 0 for d in diffs) / len(diffs)
    print(
        f"{args.a} minus {args.b}, six-task average: {observed:+.2f} (95% interval [{lo:+.2f}, {hi:+.2f}]; "
        f"above zero in {100 * above:.1f}% of {len(diffs)} resamples)"
    )


if __name__ == "__main__":
    main()
