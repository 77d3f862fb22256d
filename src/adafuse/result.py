"""What a generation returns: the text, why it ended, a per-round trace and the cost. Plain dataclasses."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Candidate:
    """One distinct continuation in a round, after the union of every member's proposals."""

    text: str
    eos: bool = False
    proposers: list[str] = field(default_factory=list)
    #: member name -> NLL per token of this candidate (lower is better); empty on the fast path.
    scores: dict[str, float] = field(default_factory=dict)
    #: weighted mean of ``scores``; None when the round needed no scoring.
    combined: float | None = None
    #: scoring stopped once the candidate could no longer win (decoding/bounded.py): ``scores`` and ``combined``
    #: are lower bounds.
    bounded: bool = False


@dataclass
class Proposal:
    """What one member proposed in a round and how sure it was."""

    member: str
    #: top-1 minus top-2 probability at the first token of each word it looked at.
    margins: list[float]
    branched: bool
    candidates: list[str]


@dataclass
class Round:
    index: int
    proposals: list[Proposal]
    candidates: list[Candidate]
    chosen: int
    committed: str
    fast_path: bool
    #: the fusion unit the round worked at ("word", "token", "span", "answer", ...).
    unit: str = "word"
    #: under a controller: what it read and decided (route probabilities, the pick's scores; decoding/controlled.py).
    signals: dict[str, Any] = field(default_factory=dict)

    @property
    def winner(self) -> Candidate:
        return self.candidates[self.chosen]


@dataclass
class MemberTelemetry:
    name: str
    forward_calls: int = 0
    tokens_evaluated: int = 0
    tokens_reused: int = 0
    prompt_tokens: int = 0


@dataclass
class Telemetry:
    members: list[MemberTelemetry]
    rounds: int = 0
    fast_path_rounds: int = 0
    fused_rounds: int = 0
    output_tokens: int = 0
    wall_seconds: float = 0.0
    #: members dropped mid-generation (remote failure with the ``drop`` policy): name -> reason.
    dropped: dict[str, str] = field(default_factory=dict)
    #: the member weights the votes used (after ``weights="auto"``, the evidence weights).
    weights: dict[str, float] = field(default_factory=dict)
    #: members that sat the request out because their weight was below ``min_weight``.
    benched: list[str] = field(default_factory=list)
    #: with ``weights="auto"``: each member's NLL of its prompt in nats per byte (the evidence).
    prompt_nll: dict[str, float] = field(default_factory=dict)
    #: what that NLL was measured on: "answers" (the prompt's worked answers) or "instructions" (its text before
    #: the last paragraph).
    evidence: str | None = None
    #: the controller file's fingerprint when one decided the request.
    controller: str | None = None
    #: text-only members (``text+http://``): calls, prompt and completion tokens as their API reports them,
    #: seconds waited on it, rounds it proposed in and won, and why it sat out (None if it never did).
    api: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def tokens_evaluated(self) -> int:
        return sum(m.tokens_evaluated for m in self.members)


@dataclass
class Result:
    text: str
    finish_reason: str
    rounds: list[Round]
    telemetry: Telemetry
    method: str = "adafuse"
    models: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, trace: bool = True) -> dict[str, Any]:
        d = asdict(self)
        if not d["telemetry"]["api"]:
            del d["telemetry"]["api"]  # no text-only member: the results read as they always have
        if not trace:
            d.pop("rounds")
        return d

    def to_json(self, trace: bool = True, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(trace), ensure_ascii=False, indent=indent)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Result:
        rounds = [
            Round(
                index=r["index"],
                proposals=[Proposal(**p) for p in r["proposals"]],
                candidates=[Candidate(**c) for c in r["candidates"]],
                chosen=r["chosen"],
                committed=r["committed"],
                fast_path=r["fast_path"],
                unit=r.get("unit", "word"),
                signals=r.get("signals", {}),
            )
            for r in d.get("rounds", [])
        ]
        tel = dict(d["telemetry"])
        tel["members"] = [MemberTelemetry(**m) for m in tel["members"]]
        return cls(
            text=d["text"],
            finish_reason=d["finish_reason"],
            rounds=rounds,
            telemetry=Telemetry(**tel),
            method=d.get("method", "adafuse"),
            models=d.get("models", []),
            config=d.get("config", {}),
        )
