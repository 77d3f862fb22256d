"""Does a change of the decoder's work pay? A paired, interleaved comparison of two variants with the same output.

Usage: ADAFUSE_DATA=../shared/data python benchmarks/paired.py --change hand-on|bounded [--task triviaqa] [--n 30]
           [--offset 1600] [--shots 0] [--out docs/perf/paired-CHANGE.json]

One ensemble (the built-in members, equal weights, the default allocation) answers each prompt twice, with the
change and without it:

- ``hand-on``: the cores of a member that has finished its part of a call go to those still working
  (``decoding/parallel.py``), against every member keeping its first share for the whole call;
- ``bounded``: a candidate that can no longer win is not scored to its end (``decoding/bounded.py``), against
  every candidate scored by every member to its end.

The order alternates from prompt to prompt, so a noisy neighbour or a warm cache favours neither; the texts must
match.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

from report import emit  # benchmarks/report.py: run as python benchmarks/NAME.py

import adafuse.decoding.adafuse as adafuse_round
import adafuse.decoding.parallel as parallel
from adafuse.backends import DEFAULT_ENSEMBLE
from adafuse.config import DecodeConfig
from adafuse.decoding.scoring import score_candidates
from adafuse.ensemble import Ensemble
from adafuse.evaluation.tasks import load_task


def kept(*_: object) -> None:
    """Every member keeps the share it started the call with."""


#: change -> (module, attribute, the attribute without the change)
CHANGES: dict[str, tuple[object, str, Callable[..., None]]] = {
    "hand-on": (parallel, "hand_on", kept),
    "bounded": (adafuse_round, "score_to_select", score_candidates),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--change", choices=sorted(CHANGES), required=True)
    ap.add_argument("--task", default="triviaqa")
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--offset", type=int, default=1600)
    ap.add_argument("--shots", type=int, default=None)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    module, attr, without = CHANGES[args.change]
    with_change = getattr(module, attr)
    task = load_task(args.task, shots=args.shots)
    prompts = [task.build_prompt(it.question) for it in task.items(offset=args.offset, limit=args.n)]
    cfg = DecodeConfig(
        weights="equal", stop=task.stop, max_new_tokens=task.max_new_tokens, stop_at_boxed=task.stop_at_boxed
    )
    seconds = {"with": 0.0, "without": 0.0}
    evaluated = {"with": 0, "without": 0}
    same = True
    with Ensemble.from_specs(list(DEFAULT_ENSEMBLE)) as ens:
        ens.generate(prompts[0], cfg)  # every member reads the few-shot part once before anything is timed
        for k, prompt in enumerate(prompts):
            texts = {}
            for variant in ("with", "without") if k % 2 == 0 else ("without", "with"):
                setattr(module, attr, with_change if variant == "with" else without)
                start = time.perf_counter()
                res = ens.generate(prompt, cfg)
                seconds[variant] += time.perf_counter() - start
                texts[variant] = res.text
                evaluated[variant] += sum(m.tokens_evaluated for m in res.telemetry.members)
            same &= texts["with"] == texts["without"]
    setattr(module, attr, with_change)
    report = {
        "change": args.change,
        "task": args.task,
        "shots": args.shots,
        "n": args.n,
        "offset": args.offset,
        "seconds": seconds,
        "tokens_evaluated": evaluated,
        "with_over_without": seconds["with"] / seconds["without"],
        "same_text": same,
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
