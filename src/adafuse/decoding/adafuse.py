"""The AdaFuse round: read every member's confidence, pick the unit, propose, union, score by everyone, commit.

Confident members (top-1 margin >= theta) write up to the round's unit (``max_words`` words in the paper's
setting) while they stay confident; uncertain members branch on their top-B first tokens, one word each. All
distinct candidates are scored by every member and the lowest weighted mean NLL wins (a candidate that can no
longer win is not scored to its end: ``decoding/bounded.py``). When every member proposes
the same single string, scoring cannot change the choice, so it is skipped (the fast path). A member left voting
alone has no one to judge its branches, so it writes its greedy answer (``solo_round``; docs/RESULTS.md, "Lone
member"). Text-only members (API models) add their candidates before the union and never vote
(``decoding/text_proposals.py``).
"""

from __future__ import annotations

from adafuse.backends.base import Step, TopK
from adafuse.decoding.bounded import score_to_select
from adafuse.decoding.granularity import Signals, Unit, decide, entropy, fixed_unit, text_kind, words_in
from adafuse.decoding.loop import output_tokens
from adafuse.decoding.parallel import map_active
from adafuse.decoding.proposals import UNBOUNDED_WORDS, WORD_TOKEN_CAP, DraftWriter, write_draft, write_drafts
from adafuse.decoding.scoring import Draft, select, union
from adafuse.decoding.state import DecodeState
from adafuse.result import Proposal, Round


def adafuse_round(state: DecodeState, index: int) -> Round:
    cfg = state.config
    if len(state.active) == 1 and all(t.out is not None for t in state.texts):
        return solo_round(state, index)
    firsts: dict[int, TopK] = {}
    if cfg.granularity == "adaptive":
        # The unit depends on every member's first distribution, so those are read before anyone drafts.
        firsts = dict(zip(state.active, map_active(state, lambda i: first_step(state, i)), strict=True))
        unit = adaptive_unit(state, firsts)
    else:
        unit = fixed_unit(cfg.granularity, cfg.max_words)

    def member_round(i: int) -> tuple[TopK, Proposal, list[Draft]]:
        first = firsts[i] if i in firsts else first_step(state, i)
        return (first, *propose(state, i, first, unit))

    for text in state.texts:
        text.prepare(state)  # its call, if it needs one, runs while the members draft
    proposals: list[Proposal] = []
    drafts: list[Draft] = []
    for i, (first, proposal, own) in zip(state.active, map_active(state, member_round), strict=True):
        firsts[i] = first
        proposals.append(proposal)
        drafts.extend(own)
    # Every member wrote one draft and they agree: nothing to choose (a text-only member may still disagree).
    agreed = len(drafts) == len(state.active)
    for k, text in enumerate(state.texts):
        got = text.propose(state, unit, len(state.views) + k)
        if got is not None:
            proposals.append(got[0])
            drafts.append(got[1])
    candidates = union(drafts, [v.name for v in state.views] + [t.name for t in state.texts])
    fast = len(candidates) == 1 and agreed
    if fast:
        chosen = 0
    else:
        score_to_select(state, candidates, drafts)
        chosen = select(candidates)
    return Round(index, proposals, candidates, chosen, candidates[chosen].text, fast_path=fast, unit=unit.name)


#: how many tokens a lone member writes per round: rounds only pace a stream and let a request be cancelled.
SOLO_ROUND_TOKENS = 16


def solo_round(state: DecodeState, index: int) -> Round:
    """The one member voting writes on greedily, ``SOLO_ROUND_TOKENS`` tokens a round, and the next round conditions
    on those very tokens (not a re-tokenisation of their text, which at a cut inside Qwen's ".\n" would differ):
    the answer ``single`` writes in one pass, paced so that a stream moves and a cancelled request stops."""
    cfg = state.config
    i = state.active[0]
    view = state.views[i]
    context = state.context(i)
    first = view.member.next_token(context, cfg.top_k)
    # What is left of the budget, as ``single``'s one draft has it: a last round may not run past it to an end token.
    left = max(1, cfg.max_new_tokens - output_tokens(state))
    writer = DraftWriter(state, i, UNBOUNDED_WORDS, None, left, unit_tokens=SOLO_ROUND_TOKENS)
    draft = write_draft(state, i, Step(first, first.ids[0]), writer)
    # The tokens spell the text unless a stop string cut it (the loop then ends the answer, as it ends single's) or
    # the last one ends inside a character: then the next round reads the text re-tokenised, the one place where
    # the two could part.
    ids = [t for t in draft.tokens if not view.member.is_eog(t)]
    if b"".join(view.member.token_bytes(t) for t in ids) == draft.text.encode("utf-8"):
        view.continue_with(state.committed + draft.text, context + ids)
    proposal = Proposal(view.name, [first.margin], branched=False, candidates=[draft.text])
    candidates = union([draft], [v.name for v in state.views])
    return Round(index, [proposal], candidates, 0, draft.text, fast_path=True, unit="solo")


def first_step(state: DecodeState, member: int) -> TopK:
    cfg = state.config
    return state.views[member].member.next_token(state.context(member), max(cfg.beam, cfg.top_k, 2))


def adaptive_unit(state: DecodeState, firsts: dict[int, TopK]) -> Unit:
    cfg = state.config
    signals = Signals(
        margins=tuple(top.margin for top in firsts.values()),
        entropies=tuple(entropy(top) for top in firsts.values()),
        agree_streak=agree_streak(state),
        kind=text_kind(state.views[state.active[0]].prompt + state.committed),
        words_so_far=words_in(state.committed),
    )
    return decide(signals, cfg.theta, cfg.max_words)


def agree_streak(state: DecodeState) -> int:
    streak = 0
    for rnd in reversed(state.rounds):
        if not rnd.fast_path:
            break
        streak += 1
    return streak


def propose(state: DecodeState, member: int, first: TopK, unit: Unit) -> tuple[Proposal, list[Draft]]:
    """One member's candidates for this round: one long draft when confident, B one-word drafts when not."""
    cfg = state.config
    view = state.views[member]
    confident = first.margin >= cfg.theta
    cap = WORD_TOKEN_CAP * unit.max_words
    unit_tokens = 1 if unit.name == "token" else None
    if confident:
        writer = DraftWriter(
            state,
            member,
            unit.max_words,
            cfg.theta,
            cap,
            word_cap=WORD_TOKEN_CAP,
            boundary=unit.boundary,
            unit_tokens=unit_tokens,
        )
        writers = [writer]
        firsts = [first.ids[0]]
    else:
        firsts = list(first.ids[: cfg.beam])
        writers = [DraftWriter(state, member, 1, None, WORD_TOKEN_CAP, unit_tokens=unit_tokens) for _ in firsts]
    drafts = write_drafts(state, member, [Step(first, tok) for tok in firsts], writers)
    margins = [first.margin] + (writers[0].margins if confident else [])
    proposal = Proposal(view.name, margins, branched=not confident, candidates=[d.text for d in drafts])
    return proposal, drafts
