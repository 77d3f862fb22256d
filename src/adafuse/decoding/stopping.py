"""When generation ends: stop strings, boxed answers, budgets. Checked on committed text only."""

from __future__ import annotations

from dataclasses import dataclass

BOXED = "\\boxed{"


def extract_boxed(text: str) -> str | None:
    """Content of the first complete, brace-balanced ``\\boxed{...}``; None if there is none yet.

    Nested braces (``\\boxed{\\frac{1}{2}}``) are balanced rather than cut at the first ``}``.
    """
    end = boxed_end(text)
    if end is None:
        return None
    start = text.find(BOXED)
    return text[start + len(BOXED) : end - 1]


def boxed_end(text: str) -> int | None:
    """Index just past the closing brace of the first complete ``\\boxed{...}``, or None."""
    start = text.find(BOXED)
    while start != -1:
        depth = 1
        i = start + len(BOXED)
        while i < len(text):
            ch = text[i]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        # Unbalanced so far: a later \boxed{ cannot close before this one does.
        return None
    return None


@dataclass(frozen=True)
class StopCheck:
    """Outcome of checking committed text: where to cut it and why, or nothing."""

    cut: int
    reason: str


def find_stop(text: str, stop: tuple[str, ...], stop_at_boxed: bool) -> StopCheck | None:
    """Earliest stop in ``text``: a stop string (cut before it) or the end of a boxed answer (kept)."""
    best: StopCheck | None = None
    for s in stop:
        if not s:
            continue
        i = text.find(s)
        if i != -1 and (best is None or i < best.cut):
            best = StopCheck(i, "stop")
    if stop_at_boxed:
        end = boxed_end(text)
        if end is not None and (best is None or end < best.cut):
            best = StopCheck(end, "boxed")
    return best
