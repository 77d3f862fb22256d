"""What every command shares: consoles, the one-line error exit, model and weight parsing, option types, and the
decoding flags, derived from the option schema (``adafuse.config``) so that every option of ``DecodeConfig`` is a
flag of every command that decodes. This module imports no command module.

Errors a user can fix print one line on stderr and exit with code 2; nothing else is caught.
"""

from __future__ import annotations

import codecs
import functools
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from adafuse.config import FIELDS, NAMED_WEIGHTS, option_help, option_names, read_config
from adafuse.errors import AdafuseError, ConfigError, require_text

err = Console(stderr=True, highlight=False)
out = Console(highlight=False, soft_wrap=True)

ModelsOpt = Annotated[str | None, typer.Option(help="Comma-separated model specs; default: the built-ins.")]
NCtxOpt = Annotated[
    int, typer.Option("--n-ctx", help="Longest context per member, in its tokens (llama.cpp grows its cache to it).")
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        help="CPU threads per member, fixed. Default: the cores shared out among the members working at once, "
        "all of them for a member working alone (llama.cpp members; docs/PERFORMANCE.md).",
        min=1,
    ),
]
OnFailureOpt = Annotated[
    str,
    typer.Option(
        "--on-member-failure",
        help="When a remote or text-only member fails: fail (an error naming it) or drop (go on without it).",
    ),
]
ChatOpt = Annotated[bool, typer.Option(help="Render prompts with each member's chat template.")]

#: older or shorter spellings some flags also answer to.
_ALIASES = {"single_member": ("--member",), "stop_at_boxed": ("--boxed",)}
F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str) -> None:
    # Plain write: rich would wrap a long message over several lines, and scripts grep for one.
    sys.stderr.write(f"error: {' '.join(message.split())}\n")
    raise typer.Exit(2)


def unescape(text: str) -> str:
    """Backslash escapes as llama.cpp's tools read them: ``\\n``, ``\\t``, ``\\\\``, ``\\"`` and ``\\uXXXX``."""
    if "\\" in text:
        try:
            text = codecs.decode(text.encode("latin-1", "backslashreplace"), "unicode_escape")
        except UnicodeDecodeError as exc:
            raise AdafuseError(f"bad backslash escape in {text!r}: {exc.reason}") from None
    return require_text(text, f"{text!r}", AdafuseError)


def parse_models(models: str | None) -> list[str]:
    """``--models`` as specs; the built-in ensemble when not given."""
    from adafuse.backends import DEFAULT_ENSEMBLE

    if models is None:
        return list(DEFAULT_ENSEMBLE)
    specs = [s.strip() for s in models.split(",")]
    if not any(specs):
        raise ConfigError("--models is empty")
    return specs


def check_n_ctx(n_ctx: int) -> None:
    if n_ctx < 16:
        raise ConfigError(f"--n-ctx must be at least 16, got {n_ctx}")


def read_weights(value: str, specs: list[str]) -> str | tuple[float, ...]:
    """``--weights``: what the schema reads, or a weights file written by ``adafuse calibrate`` (checked against
    the members)."""
    if value.strip() in NAMED_WEIGHTS or not value.endswith(".json"):
        return value
    from adafuse.evaluation.calibrate import load_weights
    from adafuse.evaluation.runner import spec_name

    return load_weights(value, [spec_name(s) for s in specs])


def _flag(name: str) -> inspect.Parameter:
    """The typer option of one schema field: a flag for booleans, repeatable for lists, text for the rest (the
    schema's reader parses and checks it, so every surface reports the same errors)."""
    kind = str(FIELDS[name].type)
    names = (f"--{name.replace('_', '-')}", *_ALIASES.get(name, ()))
    help = option_help(name) + (" Repeatable; backslash escapes such as \\n are read." if name == "stop" else "")
    if kind == "bool":
        annotation: Any = Annotated[bool | None, typer.Option(*names, help=help, show_default=False)]
    elif kind.startswith("tuple"):
        annotation = Annotated[list[str] | None, typer.Option(*names, help=help, show_default=False)]
    else:
        default = FIELDS[name].default
        shown = "default" if name == "weights" else str(default)
        annotation = Annotated[str | None, typer.Option(*names, help=help, show_default=shown)]
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)


def decoding_flags(request: bool) -> Callable[[F], F]:
    """Give a command one flag per decoding option (``request=False``: not the per-request ones, which a task
    sets) and hand it ``config: DecodeConfig`` read from them. A parameter of the command's own with an option's
    name replaces that flag (``eval --method`` takes a method label). ``--weights`` may also name a calibrate
    file, checked against the command's ``models``."""

    def wrap(command: F) -> F:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "config"]
        names = [name for name in option_names(request) if name not in {p.name for p in own}]

        @functools.wraps(command)
        def run(*args: Any, **kwargs: Any) -> Any:
            given = {name: kwargs.pop(name) for name in names}
            try:
                if given.get("stop") is not None:
                    given["stop"] = tuple(unescape(s) for s in given["stop"])
                if given.get("weights") is not None:
                    given["weights"] = read_weights(given["weights"], parse_models(kwargs.get("models")))
                config = read_config(given, request=request)
            except AdafuseError as exc:
                fail(str(exc))
                raise
            return command(*args, config=config, **kwargs)

        params = own + [_flag(name) for name in names]
        run.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params}
        return run  # type: ignore[return-value]

    return wrap


def interrupted(hint: str) -> None:
    """Ctrl-C or a kill: everything finished is on disk, so say how to resume and exit like a SIGINT would."""
    err.print(f"error: {hint}", markup=False)
    raise typer.Exit(130)


DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="Benchmark data folder (else $ADAFUSE_DATA).")]
DataOpt = Annotated[Path | None, typer.Option(help="A custom JSONL of question/answer rows (needs --prompt).")]
PromptOpt = Annotated[Path | None, typer.Option(help="The prompt file for --data.")]
