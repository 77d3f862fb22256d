"""Command line: thin wrappers that parse options, call the library and print.

Errors a user can fix print one line on stderr and exit with code 2; nothing else is caught.
"""

from __future__ import annotations

import codecs
import json
import sys
from typing import Annotated

import typer
from rich.console import Console

from adafuse.config import DEFAULTS, METHODS, NAMED_WEIGHTS
from adafuse.errors import AdafuseError
from adafuse.evaluation.commands import (
    BeamOpt,
    CombinerOpt,
    GranularityOpt,
    MaxWordsOpt,
    MinWeightOpt,
    ModelsOpt,
    NCtxOpt,
    SharpnessOpt,
    ThetaOpt,
    ThreadsOpt,
    WeightsOpt,
    decoding_options,
    register,
)

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Adaptive ensemble decoding of LLMs.")
err = Console(stderr=True, highlight=False)
out = Console(highlight=False, soft_wrap=True)


def unescape(text: str) -> str:
    """Backslash escapes as llama.cpp's tools read them: ``\\n``, ``\\t``, ``\\\\``, ``\\"`` and ``\\uXXXX``."""
    if "\\" not in text:
        return text
    try:
        return codecs.decode(text.encode("latin-1", "backslashreplace"), "unicode_escape")
    except UnicodeDecodeError as exc:
        raise AdafuseError(f"bad backslash escape in {text!r}: {exc.reason}") from None


def fail(message: str) -> None:
    # Plain write: rich would wrap a long message over several lines, and scripts grep for one.
    sys.stderr.write(f"error: {' '.join(message.split())}\n")
    raise typer.Exit(2)


def parse_models(models: str | None) -> list[str] | None:
    if models is None:
        return None
    specs = [s.strip() for s in models.split(",")]
    if not any(specs):
        fail("--models is empty")
    return specs


def parse_weights(weights: str | None, specs: list[str] | None = None) -> tuple[float, ...] | str | None:
    """``a,b,c``, ``auto``, ``equal``, or a weights file written by ``adafuse calibrate`` (checked against the
    members); not given: the method's default (see ``DecodeConfig.weights``)."""
    if weights is None:
        return "default"
    if weights.strip() in NAMED_WEIGHTS:
        return weights.strip()
    if weights.endswith(".json"):
        from adafuse.backends import DEFAULT_ENSEMBLE
        from adafuse.evaluation.calibrate import load_weights
        from adafuse.evaluation.runner import spec_name

        return load_weights(weights, [spec_name(s) for s in specs or DEFAULT_ENSEMBLE])
    try:
        return tuple(float(w) for w in weights.split(","))
    except ValueError:
        fail(f"--weights must be auto, equal, comma-separated numbers or a weights .json file, got {weights!r}")
        raise


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="The prompt; backslash escapes such as \\n are read.")],
    models: ModelsOpt = None,
    method: Annotated[str, typer.Option(help=f"One of {', '.join(METHODS)}.")] = "adafuse",
    theta: ThetaOpt = 0.7,
    max_words: MaxWordsOpt = 3,
    beam: BeamOpt = 3,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens")] = 64,
    stop: Annotated[list[str] | None, typer.Option(help="Stop string (repeatable).")] = None,
    boxed: Annotated[bool, typer.Option(help="Stop once a \\boxed{...} answer is complete.")] = False,
    weights: WeightsOpt = None,
    granularity: GranularityOpt = "word",
    combiner: CombinerOpt = "mean",
    auto_sharpness: SharpnessOpt = DEFAULTS.auto_sharpness,
    min_weight: MinWeightOpt = DEFAULTS.min_weight,
    member: Annotated[int, typer.Option(help="Member index for --method single.")] = 0,
    chat: Annotated[bool, typer.Option(help="Render the prompt with each member's chat template.")] = False,
    n_ctx: NCtxOpt = 4096,
    threads: ThreadsOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    trace: Annotated[bool, typer.Option(help="With --json: include the per-round trace.")] = True,
) -> None:
    """Write one answer with the ensemble and print it."""
    try:
        from adafuse.backends import DEFAULT_ENSEMBLE

        specs = parse_models(models) or list(DEFAULT_ENSEMBLE)
        config = decoding_options(
            theta,
            max_words,
            beam,
            weights,
            granularity,
            combiner,
            auto_sharpness,
            specs,
            method=method,
            max_new_tokens=max_new_tokens,
            stop=tuple(unescape(s) for s in stop or ()),
            stop_at_boxed=boxed,
            single_member=member,
            min_weight=min_weight,
        )
        text = unescape(prompt)
        if not text.strip():
            fail("the prompt is empty")
        if n_ctx < 16:
            fail(f"--n-ctx must be at least 16, got {n_ctx}")
        from adafuse.ensemble import Ensemble

        # Checked before loading anything: a wrong count is a typo, not worth a model load.
        config.member_weights(len(specs))
        with Ensemble.from_specs(specs, n_ctx=n_ctx, n_threads=threads) as ens:
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


@app.command()
def models() -> None:
    """List the built-in models and whether their packages are installed."""
    from adafuse.backends.zoo import DEFAULT_ENSEMBLE, ZOO, _package_dir

    for name, model in ZOO.items():
        try:
            for pkg in model.packages:
                _package_dir(pkg, model)
            status = "installed"
        except AdafuseError:
            status = "missing (pip install 'adafuse[zoo]')"
        default = " (default)" if name in DEFAULT_ENSEMBLE else ""
        out.print(json.dumps({"name": name, "model": model.description, "status": status}) + default, markup=False)


register(app)

from adafuse.report.commands import register as register_report  # noqa: E402

register_report(app)

from adafuse.serving.commands import register as register_serve  # noqa: E402

register_serve(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
