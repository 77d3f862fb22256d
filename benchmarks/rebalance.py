"""Does handing a finished member's cores to those still working pay? A paired, interleaved comparison.

Usage: ADAFUSE_DATA=../shared/data python benchmarks/rebalance.py [--task triviaqa] [--n 30] [--offset 1600]
           [--shots 0] [--out docs/perf/rebalance.json]

One ensemble (the built-in members, equal weights, the default allocation) answers each prompt twice: with the
cores of a finished member handed on (``decoding/parallel.py``) and with every member kept at its first share
for the whole call. The order alternates from prompt to prompt, so a noisy neighbour or a warm cache favours
neither; the texts must match.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from report import emit  # benchmarks/report.py: run as python benchmarks/NAME.py

import adafuse.decoding.parallel as parallel
from adafuse.backends import DEFAULT_ENSEMBLE
from adafuse.config import DecodeConfig
from adafuse.ensemble import Ensemble
from adafuse.evaluation.tasks import load_task

HANDED_ON = parallel.hand_on


def kept(*_: object) -> None:
    """Every member keeps the share it started the call with."""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="triviaqa")
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--offset", type=int, default=1600)
    ap.add_argument("--shots", type=int, default=None)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    task = load_task(args.task, shots=args.shots)
    prompts = [task.build_prompt(it.question) for it in task.items(offset=args.offset, limit=args.n)]
    cfg = DecodeConfig(
        weights="equal", stop=task.stop, max_new_tokens=task.max_new_tokens, stop_at_boxed=task.stop_at_boxed
    )
    seconds = {"handed_on": 0.0, "kept": 0.0}
    same = True
    with Ensemble.from_specs(list(DEFAULT_ENSEMBLE)) as ens:
        ens.generate(prompts[0], cfg)  # every member reads the few-shot part once before anything is timed
        for k, prompt in enumerate(prompts):
            texts = {}
            for variant in ("handed_on", "kept") if k % 2 == 0 else ("kept", "handed_on"):
                parallel.hand_on = HANDED_ON if variant == "handed_on" else kept
                start = time.perf_counter()
                texts[variant] = ens.generate(prompt, cfg).text
                seconds[variant] += time.perf_counter() - start
            same &= texts["handed_on"] == texts["kept"]
    parallel.hand_on = HANDED_ON
    report = {
        "task": args.task,
        "shots": args.shots,
        "n": args.n,
        "offset": args.offset,
        "seconds": seconds,
        "handed_on_over_kept": seconds["handed_on"] / seconds["kept"],
        "same_text": same,
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
