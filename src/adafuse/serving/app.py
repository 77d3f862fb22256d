"""The ensemble as one OpenAI-compatible model, ``adafuse``: ``/v1/completions`` and ``/v1/chat/completions``.

Requests are validated here and answered in OpenAI's error shape (``{"error": {"message", "type", "param",
"code"}}``): 400 unreadable body or prompt problems, 401 missing/wrong API key, 404 unknown route or model, 405
wrong method, 413 body too large, 415 not JSON, 422 a field of the wrong type or out of range, 429 the queue is
full, 502 a member failed (``--on-member-failure fail``). Generation runs in a worker thread, one request per slot;
a request past the slots waits in a bounded queue. The ensemble's ``on_round`` callback streams each committed span
(``stream: true``); a generation whose client went away stops at its next model call (decoding/guard.py), freeing
the slot, and the server's budget (seconds, tokens evaluated) bounds what any one request may cost.

Every response carries ``usage`` (tokens counted by the first member's tokenizer) and ``adafuse`` (the ensemble's
telemetry: rounds, fast-path share, per-member forward passes, dropped members).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from adafuse.config import DecodeConfig, read_config
from adafuse.decoding.guard import Budget, Cancelled
from adafuse.ensemble import Ensemble
from adafuse.errors import AdafuseError, ConfigError, MemberError, PromptError
from adafuse.result import Result, Round

log = logging.getLogger(__name__)

MODEL_ID = "adafuse"
MAX_TOKENS_CAP = 8192
MAX_STOP = 16
#: options the OpenAI request sets in its own fields (``max_tokens``, ``stop``), not under ``adafuse``.
OPENAI_FIELDS = ("max_new_tokens", "stop")
#: OpenAI's sampling fields, accepted within OpenAI's ranges and named in the response's
#: ``adafuse.not_honoured``: the ensemble decodes greedily, so none of them changes the answer.
SAMPLING: dict[str, tuple[float, float] | None] = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
    "seed": None,  # any integer
}
#: fields refused (422) unless they ask for what the ensemble does anyway, with why.
REFUSED = {
    "logit_bias": "token ids differ between the members' tokenizers",
    "logprobs": "the answer's tokens differ between the members' tokenizers",
    "top_logprobs": "the answer's tokens differ between the members' tokenizers",
    "response_format": "the ensemble cannot constrain its output to a format",
    "tools": "the ensemble does not call tools",
    "tool_choice": "the ensemble does not call tools",
    "functions": "the ensemble does not call functions",
    "function_call": "the ensemble does not call functions",
    "echo": "the ensemble does not echo the prompt",
    "suffix": "the ensemble does not insert text",
}
#: a value of those that asks for what the ensemble does anyway (besides empty ones: false, 0, [], {}).
HONOURED_AS: dict[str, tuple[Any, ...]] = {"response_format": ({"type": "text"},)}
#: every field a request may carry besides the sampling and refused ones.
FIELDS = {"model", "prompt", "messages", "max_tokens", "max_completion_tokens", "stop", "stream", "stream_options"}
FIELDS |= {"n", "best_of", "user", "adafuse"}


class ApiError(Exception):
    """A request problem with its HTTP status, in OpenAI's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = " ".join(message.split())
        self.param = param
        self.code = code
        self.headers = headers


_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
}


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    kind = _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    if status == 429:
        kind = "rate_limit_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(exc: ApiError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(exc.status, exc.message, exc.param, exc.code), exc.status, headers=headers)


# -- request parsing ----------------------------------------------------------------------------------------------


@dataclass
class Job:
    """One validated request."""

    chat: bool
    prompt: str | list[dict[str, str]]
    config: DecodeConfig
    stream: bool
    trace: bool
    #: sampling fields the request set, which greedy decoding does not honour (reported with the answer).
    not_honoured: tuple[str, ...] = ()


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, int | float) and not isinstance(v, bool)) and math.isfinite(v)


def _bad(param: str, message: str) -> ApiError:
    return ApiError(422, f"{param}: {message}", param=param, code="invalid_value")


def _stop(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, list):
        if len(value) > MAX_STOP:
            raise _bad("stop", f"at most {MAX_STOP} stop strings, got {len(value)}")
        if not all(isinstance(s, str) for s in value):
            raise _bad("stop", "must be a string or a list of strings")
        return tuple(s for s in value if s)
    raise _bad("stop", f"must be a string or a list of strings, got {type(value).__name__}")


def _max_tokens(body: dict[str, Any], default: int) -> int:
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    value = body.get(key)
    if value is None:
        return default
    if not _is_int(value) or not 1 <= value <= MAX_TOKENS_CAP:
        raise _bad(key, f"must be an integer from 1 to {MAX_TOKENS_CAP}, got {value!r}")
    return int(value)


def _options(body: dict[str, Any], defaults: DecodeConfig) -> tuple[dict[str, Any], bool]:
    raw = body.get("adafuse")
    if raw is None:
        return {}, False
    if not isinstance(raw, dict):
        raise _bad("adafuse", f"must be an object of ensemble options, got {type(raw).__name__}")
    options = dict(raw)
    trace = options.pop("trace", False)
    if not isinstance(trace, bool):
        raise _bad("adafuse.trace", f"must be true or false, got {trace!r}")
    try:
        config = read_config(options, defaults, exclude=OPENAI_FIELDS, text=False)
    except ConfigError as exc:
        raise _bad("adafuse", str(exc)) from None
    # A client names a controller the server already offers; a path would let it read the server's files.
    offered = {None, "builtin", defaults.controller}
    if options.get("controller") is not None and config.controller not in offered:
        allowed = ", ".join(repr(c) for c in sorted(c for c in offered if c))
        raise _bad("adafuse.controller", f"must be {allowed} or 'none', got {options['controller']!r}")
    return {key: getattr(config, key) for key in options if options[key] is not None}, trace


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise _bad("messages", "must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(value):
        param = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad(param, "must be an object with role and content")
        role = m.get("role")
        if role == "developer":
            role = "system"  # OpenAI's newer name for the system message
        if role not in ("system", "user", "assistant"):
            raise _bad(f"{param}.role", f"must be system, user or assistant, got {role!r}")
        content = m.get("content")
        if isinstance(content, list):
            # Content parts: only text can reach a text model.
            texts = []
            for j, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise _bad(f"{param}.content[{j}]", "only {type: 'text', text: '...'} parts are supported")
                texts.append(part["text"])
            content = "".join(texts)
        if not isinstance(content, str):
            raise _bad(f"{param}.content", f"must be a string, got {type(content).__name__}")
        out.append({"role": role, "content": content})
    if not any(m["content"].strip() for m in out):
        raise ApiError(400, "the conversation is empty (every message has empty content)", param="messages")
    return out


def parse_job(body: dict[str, Any], chat: bool, defaults: DecodeConfig, n_members: int) -> Job:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _bad("model", f"must be a string, got {type(model).__name__}")
    if model is not None and model != MODEL_ID:
        raise ApiError(
            404, f"The model '{model}' does not exist; this server serves '{MODEL_ID}'", "model", "model_not_found"
        )
    unknown = sorted(set(body) - FIELDS - set(SAMPLING) - set(REFUSED))
    if unknown:
        known = ", ".join(sorted(FIELDS | set(SAMPLING) | set(REFUSED)))
        raise _bad(unknown[0], f"unknown field(s) {unknown}; this server reads: {known}")
    not_honoured = tuple(key for key in SAMPLING if _sampling(key, body.get(key)))
    for key, why in REFUSED.items():
        value = body.get(key)
        if value and value not in HONOURED_AS.get(key, ()):
            raise _bad(key, f"is not supported: {why}")
    for key in ("n", "best_of"):
        if body.get(key) not in (None, 1):
            raise _bad(key, f"only {key}=1 is supported, got {body.get(key)!r}")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise _bad("user", f"must be a string, got {user!r}")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad("stream", f"must be true or false, got {stream!r}")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise _bad("stream_options", "must be an object")
    prompt: str | list[dict[str, str]]
    if chat:
        prompt = _messages(body.get("messages"))
    else:
        raw = body.get("prompt")
        if isinstance(raw, list) and len(raw) == 1 and isinstance(raw[0], str):
            raw = raw[0]
        if isinstance(raw, list):
            raise _bad("prompt", "must be one string (token-id prompts and batches of prompts are not supported)")
        if not isinstance(raw, str):
            raise _bad("prompt", f"must be a string, got {type(raw).__name__}" if raw is not None else "is required")
        if not raw.strip():
            raise ApiError(400, "the prompt is empty", param="prompt")
        prompt = raw
    options, trace = _options(body, defaults)
    stop = _stop(body.get("stop"))
    changes: dict[str, Any] = dict(options, max_new_tokens=_max_tokens(body, defaults.max_new_tokens))
    if stop is not None:
        changes["stop"] = stop
    try:
        config = replace(defaults, **changes)
        config.member_weights(n_members)
    except ConfigError as exc:
        raise ApiError(422, str(exc), param="adafuse", code="invalid_value") from None
    return Job(chat, prompt, config, stream, trace, not_honoured)


def _sampling(key: str, value: Any) -> bool:
    """Whether sampling field ``key`` is set (422 outside OpenAI's range)."""
    if value is None:
        return False
    bounds = SAMPLING[key]
    if bounds is None:
        if not _is_int(value):
            raise _bad(key, f"must be an integer, got {value!r}")
        return True
    if not _is_num(value) or not bounds[0] <= value <= bounds[1]:
        raise _bad(key, f"must be a number from {bounds[0]:g} to {bounds[1]:g}, got {value!r}")
    return True


# -- responses ----------------------------------------------------------------------------------------------------


def _finish(result: Result) -> str:
    # OpenAI knows "stop" (an end token or a stop string) and "length" (a budget: tokens, or the server's).
    return "stop" if result.finish_reason in ("stop", "eos") else "length"


def _usage(result: Result) -> dict[str, int]:
    members = result.telemetry.members
    prompt = members[0].prompt_tokens if members else 0
    out = result.telemetry.output_tokens
    return {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out}


def _telemetry(result: Result, job: Job) -> dict[str, Any]:
    tel = asdict(result.telemetry)
    tel["tokens_evaluated"] = result.telemetry.tokens_evaluated
    out: dict[str, Any] = {
        "method": result.method,
        "finish_reason": result.finish_reason,
        "models": result.models,
        "telemetry": tel,
    }
    if job.not_honoured:
        out["not_honoured"] = {key: "greedy decoding: sampling options change nothing" for key in job.not_honoured}
    if job.trace:
        out["rounds"] = [asdict(r) for r in result.rounds]
    return out


class _Gate:
    """``slots`` generations at once, ``queue`` more waiting in arrival order; the rest are turned away (429).

    A freed slot is handed straight to the oldest waiter (no semaphore: cancelling a waiter can then never lose
    or duplicate a slot).
    """

    def __init__(self, slots: int, queue: int) -> None:
        self.slots = slots
        self.queue = queue
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def full(self) -> bool:
        return self.running + self.waiting >= self.slots + self.queue

    async def acquire(self, request: Request) -> bool:
        """Wait for a slot; False if the client went away while waiting."""
        if self.running < self.slots and not self._waiters:
            self.running += 1
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            while not waiter.done():
                await asyncio.wait({waiter}, timeout=0.25)
                if not waiter.done() and await request.is_disconnected():
                    self._waiters.remove(waiter)
                    return False
        except BaseException:
            if waiter.done():
                self.release()  # the slot was already ours: pass it on
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise
        return True

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot moves to this waiter; ``running`` is unchanged
                return
        self.running -= 1


class Server:
    """State shared by the routes: the ensemble, its defaults, the gate and the worker threads."""

    def __init__(
        self,
        ensemble: Ensemble,
        defaults: DecodeConfig,
        api_key: str | None,
        max_concurrency: int,
        max_queue: int,
        max_body_bytes: int,
        budget: Budget | None = None,
    ) -> None:
        if max_concurrency < 1 or max_queue < 0 or max_body_bytes < 1:
            raise ConfigError("max_concurrency must be >= 1, max_queue >= 0 and max_body_bytes >= 1")
        self.ensemble = ensemble
        self.defaults = defaults
        self.budget = budget or Budget()
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes
        self.gate = _Gate(max_concurrency, max_queue)
        self.pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="adafuse-generate")
        self.created = int(time.time())
        self.cancels: set[threading.Event] = set()

    def check_auth(self, request: Request) -> None:
        if self.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            what = "missing" if not header else "invalid"
            raise ApiError(401, f"{what} API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")

    async def read_json(self, request: Request) -> dict[str, Any]:
        ctype = request.headers.get("content-type", "")
        if ctype.split(";")[0].strip().lower() != "application/json":
            raise ApiError(415, f"Content-Type must be application/json, got {ctype or 'none'!r}")
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise ApiError(400, f"bad Content-Length header {length!r}")
            if int(length) > self.max_body_bytes:
                raise ApiError(413, f"request body of {length} bytes exceeds the limit of {self.max_body_bytes}")
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > self.max_body_bytes:
                raise ApiError(413, f"request body exceeds the limit of {self.max_body_bytes} bytes")
        if not data:
            raise ApiError(400, "the request body is empty; send a JSON object")

        def no_constants(name: str) -> None:
            raise ValueError(f"{name} is not valid JSON")

        try:
            body = json.loads(data, parse_constant=no_constants)
        except json.JSONDecodeError as exc:
            raise ApiError(
                400, f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(400, f"the body must be a JSON object, got {type(body).__name__}")
        return body

    def models(self) -> dict[str, Any]:
        members = [
            {
                "name": m.name,
                "backend": type(m).__name__,
                "n_ctx": m.n_ctx,
                "chat_template": bool(m.chat_template),
            }
            for m in self.ensemble.members
        ]
        return {
            "id": MODEL_ID,
            "object": "model",
            "created": self.created,
            "owned_by": "adafuse",
            "members": members,
            "defaults": self.defaults.to_dict(),
            "on_member_failure": getattr(self.ensemble, "on_member_failure", "fail"),
        }

    # -- running one job ---------------------------------------------------------------------------------------

    def start(self, job: Job, emit: Callable[[str, Any], None], cancel: threading.Event) -> asyncio.Future[Result]:
        """Run ``job`` in a worker thread; ``emit("delta", text)`` is called (thread-safely) per committed span."""
        loop = asyncio.get_running_loop()
        holdback = max((len(s) for s in job.config.stop), default=1) - 1
        sent = [0]

        def on_round(rnd: Round, text: str) -> None:
            if not job.stream:
                return
            # Text that may yet turn out to begin a stop string stays back until the next round settles it.
            end = max(sent[0], len(text) - holdback)
            if end > sent[0]:
                piece = text[sent[0] : end]
                sent[0] = end
                loop.call_soon_threadsafe(emit, "delta", piece)

        def work() -> Result:
            return self.ensemble.generate(
                job.prompt, job.config, chat=job.chat, on_round=on_round, cancel=cancel, budget=self.budget
            )

        self.cancels.add(cancel)
        fut = asyncio.wrap_future(self.pool.submit(work))

        def done(f: asyncio.Future[Result]) -> None:
            # The slot is free only once the worker has really stopped, not when the client left.
            self.cancels.discard(cancel)
            self.gate.release()
            if not f.cancelled():
                f.exception()  # a client that left never awaits its result: mark the error as seen

        fut.add_done_callback(done)
        return fut


def _map_error(exc: BaseException) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, PromptError):
        return ApiError(400, str(exc), param="prompt", code="context_length_exceeded" if "window" in str(exc) else None)
    if isinstance(exc, ConfigError):
        return ApiError(422, str(exc), param="adafuse", code="invalid_value")
    if isinstance(exc, MemberError):
        return ApiError(502, str(exc), code="member_failed")
    if isinstance(exc, AdafuseError):
        return ApiError(400, str(exc))
    log.exception("generation failed", exc_info=exc)
    return ApiError(500, f"internal error: {type(exc).__name__}: {exc}")


def create_app(
    ensemble: Ensemble,
    defaults: DecodeConfig | None = None,
    api_key: str | None = None,
    max_concurrency: int = 1,
    max_queue: int = 32,
    max_body_bytes: int = 1 << 20,
    budget: Budget | None = None,
) -> FastAPI:
    """An app serving ``ensemble`` as the model ``adafuse``; see the module docstring for the contract.
    ``budget``: every request's limit (seconds, tokens evaluated); an answer that reaches it ends there."""
    ensemble.controller(defaults or DecodeConfig())  # refuse a controller fitted for other members at start
    server = Server(ensemble, defaults or DecodeConfig(), api_key, max_concurrency, max_queue, max_body_bytes, budget)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        # Shutting down: running generations stop at their next model call instead of holding the process.
        for cancel in list(server.cancels):
            cancel.set()
        server.pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="adafuse", version="0.1.0", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.adafuse = server

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else exc.headers
        return error_response(exc, headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return JSONResponse(error_body(exc.status_code, message), exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(422, _one_line(exc.errors())), 422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error", exc_info=exc)
        return JSONResponse(error_body(500, f"internal error: {type(exc).__name__}"), 500)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": MODEL_ID,
            "members": ensemble.names,
            "running": server.gate.running,
            "queued": server.gate.waiting,
        }

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        server.check_auth(request)
        return {"object": "list", "data": [server.models()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request) -> dict[str, Any]:
        server.check_auth(request)
        if model_id != MODEL_ID:
            raise ApiError(404, f"The model '{model_id}' does not exist", "model", "model_not_found")
        return server.models()

    @app.post("/v1/completions", response_model=None)
    async def completions(request: Request) -> Response:
        return await _serve(server, request, chat=False)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> Response:
        return await _serve(server, request, chat=True)

    return app


def _one_line(value: object) -> str:
    return " ".join(str(value).split())


async def _serve(server: Server, request: Request, chat: bool) -> Response:
    server.check_auth(request)
    body = await server.read_json(request)
    job = parse_job(body, chat, server.defaults, len(server.ensemble.members))
    if server.gate.full():
        raise ApiError(
            429,
            f"the server is busy ({server.gate.running} running, {server.gate.waiting} queued); retry later",
            code="queue_full",
            headers={"Retry-After": "1"},
        )
    if not await server.gate.acquire(request):
        return Response(status_code=499)  # the client is gone; nobody reads this
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    created = int(time.time())
    cancel = threading.Event()
    events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    try:
        fut = server.start(job, lambda kind, data: events.put_nowait((kind, data)), cancel)
    except BaseException:
        server.gate.release()
        raise
    fut.add_done_callback(lambda f: events.put_nowait(("done", None)))
    if not job.stream:
        watcher = asyncio.create_task(_watch_disconnect(request, cancel, fut))
        try:
            result = await _result(fut)
        finally:
            watcher.cancel()
        return JSONResponse(_full_response(job, result, rid, created, chat))
    # Streaming: wait for the first span (or an early error, which then gets its proper status code).
    watcher = asyncio.create_task(_watch_disconnect(request, cancel, fut))
    try:
        first = await events.get()
    finally:
        watcher.cancel()
    if first[0] == "done":
        result = await _result(fut)  # raises the ApiError of a failed generation
    return StreamingResponse(
        _sse(job, fut, events, first, cancel, rid, created, chat),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _result(fut: asyncio.Future[Result]) -> Result:
    try:
        return await asyncio.shield(fut)
    except Cancelled:
        raise ApiError(499, "the client closed the request") from None
    except BaseException as exc:
        raise _map_error(exc) from None


async def _watch_disconnect(request: Request, cancel: threading.Event, fut: asyncio.Future[Result]) -> None:
    while not fut.done():
        if await request.is_disconnected():
            cancel.set()
            return
        await asyncio.sleep(0.2)


def _chunk(job: Job, rid: str, created: int, chat: bool, text: str | None, finish: str | None) -> dict[str, Any]:
    if chat:
        delta: dict[str, Any] = {} if text is None else {"content": text}
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": MODEL_ID,
            "choices": [choice],
        }
    choice = {"text": text or "", "index": 0, "logprobs": None, "finish_reason": finish}
    return {"id": rid, "object": "text_completion", "created": created, "model": MODEL_ID, "choices": [choice]}


def _sse_line(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


async def _sse(
    job: Job,
    fut: asyncio.Future[Result],
    events: asyncio.Queue[tuple[str, Any]],
    first: tuple[str, Any],
    cancel: threading.Event,
    rid: str,
    created: int,
    chat: bool,
) -> AsyncIterator[str]:
    sent = ""
    try:
        if chat:
            role = _chunk(job, rid, created, chat, None, None)
            role["choices"][0]["delta"] = {"role": "assistant", "content": ""}
            yield _sse_line(role)
        event = first
        while event[0] == "delta":
            sent += event[1]
            yield _sse_line(_chunk(job, rid, created, chat, event[1], None))
            event = await events.get()
        try:
            result = await _result(fut)
        except ApiError as exc:
            yield _sse_line(error_body(exc.status, exc.message, exc.param, exc.code))
            yield _sse_line("[DONE]")
            return
        rest = result.text[len(sent) :] if result.text.startswith(sent) else ""
        if rest:
            yield _sse_line(_chunk(job, rid, created, chat, rest, None))
        last = _chunk(job, rid, created, chat, None if chat else "", _finish(result))
        last["usage"] = _usage(result)
        last["adafuse"] = _telemetry(result, job)
        yield _sse_line(last)
        yield _sse_line("[DONE]")
    finally:
        # Finished, or the client went away mid-stream: either way the generation stops at its next round.
        cancel.set()


def _full_response(job: Job, result: Result, rid: str, created: int, chat: bool) -> dict[str, Any]:
    finish = _finish(result)
    if chat:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": result.text},
            "logprobs": None,
            "finish_reason": finish,
        }
        obj = "chat.completion"
    else:
        choice = {"text": result.text, "index": 0, "logprobs": None, "finish_reason": finish}
        obj = "text_completion"
    return {
        "id": rid,
        "object": obj,
        "created": created,
        "model": MODEL_ID,
        "choices": [choice],
        "usage": _usage(result),
        "adafuse": _telemetry(result, job),
    }
