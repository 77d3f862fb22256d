"""Automatic member weights from evidence inside the request: how well each member predicts its prompt's answers.

A few-shot prompt is labelled data for the task at hand: worked examples whose answers are in the task's own
format. A member that finds those answers likely, given their questions, is on the evidence better at this task.
With ``nll_m`` the member's negative log-likelihood of that text in nats per UTF-8 byte (per byte, so tokenizers
with different vocabularies compare fairly) and ``w0_m`` the given weights (equal by default):

    w_m  =  w0_m * exp(-beta * nll_m)  /  sum_k w0_k * exp(-beta * nll_k)

``beta`` (``auto_sharpness``, default 100) turns per-byte differences of a few hundredths into clear preferences:
at 100 a member 0.05 nats per byte behind the best keeps under 1% of the vote, and one 0.03 behind under 5%,
which the default ``min_weight`` benches (decoding/loop.py, ``bench``).

What is scored:

* the prompt's **worked answers**: the prompt's last line is its cue (``Answer:``, ``Let's think step by step``);
  the text after each earlier line that starts with the same cue, up to the next blank line, is an answer.
  Scoring the whole prompt instead mostly measures how well a member models the questions and instructions (on
  SQuAD, Wikipedia passages), which says little about who answers them.
* without worked answers, the prompt's **instructions**: its text before the last paragraph (a zero-shot task
  description such as the Flores prompts', the same for every item of a task), when that is at least
  ``MIN_INSTRUCTION_BYTES`` long. It measures who models the task's own wording, not the input.
* otherwise (a plain question, a chat request) there is no evidence and the given weights stand; so too when the
  members read different texts (each member's own chat template) and there are no worked answers to align.

docs/RESULTS.md, "Member weights", has the figures behind each choice.

Each member reads the prompt up to the end of its evidence (``answer_tokens``), every token of it: the weights are
a function of the worked examples alone, the same for every question asked after them, and a member's backend
remembers the read, so a task's few-shot part is scored once per member, not once per request.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from adafuse.decoding.parallel import map_active
from adafuse.decoding.state import DecodeState

Span = tuple[int, int]
#: The shortest instructions worth reading (``instructions``): a one-line question is no task description.
MIN_INSTRUCTION_BYTES = 100


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


def instruction_spans(prompt: str) -> list[Span]:
    """The byte range of the prompt's instructions (its text before the last paragraph), or none if shorter than
    ``MIN_INSTRUCTION_BYTES`` or absent."""
    data = prompt.rstrip().encode("utf-8")
    end = data.rfind(b"\n\n")
    head = data[:end].rstrip() if end > 0 else b""
    return [(0, len(head))] if len(head.strip()) >= MIN_INSTRUCTION_BYTES else []


@dataclass(frozen=True)
class _Tokens:
    """A member's prompt tokens with the byte range each covers, and the byte ranges of the evidence text (the
    worked answers, or the instructions; empty when the tokens do not spell the prompt byte for byte: a tokenizer
    that adds text of its own shifts the offsets)."""

    ids: list[int]
    ranges: list[Span]
    spans: list[Span]
    #: the tokens spell the prompt byte for byte, so byte ranges of its text can be located in them.
    aligned: bool = True

    def answer_tokens(self) -> int:
        """How many leading tokens hold the evidence text: the least that reaches the last span's end."""
        end = self.spans[-1][1]
        return next(i + 1 for i, (_, hi) in enumerate(self.ranges) if hi >= end)

    def scored(self) -> list[int]:
        """The positions t >= 1 whose log-probabilities ``nll_per_byte`` sums: tokens that overlap the spans."""
        return [
            t
            for t, (lo, hi) in enumerate(self.ranges)
            if t > 0 and hi > lo and any(lo < e and hi > s for s, e in self.spans)
        ]

    def nll_per_byte(self, logprobs: Sequence[float]) -> float:
        """NLL of the tokens after the first that overlap the evidence spans, per byte of those spans.

        The answers' own bytes are the denominator, the same for every member: a tokenizer whose tokens run on
        past an answer (Qwen's ".\n\n" is one token) would otherwise add easy bytes to it and look better per
        byte than it is (on the TriviaQA prompt it ranked Qwen-Coder above Gemma, while Gemma gives the five
        answers 1.3 nats more probability each).
        """
        total = 0.0
        for t in self.scored():
            if t - 1 < len(logprobs):
                total -= logprobs[t - 1]
        # The first token has no prediction: its bytes are not evidence (a member with a BOS token predicts
        # the prompt's first word, one without does not, and instructions start there).
        lo, hi = self.ranges[0] if self.ranges else (0, 0)
        scored = sum(e - s - max(0, min(e, hi) - max(s, lo)) for s, e in self.spans)
        return total / max(1, scored)


def _tokens(state: DecodeState, member: int) -> _Tokens:
    view = state.views[member]
    ids = view.ids("")
    pieces = [view.member.token_bytes(t) for t in ids]
    ranges: list[Span] = []
    at = 0
    for piece in pieces:
        ranges.append((at, at + len(piece)))
        at += len(piece)
    aligned = b"".join(pieces) == view.prompt.encode("utf-8")
    return _Tokens(ids, ranges, answer_spans(view.prompt) if aligned else [], aligned)


def prompt_nll_per_byte(state: DecodeState) -> tuple[dict[int, float], str] | None:
    """Each active member's evidence NLL per byte, and which text it was measured on ("answers" or
    "instructions"); None if there is no evidence or a member cannot tell."""
    toks = {i: _tokens(state, i) for i in state.active}
    # Every member is judged on the same text: the answers, when every member's tokens locate them.
    scored = "answers"
    if not all(t.spans for t in toks.values()):
        toks = {
            i: replace(t, spans=instruction_spans(state.views[i].prompt) if t.aligned else []) for i, t in toks.items()
        }
        scored = "instructions"
        if not all(t.spans for t in toks.values()) or len({state.views[i].prompt for i in state.active}) > 1:
            # No instructions, or each member's own chat template around the request: per byte of different
            # texts is no comparison.
            return None

    def read(i: int) -> list[float] | None:
        state.check()
        t = toks[i]
        n = t.answer_tokens()
        return state.views[i].member.evidence(t.ids[:n], [p for p in t.scored() if p < n])

    found = dict(zip(state.active, map_active(state, read), strict=True))
    if any(lp is None for lp in found.values()):
        return None
    return {i: toks[i].nll_per_byte(lp) for i, lp in found.items() if lp is not None}, scored


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
