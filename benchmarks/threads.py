"""Why the llama.cpp backend computes without flash attention: thread dependence and what it costs.

Usage: ADAFUSE_DATA=../shared/data python benchmarks/threads.py [--task squad] [--n 3] [--offset 100]
           [--out docs/perf/threads.json]

For each built-in model, with CPU flash attention on and off: the next-token distribution after each prompt at 1
and at every core (the largest logit difference between the two), and the wall time of each member's greedy
answers at both thread counts. SQuAD prompts are about 1,000 tokens: past 256 tokens llama.cpp attends over 512
cells or more, where CPU flash attention splits a one-token decode among the threads.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
from report import emit  # benchmarks/report.py: run as python benchmarks/NAME.py

from adafuse.backends import DEFAULT_ENSEMBLE, load_member
from adafuse.backends.base import available_cores
from adafuse.config import DecodeConfig
from adafuse.ensemble import Ensemble
from adafuse.evaluation.tasks import load_task

OFF = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED


def measure(name: str, prompts: list[str], cfg: DecodeConfig, flash: bool) -> dict[str, Any]:
    # The backend asks for ``LLAMA_FLASH_ATTN_TYPE_DISABLED`` when it creates a context: ENABLED stands in for it.
    llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash else OFF
    try:
        member = load_member(name)
    finally:
        llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED = OFF
    ens = Ensemble([member])
    out: dict[str, Any] = {"seconds": {}}
    rows: dict[int, list[np.ndarray]] = {}
    for threads in sorted({1, available_cores()}):
        member.set_threads(threads)  # type: ignore[attr-defined]
        rows[threads] = []
        for p in prompts:
            ids = member.tokenize(p)
            member._reset()  # type: ignore[attr-defined]
            member.prefill(ids[:-1])
            top = member.next_token(ids, 50)  # the last token in a one-token call, as every decoding step is
            rows[threads].append(np.array(top.logprobs))
        ens.generate(prompts[0], cfg)  # warm
        start = time.perf_counter()
        for p in prompts:
            ens.generate(p, cfg)
        out["seconds"][str(threads)] = time.perf_counter() - start
    a, b = rows[1], rows[max(rows)]
    out["max_top50_logprob_difference_between_thread_counts"] = max(
        float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True)
    )
    member.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="squad")
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--offset", type=int, default=100)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    task = load_task(args.task)
    prompts = [task.build_prompt(it.question) for it in task.items(offset=args.offset, limit=args.n)]
    cfg = DecodeConfig(method="single", stop=task.stop, max_new_tokens=task.max_new_tokens)
    report: dict[str, Any] = {"task": args.task, "n": len(prompts), "cores": available_cores()}
    for name in DEFAULT_ENSEMBLE:
        report[name] = {f"flash_{'on' if f else 'off'}": measure(name, prompts, cfg, f) for f in (True, False)}
        print(name, json.dumps(report[name]), flush=True)
    emit(report, args.out)


if __name__ == "__main__":
    main()
