"""The ``fit`` command: collect signals and outcomes on dev rows, fit a controller, write its file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adafuse.cli.common import DataDirOpt, ModelsOpt, NCtxOpt, ThreadsOpt, check_n_ctx, fail, interrupted, parse_models
from adafuse.cli.common import err as stderr
from adafuse.cli.common import out as stdout
from adafuse.control.fit import DEV_SPLITS, collect, fit_controller, task_form
from adafuse.control.model import fingerprint
from adafuse.errors import AdafuseError, ConfigError
from adafuse.evaluation.runner import LazyEnsemble, spec_name

RESUME_HINT = "interrupted; run the same command again (same --work) to resume the collection where it stopped"


def parse_rows(text: str | None, forms: list[str]) -> dict[str, tuple[int, int, int]]:
    """``FORM=START:FIT_END:TUNE_END,...`` over the built-in splits (``control.fit.DEV_SPLITS``)."""
    rows = {f: DEV_SPLITS[f] for f in forms if f in DEV_SPLITS}
    for entry in (text or "").split(","):
        if not entry.strip():
            continue
        form, _, spans = entry.partition("=")
        try:
            start, fit_end, tune_end = (int(v) for v in spans.split(":"))
        except ValueError:
            raise ConfigError(f"--rows entry {entry!r}: write FORM=START:FIT_END:TUNE_END, e.g. nq=0:200:300") from None
        if not 0 <= start < fit_end < tune_end:
            raise ConfigError(f"--rows entry {entry!r}: need 0 <= START < FIT_END < TUNE_END")
        rows[form.strip()] = (start, fit_end, tune_end)
    missing = [f for f in forms if f not in rows]
    if missing:
        raise ConfigError(f"no rows for {', '.join(missing)}: give them with --rows FORM=START:FIT_END:TUNE_END")
    return {f: rows[f] for f in forms}


def fit_command(
    out: Annotated[Path, typer.Option("--out", help="Where to write the controller (JSON).")],
    tasks: Annotated[
        str | None,
        typer.Option(help="Comma-separated task forms (a -0shot suffix: the zero-shot form); default: all built-in."),
    ] = None,
    rows: Annotated[
        str | None, typer.Option(help="FORM=START:FIT_END:TUNE_END,... fit and tune rows (default: the built-in).")
    ] = None,
    models: ModelsOpt = None,
    work: Annotated[Path, typer.Option(help="Folder of the collected runs (resumable).")] = Path("runs/fit"),
    n_ctx: NCtxOpt = 4096,
    threads: ThreadsOpt = None,
    data_dir: DataDirOpt = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
) -> None:
    """Fit a controller for these members: collect each form's fit and tune rows (one decoding each, resumable),
    fit on the first, choose on the second, and write the file."""
    try:
        check_n_ctx(n_ctx)
        forms = [t.strip() for t in tasks.split(",")] if tasks else list(DEV_SPLITS)
        splits = parse_rows(rows, forms)
        specs = parse_models(models)
        names = [spec_name(s) for s in specs]
        train, tune = [], []
        with LazyEnsemble(specs, n_ctx=n_ctx, n_threads=threads) as lazy:
            for form, (start, fit_end, tune_end) in splits.items():
                task = task_form(form, data_dir)
                found = collect(task, form, lazy, names, work, start, tune_end - start, progress)
                train += [ex for ex in found if ex.row < fit_end]
                tune += [ex for ex in found if ex.row >= fit_end]
            members = [{"name": n, "fingerprint": fingerprint(m)} for n, m in zip(names, lazy().members, strict=True)]
        about = {"rows": {f: {"fit": [a, b], "tune": [b, c]} for f, (a, b, c) in splits.items()}}
        ctl = fit_controller(members, names, train, tune, about, log=lambda m: stderr.print(m, markup=False))
        ctl.save(out)
    except AdafuseError as exc:
        fail(str(exc))
        return
    except KeyboardInterrupt:
        interrupted(RESUME_HINT)
    quality = ctl.fit["quality"]
    stdout.print(" · ".join(f"{k} {v:.4f}" for k, v in quality.items()), markup=False)
    stderr.print(f"wrote {out} ({len(train)} fit and {len(tune)} tune items; route at {ctl.route_at})", markup=False)


def register(app: typer.Typer) -> None:
    app.command("fit")(fit_command)
