"""A text-only member against the same model run locally: score, cost and API calls per answer.

Usage:
  python benchmarks/text_member.py --task triviaqa --n 30 [--offset 1650] [--shots 0] [--served gemma3-270m]
      [--out docs/perf/text-member-triviaqa.json]

Starts llama-cpp-python's server on loopback with ``--served`` (a built-in model), then on the same rows, in one
run: the ensemble with that model as a text-only member (``text+http://...``) and the other two built-in models
as its judges; the same three models all local (the library's default decoder); and each model alone (``single``).
Reported per method: the task's scores, wall seconds, API calls and API tokens per answer (the text-only member),
how often its candidates won a round, and the wall ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
from report import emit  # benchmarks/report.py: run as python benchmarks/NAME.py

from adafuse.backends import DEFAULT_ENSEMBLE, load_member
from adafuse.backends.zoo import zoo_path
from adafuse.config import DecodeConfig
from adafuse.ensemble import Ensemble
from adafuse.evaluation.tasks import load_task


def start_server(model: str) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(zoo_path(model)), "--model_alias", model]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--n_threads", "1", "--verbose", "false"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(300):
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/models", timeout=1).status_code == 200:
                return proc, url
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start")


def run(ens: Ensemble, prompts: list[str], cfg: DecodeConfig) -> tuple[list[Any], float]:
    start = time.perf_counter()
    results = [ens.generate(p, cfg) for p in prompts]
    return results, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="triviaqa")
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--offset", type=int, default=1650)
    ap.add_argument("--shots", type=int, default=None)
    ap.add_argument("--served", default="gemma3-270m")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    task = load_task(args.task, shots=args.shots)
    items = task.items(offset=args.offset, limit=args.n)
    prompts = [task.build_prompt(it.question) for it in items]
    cfg = DecodeConfig(stop=task.stop, max_new_tokens=task.max_new_tokens, stop_at_boxed=task.stop_at_boxed)
    judges = [name for name in DEFAULT_ENSEMBLE if name != args.served]
    local = {name: load_member(name) for name in DEFAULT_ENSEMBLE}
    proc, url = start_server(args.served)
    report: dict[str, Any] = {"task": args.task, "shots": args.shots, "rows": [items[0].index, items[-1].index]}
    try:
        text = load_member(f"text+{url}#{args.served}")
        methods: dict[str, tuple[Ensemble, DecodeConfig]] = {
            f"text+{args.served} judged by {','.join(judges)}": (Ensemble([text, *(local[j] for j in judges)]), cfg),
            "all local (default)": (Ensemble(list(local.values())), cfg),
        }
        for i, name in enumerate(DEFAULT_ENSEMBLE):
            methods[f"{name} alone"] = (Ensemble(list(local.values())), replace(cfg, method="single", single_member=i))
        # Warm-up: every member reads the task's few-shot part once, as in a long evaluation.
        for ens, c in methods.values():
            ens.generate(prompts[0], c)
        for label, (ens, c) in methods.items():
            results, wall = run(ens, prompts, c)
            preds = [task.extract_answer(r.text) for r in results]
            row: dict[str, Any] = {
                "scores": task.score(preds, [it.answer for it in items]),
                "wall_seconds": wall,
            }
            api = [r.telemetry.api for r in results if r.telemetry.api]
            if api:
                (who,) = api[0]
                row["api_calls_per_answer"] = sum(a[who]["calls"] for a in api) / len(results)
                row["api_completion_tokens_per_answer"] = sum(a[who]["completion_tokens"] for a in api) / len(results)
                row["text_member_rounds_won"] = sum(a[who]["rounds_won"] for a in api)
                row["text_member_rounds_proposed"] = sum(a[who]["rounds_proposed"] for a in api)
                row["answers_where_it_sat_out"] = sum(a[who]["sat_out"] is not None for a in api)
            report[label] = row
            print(label, json.dumps(row), flush=True)
        alone = {k: v["wall_seconds"] for k, v in report.items() if isinstance(v, dict) and k.endswith("alone")}
        report["ratios"] = {
            k: report[k]["wall_seconds"] / sum(alone.values())
            for k in report
            if isinstance(report[k], dict) and "wall_seconds" in report[k] and not k.endswith("alone")
        }
        text.close()
    finally:
        proc.terminate()
        proc.wait(20)
        for m in local.values():
            m.close()
    emit(report, args.out)


if __name__ == "__main__":
    main()
