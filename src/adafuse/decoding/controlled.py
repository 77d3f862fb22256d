"""The AdaFuse round under a fitted controller (control/): route the request, or vote line by line.

Round 0 reads every voting member's first next-token distribution and asks the controller's ``route`` choice
which member to trust. When one member's probability reaches the controller's ``route_at`` the others sit the
request out and that member writes its own greedy answer (``solo_round``: the cost of running it alone). Otherwise
every member writes its greedy line (up to the end of a line and the blank lines after it), every member scores
every distinct line, and the controller's ``pick`` choice commits one; the next round starts from it. A kind of
request the controller was not fitted on is left to today's rule (``abstain``).
"""

from __future__ import annotations

from adafuse.backends.base import Step, TopK
from adafuse.control.signals import RequestKind, pick_features, route_features
from adafuse.decoding.adafuse import adafuse_round, first_step, solo_round
from adafuse.decoding.evidence import evidence_weights
from adafuse.decoding.granularity import entropy
from adafuse.decoding.loop import bench, output_tokens
from adafuse.decoding.parallel import map_active
from adafuse.decoding.proposals import UNBOUNDED_WORDS, WORD_TOKEN_CAP, DraftWriter, write_draft
from adafuse.decoding.scoring import score_candidates, union
from adafuse.decoding.state import DecodeState
from adafuse.decoding.words import decode_utf8_prefix
from adafuse.result import Proposal, Round


def controlled_round(state: DecodeState, index: int) -> Round:
    ctl = state.controller
    assert ctl is not None
    if index == 0 and not ctl.knows(request_kind(state).flags):
        return abstain(state, index)
    if state.rounds and state.rounds[0].signals.get("abstained"):
        return adafuse_round(state, index)
    firsts: dict[int, TopK] = {}
    signals: dict = {}
    if index == 0 and len(state.active) > 1:
        firsts, signals = route(state)
    if len(state.active) == 1:
        rnd = solo_round(state, index)
        rnd.signals = signals
        return rnd
    return line_round(state, index, firsts, signals)


def abstain(state: DecodeState, index: int) -> Round:
    """A kind of request the controller never saw in its fit rows (say maths, fitted on QA and translation):
    today's rule decides instead, evidence weights and benching (decoding/evidence.py), for the whole answer."""
    cfg = state.config
    if state.evidence is not None and cfg.auto_weights:
        state.weights = evidence_weights(state.weights, state.evidence[0], cfg.auto_sharpness)
    benched = bench(state)
    rnd = adafuse_round(state, index)
    rnd.signals = {"abstained": True, "benched": benched}
    return rnd


def request_kind(state: DecodeState) -> RequestKind:
    return RequestKind.of(state.views[state.active[0]].prompt, state.evidence[1] if state.evidence else None)


def evidence_by_name(state: DecodeState) -> dict[str, float]:
    return {state.views[i].name: v for i, v in state.evidence[0].items()} if state.evidence else {}


def route(state: DecodeState) -> tuple[dict[int, TopK], dict]:
    """The request-level decision; narrows ``state.active`` to one member when the controller routes."""
    ctl = state.controller
    assert ctl is not None
    firsts = dict(zip(state.active, map_active(state, lambda i: first_step(state, i)), strict=True))
    names = [v.name for v in state.views]
    voting = [state.views[i].name for i in state.active]
    margins = {state.views[i].name: top.margin for i, top in firsts.items()}
    entropies = {state.views[i].name: entropy(top) for i, top in firsts.items()}
    first_tokens = {state.views[i].name: first_text(state, i, top.ids[0]).strip().lower() for i, top in firsts.items()}
    x = route_features(names, request_kind(state), evidence_by_name(state), margins, entropies, first_tokens)
    probs = ctl.route.probabilities(x)
    state.weights = tuple(float(probs[voting.index(v.name)]) if v.name in voting else 0.0 for v in state.views)
    best = ctl.routed(probs)
    routed = voting[best] if best is not None else None
    if best is not None:
        state.active = [state.active[best]]
    signals = {
        "route": dict(zip(voting, map(float, probs), strict=True)),
        "routed": routed,
        "benched": [n for n in voting if routed is not None and n != routed],
        "margins": margins,
        "entropies": entropies,
        "first_tokens": first_tokens,
    }
    return firsts, signals


def first_text(state: DecodeState, member: int, token: int) -> str:
    m = state.views[member].member
    return "" if m.is_eog(token) else decode_utf8_prefix(m.token_bytes(token))


def line_round(state: DecodeState, index: int, firsts: dict[int, TopK], signals: dict) -> Round:
    ctl = state.controller
    assert ctl is not None
    left = max(1, state.config.max_new_tokens - output_tokens(state))

    def member_line(i: int):
        first = firsts[i] if i in firsts else first_step(state, i)
        writer = DraftWriter(state, i, UNBOUNDED_WORDS, None, left, word_cap=WORD_TOKEN_CAP, boundary="line")
        return first, write_draft(state, i, Step(first, first.ids[0]), writer)

    proposals, drafts = [], []
    for i, (first, draft) in zip(state.active, map_active(state, member_line), strict=True):
        proposals.append(Proposal(state.views[i].name, [first.margin], branched=False, candidates=[draft.text]))
        drafts.append(draft)
    candidates = union(drafts, [v.name for v in state.views])
    fast = len(candidates) == 1
    chosen = 0
    if not fast:
        score_candidates(state, candidates, drafts)
        x = pick_features(
            [v.name for v in state.views],
            request_kind(state),
            evidence_by_name(state),
            candidates,
            state.committed,
            state.config.stop,
        )
        scores = ctl.pick.scores(x)
        chosen = int(scores.argmax())  # the first of equal scores: proposal order
        for cand, s in zip(candidates, scores, strict=True):
            cand.combined = -float(s)
        signals = {**signals, "pick": [float(s) for s in scores]}
    rnd = Round(index, proposals, candidates, chosen, candidates[chosen].text, fast_path=fast, unit="line")
    rnd.signals = signals
    return rnd
