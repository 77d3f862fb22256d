"""``adafuse serve``: the ensemble behind an OpenAI-compatible HTTP API (see ``serving.app``)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from adafuse.config import METHODS, N_CTX_HELP


def register(app: typer.Typer) -> None:
    """Add the ``serve`` command to the CLI."""

    @app.command()
    def serve(
        models: Annotated[str | None, typer.Option(help="Comma-separated model specs; default: the built-ins.")] = None,
        host: Annotated[str, typer.Option(help="Address to bind; loopback unless told otherwise.")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
        api_key: Annotated[
            str | None,
            typer.Option("--api-key", help="Require 'Authorization: Bearer KEY' (default: $ADAFUSE_API_KEY, if set)."),
        ] = None,
        max_concurrency: Annotated[int, typer.Option("--max-concurrency", help="Generations at once.")] = 1,
        max_queue: Annotated[int, typer.Option("--max-queue", help="Requests waiting beyond those (then 429).")] = 32,
        max_body_bytes: Annotated[int, typer.Option("--max-body-bytes", help="Largest request body (413).")] = 1 << 20,
        on_member_failure: Annotated[
            str, typer.Option("--on-member-failure", help="fail: answer 502; drop: go on without the member.")
        ] = "fail",
        n_ctx: Annotated[int, typer.Option("--n-ctx", help=N_CTX_HELP)] = 4096,
        threads: Annotated[int | None, typer.Option(help="CPU threads per in-process member.")] = None,
        method: Annotated[str, typer.Option(help=f"Default method: one of {', '.join(METHODS)}.")] = "adafuse",
        theta: Annotated[float, typer.Option(help="Default confidence margin.")] = 0.7,
        max_words: Annotated[int, typer.Option("--max-words", help="Default longest span in words.")] = 3,
        beam: Annotated[int, typer.Option(help="Default branching width (B).")] = 3,
        max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Default max_tokens.")] = 256,
        log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
    ) -> None:
        """Serve the ensemble as the OpenAI-compatible model 'adafuse' (/v1/completions, /v1/chat/completions)."""
        from adafuse.cli import fail, parse_models
        from adafuse.config import DecodeConfig
        from adafuse.decoding.failure import POLICIES
        from adafuse.errors import AdafuseError

        if on_member_failure not in POLICIES:
            fail(f"--on-member-failure must be one of {', '.join(POLICIES)}, got {on_member_failure!r}")
        if not 0 < port < 65536:
            fail(f"--port must be from 1 to 65535, got {port}")
        if max_concurrency < 1 or max_queue < 0 or max_body_bytes < 1:
            fail("--max-concurrency must be >= 1, --max-queue >= 0 and --max-body-bytes >= 1")
        if n_ctx < 16:
            fail(f"--n-ctx must be at least 16, got {n_ctx}")
        try:
            import uvicorn

            from adafuse.serving.app import create_app
        except ImportError as exc:
            fail(f"serving needs the server extra ({exc.name} is missing); run: pip install 'adafuse[server]'")
            return
        try:
            defaults = DecodeConfig(
                method=method, theta=theta, max_words=max_words, beam=beam, max_new_tokens=max_new_tokens
            )
            from adafuse.backends import DEFAULT_ENSEMBLE
            from adafuse.ensemble import Ensemble

            ensemble = Ensemble.from_specs(
                parse_models(models) or list(DEFAULT_ENSEMBLE), n_ctx=n_ctx, n_threads=threads
            )
        except AdafuseError as exc:
            fail(str(exc))
            return
        # The Ensemble takes the policy as an attribute, so serving works whether or not its constructor has it.
        ensemble.on_member_failure = on_member_failure  # type: ignore[attr-defined]
        key = api_key if api_key is not None else os.environ.get("ADAFUSE_API_KEY") or None
        app_ = create_app(
            ensemble,
            defaults,
            api_key=key,
            max_concurrency=max_concurrency,
            max_queue=max_queue,
            max_body_bytes=max_body_bytes,
        )
        try:
            uvicorn.run(app_, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
        finally:
            ensemble.close()


def main() -> None:
    """``python -m adafuse.serving.commands serve ...``: the same command without the rest of the CLI."""
    cli = typer.Typer(add_completion=False, no_args_is_help=True)

    @cli.callback()
    def _root() -> None:
        """adafuse serving."""

    register(cli)
    cli()


if __name__ == "__main__":
    main()
