"""What fusion costs: adafuse against its members run alone, each at its fastest thread count, and against a naive
re-encoding form.

Usage:
  python benchmarks/overhead.py --task triviaqa --n 50 [--offset 1600] [--shots 0] [--weights equal|auto]
      [--models hf:smollm2-135m,...] [--threads-grid 1,2] [--allocations auto,sequential,side-by-side]
      [--naive 2] [--lengths 8,32,128] [--out docs/perf/triviaqa.json]

Everything below is measured in one process, one run, so the ratios compare like with like on a shared machine:
- each member alone (the ``single`` method: its own greedy decode) at every thread count of ``--threads-grid``
  (default: 1 and every core), and its fastest; the thread counts are in the output;
- the ensemble under each allocation of ``--allocations``: ``auto`` (the library's default: cores shared out
  among the members working at once, ``decoding/parallel.py``), ``sequential`` (one after another, every core
  each) and ``side-by-side`` (one thread each, all at once);
- ratios: ensemble wall / sum of the members' fastest walls, and / the best member's fastest wall;
- tokens evaluated per committed output token, per member;
- speed-up over the naive form of the same algorithm, which re-encodes the whole context on every call (the
  reference code's cost model; ``NaiveMember`` below, kept here and not in the library);
- peak resident memory against the sum of the model files' sizes;
- growth of the cost with the output length (--lengths: budgets in tokens; prompts without a stop string).

Before anything is timed every member reads the first prompt once, so every timed run starts with the task's
few-shot part cached, as it is in a long evaluation.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from report import emit  # benchmarks/report.py: run as python benchmarks/NAME.py

from adafuse.backends import DEFAULT_ENSEMBLE, load_member
from adafuse.backends.base import Member, TopK, available_cores
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


def _set_threads(member: Any, n: int) -> None:
    if hasattr(member, "set_threads"):  # remote members have no threads
        member.set_threads(n)


@contextlib.contextmanager
def pinned(members: Sequence[Any], threads: int | None, concurrent: bool) -> Iterator[None]:
    """Members fixed at ``threads`` each (None: the library's own allocation), run side by side or not."""
    saved = [(m.__dict__.get("shares_cores"), m.__dict__.get("concurrent")) for m in members]
    try:
        if threads is not None:
            for m in members:
                _set_threads(m, threads)  # while it still shares cores: set_threads acts only then
                if "shares_cores" in m.__dict__:
                    m.shares_cores = False
                m.concurrent = concurrent
        yield
    finally:
        for m, (shares, conc) in zip(members, saved, strict=True):
            if shares is not None:
                m.shares_cores = shares
            if conc is not None:
                m.concurrent = conc
            if threads is not None:
                _set_threads(m, available_cores())


#: allocation name -> (threads per member or None for the library's rule, side by side)
ALLOCATIONS = {"auto": (None, False), "sequential": (available_cores(), False), "side-by-side": (1, True)}


def timed(ens: Ensemble, prompts: Sequence[str], cfg: DecodeConfig) -> dict[str, Any]:
    start = time.perf_counter()
    before = {m.name: m.stats.snapshot() for m in ens.members}
    out_tokens = 0
    texts = []
    voting: set[str] = set()
    for p in prompts:
        res = ens.generate(p, cfg)
        out_tokens += res.telemetry.output_tokens
        texts.append(res.text)
        voting.update(n for n in res.models if n not in res.telemetry.benched)
    wall = time.perf_counter() - start
    # The thread count each llama.cpp member computed one-token decodes with at the end (a check on ``pinned``).
    threads = {m.name: m.threads for m in ens.members if hasattr(m, "threads")}
    per_member = {}
    for m in ens.members:
        b = before[m.name]
        per_member[m.name] = {
            "forward_calls": m.stats.forward_calls - b.forward_calls,
            "tokens_evaluated": m.stats.tokens_evaluated - b.tokens_evaluated,
        }
    # ``voting``: the members that took part in at least one answer (the others were benched on every prompt).
    return {"wall_seconds": wall, "output_tokens": out_tokens, "members": per_member, "texts": texts,
            "voting": sorted(voting), "threads_after": threads}  # fmt: skip


def _public(run: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in run.items() if k != "texts"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="triviaqa")
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--shots", type=int, default=None, help="0: the task's zero-shot form")
    ap.add_argument("--models", default=",".join(DEFAULT_ENSEMBLE))
    ap.add_argument("--threads-grid", default="", help="thread counts to time each member alone at (default 1,cores)")
    ap.add_argument("--allocations", default="auto", help=f"ensemble allocations, of {','.join(ALLOCATIONS)}")
    ap.add_argument("--naive", type=int, default=0, help="prompts for the naive comparison (it is slow)")
    ap.add_argument("--lengths", default="", help="output budgets for the growth test, e.g. 16,64,256")
    ap.add_argument("--n-ctx", type=int, default=4096, help="context window per member (the library default)")
    ap.add_argument("--out", type=Path)
    ap.add_argument(
        "--weights",
        default="equal",
        choices=("equal", "auto"),
        help="equal: every member fuses (the paper's setting); auto: the library's default",
    )
    args = ap.parse_args()

    task = load_task(args.task, shots=args.shots)
    items = task.items(offset=args.offset, limit=args.n)
    prompts = [task.build_prompt(it.question) for it in items]
    specs = args.models.split(",")
    cores = available_cores()
    grid = sorted({int(x) for x in args.threads_grid.split(",") if x} or {1, cores})
    allocations = [a for a in args.allocations.split(",") if a]
    rss_before_models = current_rss_bytes()
    t0 = time.perf_counter()
    # No thread count: the library's default, which the ``auto`` allocation measures.
    members: list[Member] = [load_member(s, n_ctx=args.n_ctx) for s in specs]
    load_seconds = time.perf_counter() - t0
    ens = Ensemble(members)
    cfg = DecodeConfig(
        weights=args.weights, stop=task.stop, max_new_tokens=task.max_new_tokens, stop_at_boxed=task.stop_at_boxed
    )
    report: dict[str, Any] = {"task": args.task, "shots": args.shots, "n": len(prompts), "offset": args.offset}
    report.update(models=specs, cores=cores, load_seconds=load_seconds, n_ctx=args.n_ctx, weights=args.weights)
    report["rss_before_models_bytes"] = rss_before_models

    for i in range(len(members)):
        ens.generate(prompts[0], DecodeConfig(method="single", single_member=i, max_new_tokens=1))

    singles: dict[str, dict[str, Any]] = {}
    texts: dict[str, list[str]] = {}
    for i, m in enumerate(members):
        singles[m.name] = {"by_threads": {}}
        for t in grid:
            with pinned([m], t, False):
                run = timed(ens, prompts, DecodeConfig(**{**cfg.__dict__, "method": "single", "single_member": i}))
            singles[m.name]["by_threads"][str(t)] = _public(run)
            texts[f"{m.name}@{t}"] = run["texts"]
        fastest = min(grid, key=lambda t: singles[m.name]["by_threads"][str(t)]["wall_seconds"])
        singles[m.name]["fastest_threads"] = fastest
        singles[m.name]["fastest_seconds"] = singles[m.name]["by_threads"][str(fastest)]["wall_seconds"]
    report["single"] = singles
    sum_fastest = sum(s["fastest_seconds"] for s in singles.values())
    best = min(singles, key=lambda n: singles[n]["fastest_seconds"])
    report["sum_of_fastest_singles_seconds"] = sum_fastest
    report["best_single"] = {"member": best, "seconds": singles[best]["fastest_seconds"]}
    report["singles_same_text_across_threads"] = all(
        texts[f"{m.name}@{t}"] == texts[f"{m.name}@{grid[0]}"] for m in members for t in grid
    )

    fused: dict[str, Any] = {}
    fused_texts = []
    for alloc in allocations:
        threads, side = ALLOCATIONS[alloc]
        with pinned(members, threads, side):
            run = timed(ens, prompts, cfg)
        fused_texts.append(run["texts"])
        fused[alloc] = _public(run)
        fused[alloc]["over_sum_of_fastest_singles"] = run["wall_seconds"] / sum_fastest
        fused[alloc]["over_best_single"] = run["wall_seconds"] / singles[best]["fastest_seconds"]
        if len(run["voting"]) == 1:
            # One member trusted on every prompt (the others benched): the cost against that member alone.
            (trusted,) = run["voting"]
            fused[alloc]["over_trusted_single"] = run["wall_seconds"] / singles[trusted]["fastest_seconds"]
        fused[alloc]["tokens_per_output_token"] = {
            name: v["tokens_evaluated"] / max(1, run["output_tokens"]) for name, v in run["members"].items()
        }
    report["adafuse"] = fused
    report["adafuse_same_text_across_allocations"] = all(t == fused_texts[0] for t in fused_texts)

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
            res = timed(ens, prompts[:3], DecodeConfig(weights=args.weights, max_new_tokens=budget))
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
    emit(report, args.out)


if __name__ == "__main__":
    main()
