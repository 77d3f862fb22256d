"""Several decoding methods on one task, side by side: scores with bootstrap intervals against compute.

Each method is named by a *label*, ``METHOD[:MEMBER][@KEY=VALUE,KEY=VALUE...]``:

* ``adafuse``, ``token``, ``span``, ``sample``: the method with the base options;
* ``adafuse@theta=0.5`` or ``adafuse@theta=0.5,beam=1``: with options overridden (any option of
  ``DecodeConfig`` but the per-request ones, which the task sets; weights written ``1/2/1``);
* ``single:1`` or ``single:gemma3-270m``: one member alone, by index or by name.

Each label's run goes to ``OUT/<label>/`` through :func:`~adafuse.evaluation.runner.run_eval`, so a rerun
reuses finished items, and the models are loaded at most once for all labels. ``OUT/report.md`` tabulates the
results and ``OUT/frontier.png`` plots score against compute (tokens evaluated per output token).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from adafuse.config import METHODS, DecodeConfig, read_config
from adafuse.ensemble import Ensemble
from adafuse.errors import AdafuseError, ConfigError
from adafuse.evaluation import metrics
from adafuse.evaluation.runner import (
    PREDICTIONS,
    PRIMARY_METRIC,
    EnsembleSource,
    LazyEnsemble,
    read_predictions,
    run_eval,
)
from adafuse.evaluation.tasks import Task

REPORT = "report.md"
FRONTIER = "frontier.png"
REPORT_JSON = "report.json"

_ALIASES = {"member": "single_member"}
_DIR_SAFE = re.compile(r"[^A-Za-z0-9._@=,:+-]")


@dataclass(frozen=True)
class MethodSpec:
    """A parsed method label: the method, an optional member (index or name) and option overrides."""

    label: str
    method: str
    member: int | str | None = None
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def dirname(self) -> str:
        """The label as a directory name (characters outside a safe set become ``_``)."""
        return _DIR_SAFE.sub("_", self.label)

    def config(self, base: DecodeConfig, member_names: Sequence[str] | None = None) -> DecodeConfig:
        """``base`` with this label's method and overrides; a member name is looked up in ``member_names``."""
        changes: dict[str, Any] = dict(self.overrides)
        changes["method"] = self.method
        if self.method == "single":
            member = self.member if self.member is not None else base.single_member
            changes["single_member"] = resolve_member(member, member_names, self.label)
        try:
            return replace(base, **changes)
        except ConfigError as exc:
            raise ConfigError(f"method label {self.label!r}: {exc}") from None


def resolve_member(member: int | str | None, names: Sequence[str] | None, label: str = "") -> int:
    """A member given by index or name, as an index (0 when not given)."""
    where = f"method label {label!r}: " if label else ""
    if member is None:
        return 0
    if isinstance(member, int):
        index = member
    elif member.strip().lstrip("-").isdigit():
        index = int(member)
    else:
        if names is None:
            raise ConfigError(f"{where}member {member!r} is given by name but the member names are unknown")
        if member not in names:
            raise ConfigError(f"{where}no member named {member!r}; members are {list(names)}")
        return list(names).index(member)
    if names is not None and not 0 <= index < len(names):
        raise ConfigError(f"{where}member {index} is not a member index (0..{len(names) - 1})")
    if index < 0:
        raise ConfigError(f"{where}member index must be >= 0, got {index}")
    return index


def parse_label(label: str) -> MethodSpec:
    """Parse ``METHOD[:MEMBER][@KEY=VALUE,...]`` (see the module docstring); ConfigError on anything else."""
    text = label.strip()
    if not text:
        raise ConfigError("empty method label")
    head, _, opts = text.partition("@")
    method, _, member_text = head.partition(":")
    method = method.strip()
    if method not in METHODS:
        raise ConfigError(f"method label {label!r}: unknown method {method!r}; choose one of {', '.join(METHODS)}")
    member: int | str | None = None
    if member_text.strip():
        if method != "single":
            raise ConfigError(f"method label {label!r}: only 'single' takes a member (single:INDEX or single:NAME)")
        member = int(member_text) if member_text.strip().isdigit() else member_text.strip()
    elif ":" in head:
        raise ConfigError(f"method label {label!r}: nothing after ':' (use single:INDEX or single:NAME)")
    overrides: dict[str, Any] = {}
    if "@" in text:
        if not opts.strip():
            raise ConfigError(f"method label {label!r}: nothing after '@' (use KEY=VALUE,...)")
        for part in opts.split(","):
            key, eq, value = part.partition("=")
            key = key.strip().replace("-", "_")
            key = _ALIASES.get(key, key)
            if not eq or not value.strip():
                raise ConfigError(f"method label {label!r}: {part.strip()!r} is not KEY=VALUE")
            if key in overrides:
                raise ConfigError(f"method label {label!r}: {key} given twice")
            overrides[key] = value.strip()
    if "single_member" in overrides:
        if method != "single":
            raise ConfigError(f"method label {label!r}: only 'single' takes a member")
        if member is not None:
            raise ConfigError(f"method label {label!r}: member given twice")
        raw = overrides.pop("single_member")
        member = int(raw) if raw.isdigit() else raw
    if "method" in overrides:
        raise ConfigError(f"method label {label!r}: the method is the label's head, not an option")
    # Checked now, not after other labels' runs have taken an hour; the values kept are the parsed ones.
    parsed = read_config({**overrides, "method": method}, where=f"method label {label!r}", request=False)
    overrides = {key: getattr(parsed, key) for key in overrides}
    return MethodSpec(label=text, method=method, member=member, overrides=tuple(sorted(overrides.items())))


def split_methods(text: str) -> list[str]:
    """Split a ``--methods`` value on commas, keeping ``KEY=VALUE`` pieces with the label before them:
    ``"adafuse@theta=0.5,beam=1,single:1"`` -> ``["adafuse@theta=0.5,beam=1", "single:1"]``. Method names
    never contain ``=``, so a piece with one continues the previous label's options."""
    labels: list[str] = []
    for piece in text.split(","):
        piece = piece.strip()
        if not piece:
            continue
        if "=" in piece and "@" not in piece and labels and "@" in labels[-1]:
            labels[-1] += "," + piece
        else:
            labels.append(piece)
    if not labels:
        raise ConfigError("no methods given")
    return labels


# ------------------------------------------------------------------------------------------ bootstrap


def _corpus_metric(name: str) -> Any:
    sacrebleu = metrics._sacrebleu()
    return sacrebleu.metrics.BLEU(tokenize="13a") if name == "bleu" else sacrebleu.metrics.CHRF()


def item_scores(kind: str, metric: str, predictions: Sequence[str], golds: Sequence[Any]) -> list[float]:
    """Per-item scores in percent for a metric that is a mean over items (em, f1, lenient, accuracy)."""
    fn: Callable[[str, Any], float]
    if metric == "em":
        fn = metrics.exact_match
    elif metric == "f1":
        fn = metrics.token_f1
    elif metric == "lenient":
        fn = metrics.lenient_match
    elif metric == "accuracy":
        fn = lambda p, g: metrics.numeric_match(p, g if isinstance(g, str) else g[0])  # noqa: E731
    else:
        raise ValueError(f"{metric} is not a per-item metric (kind {kind})")
    return [100.0 * fn(p, g) for p, g in zip(predictions, golds, strict=True)]


def bootstrap_values(
    kind: str, metric: str, predictions: Sequence[str], golds: Sequence[Any], resamples: int = 1000, seed: int = 0
) -> np.ndarray:
    """The corpus score (percent) of each of ``resamples`` resampled corpora; the same seed and corpus size draw
    the same items, so two methods' values for one task are paired (``bootstrap_interval`` explains the scoring)."""
    n = len(predictions)
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    if metric in ("bleu", "chrf"):
        scorer = _corpus_metric(metric)
        refs = [g if isinstance(g, str) else g[0] for g in golds]
        stats = np.asarray(scorer._extract_corpus_statistics(list(predictions), [refs]), dtype=np.int64)
        sums = stats[idx].sum(axis=1)
        return np.array([scorer._compute_score_from_stats(list(row)).score for row in sums], dtype=float)
    return np.asarray(item_scores(kind, metric, predictions, golds), dtype=float)[idx].mean(axis=1)


def bootstrap_interval(
    kind: str,
    metric: str,
    predictions: Sequence[str],
    golds: Sequence[Any],
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float] | None:
    """A percentile bootstrap interval for a corpus score, in percent; None for an empty corpus.

    Per-item metrics resample the items' scores. BLEU and chrF are not means of sentence scores, so the
    corpus is resampled and the score recomputed from the resampled sentences' summed statistics (exactly
    what recomputing it from the resampled sentences would give, without re-tokenising each time). The seed
    is fixed, so a report is reproducible, and every method of one comparison gets the same resamples.
    """
    if not predictions:
        return None
    values = bootstrap_values(kind, metric, predictions, golds, resamples, seed)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(values, [tail, 1.0 - tail])
    return float(lo), float(hi)


# --------------------------------------------------------------------------------------------- compare


@dataclass
class MethodResult:
    """One row of the comparison."""

    spec: MethodSpec
    summary: dict[str, Any]
    interval: tuple[float, float] | None

    @property
    def score(self) -> float:
        return float(self.summary["metrics"][self.summary["primary_metric"]])

    @property
    def compute(self) -> float | None:
        return self.summary["telemetry"].get("tokens_per_output_token")


class _Once:
    """Calls a plain factory at most once, so every method of a comparison shares the same models."""

    def __init__(self, factory: Callable[[], Ensemble]) -> None:
        self.factory = factory
        self.ensemble: Ensemble | None = None

    def __call__(self) -> Ensemble:
        if self.ensemble is None:
            self.ensemble = self.factory()
        return self.ensemble


def run_compare(
    task: Task,
    methods: Sequence[str | MethodSpec],
    ensemble: EnsembleSource,
    out_dir: Path | str,
    config: DecodeConfig | None = None,
    *,
    models: Sequence[str] | None = None,
    offset: int = 0,
    limit: int | None = None,
    chat: bool = False,
    lenient: bool = False,
    progress: bool = True,
    resamples: int = 1000,
    seed: int = 0,
) -> list[MethodResult]:
    """Run (or resume) each method's evaluation into ``out_dir/<label>/`` and write the report and the plot.

    ``ensemble`` is shared by every method: an :class:`Ensemble`, or a factory called at most once and only
    if some method has items left to generate (``models`` names the members meanwhile, see ``run_eval``).
    ``config`` holds the options every label starts from. Returns one :class:`MethodResult` per label.
    """
    specs = [m if isinstance(m, MethodSpec) else parse_label(m) for m in methods]
    if not specs:
        raise ConfigError("no methods given")
    seen: dict[str, str] = {}
    for spec in specs:
        if spec.dirname in seen:
            raise ConfigError(f"method labels {seen[spec.dirname]!r} and {spec.label!r} would share one directory")
        seen[spec.dirname] = spec.label
    source: EnsembleSource = ensemble
    if not isinstance(ensemble, Ensemble | LazyEnsemble | _Once):
        source = _Once(ensemble)
    names: list[str] | None = list(models) if models is not None else None
    if names is None and isinstance(source, Ensemble):
        names = source.names
    if names is None:
        names = source().names  # type: ignore[operator]
    base = config or DecodeConfig()
    configs = [spec.config(base, names) for spec in specs]  # every label checked before any work starts

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    wanted = [item.index for item in task.items(offset, limit)]
    results: list[MethodResult] = []
    for spec, cfg in zip(specs, configs, strict=True):
        summary = run_eval(
            task,
            source,
            cfg,
            out / spec.dirname,
            offset,
            limit,
            chat,
            progress,
            models=names,
            lenient=lenient,
            label=spec.label,
        )
        records = read_predictions(out / spec.dirname / PREDICTIONS)
        rows = [records[i] for i in wanted if i in records]
        interval = bootstrap_interval(
            task.kind,
            summary["primary_metric"],
            [r["prediction"] for r in rows],
            [r["gold"] for r in rows],
            resamples=resamples,
            seed=seed,
        )
        results.append(MethodResult(spec, summary, interval))
    write_report(task, results, out, resamples=resamples, seed=seed)
    plot_frontier(task, results, out / FRONTIER)
    return results


# ---------------------------------------------------------------------------------------------- report


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def report_markdown(task: Task, results: Sequence[MethodResult], resamples: int = 1000, seed: int = 0) -> str:
    """The comparison table as Markdown: one row per method label."""
    if not results:
        raise ConfigError("nothing to report")
    primary = PRIMARY_METRIC[task.kind]
    others = [k for k in results[0].summary["metrics"] if k != primary]
    first = results[0].summary
    header = [
        "method",
        "models",
        f"{primary} (95% CI)",
        *others,
        "n",
        "errors",
        "wall s",
        "tokens eval / output token",
        "fast-path rate",
    ]
    how = "the corpus is resampled" if primary in ("bleu", "chrf") else "per-item scores are resampled"
    lines = [
        f"# {task.name}: method comparison",
        "",
        f"{first['n']} items from index {first['offset']}; scores in percent. The interval is a 95% percentile "
        f"bootstrap ({resamples} resamples, seed {seed}; {how}). Compute is tokens evaluated by all members "
        "per output token. Wall seconds include model loading for the run that loaded the models.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for r in results:
        s = r.summary
        ci = f" [{_fmt(r.interval[0], 1)}, {_fmt(r.interval[1], 1)}]" if r.interval else ""
        cells = [
            r.spec.label,
            ", ".join(s["models"]),
            f"{_fmt(r.score, 1)}{ci}",
            *(_fmt(s["metrics"].get(k), 1) for k in others),
            str(s["n"]),
            str(s["errors"]),
            _fmt(s["wall_seconds"], 1),
            _fmt(r.compute, 2),
            _fmt(s["telemetry"]["fast_path_rate"], 2),
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(
    task: Task, results: Sequence[MethodResult], out_dir: Path | str, resamples: int = 1000, seed: int = 0
) -> Path:
    """Write ``report.md`` and a machine-readable ``report.json`` beside it; return the Markdown path."""
    out = Path(out_dir)
    path = out / REPORT
    path.write_text(report_markdown(task, results, resamples, seed), encoding="utf-8")
    rows = [
        {
            "label": r.spec.label,
            "method": r.spec.method,
            "models": r.summary["models"],
            "metric": r.summary["primary_metric"],
            "score": r.score,
            "interval": list(r.interval) if r.interval else None,
            "metrics": r.summary["metrics"],
            "n": r.summary["n"],
            "errors": r.summary["errors"],
            "wall_seconds": r.summary["wall_seconds"],
            "tokens_per_output_token": r.compute,
            "fast_path_rate": r.summary["telemetry"]["fast_path_rate"],
            "fusion_rate": r.summary["telemetry"]["fusion_rate"],
        }
        for r in results
    ]
    (out / REPORT_JSON).write_text(
        json.dumps({"task": task.name, "resamples": resamples, "seed": seed, "methods": rows}, indent=2) + "\n",
        encoding="utf-8",
    )
    return path


def plot_frontier(task: Task, results: Sequence[MethodResult], path: Path | str) -> Path:
    """Score against compute, one labelled point (with its interval) per method label; labels of one method
    that differ only in options (a theta sweep) are joined by a line, ordered by compute.

    Uses matplotlib's Agg canvas directly rather than pyplot, so no global backend is switched and no
    display is needed.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise AdafuseError("the frontier plot needs matplotlib: pip install 'adafuse[eval]'") from e
    primary = PRIMARY_METRIC[task.kind]
    fig = Figure(figsize=(7.5, 5.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    groups: dict[str, list[MethodResult]] = {}
    for r in results:
        if r.compute is not None:
            groups.setdefault(r.spec.method + (f":{r.spec.member}" if r.spec.member is not None else ""), []).append(r)
    placed = 0
    for group, members in groups.items():
        members.sort(key=lambda r: r.compute or 0.0)
        xs = [r.compute or 0.0 for r in members]
        ys = [r.score for r in members]
        low = [max(0.0, r.score - r.interval[0]) if r.interval else 0.0 for r in members]
        high = [max(0.0, r.interval[1] - r.score) if r.interval else 0.0 for r in members]
        line = "-" if len(members) > 1 else "none"
        ax.errorbar(xs, ys, yerr=[low, high], fmt="o", linestyle=line, capsize=3, label=group)
        for r, x, y in zip(members, xs, ys, strict=True):
            # Alternate above/below so labels of neighbouring points do not print over each other.
            dy = 6 if placed % 2 == 0 else -14
            placed += 1
            ax.annotate(r.spec.label, (x, y), textcoords="offset points", xytext=(6, dy), fontsize=8)
    plotted = [r for g in groups.values() for r in g]
    if not plotted:
        ax.text(0.5, 0.5, "no method produced output tokens", ha="center", va="center", transform=ax.transAxes)
    else:
        # Scores are percentages: show at least a 10-point window so ties at one value do not look like a
        # spread, and never beyond [0, 100] plus a margin.
        low = min(r.interval[0] if r.interval else r.score for r in plotted)
        high = max(r.interval[1] if r.interval else r.score for r in plotted)
        pad = max(2.0, (10.0 - (high - low)) / 2)
        ax.set_ylim(max(-2.0, low - pad), min(102.0, high + pad))
        if any(len(g) > 1 for g in groups.values()):
            ax.legend(fontsize=8, loc="best")
    ax.set_xlabel("compute: tokens evaluated per output token (all members)")
    ax.set_ylabel(f"{primary} (%)")
    ax.set_title(f"{task.name}: score vs compute")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, format="png")
    return out
