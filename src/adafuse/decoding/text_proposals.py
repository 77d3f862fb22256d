"""Text-only proposers in the AdaFuse round: an endpoint that only writes text proposes, the members that can score
judge it like every other candidate.

About one API call per answer: the endpoint writes its whole answer once, concurrently with the local members'
prefill and proposals. While the committed text stays on that answer, its next piece at the round's unit (the
next word, up to ``max_words`` words, or a sentence) is its candidate; once it is committed through, its end is
the candidate (the first stop string, or the end of text). When the ensemble leaves its path it drafts again from
the committed text (raw completions continue it; up to the member's ``max_calls`` per request), and otherwise sits
the rest of the answer out. It never votes: the judges' weighted mean decides, so its candidates win only where
the judges prefer them.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from adafuse.backends.remote.text import ApiUsage, Completion, TextMember
from adafuse.chat import Message
from adafuse.decoding.failure import reason_of
from adafuse.decoding.granularity import Unit, boundary_end
from adafuse.decoding.parallel import _pool
from adafuse.decoding.scoring import Draft
from adafuse.decoding.state import DecodeState
from adafuse.decoding.words import first_words
from adafuse.errors import MemberError
from adafuse.result import Proposal

#: how often a wait for the endpoint looks at the request's cancel signal and budget, in seconds.
POLL_SECONDS = 0.05


@dataclass
class TextProposer:
    """One text-only member's side of a generation."""

    member: TextMember
    #: raw text (continued as is), or chat messages (answered as a conversation: never continued).
    prompt: str | Sequence[Message]
    #: "fail" or "drop" (``--on-member-failure``): a failed call ends the generation, or the member sits out.
    policy: str = "fail"
    usage: ApiUsage = field(default_factory=ApiUsage)
    #: why it sits the rest of the answer out (None while it takes part).
    out: str | None = None
    #: the committed text its current answer continues, and that answer once it has come.
    _base: str = ""
    _pending: Future[Completion] | None = None
    _answer: Completion | None = None

    @property
    def name(self) -> str:
        return self.member.name

    def prepare(self, state: DecodeState) -> None:
        """Before a round: start a draft if none has been asked for, or if the ensemble left the current one's path
        (and the member may continue, with calls left); otherwise the member sits out."""
        if self.out is not None or self._pending is not None:
            return
        if self._answer is not None and (self._base + self._answer.text).startswith(state.committed):
            return  # still on its path
        first = self._answer is None
        if not first and not self.member.continues(self.prompt):
            self.out = "left its path; the endpoint cannot continue a committed answer"
            return
        if self.usage.calls >= self.member.max_calls:
            self.out = f"left its path after {self.usage.calls} calls (max_calls)"
            return
        cfg = state.config
        self._base = state.committed
        self._answer = None
        self._pending = _pool().submit(
            self.member.complete, self.prompt, self._base, cfg.max_new_tokens, tuple(cfg.stop)
        )

    def propose(self, state: DecodeState, unit: Unit, index: int) -> tuple[Proposal, Draft] | None:
        """Its candidate for this round (``index``: its position among the candidates' proposers), or None."""
        self.prepare(state)
        answer = self._wait(state)
        if answer is None:
            return None
        rest = (self._base + answer.text)[len(state.committed) :]
        cfg = state.config
        if rest:
            text, eos = _cut(rest, unit), False
        elif cfg.stop and answer.finish_reason == "stop":
            # The endpoint ended at a stop string (it does not say which) or at its end token: the first stop
            # string ends the answer either way.
            text, eos = cfg.stop[0], False
        else:
            text, eos = "", answer.finish_reason == "stop"
            if not eos:
                self.out = "wrote to its token cap"
                return None
        return Proposal(self.name, [], branched=False, candidates=[text]), Draft(text, eos, index, [], [])

    def _wait(self, state: DecodeState) -> Completion | None:
        if self.out is not None:
            return None
        if self._pending is not None:
            future = self._pending
            while True:
                state.check()
                try:
                    answer = future.result(timeout=POLL_SECONDS)
                    break
                except TimeoutError:
                    continue
                except MemberError as exc:
                    self._pending = None
                    if self.policy == "fail":
                        raise
                    self.out = reason_of(exc)  # the name is the key it is recorded under
                    self.usage.failures.append(self.out)
                    return None
            self._pending = None
            self._answer = answer
            self.usage.add(answer)
        return self._answer

    def cancel(self) -> None:
        """The request ended: an answer still on its way is not waited for."""
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None


def _cut(rest: str, unit: Unit) -> str:
    """The next piece of the endpoint's answer at the round's unit: what a confident local member would write."""
    words = 1 if unit.name == "token" else unit.max_words
    text = first_words(rest, words)
    if unit.boundary in ("sentence", "paragraph"):
        cut = boundary_end(text, unit.boundary)
        if cut is not None:
            text = text[:cut]
    return text
