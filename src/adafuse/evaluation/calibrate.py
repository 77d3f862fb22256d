"""Member weights from evidence: a small calibration run of each member alone on held-apart dev items.

The rule (README, "Member weights"): with ``s_m`` the primary score (percent) of member m alone on the
calibration items, ``w_m = (s_m + 1) / sum_j (s_j + 1)``. Add-one smoothing keeps a member that scored zero on a
few items from being silenced outright; a member that is usually right gets a proportionally larger say in
every round's weighted mean NLL. Calibration runs are resumable evaluation runs, so the weights file can always
be traced back to per-item predictions.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from adafuse.config import DecodeConfig
from adafuse.errors import ConfigError, DataError
from adafuse.evaluation.runner import PRIMARY_METRIC, EnsembleSource, run_eval
from adafuse.evaluation.tasks import Task

RULE = "w_m = (s_m + 1) / sum_j (s_j + 1), s_m = member m's primary score alone (percent) on the calibration items"


def weights_from_scores(scores: Sequence[float]) -> tuple[float, ...]:
    if not scores or any(not math.isfinite(s) or s < 0 for s in scores):
        raise ConfigError(f"calibration scores must be finite and non-negative, got {list(scores)}")
    raw = [s + 1.0 for s in scores]
    total = sum(raw)
    return tuple(round(r / total, 6) for r in raw)


def calibrate(
    task: Task,
    ensemble: EnsembleSource,
    models: Sequence[str],
    out_dir: Path | str,
    offset: int = 0,
    limit: int = 50,
    chat: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Run every member alone on ``offset .. offset + limit``; write and return ``out_dir/weights.json``."""
    out = Path(out_dir)
    metric = PRIMARY_METRIC[task.kind]
    scores: list[float] = []
    for i in range(len(models)):
        cfg = DecodeConfig(method="single", single_member=i)
        summary = run_eval(
            task, ensemble, cfg, out / f"single:{i}", offset, limit, chat, progress, models=models, label=f"single:{i}"
        )
        scores.append(float(summary["metrics"][metric]))
    weights = weights_from_scores(scores)
    record = {
        "task": task.name,
        "models": list(models),
        "metric": metric,
        "scores": scores,
        "weights": list(weights),
        "offset": offset,
        "limit": limit,
        "chat": chat,
        "rule": RULE,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "weights.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def load_weights(path: Path | str, models: Sequence[str]) -> tuple[float, ...]:
    """Weights from a calibration file, checked against the members they are for (same names, same order)."""
    p = Path(path)
    try:
        record = json.loads(p.read_text())
        weights = tuple(float(w) for w in record["weights"])
        stored = list(record["models"])
    except FileNotFoundError:
        raise DataError(f"weights file not found: {p}") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{p}: not a weights file written by `adafuse calibrate` ({exc})") from None
    if stored != list(models):
        raise ConfigError(f"{p} holds weights for {stored}, but the members are {list(models)}")
    return weights


def with_weights(config: DecodeConfig, weights: Sequence[float]) -> DecodeConfig:
    return replace(config, weights=tuple(weights))
