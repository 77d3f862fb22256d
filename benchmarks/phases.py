"""Where an ensemble's time goes: a profile per phase of the AdaFuse round.

Usage:
  python benchmarks/phases.py --task triviaqa --n 20 [--offset 1600] [--shots 0] [--weights equal|auto]
      [--out docs/perf/phases-triviaqa.json]

The members run one after another with every core (explicit thread counts), so each phase's wall time is its
own. Phases: the evidence read, prefill, the first distribution of a round (``first_step``), proposals (drafting
past that first token), scoring. ``decode`` is the time inside ``llama_decode`` during each phase; the rest of a
phase is Python, numpy and llama-cpp-python's bindings. Tokens evaluated are counted per phase too.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from report import emit  # benchmarks/report.py: run as python benchmarks/NAME.py

import adafuse.decoding.adafuse as adafuse_round
import adafuse.decoding.loop as loop
from adafuse.backends import DEFAULT_ENSEMBLE, llamacpp, load_member
from adafuse.backends.base import available_cores
from adafuse.config import DecodeConfig
from adafuse.ensemble import Ensemble
from adafuse.evaluation.tasks import load_task

wall: dict[str, float] = defaultdict(float)
decode: dict[str, float] = defaultdict(float)
tokens: dict[str, int] = defaultdict(int)
calls: dict[str, int] = defaultdict(int)
stack: list[str] = ["other"]


def phase(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        stack.append(name)
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            wall[name] += time.perf_counter() - start
            stack.pop()
            # Time spent in a nested phase belongs to it alone.
            if stack[-1] != "other":
                wall[stack[-1]] -= time.perf_counter() - start

    return wrapped


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="triviaqa")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--offset", type=int, default=1600)
    ap.add_argument("--shots", type=int, default=None)
    ap.add_argument("--weights", default="equal", choices=("equal", "auto"))
    ap.add_argument("--models", default=",".join(DEFAULT_ENSEMBLE))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    task = load_task(args.task, shots=args.shots)
    prompts = [task.build_prompt(it.question) for it in task.items(offset=args.offset, limit=args.n)]
    members = [load_member(s, n_threads=available_cores()) for s in args.models.split(",")]
    ens = Ensemble(members)
    cfg = DecodeConfig(
        weights=args.weights, stop=task.stop, max_new_tokens=task.max_new_tokens, stop_at_boxed=task.stop_at_boxed
    )
    ens.generate(prompts[0], cfg)  # the few-shot part cached, as in a long evaluation

    raw_decode = llamacpp.llama_cpp.llama_decode

    def timed_decode(ctx: Any, batch: Any) -> int:
        start = time.perf_counter()
        try:
            return raw_decode(ctx, batch)
        finally:
            decode[stack[-1]] += time.perf_counter() - start
            tokens[stack[-1]] += batch.n_tokens
            calls[stack[-1]] += 1

    llamacpp.llama_cpp.llama_decode = timed_decode
    adafuse_round.first_step = phase("first_step", adafuse_round.first_step)
    adafuse_round.propose = phase("proposals", adafuse_round.propose)
    adafuse_round.solo_round = phase("solo", adafuse_round.solo_round)
    adafuse_round.score_to_select = phase("scoring", adafuse_round.score_to_select)
    loop.apply_auto_weights = phase("evidence", loop.apply_auto_weights)
    for m in members:
        m.prefill = phase("prefill", m.prefill)  # type: ignore[method-assign]

    start = time.perf_counter()
    rounds = fast = candidates = out_tokens = 0
    for p in prompts:
        res = ens.generate(p, cfg)
        rounds += len(res.rounds)
        fast += sum(r.fast_path for r in res.rounds)
        candidates += sum(len(r.candidates) for r in res.rounds if not r.fast_path)
        out_tokens += res.telemetry.output_tokens
    total = time.perf_counter() - start
    wall["other"] = total - sum(v for k, v in wall.items() if k != "other")
    report = {
        "task": args.task,
        "shots": args.shots,
        "n": len(prompts),
        "weights": args.weights,
        "total_seconds": total,
        "rounds": rounds,
        "fast_path_rounds": fast,
        "candidates_per_fused_round": candidates / max(1, rounds - fast),
        "output_tokens": out_tokens,
        "phases": {
            k: {
                "seconds": wall[k],
                "share": wall[k] / total,
                "decode_seconds": decode[k],
                "python_seconds": wall[k] - decode[k],
                "decode_calls": calls[k],
                "tokens_evaluated": tokens[k],
            }
            for k in sorted(wall, key=lambda k: -wall[k])
        },
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
