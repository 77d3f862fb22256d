"""``adafuse serve``: the ensemble behind an OpenAI-compatible HTTP API (see ``serving.app``)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from adafuse.cli.common import (
    ModelsOpt,
    NCtxOpt,
    OnFailureOpt,
    ThreadsOpt,
    check_n_ctx,
    decoding_flags,
    fail,
    parse_models,
)
from adafuse.config import DecodeConfig
from adafuse.decoding.failure import POLICIES
from adafuse.decoding.guard import Budget
from adafuse.errors import AdafuseError


@decoding_flags(request=True)
def serve_command(
    models: ModelsOpt = None,
    host: Annotated[str, typer.Option(help="Address to bind; loopback unless told otherwise.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", help="Require 'Authorization: Bearer KEY' (default: $ADAFUSE_API_KEY, if set)."),
    ] = None,
    max_concurrency: Annotated[int, typer.Option("--max-concurrency", help="Generations at once.")] = 1,
    max_queue: Annotated[int, typer.Option("--max-queue", help="Requests waiting beyond those (then 429).")] = 32,
    max_body_bytes: Annotated[int, typer.Option("--max-body-bytes", help="Largest request body (413).")] = 1 << 20,
    request_seconds: Annotated[
        float | None, typer.Option("--request-seconds", help="Budget of every request: seconds of decoding.")
    ] = None,
    request_tokens: Annotated[
        int | None, typer.Option("--request-tokens", help="Budget of every request: tokens the members evaluate.")
    ] = None,
    on_member_failure: OnFailureOpt = "fail",
    n_ctx: NCtxOpt = 4096,
    threads: ThreadsOpt = None,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
    *,
    config: DecodeConfig,
) -> None:
    """Serve the ensemble as the OpenAI-compatible model 'adafuse' (/v1/completions, /v1/chat/completions); the
    decoding flags set the defaults a request's ``adafuse`` field may override."""
    if on_member_failure not in POLICIES:
        fail(f"--on-member-failure must be one of {', '.join(POLICIES)}, got {on_member_failure!r}")
    if not 0 < port < 65536:
        fail(f"--port must be from 1 to 65535, got {port}")
    if max_concurrency < 1 or max_queue < 0 or max_body_bytes < 1:
        fail("--max-concurrency must be >= 1, --max-queue >= 0 and --max-body-bytes >= 1")
    if (request_seconds is not None and request_seconds <= 0) or (request_tokens is not None and request_tokens < 1):
        fail("--request-seconds must be > 0 and --request-tokens >= 1")
    try:
        # Imported here: the server's libraries are an extra, and the rest of the CLI starts faster without them.
        import uvicorn

        from adafuse.serving.app import create_app
    except ImportError as exc:
        fail(f"serving needs the server extra ({exc.name} is missing); run: pip install 'adafuse[server]'")
        return
    try:
        check_n_ctx(n_ctx)
        from adafuse.ensemble import Ensemble

        ensemble = Ensemble.from_specs(
            parse_models(models), n_ctx=n_ctx, n_threads=threads, on_member_failure=on_member_failure
        )
    except AdafuseError as exc:
        fail(str(exc))
        return
    key = api_key if api_key is not None else os.environ.get("ADAFUSE_API_KEY") or None
    try:
        app = create_app(
            ensemble,
            config,
            api_key=key,
            max_concurrency=max_concurrency,
            max_queue=max_queue,
            max_body_bytes=max_body_bytes,
            budget=Budget(request_seconds, request_tokens),
        )
    except AdafuseError as exc:
        ensemble.close()
        fail(str(exc))
        return
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
    finally:
        ensemble.close()


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)
