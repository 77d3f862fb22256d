"""Automatic member weights from evidence inside the request: how well each member predicts its prompt's answers.

A few-shot prompt is labelled data for the task at hand: worked examples whose answers are in the task's own
format. A member that finds those answers likely, given their questions, is on the evidence better at this task.
With ``nll_m`` the member's negative log-likelihood of that text in nats per UTF-8 byte (per byte, so tokenizers
with different vocabularies compare fairly) and ``w0_m`` the given weights (equal by default):

    w_m  =  w0_m * exp(-beta * nll_m)  /  sum_k w0_k * exp(-beta * nll_k)

``beta`` (``auto_sharpness``, default 20) turns per-byte differences of a few hundredths into clear preferences.

What is scored (``auto_evidence``):

* ``answers`` (default): the worked answers only. The prompt's last line is its cue (``Answer:``, ``Let's think
  step by step``); the text after each earlier line that starts with the same cue, up to the next blank line, is
  an answer. Scoring the whole prompt instead mostly measures how well a member models the questions and
  instructions (on SQuAD, Wikipedia passages), which says little about who answers them. A prompt with no worked
  answer (a zero-shot instruction) falls back to ``prompt``.
* ``prompt``: every token of the prompt.

Only the prompt's whole 64-token blocks are scored (``evidence_span``): the shared few-shot part is read once per
member and cached with the prompt, so a request pays nothing for it after the first. Every member is judged on
the same worked answers: those that lie inside every member's scored blocks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from adafuse.decoding.parallel import map_active
from adafuse.decoding.state import DecodeState

Span = tuple[int, int]


def answer_spans(prompt: str) -> list[Span]:
    """Byte ranges of the prompt's worked answers (see the module docstring); empty when it has none."""
    text = prompt.rstrip()
    cue = text.rsplit("\n", 1)[-1].strip()
    if not cue:
        return []
    data = text.encode("utf-8")
    mark = b"\n" + cue.encode("utf-8")
    body_end = data.rfind(mark)  # the final cue, which the model is about to answer
    spans: list[Span] = []
    at = data.find(mark)
    while 0 <= at < body_end:
        start = at + len(mark)
        end = data.find(b"\n\n", start)
        end = body_end if end < 0 or end > body_end else end
        if data[start:end].strip():
            spans.append((start, end))
        at = data.find(mark, end)
    return spans


@dataclass(frozen=True)
class _Read:
    """One member's evidence: the log-probability and byte range of every scored prompt token."""

    logprobs: list[float]
    ranges: list[Span]
    spans: list[Span]

    @property
    def covered_bytes(self) -> int:
        return self.ranges[-1][1] if self.ranges else 0

    def complete_spans(self) -> int:
        """How many worked answers (in order) lie wholly inside the scored blocks."""
        return sum(1 for _, end in self.spans if end <= self.covered_bytes)

    def nll_per_byte(self, spans: Sequence[Span] | None) -> float:
        total, scored = 0.0, 0
        for lp, (lo, hi) in zip(self.logprobs, self.ranges, strict=True):
            if hi == lo or (spans is not None and not any(lo < e and hi > s for s, e in spans)):
                continue
            total -= lp
            scored += hi - lo
        return total / max(1, scored)


def _read(state: DecodeState, member: int) -> _Read | None:
    view = state.views[member]
    ids = view.ids("")
    logprobs = view.member.evidence(ids)
    if logprobs is None:
        return None
    pieces = [view.member.token_bytes(t) for t in ids]
    ranges: list[Span] = []
    at = len(pieces[0]) if pieces else 0
    for piece in pieces[1 : len(logprobs) + 1]:
        ranges.append((at, at + len(piece)))
        at += len(piece)
    # A tokenizer that adds text of its own (a marker, a leading space) shifts the byte offsets: no answers then.
    aligned = b"".join(pieces) == view.prompt.encode("utf-8")
    return _Read(logprobs, ranges, answer_spans(view.prompt) if aligned else [])


def prompt_nll_per_byte(state: DecodeState) -> tuple[dict[int, float], str] | None:
    """Each active member's evidence NLL per byte, and which text it was measured on ("answers" or "prompt");
    None if a member cannot tell."""
    found = map_active(state, lambda i: _read(state, i))
    if any(r is None for r in found):
        return None
    reads = {i: r for i, r in zip(state.active, found, strict=True) if r is not None}
    shared = min(r.complete_spans() for r in reads.values())
    if state.config.auto_evidence == "answers" and shared > 0:
        return {i: r.nll_per_byte(r.spans[:shared]) for i, r in reads.items()}, "answers"
    return {i: r.nll_per_byte(None) for i, r in reads.items()}, "prompt"


def evidence_weights(base: Sequence[float], nll: dict[int, float], sharpness: float) -> tuple[float, ...]:
    """The rule above; members without evidence (not voting) keep weight 0 in the result's normalisation."""
    best = min(nll.values())
    raw = [base[i] * math.exp(-sharpness * (nll[i] - best)) if i in nll else 0.0 for i in range(len(base))]
    total = sum(raw)
    return tuple(w / total for w in raw)


def apply_auto_weights(state: DecodeState) -> tuple[dict[str, float], str] | None:
    """Replace ``state.weights`` by evidence weights; returns (member name -> NLL per byte, what was scored)."""
    found = prompt_nll_per_byte(state)
    if found is None:
        return None
    nll, scored = found
    state.weights = evidence_weights(state.weights, nll, state.config.auto_sharpness)
    return {state.views[i].name: v for i, v in nll.items()}, scored
