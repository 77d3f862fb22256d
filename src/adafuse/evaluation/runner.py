"""Benchmark runs that survive being killed: one JSON line per item, written as it is produced.

An output directory holds one run:

* ``run.json`` - what the run *is* (task, prompt fingerprint, method, models, decoding config, chat) and the
  model-loading time spent on it so far. It is written before the first item, so a rerun can tell whether it
  is continuing the same run or would be mixing two different ones (it then refuses).
* ``predictions.jsonl`` - one line per item, appended, flushed and fsynced right after the item is done, so
  a kill loses at most the item in flight. A rerun reads the lines by item index, discards a torn last line
  and does only the items that have no line yet.
* ``summary.json`` - scores and cost over the requested items, rewritten at the end of every (re)run.

Items whose generation raises an :class:`~adafuse.errors.AdafuseError` (a prompt too long for a member's
window, a remote member down) are recorded with the error and scored as an empty prediction, so a
failing item lowers the score instead of silently shrinking the test set.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from adafuse import __version__
from adafuse.config import DecodeConfig
from adafuse.ensemble import Ensemble
from adafuse.errors import AdafuseError, ConfigError, DataError
from adafuse.evaluation.tasks import Item, Task

PREDICTIONS = "predictions.jsonl"
SUMMARY = "summary.json"
MANIFEST = "run.json"
LOCK = ".lock"
#: The metric a task kind is ranked by; the others are reported beside it.
PRIMARY_METRIC: dict[str, str] = {"qa": "em", "math": "accuracy", "translation": "bleu"}

EnsembleSource = Ensemble | Callable[[], Ensemble]

# Recomputing corpus BLEU/chrF after every item would cost O(n^2) over a run; the progress bar's running
# translation score is refreshed at most this often.
_RUNNING_CORPUS_EVERY_S = 2.0


# ------------------------------------------------------------------------------------------------ models


class LazyEnsemble:
    """Loads an ensemble on its first call and hands the same one to every later call.

    Pass it to :func:`run_eval` (or to several runs, as ``compare`` does) so models are loaded only when some
    item still needs generating, and only once. Use it as a context manager to close what it loaded; the
    runner never closes an ensemble, because it cannot know who else shares it.
    """

    def __init__(
        self,
        specs: Sequence[str] | None = None,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        loader: Callable[[], Ensemble] | None = None,
    ) -> None:
        self.specs = list(specs) if specs else None
        self._loader = loader or (lambda: Ensemble.from_specs(self.specs, n_ctx=n_ctx, n_threads=n_threads))
        self._ensemble: Ensemble | None = None
        #: seconds the one load took (0 until loaded).
        self.load_seconds = 0.0

    @property
    def loaded(self) -> bool:
        return self._ensemble is not None

    def __call__(self) -> Ensemble:
        if self._ensemble is None:
            start = time.perf_counter()
            self._ensemble = self._loader()
            self.load_seconds = time.perf_counter() - start
        return self._ensemble

    def close(self) -> None:
        if self._ensemble is not None:
            self._ensemble.close()
            self._ensemble = None

    def __enter__(self) -> LazyEnsemble:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def spec_name(spec: str) -> str:
    """The member name a model spec loads as, without loading it: a built-in's own name, a ``.gguf`` file's
    stem (as :func:`adafuse.backends.load_member` names it), otherwise the spec itself."""
    from adafuse.backends.zoo import ZOO

    spec = spec.strip()
    if spec in ZOO:
        return spec
    if spec.lower().endswith(".gguf"):
        return Path(spec).stem
    return spec


def task_config(config: DecodeConfig, task: Task) -> DecodeConfig:
    """``config`` with the task's stop strings, token budget and boxed-answer rule, which define the task."""
    return replace(config, stop=task.stop, max_new_tokens=task.max_new_tokens, stop_at_boxed=task.stop_at_boxed)


def reported_models(config: DecodeConfig, names: Sequence[str]) -> list[str]:
    """The models a run's numbers belong to: every member, or for ``single`` only the one that writes."""
    if config.method != "single":
        return list(names)
    index = config.single_member if config.single_member is not None else 0
    if not 0 <= index < len(names):
        raise ConfigError(f"single member {index} is not a member index (0..{len(names) - 1}); members: {names}")
    return [names[index]]


# ---------------------------------------------------------------------------------------- prediction log


def _scan(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Every record in a predictions file and the byte length of its trustworthy prefix.

    A kill can leave only one kind of damage: a last line cut short (or, after a power loss, garbage at the
    end). Every invalid line after the last valid one is therefore discarded. An invalid line *followed by*
    valid ones is not what a kill produces, so it raises DataError instead of guessing.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], 0
    records: list[dict[str, Any]] = []
    good_end = 0
    pos = 0
    bad_line: int | None = None
    for lineno, line in enumerate(data.splitlines(keepends=True), start=1):
        pos += len(line)
        if not line.strip(b" \t\r\n"):
            continue
        record: Any = None
        if line.endswith(b"\n"):
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                record = None
        valid = isinstance(record, dict) and isinstance(record.get("index"), int) and "prediction" in record
        if not valid:
            bad_line = bad_line or lineno
            continue
        if bad_line is not None:
            raise DataError(
                f"{path}:{bad_line}: corrupt line before the end of the predictions file; "
                "fix or delete that line, or use a new output directory"
            )
        records.append(record)
        good_end = pos
    return records, good_end


def read_predictions(path: Path | str) -> dict[int, dict[str, Any]]:
    """The records of a predictions file by item index (a torn last line is ignored; a later line for the
    same index - a retried failure - replaces the earlier one)."""
    records, _ = _scan(Path(path))
    return {r["index"]: r for r in records}


def _append(handle: Any, record: dict[str, Any]) -> None:
    """One line, written in one call and forced to disk before the next item starts."""
    handle.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
    handle.flush()
    os.fsync(handle.fileno())


def _write_json_atomic(path: Path, obj: Any) -> None:
    """Write to a temporary name, fsync, then rename, so a kill never leaves half a JSON file."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """Hold an advisory lock on the directory: two runners appending to one file would do items twice."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX; run unlocked
        yield
        return
    with (out / LOCK).open("a") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{out}: another evaluation is writing to this directory") from None
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# ------------------------------------------------------------------------------------------- run identity


def run_identity(task: Task, config: DecodeConfig, models: Sequence[str], chat: bool) -> dict[str, Any]:
    """What must match for two invocations to be the same run: the package version, the task and its prompt, the
    members and the resolved options. ``single_member`` and ``weights`` are left out for ``single`` (the chosen
    model is in ``models``; weights cannot matter), so the same single-model run is recognised whether the other
    members were loaded or not."""
    cfg = config.to_dict()
    cfg["single_member"] = None
    if config.method == "single":
        cfg["weights"] = None
    identity = {
        "adafuse": __version__,
        "task": task.name,
        "kind": task.kind,
        "prompt_sha256": hashlib.sha256(task.prompt_text.encode("utf-8")).hexdigest(),
        "method": config.method,
        "models": list(models),
        "config": cfg,
        "chat": chat,
    }
    if task.zero_shot:
        identity["shots"] = 0
    # Through JSON once, so tuples and lists compare equal to what is read back from run.json.
    return json.loads(json.dumps(identity))


def _differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    diffs = []
    for key in sorted(set(stored) | set(current)):
        old, new = stored.get(key), current.get(key)
        if old == new:
            continue
        if key == "prompt_sha256":
            diffs.append("the prompt file's text")
        elif key == "config" and isinstance(old, dict) and isinstance(new, dict):
            diffs += [
                f"config.{f}: {old.get(f)!r} now {new.get(f)!r}"
                for f in sorted(set(old) | set(new))
                if old.get(f) != new.get(f) and f != "method"  # the method is reported on its own
            ]
        else:
            diffs.append(f"{key}: {old!r} now {new!r}")
    return diffs


def _check_manifest(out: Path, identity: dict[str, Any], has_records: bool) -> dict[str, Any]:
    """The directory's manifest, created if new; ConfigError if it describes a different run."""
    path = out / MANIFEST
    if path.exists():
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
            raise DataError(f"{path}: unreadable run description ({e}); use a new output directory") from None
        diffs = _differences(manifest.get("identity", {}), identity)
        if diffs:
            raise ConfigError(
                f"{out} already holds a different run ({'; '.join(diffs)}); refusing to mix them - "
                "use another output directory or delete this one"
            )
        return manifest
    if has_records:
        raise ConfigError(
            f"{out / PREDICTIONS} exists but {MANIFEST} does not, so the run it belongs to is unknown; "
            "use another output directory or delete this one"
        )
    manifest = {"version": 1, "identity": identity, "load_seconds": 0.0}
    _write_json_atomic(path, manifest)
    return manifest


# --------------------------------------------------------------------------------------------- one item


def _run_item(ens: Ensemble, task: Task, config: DecodeConfig, item: Item, chat: bool) -> dict[str, Any]:
    start = time.perf_counter()
    record: dict[str, Any] = {"index": item.index}
    if item.id is not None:
        record["id"] = item.id
    record.update(question=item.question, gold=item.answer)
    try:
        result = ens.generate(task.build_prompt(item.question), config, chat=chat)
    except AdafuseError as exc:
        record.update(
            prediction="",
            raw="",
            correct=0.0,
            finish_reason="error",
            rounds=0,
            telemetry=None,
            error=str(exc),
        )
    else:
        prediction = task.extract_answer(result.text)
        record.update(
            prediction=prediction,
            raw=result.text,
            # The standard metric per line; the lenient QA match is a corpus-level extra in the summary only,
            # so lines written with and without --lenient never disagree.
            correct=task.correct(prediction, item.answer),
            finish_reason=result.finish_reason,
            rounds=result.telemetry.rounds,
            telemetry=asdict(result.telemetry),
            # The whole result with its per-round trace (who proposed what, every member's scores): what
            # `adafuse report` draws and what explains a wrong answer.
            trace=result.to_dict(),
        )
    record["seconds"] = round(time.perf_counter() - start, 6)
    return record


# -------------------------------------------------------------------------------------------- summarising


def aggregate_telemetry(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Cost summed over items: per-member forward calls and tokens evaluated, fast-path and fusion rates
    (fast-path or fused rounds over all rounds) and tokens evaluated per output token (all members together)."""
    members: dict[str, dict[str, int]] = {}
    totals = {"rounds": 0, "fast_path_rounds": 0, "fused_rounds": 0, "output_tokens": 0}
    seconds = 0.0
    for rec in records:
        seconds += float(rec.get("seconds") or 0.0)
        tel = rec.get("telemetry")
        if not tel:
            continue
        for key in totals:
            totals[key] += int(tel.get(key, 0))
        for m in tel.get("members", []):
            agg = members.setdefault(m["name"], {"forward_calls": 0, "tokens_evaluated": 0, "tokens_reused": 0})
            for key in agg:
                agg[key] += int(m.get(key, 0))
    forward_calls = sum(m["forward_calls"] for m in members.values())
    tokens_evaluated = sum(m["tokens_evaluated"] for m in members.values())
    rounds = totals["rounds"]
    return {
        "members": members,
        "forward_calls": forward_calls,
        "tokens_evaluated": tokens_evaluated,
        **totals,
        "fast_path_rate": totals["fast_path_rounds"] / rounds if rounds else 0.0,
        "fusion_rate": totals["fused_rounds"] / rounds if rounds else 0.0,
        # None rather than 0 or infinity when nothing was written: the ratio is undefined.
        "tokens_per_output_token": tokens_evaluated / totals["output_tokens"] if totals["output_tokens"] else None,
        "generation_seconds": seconds,
    }


def summarise(
    task: Task,
    items: Sequence[Item],
    done: dict[int, dict[str, Any]],
    config: DecodeConfig,
    models: Sequence[str],
    *,
    offset: int,
    limit: int | None,
    chat: bool,
    lenient: bool,
    load_seconds: float,
    session_seconds: float,
) -> dict[str, Any]:
    """The summary over the requested items that have a record (all of them once a run completes)."""
    rows = [(item, done[item.index]) for item in items if item.index in done]
    predictions = [rec["prediction"] for _, rec in rows]
    golds = [item.answer for item, _ in rows]
    records = [rec for _, rec in rows]
    telemetry = aggregate_telemetry(records)
    return {
        "task": task.name,
        "kind": task.kind,
        "method": config.method,
        "models": list(models),
        "config": config.to_dict(),
        "chat": chat,
        "offset": offset,
        "limit": limit,
        "n": len(rows),
        "complete": len(rows) == len(items),
        "primary_metric": PRIMARY_METRIC[task.kind],
        "metrics": task.score(predictions, golds, lenient=lenient),
        # Cumulative over every invocation of this run: model loading plus the generation of these items, so a
        # resumed or reused run reports what its results cost, not what the last (maybe empty) invocation cost.
        "wall_seconds": load_seconds + telemetry["generation_seconds"],
        "session_seconds": session_seconds,
        "telemetry": telemetry,
        "errors": sum(1 for rec in records if "error" in rec),
    }


class _RunningScore:
    """The progress bar's score so far: the mean per-item score for QA and math, corpus chrF (refreshed
    every few seconds) for translation, where per-item scores are not meaningful."""

    def __init__(self, task: Task, items: Sequence[Item], done: dict[int, dict[str, Any]]) -> None:
        self.task = task
        self.wanted = {item.index: item for item in items}
        self.records = {i: rec for i, rec in done.items() if i in self.wanted}
        self._text = ""
        self._at = 0.0

    def add(self, record: dict[str, Any]) -> None:
        self.records[record["index"]] = record

    def text(self, final: bool = False) -> str:
        recs = list(self.records.values())
        errors = sum(1 for r in recs if "error" in r)
        tail = f" · {errors} error{'s' * (errors != 1)}" if errors else ""
        if not recs:
            return ""
        if self.task.kind != "translation":
            name = PRIMARY_METRIC[self.task.kind]
            value = 100.0 * sum(float(r.get("correct") or 0.0) for r in recs) / len(recs)
            return f"{name} {value:.1f}{tail}"
        now = time.monotonic()
        if final or not self._text or now - self._at >= _RUNNING_CORPUS_EVERY_S:
            preds = [r["prediction"] for r in recs]
            golds = [self.wanted[r["index"]].answer for r in recs]
            self._text = f"chrF {self.task.score(preds, golds)['chrf']:.1f}"
            self._at = now
        return self._text + tail


@contextmanager
def _progress_bar(enabled: bool, label: str, total: int, completed: int) -> Iterator[Callable[[str], None] | None]:
    """A rich progress bar on stderr; yields ``advance(score_text)`` or None when disabled."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[score]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    with bar:
        tid = bar.add_task(escape(label), total=total, completed=completed, score="")

        def advance(score: str) -> None:
            bar.update(tid, advance=1, score=score)

        yield advance


# -------------------------------------------------------------------------------------------------- runs


def run_eval(
    task: Task,
    ensemble: EnsembleSource,
    config: DecodeConfig | None = None,
    out_dir: Path | str = "runs/eval",
    offset: int = 0,
    limit: int | None = None,
    chat: bool = False,
    progress: bool = True,
    *,
    models: Sequence[str] | None = None,
    lenient: bool = False,
    retry_errors: bool = False,
    label: str | None = None,
) -> dict[str, Any]:
    """Evaluate ``config`` on items ``offset .. offset + limit`` of ``task`` into ``out_dir``; return the summary.

    ``ensemble`` is an :class:`Ensemble` or a zero-argument factory (e.g. :class:`LazyEnsemble`) called only
    if some item still needs generating. With a factory, give ``models`` (member names, in order) so the run
    can be identified without loading anything; otherwise the factory is called up front to learn them.
    The task's stop strings, token budget and boxed-answer rule replace those in ``config``.

    Rerunning into the same ``out_dir`` resumes: items already recorded are kept and not redone (unless
    ``retry_errors``, which redoes items recorded with an error), and a directory holding a different run
    (task, prompt, method, models, decoding config or chat) raises ConfigError. The directory is locked
    while the run writes to it. The runner never closes the ensemble, since a factory's may be shared: use
    :class:`LazyEnsemble` as a context manager to close what it loads.
    """
    session_start = time.perf_counter()
    if offset < 0:
        raise ConfigError(f"offset must be >= 0, got {offset}")
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be >= 0, got {limit}")
    cfg = task_config(config or DecodeConfig(), task)
    ens: Ensemble | None = ensemble if isinstance(ensemble, Ensemble) else None
    load_seconds = 0.0
    if models is not None:
        names = list(models)
    elif ens is not None:
        names = ens.names
    else:
        start = time.perf_counter()
        ens = ensemble()  # type: ignore[operator]
        load_seconds = time.perf_counter() - start
        names = ens.names
    cfg.member_weights(len(names))  # a wrong weight count fails now, before any model is loaded
    shown = reported_models(cfg, names)
    identity = run_identity(task, cfg, shown, chat)
    items = task.items(offset, limit)
    if not items:
        chosen = f"offset {offset}" + ("" if limit is None else f" and limit {limit}")
        raise DataError(f"{task.data_path}: nothing to evaluate: {chosen} select no row of its {task.n_rows()}")

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / LOCK).touch()
    except OSError as exc:
        raise DataError(f"cannot write the run to {out}: {exc.strerror or exc}") from None
    pred_path = out / PREDICTIONS
    with _exclusive(out):
        records, good_end = _scan(pred_path)
        manifest = _check_manifest(out, identity, has_records=bool(records))
        if pred_path.exists() and pred_path.stat().st_size != good_end:
            # Cut the torn tail before appending, or the next line would be glued onto it.
            with pred_path.open("r+b") as f:
                f.truncate(good_end)
                f.flush()
                os.fsync(f.fileno())
        done = {r["index"]: r for r in records}
        for item in items:
            rec = done.get(item.index)
            if rec is not None and rec.get("question") != item.question:
                raise DataError(
                    f"{pred_path}: item {item.index} was recorded for a different question than the data file "
                    f"{task.data_path} now has; the data changed - use a new output directory"
                )
        todo = [it for it in items if it.index not in done or (retry_errors and "error" in done[it.index])]

        if todo:
            # The old summary no longer describes the directory; a kill from here on must not leave it behind.
            (out / SUMMARY).unlink(missing_ok=True)
            if ens is None:
                start = time.perf_counter()
                ens = ensemble()  # type: ignore[operator]
                load_seconds += time.perf_counter() - start
            _validate(ens, cfg, names)
        if load_seconds:
            manifest["load_seconds"] = float(manifest.get("load_seconds", 0.0)) + load_seconds
            _write_json_atomic(out / MANIFEST, manifest)

        running = _RunningScore(task, items, done)
        with ExitStack() as stack:
            advance = stack.enter_context(
                _progress_bar(progress, label or f"{task.name} · {cfg.method}", len(items), len(items) - len(todo))
            )
            handle = stack.enter_context(pred_path.open("ab")) if todo else None
            for item in todo:
                assert ens is not None and handle is not None
                record = _run_item(ens, task, cfg, item, chat)
                _append(handle, record)
                done[item.index] = record
                running.add(record)
                if advance is not None:
                    advance(running.text(final=item is todo[-1]))

        summary = summarise(
            task,
            items,
            done,
            cfg,
            shown,
            offset=offset,
            limit=limit,
            chat=chat,
            lenient=lenient,
            load_seconds=float(manifest.get("load_seconds", 0.0)),
            session_seconds=time.perf_counter() - session_start,
        )
        if label is not None:
            summary["label"] = label
        _write_json_atomic(out / SUMMARY, summary)
    return summary


def _validate(ens: Ensemble, config: DecodeConfig, names: Sequence[str]) -> None:
    """Fail once, before the first item, on problems every item would hit (rather than record n errors)."""
    if len(ens.members) != len(names):
        raise ConfigError(f"the run names {len(names)} models {list(names)} but the ensemble has {ens.names}")
    config.member_weights(len(ens.members))
    reported_models(config, ens.names)
