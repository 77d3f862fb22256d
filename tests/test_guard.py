"""A request's cancel signal and budget act inside a round, not only between rounds (scripted members)."""

from __future__ import annotations

import threading

import pytest
from fakes import ScriptedMember

from adafuse.config import DecodeConfig
from adafuse.decoding.guard import Budget, Cancelled
from adafuse.ensemble import Ensemble

PIECES = [" one", " two", " three", " four"]


def endless(name: str) -> ScriptedMember:
    """A member that writes " one two three four one ..." for ever, sure of every word."""

    def script(text: str) -> dict[str, float]:
        n = len(text.split())
        return {PIECES[n % 4]: 0.9, PIECES[(n + 1) % 4]: 0.05}

    return ScriptedMember(name, PIECES, script, prompt="Q:")


class Tripwire(ScriptedMember):
    """Sets ``event`` on its ``after``-th next-token read: a client that leaves in the middle of a round."""

    def __init__(self, *args, event: threading.Event, after: int, **kw) -> None:
        super().__init__(*args, **kw)
        self.event, self.after, self.reads = event, after, 0

    def next_token(self, context, k):
        self.reads += 1
        if self.reads == self.after:
            self.event.set()
        return super().next_token(context, k)


@pytest.mark.parametrize("method", ["adafuse", "token", "span", "sample", "single"])
def test_a_cancel_inside_a_round_ends_the_generation_at_the_next_model_call(method):
    cancel = threading.Event()
    base = endless("a")
    a = Tripwire("a", PIECES, base.script, prompt="Q:", event=cancel, after=3)
    members = [a, endless("b")]
    config = DecodeConfig(method=method, max_new_tokens=4000, max_words=64, span_tokens=256, weights="equal")
    with pytest.raises(Cancelled):
        Ensemble(members).generate("Q:", config, cancel=cancel)
    # It stopped right where the event was set, not at the end of a round of up to 64 words (or 4000 tokens).
    assert a.reads <= 4


def test_a_set_cancel_stops_before_any_model_call():
    cancel = threading.Event()
    cancel.set()
    a, b = endless("a"), endless("b")
    with pytest.raises(Cancelled):
        Ensemble([a, b]).generate("Q:", DecodeConfig(weights="equal"), cancel=cancel)
    assert a.stats.forward_calls == b.stats.forward_calls == 0


@pytest.mark.parametrize("method", ["adafuse", "token", "span", "sample"])
def test_a_token_budget_ends_the_answer_with_what_was_committed(method):
    config = DecodeConfig(method=method, max_new_tokens=4000, weights="equal")
    free = Ensemble([endless("a"), endless("b")]).generate("Q:", config, max_new_tokens=100)
    members = [endless("a"), endless("b")]
    res = Ensemble(members).generate("Q:", config, budget=Budget(tokens=40))
    assert res.finish_reason == "budget"
    # Within one model call of the budget, and the same text as the unbounded run, cut at a round.
    assert sum(m.stats.tokens_evaluated for m in members) <= 40 + 2
    assert free.text.startswith(res.text) and len(res.text) < len(free.text)


def test_a_time_budget_of_zero_seconds_ends_at_once():
    res = Ensemble([endless("a"), endless("b")]).generate(
        "Q:", DecodeConfig(max_new_tokens=4000, weights="equal"), budget=Budget(seconds=0.0)
    )
    assert res.finish_reason == "budget" and res.text == ""
