"""What one evidence read adds to a llama.cpp member's resident memory: the worked answers' rows, or every row.

Usage: ADAFUSE_DATA=../shared/data python benchmarks/evidence_memory.py [--task triviaqa]
Each built-in member reads the task's few-shot prompt (up to its last worked answer) in a process of its own, so
the peak is that read's: once asking llama.cpp only for the rows the automatic weights use (the default), once for
every row. Prints MiB added to the peak and what stays after the read.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys

from memory import rss_mib  # benchmarks/memory.py: run as python benchmarks/NAME.py


def one(name: str, task_name: str, every_row: bool) -> None:
    from adafuse.backends import load_member
    from adafuse.decoding.evidence import _Tokens, answer_spans
    from adafuse.evaluation.tasks import load_task

    member = load_member(name, n_ctx=4096)
    task = load_task(task_name)
    prompt = task.build_prompt(task.items(limit=1)[0].question)
    ids = member.tokenize(prompt)
    ranges, at = [], 0
    for tok in ids:
        piece = member.token_bytes(tok)
        ranges.append((at, at + len(piece)))
        at += len(piece)
    tokens = _Tokens(ids, ranges, answer_spans(prompt))
    n = tokens.answer_tokens()
    member.prefill(ids[:64])
    before = rss_mib()
    member.evidence(ids[:n], None if every_row else [t for t in tokens.scored() if t < n])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(
        f"{name}: {'every row' if every_row else 'answer rows'}: peak +{peak - before} MiB, "
        f"+{rss_mib() - before} MiB after the read"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="triviaqa")
    ap.add_argument("--one", nargs=2, metavar=("MEMBER", "ROWS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        one(args.one[0], args.task, args.one[1] == "every")
        return
    from adafuse.backends import DEFAULT_ENSEMBLE

    for name in DEFAULT_ENSEMBLE:
        for rows in ("answers", "every"):
            out = subprocess.run(
                [sys.executable, __file__, "--task", args.task, "--one", name, rows],
                capture_output=True,
                text=True,
                check=True,
            )
            print(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
