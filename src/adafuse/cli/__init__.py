"""The command line: one module per command, helpers in ``common``; nothing outside this package imports it."""

from __future__ import annotations

import typer

from adafuse.cli import evaluate, fit, generate, report, serve

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Adaptive ensemble decoding of LLMs.")
for command in (generate, evaluate, fit, report, serve):
    command.register(app)


def main() -> None:
    app()
