"""Automatic member weights from evidence inside the request: how well each member predicts its own prompt.

A few-shot prompt is labelled data for the task at hand: the worked examples' answers, in the task's own format.
A member that finds that text likely (low NLL per byte) is, on the evidence, better at this task. With
``nll_m`` the member's negative log-likelihood of its prompt in nats per UTF-8 byte (per byte, so tokenizers
with different vocabularies compare fairly) and ``w0_m`` the given weights (equal by default):

    w_m  =  w0_m * exp(-beta * nll_m)  /  sum_k w0_k * exp(-beta * nll_k)

``beta`` (``auto_sharpness``, default 20) turns per-byte differences of a few hundredths into clear preferences
without silencing anyone. Only the prompt's whole 64-token blocks count (``evidence_span``): the shared few-shot
part is scored once per member and cached with the prompt, so a request pays nothing for it after the first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from adafuse.decoding.state import DecodeState


def prompt_nll_per_byte(state: DecodeState) -> dict[int, float] | None:
    """Each active member's NLL of its own prompt, per byte of the text scored; None if a member cannot tell."""
    out: dict[int, float] = {}
    for i in state.active:
        view = state.views[i]
        ids = view.ids("")
        found = view.member.evidence(ids)
        if found is None:
            return None
        logprob, covered = found
        scored = sum(len(view.member.token_bytes(t)) for t in ids[1:covered])
        out[i] = -logprob / max(1, scored)
    return out


def evidence_weights(base: Sequence[float], nll: dict[int, float], sharpness: float) -> tuple[float, ...]:
    """The rule above; members without evidence (not voting) keep weight 0 in the result's normalisation."""
    best = min(nll.values())
    raw = [base[i] * math.exp(-sharpness * (nll[i] - best)) if i in nll else 0.0 for i in range(len(base))]
    total = sum(raw)
    return tuple(w / total for w in raw)


def apply_auto_weights(state: DecodeState) -> dict[str, float] | None:
    """Replace ``state.weights`` by evidence weights; returns member name -> NLL per byte for the trace."""
    nll = prompt_nll_per_byte(state)
    if nll is None:
        return None
    state.weights = evidence_weights(state.weights, nll, state.config.auto_sharpness)
    return {state.views[i].name: v for i, v in nll.items()}
