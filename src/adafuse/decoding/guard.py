"""What bounds one request's cost: a cancel signal and a budget, checked inside every round.

Drafting checks after every token and scoring before every member's pass, so a client that has gone frees its slot
within one model call, and a request can never run past its budget by more than one call, whatever it asked for.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from adafuse.backends.base import Member
from adafuse.errors import AdafuseError


@dataclass(frozen=True)
class Budget:
    """Per-request limits (a server sets them for every client); None: no limit."""

    #: wall-clock seconds of decoding (model loading and queueing excluded).
    seconds: float | None = None
    #: tokens the members evaluate, all together (prompt and candidates; the cost counters' ``tokens_evaluated``).
    tokens: int | None = None


class Cancelled(AdafuseError):
    """The caller withdrew the request (a client that disconnected): nothing is returned."""


class BudgetSpent(Exception):
    """The request's budget ran out inside a round: the loop ends the answer with what it has committed."""


@dataclass
class Guard:
    """Checked from inside drafting and scoring; raises ``Cancelled`` or ``BudgetSpent``."""

    members: Sequence[Member]
    cancel: threading.Event | None = None
    budget: Budget = field(default_factory=Budget)
    _start: float = field(default_factory=time.perf_counter)
    _tokens0: int = 0

    def __post_init__(self) -> None:
        self._tokens0 = self._tokens()

    def _tokens(self) -> int:
        return sum(m.stats.tokens_evaluated for m in self.members)

    def check(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("the request was cancelled")
        b = self.budget
        if b.seconds is not None and time.perf_counter() - self._start > b.seconds:
            raise BudgetSpent
        if b.tokens is not None and self._tokens() - self._tokens0 > b.tokens:
            raise BudgetSpent
