"""Fitting a controller: signals and outcomes from dev rows, two conditional logits, one file.

**Collecting.** Each dev item is decoded once under a *neutral* controller (it never routes; every member writes
its greedy line and every member scores every line), one round, through the evaluation runner (resumable, with a
progress bar). The recorded trace holds every signal a decision reads (``control/signals.py``); each candidate's
outcome is the task metric of the answer that line leaves once the task's stop strings cut it
(``metrics.item_quality``), and a member's outcome is its own line's.

**Learning.** For a group of options with features ``z_o`` (standardised) and outcomes ``y_o`` in [0, 1], the
target is ``q_o = exp(y_o / T) / sum exp(y_o' / T)`` (``T = TEMPERATURE``) and the fit minimises

    L(theta) = mean over groups of  - sum_o q_o log softmax(theta . z)_o   +   lambda / 2 * |theta|^2

(convex; Newton's method from zero, so the same rows give the same file byte for byte). Groups whose options all
score the same teach nothing and are left out. ``lambda`` is chosen from ``L2_GRID`` and the route threshold
from ``ROUTE_GRID`` on the tune rows, which the fit never sees: the threshold with the best tune score, the
lowest of equal ones (routing is cheaper).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adafuse.config import DecodeConfig
from adafuse.control.model import Choice, Controller, softmax
from adafuse.control.signals import (
    RequestKind,
    pick_feature_names,
    pick_features,
    route_feature_names,
    route_features,
)
from adafuse.decoding.stopping import find_stop
from adafuse.errors import DataError
from adafuse.evaluation import metrics
from adafuse.evaluation.tasks import Task
from adafuse.result import Result

TEMPERATURE = 0.1
L2_GRID = (0.001, 0.01, 0.1, 1.0)
ROUTE_GRID = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.01)


@dataclass(frozen=True)
class Group:
    """The options of one decision: their feature rows and outcomes."""

    x: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class Example:
    """One dev item's two decisions: route (one option per voting member) and pick (round 0's candidates);
    ``own[k]``: the candidate that route option k's member proposed."""

    row: int
    kind: tuple[float, ...]
    route: Group
    pick: Group
    own: list[int]
    prediction: list[str]


def neutral(names: Sequence[str]) -> Controller:
    """The controller that collects: it never routes and its pick keeps the first candidate (zero weights). It
    decides nothing, so it names no weight checksums and collecting needs no model loaded to write it."""
    route_names, pick_names = route_feature_names(names), pick_feature_names(names)

    def zero(features: list[str]) -> Choice:
        n = len(features)
        return Choice(features, [0.0] * n, [1.0] * n, [0.0] * n)

    return Controller(
        [{"name": n, "fingerprint": None} for n in names],
        zero(route_names),
        zero(pick_names),
        route_at=2.0,
    )


def collect_config(path: Path) -> DecodeConfig:
    return DecodeConfig(controller=str(path), max_rounds=1)


def example(record: dict[str, Any], task: Task, names: Sequence[str]) -> Example | None:
    """The decisions one collected record holds; None for an item that failed or that every member wrote alike
    in a way no decision could change."""
    trace = record.get("trace")
    if not trace or not trace.get("rounds"):
        return None
    result = Result.from_dict(trace)
    first = result.rounds[0]
    signals = first.signals
    if "margins" not in signals:
        return None
    tel = result.telemetry
    kind = RequestKind.of(task.build_prompt(record["question"]), tel.evidence)
    nll = tel.prompt_nll
    voting = [n for n in names if n in signals["margins"]]
    route_x = route_features(names, kind, nll, signals["margins"], signals["entropies"], signals["first_tokens"])
    pick_x = pick_features(names, kind, nll, first.candidates, "", task.stop)
    preds = [task.extract_answer(answer_of(task, c.text)) for c in first.candidates]
    y = np.asarray([metrics.item_quality(task.kind, p, record["gold"]) for p in preds])
    own = [next(j for j, c in enumerate(first.candidates) if n in c.proposers) for n in voting]
    return Example(int(record["index"]), kind.flags, Group(route_x, y[own]), Group(pick_x, y), own, preds)


def answer_of(task: Task, line: str) -> str:
    """The answer a committed line leaves once the task's stop strings cut it, as the decoding loop cuts it."""
    hit = find_stop(line, task.stop, task.stop_at_boxed)
    return line if hit is None else line[: hit.cut]


def fit_choice(groups: Sequence[Group], names: list[str], l2: float) -> Choice:
    """The conditional logit of the module docstring, by Newton's method."""
    useful = [g for g in groups if len(g.y) > 1 and np.ptp(g.y) > 0]
    if not useful:
        raise DataError("no decision in the collected rows has options with different outcomes: nothing to learn")
    rows = np.vstack([g.x for g in useful])
    center = rows.mean(axis=0)
    scale = rows.std(axis=0)
    scale[scale < 1e-9] = 1.0
    zs = [(g.x - center) / scale for g in useful]
    qs = [softmax(g.y / TEMPERATURE) for g in useful]
    theta = np.zeros(rows.shape[1])

    def loss(t: np.ndarray) -> float:
        total = sum(-(q * _log_softmax(z @ t)).sum() for z, q in zip(zs, qs, strict=True))
        return total / len(zs) + 0.5 * l2 * float(t @ t)

    current = loss(theta)
    for _ in range(100):
        grad = l2 * theta
        hess = l2 * np.eye(len(theta))
        for z, q in zip(zs, qs, strict=True):
            p = softmax(z @ theta)
            grad = grad + z.T @ (p - q) / len(zs)
            hess = hess + z.T @ (np.diag(p) - np.outer(p, p)) @ z / len(zs)
        step = np.linalg.solve(hess, grad)
        size = 1.0
        while size > 1e-6:
            trial = theta - size * step
            value = loss(trial)
            if value <= current:
                break
            size /= 2
        theta, done = trial, current - value < 1e-12
        current = value
        if done:
            break
    return Choice(names, center.tolist(), scale.tolist(), theta.tolist())


def decide(ctl: Controller, ex: Example) -> tuple[int, bool]:
    """(the chosen candidate, whether the request was routed) as ``decoding/controlled.py`` decides."""
    best = ctl.routed(ctl.route.probabilities(ex.route.x))
    if best is not None:
        return ex.own[best], True
    if len(ex.pick.y) == 1:
        return 0, False
    return int(ctl.pick.scores(ex.pick.x).argmax()), False


def quality(ctl: Controller, examples: Sequence[Example]) -> float:
    return float(np.mean([ex.pick.y[decide(ctl, ex)[0]] for ex in examples])) if examples else 0.0


def fit_controller(
    members: list[dict[str, str | None]],
    names: list[str],
    train: Sequence[Example],
    tune: Sequence[Example],
    about: dict[str, Any],
    log: Callable[[str], None] = lambda _: None,
) -> Controller:
    """Fit both choices on ``train``; choose the pick's lambda, then the route's lambda and threshold, on ``tune``."""
    blank = neutral(names)

    # The pick first, judged with every request fused.
    picks: list[tuple[float, Choice]] = []
    for l2 in L2_GRID:
        choice = fit_choice([ex.pick for ex in train], pick_feature_names(names), l2)
        picks.append((quality(Controller(members, blank.route, choice, blank.route_at), tune), choice))
        log(f"pick: lambda {l2} -> tune quality {picks[-1][0]:.4f}")
    pick = max(picks, key=lambda p: p[0])[1]  # the first of equals: the weaker regularisation
    # Then the route's lambda and threshold together, judged as they decide: the best tune quality, and of equal
    # ones the one that routes most (a routed request costs one member).
    best: tuple[float, int, Choice, float] | None = None
    for l2 in L2_GRID:
        route = fit_choice([ex.route for ex in train], route_feature_names(names), l2)
        for at in ROUTE_GRID:
            trial = Controller(members, route, pick, at)
            score = quality(trial, tune)
            routed = sum(decide(trial, ex)[1] for ex in tune)
            log(f"route: lambda {l2}, route_at {at} -> tune quality {score:.4f}, {routed}/{len(tune)} routed")
            if best is None or (score, routed) > (best[0], best[1]):
                best = (score, routed, route, at)
    assert best is not None
    _, _, route, route_at = best
    kinds = [list(k) for k in sorted({ex.kind for ex in train})]
    ctl = Controller(members, route, pick, route_at, kinds)
    scores = {"fit": quality(ctl, train), "tune": quality(ctl, tune)}
    for k, n in enumerate(names):
        scores[f"tune {n} alone"] = float(np.mean([ex.route.y[k] for ex in tune]))
    scores["tune routed"] = sum(decide(ctl, ex)[1] for ex in tune) / max(1, len(tune))
    return Controller(members, route, pick, route_at, kinds, {**about, "quality": scores})


def _log_softmax(s: np.ndarray) -> np.ndarray:
    m = s.max()
    return s - m - np.log(np.exp(s - m).sum())


#: the dev rows the shipped controller was fitted and tuned on, per task form: (fit start, fit end, tune end).
#: The rows after them that docs/RESULTS.md reports on ("Controller") are in neither.
DEV_SPLITS: dict[str, tuple[int, int, int]] = {
    "triviaqa": (100, 250, 325),
    "triviaqa-0shot": (100, 250, 325),
    "nq": (400, 550, 625),
    "nq-0shot": (400, 550, 625),
    "squad": (200, 280, 320),
    "squad-0shot": (200, 280, 320),
    "flores-en-de": (10, 70, 100),
    "flores-de-en": (10, 70, 100),
}
ZERO_SHOT = "-0shot"


def task_form(form: str, data_dir: Path | str | None = None) -> Task:
    """``triviaqa`` or ``triviaqa-0shot`` (its zero-shot form) as a task."""
    from adafuse.evaluation.tasks import load_task

    if form.endswith(ZERO_SHOT):
        return load_task(form[: -len(ZERO_SHOT)], data_dir, shots=0)
    return load_task(form, data_dir)


def collect(
    task: Task,
    form: str,
    ensemble: Any,
    names: Sequence[str],
    work: Path,
    offset: int,
    limit: int,
    progress: bool = True,
) -> list[Example]:
    """Decode rows ``offset .. offset + limit`` of ``task`` under the neutral controller into ``work/form``
    (resumable) and return their decisions. ``ensemble``: an Ensemble or a LazyEnsemble."""
    from adafuse.evaluation.runner import PREDICTIONS, read_predictions, run_eval

    work.mkdir(parents=True, exist_ok=True)
    path = work / "neutral.json"
    # Its decisions do not depend on the features (it never routes and keeps the first line), so rows collected
    # under an older feature set stay valid: the file is only brought up to date.
    current = neutral(names)
    if not path.exists() or path.read_text(encoding="utf-8") != current.to_json():
        current.save(path)
    out = work / form
    cfg = collect_config(path)
    run_eval(task, ensemble, cfg, out, offset, limit, progress=progress, models=list(names), label=f"collect {form}")
    records = read_predictions(out / PREDICTIONS)
    found = [example(records[i], task, names) for i in range(offset, offset + limit) if i in records]
    return [ex for ex in found if ex is not None]
