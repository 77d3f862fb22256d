"""Scoring just far enough to know the winner (decoding/bounded.py) picks what full scoring picks, with the same
scores wherever it scored to the end and lower bounds elsewhere, and scores fewer tokens."""

from __future__ import annotations

import copy
import random

from fakes import EOS, ScriptedMember
from hypothesis import given, settings
from hypothesis import strategies as st

from adafuse.config import DecodeConfig
from adafuse.decoding.bounded import score_to_select
from adafuse.decoding.scoring import Draft, score_candidates, select, union
from adafuse.decoding.state import DecodeState, MemberView
from adafuse.result import Candidate

PIECES = ["a", "b", "c", " ", "ab", " a", "bc", EOS]


class Stepwise(ScriptedMember):
    """A scripted member that pays per scored token, as llama.cpp does."""

    scores_stepwise = True


def random_script(seed: int):
    def script(text: str) -> dict[str, float]:
        rng = random.Random(f"{seed}:{text}")
        raw = [rng.random() ** 3 for _ in PIECES]
        total = sum(raw) * 1.01
        return {p: w / total for p, w in zip(PIECES, raw, strict=True)}

    return script


def members(seeds: list[int], cls: type) -> list[ScriptedMember]:
    return [cls(f"m{k}", PIECES, random_script(s)) for k, s in enumerate(seeds)]


def round_state(seeds: list[int], weights: tuple[float, ...], committed: str, cls: type) -> DecodeState:
    views = [MemberView(m, "") for m in members(seeds, cls)]
    return DecodeState(views, DecodeConfig(), weights, committed=committed)


def drafts_for(texts: list[tuple[str, bool, int]]) -> list[Draft]:
    # Drafts without walked tokens: every score is computed by scoring.
    return [Draft(text, eos, member, [], []) for text, eos, member in texts]


candidate_texts = st.lists(
    st.tuples(st.text(alphabet="abc ", min_size=1, max_size=6), st.booleans(), st.integers(0, 2)),
    min_size=2,
    max_size=7,
)


@settings(max_examples=150, deadline=None)
@given(
    seeds=st.lists(st.integers(0, 10_000), min_size=2, max_size=3),
    texts=candidate_texts,
    committed=st.sampled_from(["", "a", "ab ", "c"]),
    weights=st.lists(st.floats(0.05, 1.0), min_size=3, max_size=3),
)
def test_bounded_scoring_picks_what_full_scoring_picks(seeds, texts, committed, weights):
    n = len(seeds)
    texts = [(t, e, m % n) for t, e, m in texts]
    w = tuple(weights[:n])
    drafts = drafts_for(texts)
    names = [f"m{k}" for k in range(n)]

    full_state = round_state(seeds, w, committed, ScriptedMember)
    full = union(drafts, names)
    score_candidates(full_state, full, drafts)

    bounded_state = round_state(seeds, w, committed, Stepwise)
    bounded: list[Candidate] = union(drafts, names)
    score_to_select(bounded_state, bounded, drafts)

    assert select(bounded) == select(full)
    winner = full[select(full)]
    for b, f in zip(bounded, full, strict=True):
        if b.bounded:
            assert b.combined > winner.combined
            assert all(b.scores[m] <= f.scores[m] + 1e-12 for m in names)
        else:
            assert b.scores == f.scores and b.combined == f.combined
    # Every context it read, full scoring read too (an engine with a prefix cache evaluates each once).
    for b_view, f_view in zip(bounded_state.views, full_state.views, strict=True):
        assert set(b_view.member.calls) <= set(f_view.member.calls)


def test_a_hopeless_candidate_is_dropped_after_its_free_first_token():
    # Both members find "b..." very unlikely from its first token: only the leader is scored to its end.
    def script(text: str) -> dict[str, float]:
        return {"a": 0.9, "b": 0.001, " ": 0.05, EOS: 0.04}

    views = [MemberView(Stepwise(f"m{k}", PIECES, script), "") for k in range(2)]
    state = DecodeState(views, DecodeConfig(), (0.5, 0.5))
    drafts = drafts_for([("aaaa", False, 0), ("bbbb", False, 1)])
    cands = union(drafts, ["m0", "m1"])
    score_to_select(state, cands, drafts)
    assert [c.bounded for c in cands] == [False, True]
    assert select(cands) == 0
    # "b" after the prompt is the only token of "bbbb" either member scored.
    for v in views:
        assert [call for call in v.member.calls if call.startswith("b")] == []
    reference = copy.deepcopy(cands[0].scores)
    state2 = DecodeState(
        [MemberView(ScriptedMember(f"m{k}", PIECES, script), "") for k in range(2)], DecodeConfig(), (0.5, 0.5)
    )
    full = union(drafts, ["m0", "m1"])
    score_candidates(state2, full, drafts)
    assert full[0].scores == reference
