"""The ``report`` command: ``adafuse report TRACE_OR_EVAL_DIR --out report.html``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from adafuse.cli.common import fail
from adafuse.errors import AdafuseError
from adafuse.report.html import write_report


def report_command(
    source: Annotated[
        Path, typer.Argument(help="A Result JSON file (adafuse generate --json) or an evaluation directory.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="The HTML file to write.")] = Path("report.html"),
    title: Annotated[str | None, typer.Option(help="Page title (default: from the input).")] = None,
) -> None:
    """Write a self-contained HTML page: the answer coloured by the winning member of each round, every
    candidate's scores, the margins over the rounds and the telemetry; for an evaluation directory, every item
    with its correctness and its trace."""
    try:
        written = write_report(source, out, title)
    except AdafuseError as exc:
        fail(str(exc))
        return
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror or exc}")
        return
    sys.stderr.write(f"wrote {written}\n")


def register(app: typer.Typer) -> None:
    app.command("report")(report_command)
