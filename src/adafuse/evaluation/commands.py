"""The ``eval`` and ``compare`` commands: option parsing around :mod:`runner` and :mod:`compare`.

Kept out of ``adafuse.cli`` so the evaluation code has one owner; ``cli.py`` calls :func:`register`, and builds
``generate`` from the same option types and :func:`decoding_options`. The CLI
helpers (``fail``, ``parse_models``, ``parse_weights``) are imported inside the commands, because ``cli``
imports this module while it is itself still being imported.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer

from adafuse.config import (
    COMBINER_HELP,
    DEFAULTS,
    GRANULARITY_HELP,
    METHODS,
    MIN_WEIGHT_HELP,
    N_CTX_HELP,
    SHARPNESS_HELP,
    WEIGHTS_HELP,
    DecodeConfig,
)
from adafuse.errors import AdafuseError, ConfigError
from adafuse.evaluation.tasks import TASK_NAMES, Task, custom_task, load_task

_RESUME_HINT = "interrupted; run the same command again (same --out) to resume where it stopped"

TaskOpt = Annotated[str | None, typer.Option(help=f"Benchmark: {', '.join(TASK_NAMES)} (or a name for --data).")]
ModelsOpt = Annotated[str | None, typer.Option(help="Comma-separated model specs; default: the built-ins.")]
LimitOpt = Annotated[int | None, typer.Option(min=0, help="Evaluate at most this many items.")]
OffsetOpt = Annotated[int, typer.Option(min=0, help="Skip this many items first.")]
ThetaOpt = Annotated[float, typer.Option(help="Margin a member needs to count as confident.")]
MaxWordsOpt = Annotated[int, typer.Option("--max-words", help="Longest span in words per round.")]
BeamOpt = Annotated[int, typer.Option(help="First tokens an uncertain member branches on (B).")]
WeightsOpt = Annotated[str | None, typer.Option(help=WEIGHTS_HELP)]
GranularityOpt = Annotated[str, typer.Option(help=GRANULARITY_HELP)]
CombinerOpt = Annotated[str, typer.Option(help=COMBINER_HELP)]
SharpnessOpt = Annotated[float, typer.Option("--auto-sharpness", help=SHARPNESS_HELP)]
MinWeightOpt = Annotated[float, typer.Option("--min-weight", help=MIN_WEIGHT_HELP)]
ChatOpt = Annotated[bool, typer.Option(help="Render prompts with each member's chat template.")]
NCtxOpt = Annotated[int, typer.Option("--n-ctx", help=N_CTX_HELP)]
ThreadsOpt = Annotated[int | None, typer.Option(help="CPU threads per member.")]
LenientOpt = Annotated[bool, typer.Option(help="Also report the paper's lenient (inflated) QA match.")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="Benchmark data folder (else $ADAFUSE_DATA).")]
DataOpt = Annotated[Path | None, typer.Option(help="A custom JSONL of question/answer rows (needs --prompt).")]
PromptOpt = Annotated[Path | None, typer.Option(help="The prompt file for --data.")]
KindOpt = Annotated[str, typer.Option(help="Kind of a --data task: qa, math or translation.")]
ProgressOpt = Annotated[bool, typer.Option(help="Show a progress bar on stderr.")]


def decoding_options(
    theta: float,
    max_words: int,
    beam: int,
    weights: str | None,
    granularity: str,
    combiner: str,
    auto_sharpness: float,
    specs: list[str],
    **fields: Any,
) -> DecodeConfig:
    """The decoding options ``generate``, ``eval`` and ``compare`` share, read from their command lines
    (``fields``: the rest of the config, for ``generate``)."""
    from adafuse.cli import parse_weights

    return DecodeConfig(
        theta=theta,
        max_words=max_words,
        beam=beam,
        weights=parse_weights(weights, specs),
        granularity=granularity,
        combiner=combiner,
        auto_sharpness=auto_sharpness,
        **fields,
    )


def interrupted() -> None:
    """Ctrl-C or a kill: everything finished is on disk, so say how to resume and exit like a SIGINT would."""
    from adafuse.cli import err

    err.print(f"error: {_RESUME_HINT}", markup=False)
    raise typer.Exit(130)


def build_task(task: str | None, data_dir: Path | None, data: Path | None, prompt: Path | None, kind: str) -> Task:
    """A built-in task by name, or a custom one from ``--data`` and ``--prompt``."""
    if data is not None:
        if prompt is None:
            raise ConfigError("--data needs --prompt (the prompt file to put before each question)")
        return custom_task(data, prompt, kind=kind, name=task)  # type: ignore[arg-type]
    if prompt is not None:
        raise ConfigError("--prompt goes with --data; a built-in task has its own prompt file")
    if task is None:
        raise ConfigError(f"give --task ({', '.join(TASK_NAMES)}) or --data FILE --prompt FILE")
    return load_task(task, data_dir)


def _check_n_ctx(n_ctx: int) -> None:
    if n_ctx < 16:
        raise ConfigError(f"--n-ctx must be at least 16, got {n_ctx}")


def _summary_line(summary: dict) -> str:
    scores = " · ".join(f"{k} {v:.2f}" for k, v in summary["metrics"].items())
    tpo = summary["telemetry"]["tokens_per_output_token"]
    cost = f"{tpo:.2f} tokens evaluated per output token" if tpo is not None else "no output tokens"
    label = summary.get("label") or summary["method"]
    return (
        f"{summary['task']} · {label} · n={summary['n']} · {scores} · errors {summary['errors']} · "
        f"{summary['wall_seconds']:.1f}s · {cost}"
    )


def eval_command(
    task: TaskOpt = None,
    method: Annotated[
        str, typer.Option(help=f"One of {', '.join(METHODS)}, or a label such as adafuse@theta=0.5 or single:1.")
    ] = "adafuse",
    models: ModelsOpt = None,
    limit: LimitOpt = None,
    offset: OffsetOpt = 0,
    out: Annotated[Path | None, typer.Option(help="Output folder; default runs/<task>/<method>.")] = None,
    theta: ThetaOpt = 0.7,
    max_words: MaxWordsOpt = 3,
    beam: BeamOpt = 3,
    weights: WeightsOpt = None,
    granularity: GranularityOpt = "word",
    combiner: CombinerOpt = "mean",
    auto_sharpness: SharpnessOpt = DEFAULTS.auto_sharpness,
    min_weight: MinWeightOpt = DEFAULTS.min_weight,
    member: Annotated[int, typer.Option(min=0, help="Member index for --method single.")] = 0,
    chat: ChatOpt = False,
    n_ctx: NCtxOpt = 4096,
    threads: ThreadsOpt = None,
    lenient: LenientOpt = False,
    data_dir: DataDirOpt = None,
    data: DataOpt = None,
    prompt: PromptOpt = None,
    kind: KindOpt = "qa",
    retry_errors: Annotated[bool, typer.Option("--retry-errors", help="Redo items recorded with an error.")] = False,
    progress: ProgressOpt = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Evaluate one method on a benchmark; rerun with the same --out to resume."""
    from adafuse.backends import DEFAULT_ENSEMBLE
    from adafuse.cli import fail, parse_models
    from adafuse.cli import out as stdout
    from adafuse.evaluation.compare import parse_label
    from adafuse.evaluation.runner import LazyEnsemble, run_eval, spec_name

    try:
        _check_n_ctx(n_ctx)
        bench = build_task(task, data_dir, data, prompt, kind)
        spec = parse_label(method)
        specs = parse_models(models) or list(DEFAULT_ENSEMBLE)
        names = [spec_name(s) for s in specs]
        base = replace(
            decoding_options(
                theta, max_words, beam, weights, granularity, combiner, auto_sharpness, specs, min_weight=min_weight
            ),
            single_member=member,
        )
        cfg = spec.config(base, names)
        if cfg.method == "single":
            # Only the member that writes is loaded: the others would cost memory and loading time for nothing.
            index = cfg.single_member or 0
            specs, names = [specs[index]], [names[index]]
            cfg = replace(cfg, single_member=0, weights=None)
        out_dir = out if out is not None else Path("runs") / bench.name / spec.dirname
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
        interrupted()
    if as_json:
        sys.stdout.write(json.dumps(summary, ensure_ascii=False, indent=2) + "\n")
    else:
        stdout.print(_summary_line(summary), markup=False)
        stdout.print(f"wrote {out_dir / 'predictions.jsonl'} and {out_dir / 'summary.json'}", markup=False)


def compare_command(
    methods: Annotated[
        str, typer.Option(help="Comma-separated method labels, e.g. adafuse,adafuse@theta=0.5,beam=1,single:1,span.")
    ],
    out: Annotated[Path, typer.Option(help="Output folder: one sub-folder per method, report.md, frontier.png.")],
    task: TaskOpt = None,
    models: ModelsOpt = None,
    limit: LimitOpt = None,
    offset: OffsetOpt = 0,
    theta: ThetaOpt = 0.7,
    max_words: MaxWordsOpt = 3,
    beam: BeamOpt = 3,
    weights: WeightsOpt = None,
    granularity: GranularityOpt = "word",
    combiner: CombinerOpt = "mean",
    auto_sharpness: SharpnessOpt = DEFAULTS.auto_sharpness,
    min_weight: MinWeightOpt = DEFAULTS.min_weight,
    chat: ChatOpt = False,
    n_ctx: NCtxOpt = 4096,
    threads: ThreadsOpt = None,
    lenient: LenientOpt = False,
    data_dir: DataDirOpt = None,
    data: DataOpt = None,
    prompt: PromptOpt = None,
    kind: KindOpt = "qa",
    resamples: Annotated[int, typer.Option(min=10, help="Bootstrap resamples for the 95% intervals.")] = 1000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed (fixed, so reports are reproducible).")] = 0,
    progress: ProgressOpt = True,
) -> None:
    """Compare methods on one benchmark: a table with bootstrap intervals and a score-vs-compute plot."""
    from adafuse.backends import DEFAULT_ENSEMBLE
    from adafuse.cli import err, fail, parse_models
    from adafuse.cli import out as stdout
    from adafuse.evaluation.compare import FRONTIER, REPORT, report_markdown, run_compare, split_methods
    from adafuse.evaluation.runner import LazyEnsemble, spec_name

    try:
        _check_n_ctx(n_ctx)
        bench = build_task(task, data_dir, data, prompt, kind)
        labels = split_methods(methods)
        specs = parse_models(models) or list(DEFAULT_ENSEMBLE)
        base = decoding_options(
            theta, max_words, beam, weights, granularity, combiner, auto_sharpness, specs, min_weight=min_weight
        )
        with LazyEnsemble(specs, n_ctx=n_ctx, n_threads=threads) as lazy:
            results = run_compare(
                bench,
                labels,
                lazy,
                out,
                base,
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
        interrupted()
    stdout.print(report_markdown(bench, results, resamples, seed), markup=False)
    err.print(f"wrote {out / REPORT} and {out / FRONTIER}", markup=False)


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
    from adafuse.backends import DEFAULT_ENSEMBLE
    from adafuse.cli import fail, parse_models
    from adafuse.cli import out as stdout
    from adafuse.evaluation.calibrate import calibrate
    from adafuse.evaluation.runner import LazyEnsemble, spec_name

    try:
        _check_n_ctx(n_ctx)
        bench = build_task(task, data_dir, data, prompt, kind)
        specs = parse_models(models) or list(DEFAULT_ENSEMBLE)
        out_dir = out if out is not None else Path("runs") / "calibrate" / bench.name
        with LazyEnsemble(specs, n_ctx=n_ctx, n_threads=threads) as lazy:
            record = calibrate(bench, lazy, [spec_name(s) for s in specs], out_dir, offset, limit, chat, progress)
    except AdafuseError as exc:
        fail(str(exc))
        return
    except KeyboardInterrupt:
        interrupted()
        return
    stdout.print(json.dumps(record), markup=False)


def register(app: typer.Typer) -> None:
    """Add the ``eval``, ``compare`` and ``calibrate`` commands to the CLI."""
    app.command("eval")(eval_command)
    app.command("compare")(compare_command)
    app.command("calibrate")(calibrate_command)
