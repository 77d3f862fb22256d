"""Threads that fit the machine: the cores shared out among the members working at once, the same answer
whatever the allocation."""

from __future__ import annotations

import threading
import time

import pytest

from adafuse.backends import DEFAULT_ENSEMBLE, load_member
from adafuse.backends.base import available_cores
from adafuse.config import DecodeConfig
from adafuse.decoding.parallel import allocate, map_active
from adafuse.decoding.state import DecodeState, MemberView
from adafuse.ensemble import Ensemble


class Sharing:
    """A core-sharing member that records the thread count each call ran with."""

    shares_cores = True
    concurrent = False
    exact_across_threads = True

    def __init__(self, name: str) -> None:
        self.name = name
        self.threads = 0
        self.history: list[int] = []
        self.seen: list[tuple[int, str]] = []

    def set_threads(self, n: int) -> None:
        self.threads = n
        self.history.append(n)


class Remote:
    concurrent = True


class Pinned(Sharing):
    """Loaded with an explicit thread count: keeps it."""

    shares_cores = False


def test_cores_are_shared_out_among_the_members_working_at_once():
    three = allocate([Sharing("a"), Sharing("b"), Sharing("c")], cores=2)
    assert three.pooled == {0, 1, 2} and three.threads == {0: 1, 1: 1, 2: 1}
    assert allocate([Sharing("a"), Sharing("b")], cores=16).threads == {0: 8, 1: 8}
    # Alone (the others benched, or a remote member beside it), a member computes with every core, in place.
    alone = allocate([Sharing("a"), Remote()], cores=4)
    assert alone.pooled == {1} and alone.threads == {0: 4}
    # Explicit thread counts are the user's: never changed, and run beside the others only when they say so.
    pinned = allocate([Pinned("a"), Pinned("b")], cores=2)
    assert pinned.pooled == frozenset() and pinned.threads == {}


def test_map_active_sets_each_members_threads_for_the_call_and_gives_every_core_back():
    members = [Sharing("a"), Sharing("b"), Sharing("c")]
    state = DecodeState([MemberView(m, "") for m in members], DecodeConfig(), (1 / 3,) * 3)  # type: ignore[arg-type]

    together = threading.Barrier(3, timeout=10)  # passes only if the three calls run at once

    def fn(i: int) -> int:
        members[i].seen.append((members[i].threads, threading.current_thread().name))
        if len(state.active) == 3:
            together.wait()
        return i

    assert map_active(state, fn) == [0, 1, 2]
    assert all(m.seen[0][0] == max(1, available_cores() // 3) for m in members)
    assert len({m.seen[0][1] for m in members}) == 3  # side by side
    assert all(m.threads == available_cores() for m in members)  # restored after the call
    state.active = [1]
    map_active(state, fn)
    assert members[1].seen[-1] == (available_cores(), threading.current_thread().name)


def test_a_finished_members_cores_go_to_the_members_still_working(monkeypatch):
    import adafuse.decoding.parallel as parallel

    monkeypatch.setattr(parallel, "available_cores", lambda: 4)
    members = [Sharing("a"), Sharing("b"), Sharing("c")]
    state = DecodeState([MemberView(m, "") for m in members], DecodeConfig(), (1 / 3,) * 3)  # type: ignore[arg-type]
    started = threading.Barrier(3, timeout=10)

    def wait_for(member: Sharing, changes: int) -> None:
        deadline = time.monotonic() + 10
        while len(member.history) < changes and time.monotonic() < deadline:
            time.sleep(0.001)

    def fn(i: int) -> int:
        started.wait()
        wait_for(members[i], 1 + i)  # a finishes first; b once a's cores reached it, c once b's did too
        return i

    assert map_active(state, fn) == [0, 1, 2]
    # Set before the call, on each finish, then every core back after it.
    assert [m.history for m in members] == [[1, 4], [1, 2, 4], [1, 2, 4, 4]]


def test_a_member_whose_numbers_move_with_its_threads_keeps_its_count_to_the_end_of_the_call(monkeypatch):
    import adafuse.decoding.parallel as parallel

    monkeypatch.setattr(parallel, "available_cores", lambda: 4)
    members = [Sharing("a"), Sharing("b")]
    members[1].exact_across_threads = False  # type: ignore[misc]  # a transformers member
    state = DecodeState([MemberView(m, "") for m in members], DecodeConfig(), (0.5, 0.5))  # type: ignore[arg-type]
    a_done = threading.Event()

    def fn(i: int) -> int:
        if i == 1:
            assert a_done.wait(10)
            time.sleep(0.05)  # a's finish has been handled
            members[1].seen.append((members[1].threads, ""))
        else:
            a_done.set()
        return i

    assert map_active(state, fn) == [0, 1]
    assert members[1].seen == [(2, "")] and members[1].history == [2, 4]


def test_a_llamacpp_members_numbers_do_not_depend_on_its_thread_count():
    # Past 256 tokens llama.cpp attends over 512 cells or more, where flash attention would split a one-token
    # decode among the threads. Gemma is a K-quant model, SmolLM2 not.
    passage = " ".join(f"Paragraph {i}: the river keeps flowing past the old mill and the bridge." for i in range(40))
    for name in ("gemma3-270m", "smollm2-135m"):
        member = load_member(name, n_ctx=2048)
        assert member.shares_cores  # type: ignore[attr-defined]
        ctx = member.tokenize(passage + "\nQuestion: Which river flows through Paris?\nAnswer:")
        assert len(ctx) > 600
        cont = member.tokenize(" The Seine, in France.", bos=False)
        seen = []
        for threads in (1, 2, 1):
            member.set_threads(threads)  # type: ignore[attr-defined]
            member._reset()  # type: ignore[attr-defined]
            top = member.next_token(ctx, 8)
            seen.append((top.ids, top.logprobs, member.score([(ctx, cont)])))
        member.close()
        assert seen[0] == seen[1] == seen[2], name


@pytest.mark.parametrize("weights", ["equal", "auto"])
def test_the_default_allocation_writes_what_members_one_after_another_write(zoo_members, trivia_prompt, weights):
    prompts = [trivia_prompt, "Question: Who wrote Hamlet?\nAnswer:"]
    cfg = DecodeConfig(weights=weights, stop=["\n"], max_new_tokens=12)
    pinned = Ensemble(zoo_members)  # two threads each, one after another
    auto = Ensemble([load_member(name, n_ctx=2048) for name in DEFAULT_ENSEMBLE])
    try:
        for prompt in prompts:
            a, b = pinned.generate(prompt, cfg), auto.generate(prompt, cfg)
            assert a.text == b.text
            assert [[c.scores for c in r.candidates] for r in a.rounds] == [
                [c.scores for c in r.candidates] for r in b.rounds
            ]
    finally:
        auto.close()


@pytest.mark.models
def test_a_candidates_score_is_the_same_whatever_else_is_in_the_round_and_whoever_wrote_it(zoo_members, trivia_prompt):
    """Every number comes from one-token calls (docs/PERFORMANCE.md, "Scoring"): a candidate scored alone, in a
    crowd in another order, or from the path its proposer walked while drafting gets the same log-probability."""
    from adafuse.backends.base import Step
    from adafuse.decoding.proposals import DraftWriter, write_draft
    from adafuse.decoding.scoring import member_logprobs, own_logprobs
    from adafuse.result import Candidate

    for member in zoo_members:
        view = MemberView(member, trivia_prompt)
        state = DecodeState([view], DecodeConfig(), (1.0,))
        ctx = view.ids("")
        member.prefill(ctx)
        first = member.next_token(ctx, 8)
        own = write_draft(state, 0, Step(first, first.ids[0]), DraftWriter(state, 0, 3, None, 24))
        texts = [own.text, " Lyon, in the south", " The city of Paris", " Paris"]
        drafted = member_logprobs(view, ctx, "", [Candidate(own.text)], own_logprobs(0, len(ctx), [own]))
        seen = []
        for order in (texts, texts[::-1], texts[1:2] + texts[:1]):
            member._reset()  # type: ignore[attr-defined]  # nothing cached: every row computed again
            member.prefill(ctx)
            scored = member_logprobs(view, ctx, "", [Candidate(t) for t in order])
            seen.append({t: s for t, s in zip(order, scored, strict=True)})
        assert seen[0] == seen[1]
        assert seen[0][texts[1]] == seen[2][texts[1]] and seen[0][own.text] == seen[2][own.text] == drafted[0]
