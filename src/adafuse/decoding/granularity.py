"""How much text one round may commit: the granularity controller.

AdaFuse's rule (a confident member writes up to ``max_words`` words) is one fixed point. Here the unit is chosen
per round from explicit signals, so long stretches where every member is sure and they keep agreeing are
committed a sentence or a paragraph at a time, and hard spots fall back to words or single tokens:

- **confidence**: each member's top-1 margin and the entropy of its next-token distribution (top-k plus the rest),
- **agreement**: how many rounds in a row every member proposed the same text (the fast path),
- **kind of text**: maths (digits and operators), code, or prose, from cheap character tests on the recent text,
- **position**: the first words of an answer, where a QA answer is decided.

``decide`` is a pure function of those signals, so the controller's decisions are tested without any model.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

from adafuse.backends.base import TopK

GRANULARITIES = ("adaptive", "token", "word", "sentence", "paragraph")
Kind = Literal["maths", "code", "prose"]


@dataclass(frozen=True)
class Unit:
    """The most a confident member may write in one round."""

    name: str
    #: words at most (``token``: one token, whatever it spells).
    max_words: int
    #: also end at the end of a sentence (``sentence``) or a paragraph (``paragraph``).
    boundary: str | None = None


@dataclass(frozen=True)
class GranularityPolicy:
    """Thresholds of the adaptive rule (see ``decide``)."""

    #: words of the answer always decided at word level, whatever the signals say.
    lead_words: int = 2
    #: a member is sure when its margin >= theta (the decoding config's) and its entropy <= this (nats).
    max_entropy: float = 1.5
    #: a member is lost when its margin is below this; when every member is lost the round fuses one token.
    lost_margin: float = 0.1
    #: rounds in a row in which all members agreed before a sentence / a paragraph may be committed at once.
    sentence_after: int = 1
    paragraph_after: int = 3
    #: caps, in words, for the long units.
    sentence_words: int = 32
    paragraph_words: int = 96
    #: words per round in maths (each number and operator is its own decision).
    maths_words: int = 1


#: the thresholds in force (docs/RESULTS.md, "Granularity").
POLICY = GranularityPolicy()


@dataclass(frozen=True)
class Signals:
    """What the controller looks at before a round: one entry per voting member for the first two."""

    margins: tuple[float, ...]
    entropies: tuple[float, ...]
    #: consecutive rounds, just before this one, in which every member proposed the same text.
    agree_streak: int
    kind: Kind
    #: words committed so far in this answer.
    words_so_far: int


def entropy(top: TopK) -> float:
    """Entropy (nats) of a top-k distribution, the mass outside the top k counted as one more outcome."""
    probs = [math.exp(lp) for lp in top.logprobs]
    rest = max(0.0, 1.0 - sum(probs))
    return -sum(p * math.log(p) for p in [*probs, rest] if p > 0)


_CODE = re.compile(r"```|^\s{4}\S|^\t|\bdef |\breturn\b|;\s*$|[{}]\s*$|\bimport |\bfunction\b|=>", re.MULTILINE)
_LATEX = re.compile(r"\\(boxed|frac|times|cdot|sqrt|div)\b")
_MATHS_CHARS = set("0123456789+-*/=^%.()$\\<>")


def text_kind(text: str, window: int = 48) -> Kind:
    """Cheap detector of what is being written, from the last ``window`` characters (and open code fences)."""
    if text.count("```") % 2 == 1:
        return "code"
    tail = text[-window:]
    if _LATEX.search(tail):
        return "maths"
    if _CODE.search(tail):
        return "code"
    body = [c for c in tail if not c.isspace()]
    if body and sum(c in _MATHS_CHARS for c in body) / len(body) >= 0.3 and any(c.isdigit() for c in tail[-12:]):
        return "maths"
    return "prose"


def word_unit(max_words: int) -> Unit:
    return Unit("word", max_words)


def fixed_unit(granularity: str, max_words: int, policy: GranularityPolicy = POLICY) -> Unit:
    if granularity == "token":
        return Unit("token", 1)
    if granularity == "sentence":
        return Unit("sentence", policy.sentence_words, "sentence")
    if granularity == "paragraph":
        return Unit("paragraph", policy.paragraph_words, "paragraph")
    return word_unit(max_words)


def decide(signals: Signals, theta: float, max_words: int, policy: GranularityPolicy = POLICY) -> Unit:
    """The adaptive rule. Disagreement or doubt shortens the unit; agreement and confidence lengthen it."""
    if signals.margins and all(m < policy.lost_margin for m in signals.margins):
        return Unit("token", 1)
    if signals.kind == "maths":
        return word_unit(policy.maths_words)
    if signals.words_so_far < policy.lead_words or signals.kind == "code":
        return word_unit(max_words)
    sure = all(m >= theta and h <= policy.max_entropy for m, h in zip(signals.margins, signals.entropies, strict=True))
    if not sure:
        return word_unit(max_words)
    if signals.agree_streak >= policy.paragraph_after and signals.kind == "prose":
        return Unit("paragraph", policy.paragraph_words, "paragraph")
    if signals.agree_streak >= policy.sentence_after:
        return Unit("sentence", policy.sentence_words, "sentence")
    return word_unit(max_words)


def words_in(text: str) -> int:
    """Words written so far, the last one counted even before a space ends it."""
    return len(text.split())


_SENTENCE_END = re.compile(r"[.!?](?=\s)|\n")


def boundary_end(text: str, boundary: str | None) -> int | None:
    """Where the first sentence (or paragraph) of ``text`` ends, if it does; None otherwise.

    The end sits where a word ends (before the whitespace that follows), so a newline starts the next round.
    """
    if boundary == "sentence":
        m = _SENTENCE_END.search(text, 1)
        if m is None:
            return None
        return m.start() if m.group() == "\n" else m.end()
    if boundary == "paragraph":
        i = text.find("\n\n")
        return i if i >= 0 else None
    return None


_LINE_END = re.compile(r"\S[^\n]*?(\n+)(?=[^\n])")


def line_end(text: str) -> int | None:
    """Where the first line of ``text`` that holds more than whitespace ends, with the newlines that follow it,
    once the next line has begun; None before that. A line unit commits "Paris.\n\n" whole, so a stop string
    at its newline ends the answer in the same round."""
    m = _LINE_END.search(text)
    return m.end(1) if m else None
