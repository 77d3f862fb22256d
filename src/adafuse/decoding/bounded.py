"""Scoring just far enough to know the winner: a candidate that can no longer win is not scored to its end.

A member's score of a candidate is its NLL per token, ``-(lp_1 + ... + lp_n) / n``. Every ``lp`` is at most 0, so
the tokens scored so far give a lower bound that only grows as more are scored, and the weighted mean of the
members' bounds bounds the combined score. A member that scores one token per call (llama.cpp:
``StepwiseScores``) pays one ``llama_decode`` per token, so it can stop early:

1. every member bounds every candidate from what it has for free: the round's first distribution (its rows are
   cached) and its own drafts; a member that scores in one call (transformers, remote) scores everything exactly;
2. every member scores the candidate with the lowest bound to its end: its combined score is the bar;
3. every member scores each other candidate token by token while its bound, with the others' bounds of step 1,
   stays at or below the bar.

A candidate dropped in step 3 has a combined bound above the bar, so ``select`` picks exactly what full scoring
picks, ties included; its scores are lower bounds and ``Candidate.bounded`` says so. Every token scored gets the
number full scoring gives it (a stepwise member's numbers depend only on the prefix: ``backends/prefix_cache.py``),
and what each member skips depends only on steps 1-2, never on timing, so the trace is the same on every run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from adafuse.backends.base import scores_stepwise
from adafuse.decoding.parallel import map_active
from adafuse.decoding.scoring import Draft, Key, combine, member_logprobs, own_logprobs, plan_scoring, score_candidates
from adafuse.decoding.state import DecodeState
from adafuse.errors import MemberError
from adafuse.result import Candidate


def score_to_select(state: DecodeState, candidates: list[Candidate], drafts: list[Draft]) -> None:
    """``score_candidates`` for a round decided by ``select``, skipping the tokens that cannot change its choice."""
    stepwise = [i for i in state.active if scores_stepwise(state.views[i].member)]
    if len(candidates) < 2 or not stepwise or sum(state.weights[i] for i in state.active) <= 0:
        score_candidates(state, candidates, drafts)
        return
    walks = dict(zip(state.active, map_active(state, lambda i: _Walk.start(state, i, candidates, drafts)), strict=True))
    free = {i: list(w.bounds) for i, w in walks.items()}
    leader = min(range(len(candidates)), key=lambda j: (_combined(state, {i: b[j] for i, b in free.items()}), j))
    map_active(state, lambda i: walks[i].finish(leader, None))
    bar = _combined(state, {i: w.bounds[leader] for i, w in walks.items()})

    def rest(i: int) -> None:
        for j in range(len(candidates)):
            if j != leader:
                walks[i].finish(j, lambda b, j=j: _combined(state, {**{k: f[j] for k, f in free.items()}, i: b}) > bar)

    map_active(state, rest)
    for j, cand in enumerate(candidates):
        for i, walk in walks.items():
            cand.scores[state.views[i].name] = walk.bounds[j]
        cand.bounded = any(not walk.exact[j] for walk in walks.values())
        cand.combined = combine(state, cand)


def _combined(state: DecodeState, scores: dict[int, float]) -> float:
    """``combine``'s weighted mean, from member index -> score (the same float operations, in the same order)."""
    total = sum(state.weights[i] * scores[i] for i in state.active)
    return total / sum(state.weights[i] for i in state.active)


@dataclass
class _Path:
    """One (head, tokens) log-probability a member needs, scored ``done`` tokens far (their sum ``lp``)."""

    tokens: tuple[int, ...]
    done: int = 0
    lp: float = 0.0

    @property
    def finished(self) -> bool:
        return self.done == len(self.tokens)


@dataclass
class _Walk:
    """One member's scoring of a round's candidates: a bound per candidate, exact once its paths are finished."""

    state: DecodeState
    member: int
    ctx: list[int]
    #: per candidate: the paths its score sums (canonical, and the extension when it has one) and its token count;
    #: None for a candidate scored exactly at the start (a re-tokenised context, or a member without steps).
    plans: list[tuple[list[_Path], int] | None]
    bounds: list[float]
    exact: list[bool]

    @classmethod
    def start(cls, state: DecodeState, i: int, candidates: list[Candidate], drafts: list[Draft]) -> _Walk:
        state.check()
        view = state.views[i]
        ctx = state.context(i)
        known = own_logprobs(i, len(ctx), drafts)
        n = len(candidates)
        walk = cls(state, i, ctx, [None] * n, [math.inf] * n, [True] * n)
        if not scores_stepwise(view.member):
            walk._exactly(range(n), candidates, known)
            return walk
        paths: dict[Key, _Path] = {}
        hard = []
        for j, cand in enumerate(candidates):
            plan = plan_scoring(view, ctx, state.committed, cand)
            if plan.tail is not None or plan.healed is not None or plan.canonical[0] != len(ctx):
                hard.append(j)
                continue
            keys = [plan.canonical] + ([plan.extension] if plan.extension else [])
            walk.plans[j] = ([paths.setdefault(k, _Path(k[1])) for k in keys], plan.n_tokens)
        walk._exactly(hard, candidates, known)
        for path in paths.values():
            # The longest prefix a draft walked is known; else the first token, from the round's cached first row.
            done = max((k for k in range(len(path.tokens) + 1) if (len(ctx), path.tokens[:k]) in known), default=0)
            if done:
                path.done, path.lp = done, known[(len(ctx), path.tokens[:done])]
            elif path.tokens:
                walk._step(path)
        for j in range(n):
            if walk.plans[j] is not None:
                walk._bound(j)
        return walk

    def _exactly(self, which: Iterable[int], candidates: list[Candidate], known: dict[Key, float]) -> None:
        js = list(which)
        if not js:
            return
        view = self.state.views[self.member]
        scored = member_logprobs(view, self.ctx, self.state.committed, [candidates[j] for j in js], known)
        for j, (lp, n) in zip(js, scored, strict=True):
            self.bounds[j] = self._checked(-lp / max(1, n), candidates[j])

    def _checked(self, score: float, cand: Candidate | None = None) -> float:
        if not math.isfinite(score):
            name = self.state.views[self.member].name
            what = f" for candidate {cand.text!r}" if cand is not None else ""
            raise MemberError(name, f"produced a non-finite score ({score}){what}")
        return score

    def _step(self, path: _Path) -> None:
        """Score the path's next token. A stepwise member evaluates every token from the prompt's last on alone,
        so its number depends only on the tokens before it: the same as full scoring's, whatever the cache walked."""
        member = self.state.views[self.member].member
        k = path.done
        lp = member.score([(self.ctx + list(path.tokens[:k]), [path.tokens[k]])])[0][0]
        path.lp += self._checked(lp)
        path.done += 1

    def _bound(self, j: int) -> None:
        plan = self.plans[j]
        assert plan is not None
        paths, n = plan
        # Two spellings of the same text: their probabilities add up (as ``_Plan.logprob`` adds them).
        lp = paths[0].lp if len(paths) == 1 else float(np.logaddexp(paths[0].lp, paths[1].lp))
        self.exact[j] = all(p.finished for p in paths)
        # Unfinished, ``lp`` only falls as tokens are scored; the spellings are disjoint, so it never passes 0.
        self.bounds[j] = -lp / max(1, n) if self.exact[j] else -min(0.0, lp) / max(1, n)

    def finish(self, j: int, beaten: Callable[[float], bool] | None) -> None:
        """Score candidate ``j`` to its end, or until ``beaten(bound)`` says it can no longer win."""
        plan = self.plans[j]
        if plan is None:
            return
        while not self.exact[j]:
            if beaten is not None and beaten(self.bounds[j]):
                return
            self.state.check()
            self._step(next(p for p in plan[0] if not p.finished))
            self._bound(j)
