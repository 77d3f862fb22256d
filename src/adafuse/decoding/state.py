"""The shared state of one generation: each member's own prompt and the committed text, as token ids."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from adafuse.backends.base import Member
from adafuse.config import DecodeConfig
from adafuse.control.model import Controller
from adafuse.decoding.guard import Guard
from adafuse.result import Round

if TYPE_CHECKING:
    from adafuse.decoding.text_proposals import TextProposer


@dataclass
class MemberView:
    """One member's side of a generation: it always conditions on ``prompt + committed`` in its own tokens."""

    member: Member
    prompt: str
    special: bool = False
    _memo: dict[str, list[int]] = field(default_factory=dict)
    _pieces: dict[str, list[int]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.member.name

    def ids(self, continuation: str) -> list[int]:
        """Token ids of ``prompt + continuation``, tokenised as one text (never piecewise)."""
        ids = self._memo.get(continuation)
        if ids is None:
            ids = self.member.tokenize(self.prompt + continuation, special=self.special)
            self._memo[continuation] = ids
        return ids

    def continue_with(self, continuation: str, ids: list[int]) -> None:
        """Condition on ``ids`` for ``prompt + continuation`` instead of their re-tokenisation: the member's own
        greedy tokens, which a lone member keeps so that its answer is the one it writes in a single pass."""
        self._memo[continuation] = ids

    def piece_ids(self, text: str) -> list[int] | None:
        """``text`` tokenised on its own (no BOS), if those tokens spell exactly ``text``; else None."""
        ids = self._pieces.get(text)
        if ids is None:
            ids = self.member.tokenize(text, special=False, bos=False)
            if b"".join(self.member.token_bytes(t) for t in ids) != text.encode("utf-8"):
                ids = []
            self._pieces[text] = ids
        return ids or None

    def forget(self, keep: str) -> None:
        """Drop memoised tokenisations except the committed text's: a round's candidates are not reused."""
        kept = self._memo.get(keep)
        self._memo.clear()
        self._pieces.clear()
        if kept is not None:
            self._memo[keep] = kept


@dataclass
class DecodeState:
    views: list[MemberView]
    config: DecodeConfig
    weights: tuple[float, ...]
    committed: str = ""
    #: members still voting; a remote member dropped under the ``drop`` policy leaves this set.
    active: list[int] = field(default_factory=list)
    #: the rounds committed so far (the loop appends them): the granularity controller reads the agreement.
    rounds: list[Round] = field(default_factory=list)
    #: the request's cancel signal and budget, checked inside drafting and scoring.
    guard: Guard | None = None
    #: a fitted controller deciding who to trust (decoding/controlled.py), and the prompt evidence it reads:
    #: member index -> NLL per byte, and what was scored ("answers" or "instructions").
    controller: Controller | None = None
    evidence: tuple[dict[int, float], str] | None = None
    #: text-only members (decoding/text_proposals.py): they propose in AdaFuse rounds and never vote.
    texts: list[TextProposer] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.active:
            self.active = list(range(len(self.views)))

    def check(self) -> None:
        """Raise ``Cancelled`` or ``BudgetSpent`` (decoding/guard.py) if the request must end now."""
        if self.guard is not None:
            self.guard.check()

    def context(self, i: int) -> list[int]:
        return self.views[i].ids(self.committed)

    def commit(self, text: str) -> None:
        self.committed += text
        for v in self.views:
            v.forget(self.committed)
