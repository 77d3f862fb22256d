"""Errors users can act on. Each carries a one-line message; the CLI prints it and exits with code 2."""

from __future__ import annotations


class AdafuseError(Exception):
    """Base class: a problem the caller caused or can fix (bad input, missing model, dead member)."""


class ConfigError(AdafuseError, ValueError):
    """A decoding or model option is out of range or inconsistent."""


class ModelNotFoundError(AdafuseError):
    """A model spec names no built-in model and no readable file."""


class ModelPackageMissingError(ModelNotFoundError):
    """A built-in model's PyPI package is not installed."""


class ModelLoadError(AdafuseError):
    """The model file exists but the engine cannot load it (corrupt, truncated, wrong format)."""


class PromptError(AdafuseError, ValueError):
    """The prompt is empty, or too long for a member's context window."""


class MemberError(AdafuseError):
    """A member failed while generating (engine error, remote server down or hanging)."""

    def __init__(self, member: str, message: str) -> None:
        super().__init__(f"member {member!r}: {message}")
        self.member = member


class DataError(AdafuseError):
    """A data or prompt file is missing or malformed; the message names the file and line."""


def require_text(value: str, what: str, error: type[AdafuseError] = PromptError) -> str:
    """``value`` if it is valid Unicode text; ``error`` otherwise. Python strings can hold lone surrogates (from a
    JSON ``\\udc80`` escape, or command-line bytes that are not UTF-8), which no tokenizer can encode."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise error(
            f"{what} is not valid Unicode text (character {exc.start}: {value[exc.start]!r} is a lone surrogate, "
            "e.g. bytes that are not UTF-8)"
        ) from None
    return value
