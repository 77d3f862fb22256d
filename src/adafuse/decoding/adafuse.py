"""The AdaFuse round: propose adaptively, union, score by everyone, commit the best.

Confident members (top-1 margin >= theta) write up to ``max_words`` words while they stay confident; uncertain
members branch on their top-B first tokens, one word each. All distinct candidates are scored by every member
and the lowest weighted mean NLL wins. When every member proposes the same single string, scoring cannot
change the choice, so it is skipped (the fast path).
"""

from __future__ import annotations

from adafuse.backends.base import Step
from adafuse.decoding.failure import map_active
from adafuse.decoding.proposals import DraftWriter, write_draft
from adafuse.decoding.scoring import Draft, score_candidates, select, union
from adafuse.decoding.state import DecodeState
from adafuse.result import Proposal, Round


def propose(state: DecodeState, member: int) -> tuple[Proposal, list[Draft]]:
    """One member's candidates for this round: one long draft when confident, B one-word drafts when not."""
    cfg = state.config
    view = state.views[member]
    first = view.member.next_token(state.context(member), max(cfg.beam, cfg.top_k, 2))
    cap = cfg.word_token_cap * cfg.max_words
    confident = first.margin >= cfg.theta
    if confident:
        writers = [DraftWriter(state, member, cfg.max_words, cfg.theta, cap, word_cap=cfg.word_token_cap)]
        firsts = [first.ids[0]]
    else:
        firsts = list(first.ids[: cfg.beam])
        writers = [DraftWriter(state, member, 1, None, cfg.word_token_cap) for _ in firsts]
    drafts = [write_draft(state, member, Step(first, tok), w) for tok, w in zip(firsts, writers, strict=True)]
    margins = [first.margin] + (writers[0].margins if confident else [])
    proposal = Proposal(view.name, margins, branched=not confident, candidates=[d.text for d in drafts])
    return proposal, drafts


def adafuse_round(state: DecodeState, index: int) -> Round:
    proposals: list[Proposal] = []
    drafts: list[Draft] = []
    for proposal, own in map_active(state, lambda i: propose(state, i)):
        proposals.append(proposal)
        drafts.extend(own)
    if state.config.drop_unfinished and any(not d.unfinished for d in drafts):
        # A word that ran into the token cap is usually a runaway repetition, and per-token normalisation makes
        # such easy-to-predict text look good; the proposal trace still shows it.
        drafts = [d for d in drafts if not d.unfinished]
    candidates = union(drafts, [v.name for v in state.views])
    fast = len(candidates) == 1 and len(drafts) == len(state.active)
    if fast:
        chosen = 0
    else:
        score_candidates(state, candidates, drafts)
        chosen = select(candidates)
    return Round(index, proposals, candidates, chosen, candidates[chosen].text, fast_path=fast)
