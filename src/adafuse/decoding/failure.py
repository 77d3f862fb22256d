"""What a generation does when a member fails (a remote engine that is down or hangs), and running members at once.

``--on-member-failure fail`` (the default): the member's ``MemberError`` ends the generation with its one-line
message. ``drop``: the member leaves ``state.active``, the round is run again by the others, and the telemetry
records ``dropped[name] = reason``; the last member standing is never dropped (its error propagates).

``FailurePolicy`` wraps a strategy, so the loop needs no change to apply it; ``admit`` applies the same policy to
the tokenisation of the prompts before the first round.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from adafuse.decoding.loop import Strategy, reference
from adafuse.decoding.state import DecodeState, MemberView
from adafuse.decoding.stopping import find_stop
from adafuse.errors import ConfigError, MemberError
from adafuse.result import Round

log = logging.getLogger(__name__)

POLICIES = ("fail", "drop")


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise ConfigError(f"on_member_failure must be one of {', '.join(POLICIES)}, got {policy!r}")
    return policy


def reason_of(exc: MemberError) -> str:
    """The error's message without its ``member 'name': `` prefix (the name is the key it is stored under)."""
    text = str(exc)
    prefix = f"member {exc.member!r}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


class FailurePolicy:
    """A strategy that applies the failure policy to the rounds of another strategy."""

    def __init__(self, strategy: Strategy, policy: str = "fail") -> None:
        self.strategy = strategy
        self.policy = check_policy(policy)
        #: member name -> why it was dropped, in the order they were dropped.
        self.dropped: dict[str, str] = {}

    def __call__(self, state: DecodeState, index: int) -> Round:
        while True:
            try:
                rnd = self.strategy(state, index)
            except MemberError as exc:
                self._drop_or_raise(state, exc)
                continue  # the same round again, by the members still voting
            if self.policy == "drop":
                self._warm(state, rnd)
            return rnd

    def admit(self, views: Sequence[MemberView], active: list[int]) -> list[int]:
        """Tokenise every active member's prompt now, so that a member already down is dropped before round 0."""
        kept = list(active)
        for i in list(kept):
            try:
                views[i].ids("")
            except MemberError as exc:
                if self.policy == "fail" or len(kept) <= 1:
                    raise
                kept.remove(i)
                self._record(exc)
        return kept

    def _drop_or_raise(self, state: DecodeState, exc: MemberError) -> None:
        if self.policy == "fail":
            raise exc
        names = [v.name for v in state.views]
        i = names.index(exc.member) if exc.member in names else None
        if i is None or i not in state.active or len(state.active) <= 1:
            raise exc  # not one of ours, or the last one voting: nothing left to decode with
        state.active.remove(i)
        self._record(exc)

    def _record(self, exc: MemberError) -> None:
        self.dropped[exc.member] = reason_of(exc)
        log.warning("dropping member %r: %s", exc.member, reason_of(exc))

    def _warm(self, state: DecodeState, rnd: Round) -> None:
        """Tokenise the text this round commits for every member now, inside the policy's reach.

        The loop tokenises it right after the round (budget, window and stop checks; the next context): a remote
        member failing there would escape the policy. What it computes here is memoised, so nothing is done twice.
        """
        text = state.committed + rnd.committed
        hit = find_stop(text, state.config.stop, state.config.stop_at_boxed)
        for i in list(state.active):
            try:
                state.views[i].ids(text)
                if hit is not None and i == reference(state):
                    state.views[i].ids(text[: hit.cut])
            except MemberError as exc:
                # The round was decided with this member's vote; it leaves from the next round on.
                self._drop_or_raise(state, exc)
