"""A fitted controller: two conditional-logit choices (route a request to one member; pick a round's candidate),
its file format, and the check that it is used with the members it was fitted for.

Each choice scores an option ``o`` of a group (the members, or a round's candidates) as ``s(o) = theta . z(o)``,
with ``z`` the option's features standardised by the fitted centre and scale, and chooses with
``P(o) = exp s(o) / sum_o' exp s(o')``. ``adafuse fit`` (control/fit.py) learns ``theta``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from adafuse.backends.base import fingerprint
from adafuse.control.signals import pick_feature_names, route_feature_names
from adafuse.errors import ConfigError

FORMAT = "adafuse-controller"
VERSION = 1
#: significant digits kept in the file: the same fit writes the same bytes on any machine.
DIGITS = 8


@dataclass(frozen=True)
class Choice:
    """One fitted conditional logit: feature names, standardisation and weights."""

    features: list[str]
    center: list[float]
    scale: list[float]
    weights: list[float]

    def scores(self, x: np.ndarray) -> np.ndarray:
        z = (x - np.asarray(self.center)) / np.asarray(self.scale)
        return z @ np.asarray(self.weights)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        return softmax(self.scores(x))


def softmax(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max())
    return e / e.sum()


@dataclass(frozen=True)
class Controller:
    """Who to trust: ``route`` (route a request to its most probable member when that probability reaches
    ``route_at``; else every member drafts) and ``pick`` (which candidate a round commits)."""

    #: the members it was fitted for, in order: name and content fingerprint (None: a member that cannot tell).
    members: list[dict[str, str | None]]
    route: Choice
    pick: Choice
    route_at: float
    #: the kinds of request (``RequestKind.flags``) among its fit rows; it abstains on others. None: it decides on
    #: every kind (the collecting controller).
    kinds: list[list[float]] | None = None
    #: how it was fitted: tasks, rows of each split, the regularisation, and the scores measured.
    fit: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def digest(self) -> str:
        """What a result records of the controller that decided it: a checksum of its file's content."""
        return "sha256:" + hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()[:16]

    def routed(self, probabilities: np.ndarray) -> int | None:
        """The option the route sends the request to (its most probable member, if it reaches ``route_at``)."""
        best = int(probabilities.argmax())
        return best if probabilities[best] >= self.route_at else None

    def knows(self, flags: Sequence[float]) -> bool:
        return self.kinds is None or list(flags) in self.kinds

    @property
    def names(self) -> list[str]:
        return [str(m["name"]) for m in self.members]

    def check_members(self, members: Sequence[object], names: Sequence[str]) -> None:
        """Refuse, in one line, members this controller was not fitted for (by name, order and content)."""
        mine = self.names
        if list(names) != mine:
            raise ConfigError(f"the controller was fitted for members {mine}, not {list(names)}")
        if self.route.features != route_feature_names(mine) or self.pick.features != pick_feature_names(mine):
            raise ConfigError("the controller was fitted on other signals than this adafuse reads: fit it again")
        wrong = [
            n
            for n, m, want in zip(names, members, self.members, strict=True)
            if want.get("fingerprint") and fingerprint(m) not in (None, want["fingerprint"])
        ]
        if wrong:
            raise ConfigError(f"the controller was fitted for other weights of members {wrong} (checksums differ)")

    def to_json(self) -> str:
        body = {"format": FORMAT, "version": VERSION, **_rounded(asdict(self))}
        return json.dumps(body, indent=1, sort_keys=True, ensure_ascii=False) + "\n"

    def save(self, path: Path | str) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json(), encoding="utf-8")
        tmp.replace(path)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "controller") -> Controller:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ConfigError(f"{where}: not an adafuse controller file (no format {FORMAT!r})")
        if d.get("version") != VERSION:
            raise ConfigError(f"{where}: controller file version {d.get('version')!r}; this adafuse reads {VERSION}")
        try:
            route, pick = Choice(**d["route"]), Choice(**d["pick"])
            for choice in (route, pick):
                if not len(choice.features) == len(choice.center) == len(choice.scale) == len(choice.weights):
                    raise ValueError("feature, centre, scale and weight counts differ")
            kinds = d.get("kinds")
            kinds = None if kinds is None else [[float(v) for v in k] for k in kinds]
            return cls(list(d["members"]), route, pick, float(d["route_at"]), kinds, dict(d.get("fit", {})))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"{where}: malformed controller file ({e})") from None


#: the controller fitted for the built-in models on the dev splits (docs/RESULTS.md, "Controller").
BUILTIN = Path(__file__).with_name("builtin.json")


def load_controller(path: Path | str) -> Controller:
    """Read a controller file, or ``builtin`` (cached by path, size and modification time)."""
    p = BUILTIN if str(path) == "builtin" else Path(path).expanduser()
    try:
        st = p.stat()
    except OSError as e:
        raise ConfigError(f"controller {p}: {e.strerror or e}") from None
    return _load(str(p.resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=16)
def _load(path: str, size: int, mtime: int) -> Controller:
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"controller {path}: cannot read it as JSON ({e})") from None
    return Controller.from_dict(d, f"controller {path}")


def _rounded(x: Any) -> Any:
    if isinstance(x, float):
        return float(f"{x:.{DIGITS}g}")
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_rounded(v) for v in x]
    return x
