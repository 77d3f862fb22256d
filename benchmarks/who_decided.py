"""Where an ensemble's answer leaves one member's own: whose word made the difference, and what it did to the score.

Usage: python benchmarks/who_decided.py RUN_DIR SINGLE_RUN_DIR MEMBER_NAME

Reads both runs' predictions.jsonl (an ensemble run with traces, and MEMBER_NAME alone on the same items). For each
item whose prediction differs from the member's own, finds the first round whose committed candidate was not
the member's first (greedy) proposal, and counts it as the member's *own branch* (another of its proposals) or
*another member's word*, with the item's score change (ensemble minus member alone): won, lost or neither.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path


def load(run: Path) -> dict[int, dict]:
    rows = (json.loads(line) for line in (run / "predictions.jsonl").read_text(encoding="utf-8").splitlines() if line)
    return {row["index"]: row for row in rows}


def first_departure(record: dict, member: str) -> str:
    for rnd in record["trace"]["rounds"]:
        winner = rnd["candidates"][rnd["chosen"]]["text"]
        own = next((p for p in rnd["proposals"] if p["member"] == member), None)
        if own is None:
            return "another member's word"  # the member was not voting (benched or dropped)
        if winner == own["candidates"][0]:
            continue
        return "its own branch" if winner in own["candidates"] else "another member's word"
    return "same words, other tokens"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("single", type=Path)
    ap.add_argument("member")
    args = ap.parse_args()
    ensemble, alone = load(args.run), load(args.single)
    counts: Counter[tuple[str, str]] = Counter()
    common = sorted(set(ensemble) & set(alone))
    for i in common:
        ours, theirs = ensemble[i], alone[i]
        if ours["prediction"] == theirs["prediction"]:
            continue
        change = (ours["correct"] or 0) - (theirs["correct"] or 0)
        effect = "won" if change > 0 else "lost" if change < 0 else "neither"
        counts[(first_departure(ours, args.member), effect)] += 1
    print(f"{len(common)} items, {sum(counts.values())} answered differently from {args.member} alone")
    for (kind, effect), n in sorted(counts.items()):
        print(f"  {kind}: {effect} {n}")


if __name__ == "__main__":
    main()
