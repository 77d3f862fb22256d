"""The baselines, as strategies of the shared loop, so every comparison runs on the same code and counters.

- ``single``: one member, greedy (the bar to beat).
- ``token``: UniTE-style token-level fusion: the union of each member's top-k next-token strings, each
  member's probability of each string (mapped through its own tokenizer, boundary-correct), averaged; argmax.
- ``span``: fixed granularity (SweetSpan-style): every member drafts about ``span_tokens`` tokens (to the next
  word boundary), all members score all drafts, lowest mean NLL wins.
- ``sample``: whole-answer selection: every member writes a full answer, all score all, lowest mean NLL wins.
"""

from __future__ import annotations

import math

from adafuse.backends.base import Step, TopK
from adafuse.config import DecodeConfig
from adafuse.decoding.proposals import UNBOUNDED_WORDS, WORD_TOKEN_CAP, DraftWriter, write_draft
from adafuse.decoding.scoring import Draft, score_candidates, select, union
from adafuse.decoding.state import DecodeState, MemberView
from adafuse.decoding.words import decode_utf8_prefix
from adafuse.result import Proposal, Round


def _draft_round(state: DecodeState, index: int, unit: str) -> Round:
    """Every active member writes one greedy draft; the drafts are scored by all and the best is committed."""
    proposals: list[Proposal] = []
    drafts: list[Draft] = []
    for i, view, first in _first_steps(state):
        writer = _writer(state, i, unit, state.config)
        draft = write_draft(state, i, Step(first, first.ids[0]), writer)
        proposals.append(Proposal(view.name, [first.margin], branched=False, candidates=[draft.text]))
        drafts.append(draft)
    candidates = union(drafts, [v.name for v in state.views])
    fast = len(candidates) == 1
    if fast:
        chosen = 0
    else:
        score_candidates(state, candidates, drafts)
        chosen = select(candidates)
    return Round(index, proposals, candidates, chosen, candidates[chosen].text, fast_path=fast, unit=unit)


def _first_steps(state: DecodeState) -> list[tuple[int, MemberView, TopK]]:
    """Each voting member's next-token distribution after the committed text."""
    state.check()
    return [
        (i, state.views[i], state.views[i].member.next_token(state.context(i), state.config.top_k))
        for i in state.active
    ]


def _writer(state: DecodeState, member: int, unit: str, cfg: DecodeConfig) -> DraftWriter:
    if unit == "span":
        return DraftWriter(
            state, member, UNBOUNDED_WORDS, None, cfg.span_tokens + WORD_TOKEN_CAP, min_tokens=cfg.span_tokens
        )
    return DraftWriter(state, member, UNBOUNDED_WORDS, None, cfg.max_new_tokens)


def single_round(state: DecodeState, index: int) -> Round:
    """One member (``single_member``), greedy: the whole answer in one round."""
    return _draft_round(state, index, "answer")


def span_round(state: DecodeState, index: int) -> Round:
    return _draft_round(state, index, "span")


def sample_round(state: DecodeState, index: int) -> Round:
    return _draft_round(state, index, "answer")


def token_round(state: DecodeState, index: int) -> Round:
    """One token-string per round: union of every member's top-k strings, averaged probabilities, argmax."""
    proposals: list[Proposal] = []
    drafts: list[Draft] = []
    for i, view, top in _first_steps(state):
        texts = []
        for tok, lp in zip(top.ids, top.logprobs, strict=True):
            if view.member.is_eog(tok):
                drafts.append(Draft("", True, i, [tok] if tok == view.member.eos_id else [], [lp]))
                texts.append("")
                continue
            raw = view.member.token_bytes(tok)
            text = decode_utf8_prefix(raw)
            # A byte-fallback token that is only part of a character has no string of its own to share.
            if not text or text.encode() != raw:
                continue
            drafts.append(Draft(text, False, i, [tok], [lp]))
            texts.append(text)
        proposals.append(Proposal(view.name, [top.margin], branched=True, candidates=texts))
    candidates = union(drafts, [v.name for v in state.views])
    # Probabilities of whole strings are compared, not per-token averages: score with the raw sum.
    score_candidates(state, candidates, drafts, per_token=False)
    for cand in candidates:
        # Average probabilities (not log-probabilities) across members, as UniTE does; keep "lower is better".
        prob = sum(state.weights[i] * math.exp(-cand.scores[state.views[i].name]) for i in state.active)
        cand.combined = -math.log(max(prob / sum(state.weights[i] for i in state.active), 1e-300))
    chosen = select(candidates)
    return Round(index, proposals, candidates, chosen, candidates[chosen].text, fast_path=False, unit="token")
