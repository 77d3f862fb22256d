"""What the controller looks at: signals every member on every backend gives, as feature vectors.

Two decisions, each a choice among a group of options scored by one linear function of the option's features:

* **route** (once per request, before anyone drafts): the options are the members. A member's features are its
  identity (and its identity crossed with the kind of request), its prompt evidence (NLL per byte behind the best
  member's, where the prompt has worked answers or instructions), its first-token margin and entropy at the start
  of the answer, and whether the other members would start with the same token.
* **pick** (every round the members disagree): the options are the candidates, each a member's greedy line. A
  candidate's features are who proposed it (crossed with the kind of request), each member's NLL per token of it,
  how many members proposed it, its proposers' evidence, how much it repeats itself or the answer so far, its
  length, and whether it ends the answer.

Everything here is a pure function of the round's data, so the features ``adafuse fit`` learns from are the very
features a decision computes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from adafuse.result import Candidate

#: the kinds of request, from cheap tests of the prompt (each is a 0/1 feature crossed with member identity).
KINDS = ("worked_answers", "instructions", "maths", "foreign", "long_input")
#: a prompt's last paragraph longer than this many bytes is a reading task (a passage and its question).
LONG_INPUT_BYTES = 600
_DIGITS = re.compile(r"\d")


@dataclass(frozen=True)
class RequestKind:
    """The kind of request, read once: what evidence its prompt gives and what its question looks like."""

    flags: tuple[float, ...]

    @classmethod
    def of(cls, prompt: str, evidence: str | None) -> RequestKind:
        last = prompt.rstrip().rsplit("\n\n", 1)[-1]
        letters = [c for c in last if c.isalpha()]
        foreign = sum(not c.isascii() for c in letters) / max(1, len(letters)) > 0.01
        cue = last.rstrip().rsplit("\n", 1)[-1].lower()
        maths = len(_DIGITS.findall(last)) >= 3 and "step" in cue
        return cls(
            (
                float(evidence == "answers"),
                float(evidence == "instructions"),
                float(maths),
                float(foreign),
                float(len(last.encode("utf-8")) > LONG_INPUT_BYTES),
            )
        )


def route_feature_names(members: Sequence[str]) -> list[str]:
    names = [f"is:{m}" for m in members]
    names += [f"is:{m}&{k}" for m in members for k in KINDS]
    return [*names, "evidence_behind", "margin", "entropy", "first_token_shared"]


def route_features(
    members: Sequence[str],
    kind: RequestKind,
    nll: Mapping[str, float],
    margins: Mapping[str, float],
    entropies: Mapping[str, float],
    first_tokens: Mapping[str, str],
) -> np.ndarray:
    """One row per member in ``margins`` (the members voting), in ``members`` order."""
    voting = [m for m in members if m in margins]
    best = min(nll.values()) if nll else 0.0
    rows = []
    for m in voting:
        identity = [float(m == n) for n in members]
        crossed = [float(m == n) * f for n in members for f in kind.flags]
        others = [o for o in voting if o != m]
        shared = sum(first_tokens[o] == first_tokens[m] for o in others) / max(1, len(others))
        behind = nll[m] - best if m in nll else 0.0
        rows.append([*identity, *crossed, behind, margins[m], entropies[m], shared])
    return np.asarray(rows, dtype=np.float64)


def pick_feature_names(members: Sequence[str]) -> list[str]:
    names = [f"by:{m}" for m in members]
    names += [f"by:{m}&{k}" for m in members for k in KINDS]
    names += [f"nll:{m}" for m in members]
    extra = ["nll_own", "nll_others", "proposers", "agreement", "evidence_behind", "repeats", "log_bytes", "ends"]
    return [*names, *extra]


def pick_features(
    members: Sequence[str],
    kind: RequestKind,
    nll: Mapping[str, float],
    candidates: Sequence[Candidate],
    committed: str,
    stops: Sequence[str] = (),
) -> np.ndarray:
    """One row per candidate. A member that did not score (it sits out) counts as the mean of those that did.
    ``agreement``: the share of the other candidates' proposers whose line says the same once both are cut at the
    stop strings and normalised (" Harrison Ford." and " harrison ford\n\n" agree)."""
    best = min(nll.values()) if nll else 0.0
    said = [normalised(c.text, stops) for c in candidates]
    rows = []
    for j, cand in enumerate(candidates):
        by = [float(m in cand.proposers) for m in members]
        crossed = [b * f for b in by for f in kind.flags]
        mean = sum(cand.scores.values()) / max(1, len(cand.scores))
        scores = [cand.scores.get(m, mean) for m in members]
        own = [cand.scores[m] for m in cand.proposers if m in cand.scores]
        others = [v for m, v in cand.scores.items() if m not in cand.proposers]
        behind = [nll[m] - best for m in cand.proposers if m in nll]
        agree = sum(len(c.proposers) for k, c in enumerate(candidates) if k != j and said[k] == said[j] and said[j])
        rows.append(
            [
                *by,
                *crossed,
                *scores,
                sum(own) / len(own) if own else mean,
                sum(others) / len(others) if others else mean,
                len(cand.proposers) / len(members),
                agree / len(members),
                sum(behind) / len(behind) if behind else 0.0,
                repeats(committed, cand.text),
                math.log1p(len(cand.text.encode("utf-8"))),
                float(cand.eos or cand.text.endswith("\n")),
            ]
        )
    return np.asarray(rows, dtype=np.float64)


_WORD = re.compile(r"\w+")


def normalised(text: str, stops: Sequence[str]) -> str:
    """The text before the first stop string, as lowercase words (punctuation and spacing dropped)."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=len(text))
    return " ".join(_WORD.findall(text[:cut].lower()))


def repeats(committed: str, text: str) -> float:
    """How much of ``text`` is a loop: the share of its character 4-grams seen before (in it or in the answer so
    far). "1.1.1.1.1.1" and a line copied from above score near 1; a fresh sentence near 0."""
    body = text.strip()
    if len(body) < 8:
        return 0.0
    seen = {committed[i : i + 4] for i in range(max(0, len(committed) - 4 + 1))}
    fresh = total = 0
    for i in range(len(body) - 3):
        gram = body[i : i + 4]
        total += 1
        fresh += gram not in seen
        seen.add(gram)
    return 1.0 - fresh / total
