"""Decoding options: every option defined once, with its help and range, and one reader that every surface uses.

The Python API builds a ``DecodeConfig`` directly; the CLI flags, method labels (``adafuse@theta=0.5``), the
server's ``adafuse`` request field and lm-eval's ``model_args`` all go through ``read_config``, so an option
exists on every surface or on none, and an unknown key gets the same error everywhere.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from adafuse.decoding.granularity import GRANULARITIES
from adafuse.errors import ConfigError, require_text

METHODS = ("adafuse", "token", "span", "sample", "single")
#: weights spelled by name (every surface accepts these; "default" is the field's own default).
NAMED_WEIGHTS = ("auto", "equal")
Weights = tuple[float, ...] | Literal["auto", "equal", "default"] | None
#: bounds of the stop strings (every draft looks for each of them after every token).
MAX_STOP = 16
MAX_STOP_CHARS = 256


def option(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] = (),
    low: float | None = None,
    high: float | None = None,
    below: float | None = None,
    request: bool = False,
) -> Any:
    """A ``DecodeConfig`` field with what every surface needs to offer it: ``help``, the allowed ``choices`` or
    the range ``[low, high]`` (``below``: an exclusive upper end). ``request``: set per request (the answer's
    length and where it stops: a task or an OpenAI request says them), so not part of a method label."""
    meta = {"help": help, "choices": choices, "low": low, "high": high, "below": below, "request": request}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DecodeConfig:
    """How one answer is decoded. Each field says what it does; docs/RESULTS.md says why its default is what it
    is (under the topic named in brackets)."""

    method: str = option("adafuse", "Decoding method: adafuse, or one of the baselines.", choices=METHODS)
    theta: float = option(
        0.7, "A member is confident when its top-1 minus top-2 next-token probability reaches theta.", low=0, high=1
    )
    max_words: int = option(
        3, "The longest span, in words, that a confident member proposes in one round.", low=1, high=64
    )
    beam: int = option(3, "How many first tokens (B) an uncertain member branches on.", low=1, high=16)
    weights: Weights = option(
        "default",
        "Member weights: auto (from each member's likelihood of its prompt's worked answers), equal (the paper's), "
        "or one number per member. default: auto for adafuse, equal for the baselines [Member weights].",
    )
    auto_sharpness: float = option(
        100.0, "With auto weights: beta in w ~ exp(-beta * NLL per byte); 0 keeps the given weights.", low=0, high=1000
    )
    min_weight: float = option(
        0.05,
        "Members below this share of the weights sit the request out: they neither propose nor score, and a "
        "member left alone writes its own greedy answer; 0 keeps everyone [Benching].",
        low=0,
        below=1,
    )
    granularity: str = option(
        "word",
        "Fusion unit per round: word is the paper's; adaptive chooses one per round [Granularity].",
        choices=GRANULARITIES,
    )
    max_new_tokens: int = option(
        64,
        "Token budget of the answer, counted in the first voting member's tokenizer.",
        low=1,
        high=8192,
        request=True,
    )
    max_rounds: int | None = option(
        None, "Most rounds per answer (none: only the token budget ends it).", low=1, high=8192
    )
    stop: tuple[str, ...] = option((), "Stop strings: the answer ends before the first one.", request=True)
    stop_at_boxed: bool = option(False, "End the answer once a \\boxed{...} is complete.", request=True)
    span_tokens: int = option(
        8, "span baseline: tokens per draft (each drafted to the next word's end).", low=1, high=256
    )
    top_k: int = option(
        10,
        "Next-token candidates read per step: the token baseline's strings, the adaptive unit's entropy.",
        low=2,
        high=100,
    )
    single_member: int | None = option(None, "single baseline: which member (index) writes the answer.", low=0)
    controller: str | None = option(
        None,
        "adafuse: a fitted controller (adafuse fit) decides who to trust per request and per line: the path of "
        "its JSON file, or builtin (the one fitted for the built-in models) [Controller].",
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name not in _SPECIAL:
                _check(f.name, getattr(self, f.name))
                if str(f.type) == "float":  # 1 and 1.0 are the same option (and the same recorded run)
                    object.__setattr__(self, f.name, float(getattr(self, f.name)))
        object.__setattr__(self, "weights", _check_weights(self.weights))
        if not isinstance(self.stop, tuple | list) or any(not isinstance(s, str) for s in self.stop):
            raise ConfigError("stop must be a list of strings")
        if len(self.stop) > MAX_STOP or any(len(s) > MAX_STOP_CHARS for s in self.stop):
            raise ConfigError(f"stop takes at most {MAX_STOP} strings of at most {MAX_STOP_CHARS} characters")
        for s in self.stop:
            require_text(s, f"stop string {s!r}", ConfigError)
        object.__setattr__(self, "stop", tuple(s for s in self.stop if s))
        if self.controller is not None:
            if not isinstance(self.controller, str) or not self.controller.strip() or len(self.controller) > 4096:
                raise ConfigError(f"controller must be a file path or builtin, got {self.controller!r}")
            require_text(self.controller, "controller", ConfigError)
            if self.method != "adafuse":
                # The baselines have nothing for it to decide (a comparison's shared flags reach them too).
                object.__setattr__(self, "controller", None)

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
        """The options as plain data, with the weights resolved (what a run records)."""
        d = asdict(self)
        d["stop"] = list(self.stop)
        weights = self.resolved_weights
        d["weights"] = weights if weights is None or isinstance(weights, str) else list(weights)
        return d


#: fields whose values are not one number or one name, checked on their own.
_SPECIAL = ("weights", "stop", "controller")
FIELDS = {f.name: f for f in fields(DecodeConfig)}


def option_names(request: bool = True) -> list[str]:
    """The options every surface offers, in definition order; ``request=False`` leaves out the per-request ones."""
    return [name for name, f in FIELDS.items() if request or not f.metadata["request"]]


def option_help(name: str) -> str:
    """The option's help with its range or choices, as a command line or an error shows it."""
    meta = FIELDS[name].metadata
    extra = ""
    if meta["choices"]:
        extra = f" One of: {', '.join(meta['choices'])}."
    elif meta["low"] is not None:
        high = f"{meta['high']}]" if meta["high"] is not None else f"{meta['below']})" if meta["below"] else "inf)"
        extra = f" Range [{meta['low']}, {high}."
    return meta["help"] + extra


def read_config(
    options: Mapping[str, Any],
    base: DecodeConfig | None = None,
    *,
    where: str = "",
    request: bool = True,
    exclude: Collection[str] = (),
    text: bool = True,
) -> DecodeConfig:
    """``base`` (the defaults if None) with ``options`` applied. A value may be text (a command line, a method
    label, lm-eval's ``model_args``) or already typed (a JSON body; with ``text=False`` only options whose values
    are names may be strings); ``None`` leaves the option as it is. ``request=False``: per-request options are
    refused (a method label does not set the answer's length); ``exclude``: options this surface sets its own way.
    ``where`` prefixes every error (``"method label 'adafuse@x=1'"``, ``"adafuse"``)."""
    known = [name for name in option_names(request) if name not in exclude]
    changes: dict[str, Any] = {}
    for key, value in options.items():
        if key not in known:
            raise ConfigError(_at(where, f"unknown option {key!r}; valid options: {', '.join(known)}"))
        if value is None:
            continue
        try:
            parse = isinstance(value, str) and (text or str(FIELDS[key].type) in ("str", "Weights", "str | None"))
            changes[key] = _parse(key, value) if parse else value
        except ConfigError as exc:
            raise ConfigError(_at(where, str(exc))) from None
    try:  # the dataclass checks every value's type and range
        return replace(base or DEFAULTS, **changes)
    except ConfigError as exc:
        raise ConfigError(_at(where, str(exc))) from None


def parse_bool(value: str) -> bool:
    """A boolean option written as text; ConfigError otherwise."""
    low = value.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"not a boolean: {value!r} (use true or false)")


def parse_weights(value: str) -> Weights:
    """``auto``, ``equal``, ``default`` or numbers separated by ``,`` ``/`` ``:`` or ``;`` (a method label uses
    commas between its options, so it writes ``weights=2/1/1``)."""
    text = value.strip()
    if text in (*NAMED_WEIGHTS, "default"):
        return text  # type: ignore[return-value]
    try:
        return tuple(float(w) for w in re.split(r"[,/:;]", text))
    except ValueError:
        raise ConfigError(f"weights must be auto, equal or numbers (e.g. 2,1,1), got {value!r}") from None


def _at(where: str, message: str) -> str:
    return f"{where}: {message}" if where else message


def _parse(key: str, text: str) -> Any:
    """An option's value from its text, by the field's type."""
    if key == "weights":
        return parse_weights(text)
    if key == "stop":
        return (text,)
    if key == "controller":
        return None if text.strip().lower() == "none" else text
    kind = str(FIELDS[key].type)
    text = text.strip()
    if text.lower() == "none" and "None" in kind:
        return None
    if kind.startswith("bool"):
        return parse_bool(text)
    for prefix, cast, what in (("int", int, "an integer"), ("float", float, "a number")):
        if kind.startswith(prefix):
            try:
                return cast(text)
            except ValueError:
                raise ConfigError(f"{key} must be {what}, got {text!r}") from None
    return text


def _check(key: str, value: Any) -> None:
    """The field's type and range (``option``'s metadata); ConfigError with the valid values otherwise."""
    f = FIELDS[key]
    meta, kind = f.metadata, str(f.type)
    if value is None and "None" in kind:
        return
    if kind.startswith("bool"):
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return
    if kind.startswith("str"):
        if value not in meta["choices"]:
            raise ConfigError(f"{key} must be one of {', '.join(meta['choices'])}, got {value!r}")
        return
    integer = kind.startswith("int")
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or (integer and not isinstance(value, int)) or not math.isfinite(value):
        raise ConfigError(f"{key} must be {'an integer' if integer else 'a finite number'}, got {value!r}")
    low, high, below = meta["low"], meta["high"], meta["below"]
    above = (high is not None and value > high) or (below is not None and value >= below)
    if (low is not None and value < low) or above:
        raise ConfigError(f"{key} must be in {option_help(key).rsplit('Range ', 1)[-1].rstrip('.')}, got {value!r}")


def _check_weights(weights: Any) -> Weights:
    if weights is None or weights == "equal":
        return None
    if isinstance(weights, str):
        if weights not in ("auto", "default"):
            raise ConfigError(f"weights must be numbers, 'auto' or 'equal', got {weights!r}")
        return weights  # type: ignore[return-value]
    if not isinstance(weights, tuple | list) or not all(
        isinstance(w, int | float) and not isinstance(w, bool) for w in weights
    ):
        raise ConfigError(f"weights must be a list of numbers, 'auto' or 'equal', got {weights!r}")
    ws = tuple(float(w) for w in weights)
    if any(not math.isfinite(w) or w < 0 for w in ws) or sum(ws) <= 0:
        raise ConfigError(f"weights must be finite, non-negative and not all zero, got {list(ws)}")
    return ws


#: the defaults, for surfaces that show them
DEFAULTS = DecodeConfig()
