"""Does llama.cpp give a token the same logits whatever it is decoded with? And what does a call cost?

For each built-in model: prefill a few-shot prompt prefix, then decode the next 16 tokens in calls of k tokens
(k = 1..8) and compare every row with the rows of one-token calls; also time calls of 1, 3 and 8 tokens. This is
why the llama.cpp backend scores candidates one token per call instead of in one batch (docs/PERFORMANCE.md).

Usage: ADAFUSE_DATA=../shared/data python benchmarks/batch_consistency.py [--out docs/perf/batch-consistency.json]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from report import emit  # benchmarks/report.py: run as python benchmarks/NAME.py

from adafuse.backends import DEFAULT_ENSEMBLE, load_member


def rows_in_calls(member, prefix: list[int], tokens: list[int], k: int) -> tuple[list[np.ndarray], float, int]:
    """Next-token rows after each of ``tokens``, decoded ``k`` at a time after ``prefix``; seconds and calls."""
    import llama_cpp

    member._reset()
    member.prefill(prefix)
    batch = member._batch
    rows: list[np.ndarray] = []
    calls = 0
    start = time.perf_counter()
    for lo in range(0, len(tokens), k):
        part = tokens[lo : lo + k]
        batch.n_tokens = len(part)
        for i, tok in enumerate(part):
            batch.token[i] = tok
            batch.pos[i] = len(prefix) + lo + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = True
        if llama_cpp.llama_decode(member._ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        calls += 1
        for i in range(len(part)):
            ptr = llama_cpp.llama_get_logits_ith(member._ctx, i)
            rows.append(np.ctypeslib.as_array(ptr, shape=(member.n_vocab,)).copy())
    seconds = time.perf_counter() - start
    member._reset()
    return rows, seconds, calls


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    data = Path(os.environ.get("ADAFUSE_DATA", "../shared/data"))
    text = (data / "gsm8k" / "prompt.txt").read_text()
    report: dict[str, dict] = {}
    for name in DEFAULT_ENSEMBLE:
        member = load_member(name, n_ctx=2048, n_threads=args.threads)
        ids = member.tokenize(text)
        per_length = {}
        for prefix_len in (64, 150, 300):
            prefix, tokens = ids[:prefix_len], ids[prefix_len : prefix_len + 16]
            ref, ref_s, _ = rows_in_calls(member, prefix, tokens, 1)
            diffs = {}
            for k in range(2, 9):
                rows, _, _ = rows_in_calls(member, prefix, tokens, k)
                diffs[k] = max(float(np.abs(a - b).max()) for a, b in zip(ref, rows, strict=True))
            per_length[prefix_len] = diffs
        timing = {}
        for k in (1, 3, 8):
            _, seconds, calls = rows_in_calls(member, ids[:150], ids[150:174], k)
            timing[k] = {"seconds_per_call": seconds / calls, "seconds_per_token": seconds / 24}
        report[name] = {"max_abs_logit_difference_vs_one_token_calls": per_length, "timing": timing}
        member.close()
    emit(report, args.out)


if __name__ == "__main__":
    main()
