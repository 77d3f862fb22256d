"""Boundary-correct scoring of candidates by every member, and the combiners that pick the winner.

A candidate ``c`` is scored by member m on the tokens of ``tok_m(p_m + x + c)`` beyond the longest prefix it
shares with ``tok_m(p_m + x)``. When the tokenizer merges across the boundary (``"Answer:"`` + ``"\n1961"``
becomes ``"Answer" ":\n" "196" "1"``), the context's own last tokens change; we then score
``log P(tail + c | head) - log P(text of tail | head)``. The denominator is the probability that the text goes on
with the tail's text through *any* token that starts with it (``":"``, ``":\n"``, ``": "``, ...; token healing),
not through the tail's own token alone: after ``"Answer"`` a model that always saw ``":\n"`` finds a lone ``":"``
unlikely, and dividing by it gave every candidate that starts a new line a bonus of several nats (docs/RESULTS.md,
trace 8). The candidate is never tokenised on its own: that loses the leading space and makes every member but
the proposer look worse (the reference code's self-preference bug).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from adafuse.backends.base import FullVocabulary, common_prefix_len, tokens_starting_with
from adafuse.decoding.parallel import map_active
from adafuse.decoding.state import DecodeState, MemberView
from adafuse.errors import MemberError
from adafuse.result import Candidate


@dataclass
class Draft:
    """A candidate as one member wrote it, with the tokens it walked and their log-probabilities.

    ``tokens`` may run past ``text`` (the token that showed the word had ended): any prefix of the path is a
    score the member already has.
    """

    text: str
    eos: bool
    member: int
    tokens: list[int]
    logprobs: list[float]


def score_candidates(
    state: DecodeState, candidates: list[Candidate], drafts: list[Draft], per_token: bool = True
) -> None:
    """Fill ``candidate.scores`` (member -> NLL, per token unless ``per_token`` is False) and ``candidate.combined``
    (the weighted mean over the voting members) for every candidate."""

    def member_scores(i: int) -> list[float]:
        state.check()
        ctx = state.context(i)
        known = own_logprobs(i, len(ctx), drafts)
        scored = member_logprobs(state.views[i], ctx, state.committed, candidates, known)
        return [-lp / (max(1, n) if per_token else 1) for lp, n in scored]

    for i, scores in zip(state.active, map_active(state, member_scores), strict=True):
        name = state.views[i].name
        for cand, score in zip(candidates, scores, strict=True):
            if not math.isfinite(score):
                # An error, never a silent drop of the member's vote (the reference code's NaN bug).
                raise MemberError(name, f"produced a non-finite score ({score}) for candidate {cand.text!r}")
            cand.scores[name] = score
    for cand in candidates:
        cand.combined = combine(state, cand)


Key = tuple[int, tuple[int, ...]]
#: how many of a remote member's most likely tokens are searched for those that extend a healed token's text (20
#: is what vLLM serves by default); a local member sums over its whole vocabulary.
HEAL_TOP_K = 20


def member_logprobs(
    view: MemberView,
    ctx: list[int],
    committed: str,
    candidates: list[Candidate],
    known: dict[Key, float] | None = None,
) -> list[tuple[float, int]]:
    """One member's log-probability of each candidate's text after ``committed`` (``ctx`` is its tokenisation
    of the prompt and ``committed``), with the candidate's token count: all needed continuations go to the
    member in one ``score`` call, less those in ``known``."""
    plans = [plan_scoring(view, ctx, committed, cand) for cand in candidates]
    keys = list(dict.fromkeys(key for plan in plans for key in plan.needed()))
    known = known or {}
    todo = [key for key in keys if key not in known]
    scored = view.member.score([(ctx[:head], list(toks)) for head, toks in todo]) if todo else []
    lp = dict(known)
    lp.update({key: sum(vals) for key, vals in zip(todo, scored, strict=True)})
    # Each healed token's prefix mass, from its likely extensions and the first tokens the candidates need.
    seen: dict[Key, dict[int, float]] = {}
    for plan in plans:
        if plan.healed is not None:
            at = seen.setdefault(plan.healed, {})
            at.update({key[1][0]: lp[key] for key in (plan.healed, plan.first) if key is not None})
    mass = {key: _prefix_mass(view, ctx[: key[0]], key[1][0], tokens) for key, tokens in seen.items()}
    return [(plan.logprob(lp, mass), plan.n_tokens) for plan in plans]


@dataclass(frozen=True)
class _Plan:
    """How one member scores one candidate: which (head length, tokens) log-probabilities it needs."""

    canonical: Key
    #: the context's own last tokens that re-tokenise when the candidate is appended (usually none); with token
    #: healing, all but the last of them (which ``healed`` covers).
    tail: Key | None
    #: the candidate's tokens appended to the unchanged context, when that spelling differs from the canonical.
    extension: Key | None
    n_tokens: int
    #: with token healing, the context's last token where it re-tokenises: its text's prefix mass is divided out.
    healed: Key | None = None
    #: the canonical spelling's first token where it replaces the healed token: part of that prefix mass.
    first: Key | None = None

    def needed(self) -> list[Key]:
        return [k for k in (self.canonical, self.tail, self.extension, self.healed, self.first) if k is not None]

    def logprob(self, lp: dict[Key, float], mass: dict[Key, float]) -> float:
        """``lp``: log-probabilities of the needed keys; ``mass``: each healed token's log prefix mass."""
        canonical = lp[self.canonical] - (lp[self.tail] if self.tail else 0.0)
        if self.healed is None:
            if self.extension is None:
                return canonical
            # Two token sequences that spell the same text: their probabilities add up.
            return float(np.logaddexp(canonical, lp[self.extension]))
        # Healed: both spellings are divided by the prefix mass of the healed token's text; the extension goes
        # through the healed token itself, so it keeps that token's share of the mass.
        canonical -= mass[self.healed]
        if self.extension is None:
            return canonical
        return float(np.logaddexp(canonical, lp[self.healed] - mass[self.healed] + lp[self.extension]))


def plan_scoring(view: MemberView, ctx: list[int], committed: str, cand: Candidate) -> _Plan:
    full = view.ids(committed + cand.text)
    head = common_prefix_len(ctx, full)
    end = [view.member.eos_id] if cand.eos else []
    new = full[head:] + end
    tail = (head, tuple(ctx[head:])) if head < len(ctx) else None
    n_tokens = max(1, len(new) - (len(tail[1]) if tail else 0))
    healed = first = None
    if tail is not None and view.member.token_bytes(ctx[-1]):
        healed = (len(ctx) - 1, (ctx[-1],))
        tail = (head, tail[1][:-1]) if len(tail[1]) > 1 else None
        if tail is None and new:
            first = (head, (new[0],))
    extension = None
    # A model may write "." then "\n" where its tokenizer would merge ".\n": the canonical spelling then
    # undersells what the model itself prefers, so the plain continuation of the context is scored too.
    piece = view.piece_ids(cand.text) if cand.text else []
    if piece is not None and (healed is not None or tail is not None or piece != full[head:]):
        extension = (len(ctx), tuple(piece + end))
    return _Plan((head, tuple(new)), tail, extension, n_tokens, healed, first)


def _prefix_mass(view: MemberView, context: list[int], token: int, known: dict[int, float]) -> float:
    """log P(the text goes on with ``token``'s text | ``context``), through any token that starts with that text.

    Exact for a member that can list its vocabulary (local engines). A remote member sums its top
    ``HEAL_TOP_K`` tokens and ``known`` (token -> log-probability: the healed token and the candidates' first
    tokens), each token once: a lower bound, never below a candidate's own first token, so a healed score is
    never a negative NLL.
    """
    member = view.member
    text = member.token_bytes(token)
    extending = tokens_starting_with(member, text)
    if extending is not None and isinstance(member, FullVocabulary):
        return float(np.logaddexp.reduce(member.logprobs_of(context, extending)))
    top = member.next_token(context, HEAL_TOP_K)
    pool = dict(zip(top.ids, top.logprobs, strict=True))
    pool.update(known)
    return float(
        np.logaddexp.reduce(
            [lp for t, lp in pool.items() if not member.is_eog(t) and member.token_bytes(t).startswith(text)]
        )
    )


def own_logprobs(member: int, ctx_len: int, drafts: list[Draft]) -> dict[Key, float]:
    """The proposer already has the log-probabilities of every prefix of the paths it walked: no second pass."""
    known: dict[Key, float] = {}
    for d in drafts:
        if d.member != member:
            continue
        total = 0.0
        for k, lp in enumerate(d.logprobs):
            total += lp
            known[(ctx_len, tuple(d.tokens[: k + 1]))] = total
    return known


def combine(state: DecodeState, cand: Candidate) -> float:
    """Weighted mean of the voting members' scores (all finite: ``score_candidates`` checks them)."""
    total = sum(state.weights[i] * cand.scores[state.views[i].name] for i in state.active)
    weight = sum(state.weights[i] for i in state.active)
    return total / weight if weight > 0 else math.inf


def select(candidates: list[Candidate]) -> int:
    """Index of the lowest combined score; ties go to the earliest candidate (proposal order)."""
    best = 0
    for j, cand in enumerate(candidates):
        assert cand.combined is not None
        if cand.combined < candidates[best].combined:  # type: ignore[operator]
            best = j
    return best


def union(drafts: list[Draft], names: list[str]) -> list[Candidate]:
    """Merge drafts with the same surface string (and end flag), remembering every proposer in order."""
    merged: dict[tuple[str, bool], Candidate] = {}
    for d in drafts:
        cand = merged.setdefault((d.text, d.eos), Candidate(text=d.text, eos=d.eos))
        if names[d.member] not in cand.proposers:
            cand.proposers.append(names[d.member])
    return list(merged.values())
