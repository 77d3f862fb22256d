"""What fusion costs: adafuse against its members run alone, and against a naive re-encoding form.

Usage:
  python benchmarks/overhead.py --task triviaqa --n 50 [--offset 1500] [--backend llamacpp|hf] [--naive 5]
      [--lengths 16,64,256] [--out docs/perf/triviaqa.json]

Everything below is measured in one process, one run, so the ratios compare like with like on a shared
machine:
- overhead ratio: adafuse wall time / sum of the members' single-model greedy wall times, same prompts, same
  backend, same output budget (the task's);
- tokens evaluated per committed output token, per member, excluding each prompt's own prefill
  (the floor is about 1 plus the scored candidates);
- speed-up over the naive form of the same algorithm, which re-encodes the whole context on every call (the
  reference code's cost model; ``NaiveMember`` below, kept here and not in the library);
- peak resident memory against the sum of the model files' sizes;
- growth of the cost with the output length (--lengths: budgets in tokens; prompts without a stop string).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adafuse.backends import DEFAULT_ENSEMBLE, load_member
from adafuse.backends.base import Member, TopK
from adafuse.config import DecodeConfig
from adafuse.ensemble import Ensemble
from adafuse.evaluation.tasks import load_task


class NaiveMember:
    """The reference implementation's cost model: every call re-encodes the whole context from scratch."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.n_ctx = inner.n_ctx
        self.stats = inner.stats
        self.chat_template = inner.chat_template

    def __getattr__(self, item: str) -> Any:
        return getattr(self.inner, item)

    def _fresh(self) -> None:
        self.inner._reset()

    def prefill(self, context: Sequence[int]) -> None:
        self._fresh()

    def next_token(self, context: Sequence[int], k: int) -> TopK:
        self._fresh()
        return self.inner.next_token(context, k)

    def logprobs_of(self, context: Sequence[int], token_ids: Sequence[int]) -> list[float]:
        self._fresh()
        return self.inner.logprobs_of(context, token_ids)

    def score(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[list[float]]:
        out = []
        for context, cont in requests:
            # The reference scores each candidate with one full forward pass over prompt + candidate.
            self._fresh()
            out.extend(self.inner.score([(context, cont)]))
        return out


def current_rss_bytes() -> int:
    """Resident memory now (Linux), e.g. the interpreter and libraries before any model is loaded."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed(ens: Ensemble, prompts: Sequence[str], cfg: DecodeConfig) -> dict[str, Any]:
    start = time.perf_counter()
    before = {m.name: m.stats.snapshot() for m in ens.members}
    out_tokens = 0
    prompt_tokens = {m.name: 0 for m in ens.members}
    texts = []
    for p in prompts:
        res = ens.generate(p, cfg)
        out_tokens += res.telemetry.output_tokens
        texts.append(res.text)
        for mt in res.telemetry.members:
            # Only what this request had to prefill: chunks reused from the shared few-shot prefix are free.
            prompt_tokens[mt.name] += max(0, mt.prompt_tokens - mt.tokens_reused) if mt.tokens_reused else 0
    wall = time.perf_counter() - start
    per_member = {}
    for m in ens.members:
        b = before[m.name]
        per_member[m.name] = {
            "forward_calls": m.stats.forward_calls - b.forward_calls,
            "tokens_evaluated": m.stats.tokens_evaluated - b.tokens_evaluated,
        }
    return {"wall_seconds": wall, "output_tokens": out_tokens, "members": per_member, "texts": texts}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="triviaqa")
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--models", default=",".join(DEFAULT_ENSEMBLE))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--naive", type=int, default=5, help="prompts for the naive comparison (it is slow)")
    ap.add_argument("--lengths", default="", help="output budgets for the growth test, e.g. 16,64,256")
    ap.add_argument(
        "--sequential", action="store_true", help="run members one after another even when they leave cores free"
    )
    ap.add_argument("--n-ctx", type=int, default=4096, help="context window per member (the library default)")
    ap.add_argument("--out", type=Path)
    ap.add_argument(
        "--weights",
        default="equal",
        choices=("equal", "auto"),
        help="equal: the paper's setting, which docs/PERFORMANCE.md measures; auto: the library's default",
    )
    args = ap.parse_args()

    task = load_task(args.task)
    items = task.items(offset=args.offset, limit=args.n)
    prompts = [task.build_prompt(it.question) for it in items]
    specs = args.models.split(",")
    rss_before_models = current_rss_bytes()
    t0 = time.perf_counter()
    members: list[Member] = [load_member(s, n_ctx=args.n_ctx, n_threads=args.threads) for s in specs]
    load_seconds = time.perf_counter() - t0
    if args.sequential:
        for m in members:
            m.concurrent = False  # type: ignore[attr-defined]
    ens = Ensemble(members)
    cfg = DecodeConfig(
        weights=args.weights, stop=task.stop, max_new_tokens=task.max_new_tokens, stop_at_boxed=task.stop_at_boxed
    )
    report: dict[str, Any] = {"task": args.task, "n": len(prompts), "offset": args.offset, "models": specs}
    report["load_seconds"] = load_seconds
    report["n_ctx"] = args.n_ctx
    report["threads"] = args.threads
    report["concurrent_members"] = [bool(getattr(m, "concurrent", False)) for m in members]
    report["rss_before_models_bytes"] = rss_before_models

    singles = {}
    for i, m in enumerate(members):
        singles[m.name] = timed(ens, prompts, DecodeConfig(**{**cfg.__dict__, "method": "single", "single_member": i}))
    fused = timed(ens, prompts, cfg)
    sum_single = sum(s["wall_seconds"] for s in singles.values())
    report["single"] = {k: {kk: vv for kk, vv in v.items() if kk != "texts"} for k, v in singles.items()}
    report["adafuse"] = {k: v for k, v in fused.items() if k != "texts"}
    report["overhead_ratio"] = fused["wall_seconds"] / sum_single
    report["tokens_per_output_token"] = {
        name: v["tokens_evaluated"] / max(1, fused["output_tokens"]) for name, v in fused["members"].items()
    }

    if args.naive:
        sub = prompts[: args.naive]
        fast = timed(ens, sub, cfg)
        naive_ens = Ensemble([NaiveMember(m) for m in members])  # type: ignore[list-item]
        slow = timed(naive_ens, sub, cfg)
        report["naive"] = {
            "n": len(sub),
            "cached_seconds": fast["wall_seconds"],
            "naive_seconds": slow["wall_seconds"],
            "speedup": slow["wall_seconds"] / fast["wall_seconds"],
            "same_text": fast["texts"] == slow["texts"],
            "naive_tokens_evaluated": sum(v["tokens_evaluated"] for v in slow["members"].values()),
            "cached_tokens_evaluated": sum(v["tokens_evaluated"] for v in fast["members"].values()),
        }

    if args.lengths:
        growth = []
        for budget in (int(x) for x in args.lengths.split(",")):
            gcfg = DecodeConfig(weights=args.weights, max_new_tokens=budget)
            res = timed(ens, prompts[:3], gcfg)
            growth.append(
                {
                    "budget": budget,
                    "output_tokens": res["output_tokens"],
                    "seconds": res["wall_seconds"],
                    "seconds_per_token": res["wall_seconds"] / max(1, res["output_tokens"]),
                }
            )
        report["growth"] = growth

    sizes = sum(os.path.getsize(getattr(m, "path", "")) for m in members if getattr(m, "path", None))
    report["peak_rss_bytes"] = peak_rss_bytes()
    report["model_bytes"] = sizes
    report["rss_over_models"] = report["peak_rss_bytes"] / sizes if sizes else None
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
