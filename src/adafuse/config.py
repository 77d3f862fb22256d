"""Decoding options: one validated dataclass shared by the Python API, the CLI and the server."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from adafuse.decoding.granularity import GRANULARITIES, GranularityPolicy
from adafuse.errors import ConfigError

Normalisation = Literal["auto", "token", "char", "sum", "word"]
NORMALISATIONS = ("auto", "token", "char", "sum", "word")
METHODS = ("adafuse", "token", "span", "sample", "single")
COMBINERS = ("mean", "confidence", "vote")
AUTO_EVIDENCE = ("answers_only", "answers", "instructions", "prompt")
#: weights spelled by name (every interface accepts these; "default" is the field's own default).
NAMED_WEIGHTS = ("auto", "equal")
# One wording of the new options for every command line that offers them.
WEIGHTS_HELP = (
    "Member weights: auto (from each member's likelihood of its prompt's worked answers; adafuse's default), equal "
    "(the paper's; the baselines' default), comma-separated numbers, or a weights .json from `adafuse calibrate`."
)
SHARPNESS_HELP = (
    "With --weights auto: beta in w ~ exp(-beta * NLL per byte); 0 keeps the given weights, 100 all but picks one."
)
MIN_WEIGHT_HELP = (
    "Members whose weight (after --weights auto, the evidence weights) is below this sit the request out: they "
    "neither propose nor score; a member left alone writes its own greedy answer. 0 keeps everyone."
)
N_CTX_HELP = "Longest context per member, in its tokens (llama.cpp grows the KV cache to it as requests need)."
GRANULARITY_HELP = "Fusion unit per round: word (the paper), adaptive, token, sentence or paragraph."
COMBINER_HELP = (
    "mean: weighted mean NLL (the paper); confidence: votes also weighted by each member's certainty; "
    "vote: each member shares out its weight over the candidates by their probability (no member can veto)."
)


@dataclass(frozen=True)
class DecodeConfig:
    """How one answer is decoded.

    theta: a member is *confident* when its top-1 minus top-2 next-token probability reaches theta.
    max_words: the longest span (in words) a confident member proposes in one round.
    beam: how many first tokens (B) an uncertain member branches on.
    """

    method: str = "adafuse"
    theta: float = 0.7
    max_words: int = 3
    beam: int = 3
    #: fixed member weights; "auto": weights from each member's likelihood of the prompt's worked answers
    #: (README, "Member weights"), sharpened by ``auto_sharpness``; "equal" (or None): equal weights, the paper's.
    #: "default" is "auto" for adafuse and "equal" for the baselines, which are defined with equal weights
    #: (``resolved_weights``; docs/RESULTS.md, "Defaults", says why).
    weights: tuple[float, ...] | Literal["auto", "equal", "default"] | None = "default"
    auto_sharpness: float = 100.0
    #: what auto weights measure: "instructions" (the likelihood of the prompt's worked answers; a prompt without
    #: any falls back to its instructions, the text before its last paragraph, and a prompt without those keeps
    #: the given weights), "answers_only" (worked answers or nothing), "answers" (worked answers, falling back to
    #: the whole prompt) or "prompt" (the whole prompt); see decoding/evidence.py.
    auto_evidence: str = "instructions"
    #: members whose weight is below this fraction of the total sit the request out (neither propose nor score);
    #: the heaviest member always stays. At the default sharpness 0.05 benches a member about 0.03 nats per byte
    #: behind the best on the evidence. The evidence can rule a member out; its proposals, judged by the trusted
    #: member, then lost more items than they won (docs/RESULTS.md, "Eighth session"), and benching makes the
    #: request as cheap as one member's. Equal weights bench no one (up to 20 members); given weights can.
    min_weight: float = 0.05
    #: what a member left voting alone (the others benched or dropped, or an ensemble of one) does: False writes
    #: its greedy answer, as ``single`` does; True keeps AdaFuse's round, branching at its uncertain tokens and
    #: judging its own branches by itself, which the per-token score biases towards words of many easy tokens
    #: (docs/RESULTS.md, trace 9).
    solo_branching: bool = False
    #: "mean": weighted mean NLL (the paper). "confidence": each member's weight is also multiplied by its
    #: top-1 probability at this round's first token, so a member that is sure counts for more. "vote": each
    #: member shares out its weight over the round's candidates in proportion to their probability under it.
    combiner: str = "mean"
    #: how much text one round may commit: "word" is the paper's rule (up to ``max_words`` words); "adaptive"
    #: chooses token / word / sentence / paragraph per round from the signals in decoding/granularity.py.
    granularity: str = "word"
    granularity_policy: GranularityPolicy = field(default_factory=GranularityPolicy)
    #: how a member's NLL of a candidate is normalised: "token" (per token, the paper), "char", "sum" or "word"
    #: (the first word's total probability). "auto": "word" when evidence weights are in force (adafuse with
    #: ``weights="auto"`` and worked answers to weigh by), "token" otherwise. Measured and not the default: it
    #: gives the trusted member's own word choices back on the QA tasks, but on GSM8K, where a "word" is a whole
    #: formula, it favours short ones and loses problems the member solves alone (docs/RESULTS.md, "Seventh
    #: session").
    normalise: Normalisation = "token"
    #: score a candidate that re-tokenises the context's last token against the probability of that token's
    #: *text* (any token starting with it), not of the token alone (decoding/scoring.py; docs/RESULTS.md, trace
    #: 8). Off reproduces runs recorded before it existed.
    token_healing: bool = True
    max_new_tokens: int = 64
    max_rounds: int | None = None
    stop: tuple[str, ...] = ()
    stop_at_boxed: bool = False
    word_token_cap: int = 12
    #: leave out candidates whose last word hit ``word_token_cap`` without ending (runaway words such as
    #: "Henri-Henri-Henri-..."), unless nothing else was proposed; see docs/RESULTS.md.
    drop_unfinished: bool = False
    span_tokens: int = 8
    top_k: int = 10
    single_member: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if not (isinstance(self.theta, int | float) and 0.0 <= self.theta <= 1.0) or math.isnan(self.theta):
            raise ConfigError(f"theta must be in [0, 1], got {self.theta}")
        _at_least("max_words", self.max_words, 1)
        _at_least("beam", self.beam, 1)
        _at_least("max_new_tokens", self.max_new_tokens, 1)
        _at_least("word_token_cap", self.word_token_cap, 1)
        _at_least("span_tokens", self.span_tokens, 1)
        _at_least("top_k", self.top_k, 2)
        if self.max_rounds is not None:
            _at_least("max_rounds", self.max_rounds, 1)
        for name in ("token_healing", "solo_branching"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.normalise not in NORMALISATIONS:
            raise ConfigError(f"normalise must be auto, token, char, sum or word, got {self.normalise!r}")
        if self.combiner not in COMBINERS:
            raise ConfigError(f"unknown combiner {self.combiner!r}; choose one of {', '.join(COMBINERS)}")
        if self.granularity not in GRANULARITIES:
            raise ConfigError(f"unknown granularity {self.granularity!r}; choose one of {', '.join(GRANULARITIES)}")
        if isinstance(self.granularity_policy, dict):
            object.__setattr__(self, "granularity_policy", GranularityPolicy(**self.granularity_policy))
        if not (isinstance(self.auto_sharpness, int | float) and math.isfinite(self.auto_sharpness)) or (
            self.auto_sharpness < 0
        ):
            raise ConfigError(f"auto_sharpness must be a finite number >= 0, got {self.auto_sharpness!r}")
        if not (isinstance(self.min_weight, int | float) and 0.0 <= self.min_weight < 1.0):
            raise ConfigError(f"min_weight must be a number in [0, 1), got {self.min_weight!r}")
        if self.auto_evidence not in AUTO_EVIDENCE:
            raise ConfigError(f"unknown auto_evidence {self.auto_evidence!r}; choose one of {', '.join(AUTO_EVIDENCE)}")
        if isinstance(self.weights, str):
            if self.weights not in (*NAMED_WEIGHTS, "default"):
                raise ConfigError(f"weights must be numbers, 'auto' or 'equal', got {self.weights!r}")
            if self.weights == "equal":
                object.__setattr__(self, "weights", None)
        elif self.weights is not None:
            ws = tuple(float(w) for w in self.weights)
            if any(not math.isfinite(w) or w < 0 for w in ws) or sum(ws) <= 0:
                raise ConfigError(f"weights must be finite, non-negative and not all zero, got {list(ws)}")
            object.__setattr__(self, "weights", ws)
        if any(not isinstance(s, str) for s in self.stop):
            raise ConfigError("stop strings must be strings")
        object.__setattr__(self, "stop", tuple(s for s in self.stop if s))

    @property
    def resolved_weights(self) -> tuple[float, ...] | Literal["auto"] | None:
        """The weights this method uses: "default" resolved (kept unresolved in the field, so that
        ``replace(config, method=...)`` gives the new method its own default)."""
        if self.weights == "default":
            return "auto" if self.method == "adafuse" else None
        return self.weights  # type: ignore[return-value]

    @property
    def auto_weights(self) -> bool:
        return self.resolved_weights == "auto" and self.method != "single"

    def normalise_for(self, evidence: bool) -> str:
        """The normalisation a request uses; ``evidence``: its weights came from the evidence of its prompt."""
        if self.normalise != "auto":
            return self.normalise
        return "word" if evidence and self.method == "adafuse" else "token"

    def member_weights(self, n_members: int) -> tuple[float, ...]:
        """Weights normalised to sum to one; equal unless given ("auto" starts equal, see decoding/evidence.py)."""
        weights = self.resolved_weights
        if weights is None or weights == "auto":
            return tuple(1.0 / n_members for _ in range(n_members))
        if len(weights) != n_members:
            raise ConfigError(f"{len(weights)} weights given for {n_members} members")
        total = sum(weights)
        return tuple(w / total for w in weights)

    def to_dict(self) -> dict[str, Any]:
        """The options as plain data, with the weights resolved (what a run recorded, see ``resolved_weights``), and
        the normalisation where it does not depend on the request."""
        d = asdict(self)
        d["stop"] = list(self.stop)
        weights = self.resolved_weights
        d["weights"] = weights if weights is None or isinstance(weights, str) else list(weights)
        if self.normalise == "auto" and not (self.auto_weights and self.method == "adafuse"):
            d["normalise"] = "token"  # what "auto" always is without evidence weights
        return d


def parse_bool(value: str) -> bool:
    """A boolean option written as text (method labels, lm-eval model arguments); ValueError otherwise."""
    low = value.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _at_least(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")


#: the defaults, for command lines that show them
DEFAULTS = DecodeConfig()
