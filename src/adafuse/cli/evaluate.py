"""The ``eval``, ``compare`` and ``calibrate`` commands: option parsing around the evaluation package."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from adafuse.cli.common import (
    ChatOpt,
    DataDirOpt,
    DataOpt,
    ModelsOpt,
    NCtxOpt,
    PromptOpt,
    ThreadsOpt,
    check_n_ctx,
    decoding_flags,
    fail,
    interrupted,
    parse_models,
)
from adafuse.cli.common import err as stderr
from adafuse.cli.common import out as stdout
from adafuse.config import METHODS, DecodeConfig
from adafuse.errors import AdafuseError, ConfigError
from adafuse.evaluation.calibrate import calibrate
from adafuse.evaluation.compare import FRONTIER, REPORT, parse_label, report_markdown, run_compare, split_methods
from adafuse.evaluation.runner import LazyEnsemble, run_eval, spec_name
from adafuse.evaluation.tasks import TASK_NAMES, Task, custom_task, load_task

RESUME_HINT = "interrupted; run the same command again (same --out) to resume where it stopped"

TaskOpt = Annotated[str | None, typer.Option(help=f"Benchmark: {', '.join(TASK_NAMES)} (or a name for --data).")]
LimitOpt = Annotated[int | None, typer.Option(min=0, help="Evaluate at most this many items.")]
OffsetOpt = Annotated[int, typer.Option(min=0, help="Skip this many items first.")]
LenientOpt = Annotated[bool, typer.Option(help="Also report the paper's lenient (inflated) QA match.")]
KindOpt = Annotated[str, typer.Option(help="Kind of a --data task: qa, math or translation.")]
ProgressOpt = Annotated[bool, typer.Option(help="Show a progress bar on stderr.")]
ShotsOpt = Annotated[
    int | None,
    typer.Option(min=0, max=0, show_default=False, help="0: the zero-shot form (no worked answers in the prompt)."),
]


def build_task(
    task: str | None, data_dir: Path | None, data: Path | None, prompt: Path | None, kind: str, shots: int | None = None
) -> Task:
    """A built-in task by name, or a custom one from ``--data`` and ``--prompt``; ``shots=0``: its zero-shot form."""
    if data is not None:
        if prompt is None:
            raise ConfigError("--data needs --prompt (the prompt file to put before each question)")
        return replace(custom_task(data, prompt, kind=kind, name=task), zero_shot=shots == 0)  # type: ignore[arg-type]
    if prompt is not None:
        raise ConfigError("--prompt goes with --data; a built-in task has its own prompt file")
    if task is None:
        raise ConfigError(f"give --task ({', '.join(TASK_NAMES)}) or --data FILE --prompt FILE")
    return load_task(task, data_dir, shots)


def _summary_line(summary: dict) -> str:
    scores = " · ".join(f"{k} {v:.2f}" for k, v in summary["metrics"].items())
    tpo = summary["telemetry"]["tokens_per_output_token"]
    cost = f"{tpo:.2f} tokens evaluated per output token" if tpo is not None else "no output tokens"
    label = summary.get("label") or summary["method"]
    return (
        f"{summary['task']} · {label} · n={summary['n']} · {scores} · errors {summary['errors']} · "
        f"{summary['wall_seconds']:.1f}s · {cost}"
    )


@decoding_flags(request=False)
def eval_command(
    task: TaskOpt = None,
    method: Annotated[
        str, typer.Option(help=f"One of {', '.join(METHODS)}, or a label such as adafuse@theta=0.5 or single:1.")
    ] = "adafuse",
    models: ModelsOpt = None,
    limit: LimitOpt = None,
    offset: OffsetOpt = 0,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output folder; default runs/<task>/<method>.")] = None,
    chat: ChatOpt = False,
    n_ctx: NCtxOpt = 4096,
    threads: ThreadsOpt = None,
    lenient: LenientOpt = False,
    data_dir: DataDirOpt = None,
    data: DataOpt = None,
    prompt: PromptOpt = None,
    kind: KindOpt = "qa",
    shots: ShotsOpt = None,
    retry_errors: Annotated[bool, typer.Option("--retry-errors", help="Redo items recorded with an error.")] = False,
    progress: ProgressOpt = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    *,
    config: DecodeConfig,
) -> None:
    """Evaluate one method on a benchmark; rerun with the same --out to resume. A method label's options override
    the decoding flags."""
    try:
        check_n_ctx(n_ctx)
        bench = build_task(task, data_dir, data, prompt, kind, shots)
        spec = parse_label(method)
        specs = parse_models(models)
        names = [spec_name(s) for s in specs]
        cfg = spec.config(config, names)
        if cfg.method == "single":
            # Only the member that writes is loaded: the others would cost memory and loading time for nothing.
            index = cfg.single_member or 0
            specs, names = [specs[index]], [names[index]]
            cfg = replace(cfg, single_member=0, weights=None)
        form = bench.name + ("-0shot" if bench.zero_shot else "")
        out_dir = out_dir if out_dir is not None else Path("runs") / form / spec.dirname
        with LazyEnsemble(specs, n_ctx=n_ctx, n_threads=threads) as lazy:
            summary = run_eval(
                bench,
                lazy,
                cfg,
                out_dir,
                offset,
                limit,
                chat,
                progress,
                models=names,
                lenient=lenient,
                retry_errors=retry_errors,
                label=spec.label,
            )
    except AdafuseError as exc:
        fail(str(exc))
        return
    except KeyboardInterrupt:
        interrupted(RESUME_HINT)
    if as_json:
        sys.stdout.write(json.dumps(summary, ensure_ascii=False, indent=2) + "\n")
    else:
        stdout.print(_summary_line(summary), markup=False)
        stdout.print(f"wrote {out_dir / 'predictions.jsonl'} and {out_dir / 'summary.json'}", markup=False)


@decoding_flags(request=False)
def compare_command(
    methods: Annotated[
        str, typer.Option(help="Comma-separated method labels, e.g. adafuse,adafuse@theta=0.5,beam=1,single:1,span.")
    ],
    out: Annotated[Path, typer.Option(help="Output folder: one sub-folder per method, report.md, frontier.png.")],
    task: TaskOpt = None,
    models: ModelsOpt = None,
    limit: LimitOpt = None,
    offset: OffsetOpt = 0,
    chat: ChatOpt = False,
    n_ctx: NCtxOpt = 4096,
    threads: ThreadsOpt = None,
    lenient: LenientOpt = False,
    data_dir: DataDirOpt = None,
    data: DataOpt = None,
    prompt: PromptOpt = None,
    kind: KindOpt = "qa",
    shots: ShotsOpt = None,
    resamples: Annotated[int, typer.Option(min=10, help="Bootstrap resamples for the 95% intervals.")] = 1000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed (fixed, so reports are reproducible).")] = 0,
    progress: ProgressOpt = True,
    *,
    config: DecodeConfig,
) -> None:
    """Compare methods on one benchmark: a table with bootstrap intervals and a score-vs-compute plot. The
    decoding flags are every label's base options."""
    try:
        check_n_ctx(n_ctx)
        bench = build_task(task, data_dir, data, prompt, kind, shots)
        labels = split_methods(methods)
        specs = parse_models(models)
        with LazyEnsemble(specs, n_ctx=n_ctx, n_threads=threads) as lazy:
            results = run_compare(
                bench,
                labels,
                lazy,
                out,
                config,
                models=[spec_name(s) for s in specs],
                offset=offset,
                limit=limit,
                chat=chat,
                lenient=lenient,
                progress=progress,
                resamples=resamples,
                seed=seed,
            )
    except AdafuseError as exc:
        fail(str(exc))
        return
    except KeyboardInterrupt:
        interrupted(RESUME_HINT)
    stdout.print(report_markdown(bench, results, resamples, seed), markup=False)
    stderr.print(f"wrote {out / REPORT} and {out / FRONTIER}", markup=False)


def calibrate_command(
    task: TaskOpt = None,
    models: ModelsOpt = None,
    limit: Annotated[int, typer.Option(min=1, help="Calibration items.")] = 50,
    offset: OffsetOpt = 0,
    out: Annotated[Path | None, typer.Option(help="Output folder; default runs/calibrate/<task>.")] = None,
    chat: ChatOpt = False,
    n_ctx: NCtxOpt = 4096,
    threads: ThreadsOpt = None,
    data_dir: DataDirOpt = None,
    data: DataOpt = None,
    prompt: PromptOpt = None,
    kind: KindOpt = "qa",
    progress: ProgressOpt = True,
) -> None:
    """Weigh members by how well each does alone on dev items; writes OUT/weights.json for --weights."""
    try:
        check_n_ctx(n_ctx)
        bench = build_task(task, data_dir, data, prompt, kind)
        specs = parse_models(models)
        out_dir = out if out is not None else Path("runs") / "calibrate" / bench.name
        with LazyEnsemble(specs, n_ctx=n_ctx, n_threads=threads) as lazy:
            record = calibrate(bench, lazy, [spec_name(s) for s in specs], out_dir, offset, limit, chat, progress)
    except AdafuseError as exc:
        fail(str(exc))
        return
    except KeyboardInterrupt:
        interrupted(RESUME_HINT)
        return
    stdout.print(json.dumps(record), markup=False)


def register(app: typer.Typer) -> None:
    """Add the ``eval``, ``compare`` and ``calibrate`` commands to the CLI."""
    app.command("eval")(eval_command)
    app.command("compare")(compare_command)
    app.command("calibrate")(calibrate_command)
