"""Where the resident memory goes: the interpreter and libraries, each member as it loads, N generations.

Usage: ADAFUSE_DATA=../shared/data python benchmarks/memory.py [--n-ctx 4096] [--task triviaqa]
       [--weights auto|equal] [--n 1]
Prints resident memory (MiB) after each step and the sum of the model files, so the overhead over the weights can
be split into what Python brings, what each llama.cpp context adds (KV cache: cells x layers x 2 x kv width x 2 B,
where the cells start at 512 and double up to n_ctx as requests need them; compute buffers; repacked weights) and
what decoding adds.
"""

from __future__ import annotations

import argparse
import os
import resource


def rss_mib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    return 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--task", default="triviaqa", help="the generations run on this task's first dev prompts")
    ap.add_argument("--n", type=int, default=1, help="how many prompts, one after another")
    ap.add_argument(
        "--weights",
        default="auto",
        choices=("auto", "equal"),
        help="auto: the library's default (one evidence read of the prompt per member); equal: the paper's setting",
    )
    args = ap.parse_args()
    print(f"interpreter: {rss_mib()} MiB")
    import llama_cpp  # noqa: F401

    from adafuse.backends import DEFAULT_ENSEMBLE, load_member
    from adafuse.config import DecodeConfig
    from adafuse.ensemble import Ensemble
    from adafuse.evaluation.tasks import load_task

    print(f"libraries imported: {rss_mib()} MiB")
    members = []
    for name in DEFAULT_ENSEMBLE:
        members.append(load_member(name, n_ctx=args.n_ctx, n_threads=1))
        print(f"+ {name}: {rss_mib()} MiB")
    task = load_task(args.task)
    prompts = [task.build_prompt(item.question) for item in task.items(limit=args.n)]
    cfg = DecodeConfig(
        weights=args.weights,
        stop=task.stop,
        max_new_tokens=task.max_new_tokens,
        stop_at_boxed=task.stop_at_boxed,
    )
    ensemble = Ensemble(members)
    for prompt in prompts:
        ensemble.generate(prompt, cfg)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    files = sum(os.path.getsize(m.path) for m in members) // 2**20  # type: ignore[attr-defined]
    cells = ", ".join(f"{m.name} {m._ctx_size}" for m in members)  # type: ignore[attr-defined]
    print(f"after {args.n} generation(s): {rss_mib()} MiB, peak {peak} MiB (KV cells: {cells})")
    print(f"model files: {files} MiB; peak / files: {peak / files:.2f}")


if __name__ == "__main__":
    main()
