"""``adafuse serve``'s app over real HTTP (uvicorn on a loopback port): the OpenAI client, streaming, limits, errors.

Request validation, queueing and cancellation are exercised on scripted members (fast and deterministic); the
OpenAI client runs against the built-in models.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from adafuse import ensemble as ensemble_module
from adafuse.config import DecodeConfig
from adafuse.decoding.failure import FailurePolicy
from adafuse.ensemble import Ensemble
from adafuse.errors import MemberError

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from fakes import EOS, ScriptedMember, table  # noqa: E402

from adafuse.serving.app import create_app  # noqa: E402

KEY = "test-key"
AUTH = {"authorization": f"Bearer {KEY}"}
JSON = {**AUTH, "content-type": "application/json"}
ANSWER = {
    "": {" George": 0.95},
    " George": {" V": 0.95},
    " George V": {".": 0.95},
    " George V.": {" was": 0.9},
    " George V. was": {" king": 0.9},
    " George V. was king": {EOS: 0.99},
}
PIECES = [" George", " V", ".", " was", " king", " la"]


def scripted(name: str = "a", rows: dict | None = None, **kw) -> ScriptedMember:
    return ScriptedMember(name, PIECES, table(rows or ANSWER), prompt="Q", **kw)


class Slow(ScriptedMember):
    """Never finishes on its own (" la la la ..."), 50 ms per model call: a generation that holds its slot."""

    def __init__(self) -> None:
        super().__init__("slow", PIECES, lambda text: {" la": 0.9}, prompt="")

    def _logprobs(self, context):  # type: ignore[no-untyped-def]
        time.sleep(0.05)
        return super()._logprobs(context)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(app) -> Iterator[str]:  # type: ignore[no-untyped-def]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(15)


def running(url: str) -> int:
    return int(httpx.get(f"{url}/health").json()["running"])


def wait_idle(url: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while running(url) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running(url) == 0, "the slot was not freed"


@pytest.fixture(scope="module")
def strict_url() -> Iterator[str]:
    app = create_app(
        Ensemble([scripted("a", n_ctx=64), scripted("b", n_ctx=64)]),
        DecodeConfig(max_new_tokens=8),
        api_key=KEY,
        max_body_bytes=2048,
    )
    with serve(app) as url:
        yield url


# -- malformed requests -------------------------------------------------------------------------------------------

LONG = " la" * 80
CASES = [
    # (id, method, path, headers, body, status, words in the message)
    (
        "no-key",
        "POST",
        "/v1/completions",
        {"content-type": "application/json"},
        '{"prompt": "x"}',
        401,
        "missing API key",
    ),
    ("wrong-key", "GET", "/v1/models", {"authorization": "Bearer nope"}, None, 401, "invalid API key"),
    ("not-bearer", "GET", "/v1/models", {"authorization": f"Basic {KEY}"}, None, 401, "API key"),
    ("unknown-route", "POST", "/v1/embeddings", JSON, "{}", 404, "no route POST /v1/embeddings"),
    ("unknown-model-route", "GET", "/v1/models/gpt-4", AUTH, None, 404, "'gpt-4' does not exist"),
    (
        "unknown-model",
        "POST",
        "/v1/completions",
        JSON,
        '{"model": "gpt-4", "prompt": "x"}',
        404,
        "'gpt-4' does not exist",
    ),
    ("get-completions", "GET", "/v1/completions", AUTH, None, 405, "method GET is not allowed"),
    ("delete-chat", "DELETE", "/v1/chat/completions", AUTH, None, 405, "not allowed"),
    (
        "text-plain",
        "POST",
        "/v1/completions",
        {**AUTH, "content-type": "text/plain"},
        '{"prompt": "x"}',
        415,
        "application/json",
    ),
    (
        "form",
        "POST",
        "/v1/completions",
        {**AUTH, "content-type": "application/x-www-form-urlencoded"},
        "prompt=x",
        415,
        "Content-Type",
    ),
    ("no-content-type", "POST", "/v1/completions", AUTH, b'{"prompt": "x"}', 415, "got 'none'"),
    (
        "too-large",
        "POST",
        "/v1/completions",
        JSON,
        json.dumps({"prompt": "x" * 5000}),
        413,
        "exceeds the limit of 2048",
    ),
    ("empty-body", "POST", "/v1/completions", JSON, "", 400, "body is empty"),
    ("bad-json", "POST", "/v1/completions", JSON, '{"prompt": ', 400, "not valid JSON"),
    ("nan", "POST", "/v1/completions", JSON, '{"prompt": "x", "temperature": NaN}', 400, "NaN is not valid JSON"),
    ("array-body", "POST", "/v1/completions", JSON, '["x"]', 400, "must be a JSON object"),
    ("no-prompt", "POST", "/v1/completions", JSON, "{}", 422, "prompt: is required"),
    ("int-prompt", "POST", "/v1/completions", JSON, '{"prompt": 7}', 422, "prompt: must be a string"),
    ("token-prompt", "POST", "/v1/completions", JSON, '{"prompt": [1, 2, 3]}', 422, "token-id prompts"),
    ("batch-prompt", "POST", "/v1/completions", JSON, '{"prompt": ["a", "b"]}', 422, "batches"),
    ("blank-prompt", "POST", "/v1/completions", JSON, '{"prompt": "   "}', 400, "prompt is empty"),
    ("zero-tokens", "POST", "/v1/completions", JSON, '{"prompt": "x", "max_tokens": 0}', 422, "max_tokens"),
    ("str-tokens", "POST", "/v1/completions", JSON, '{"prompt": "x", "max_tokens": "ten"}', 422, "max_tokens"),
    ("bool-tokens", "POST", "/v1/completions", JSON, '{"prompt": "x", "max_tokens": true}', 422, "max_tokens"),
    ("stop-int", "POST", "/v1/completions", JSON, '{"prompt": "x", "stop": 5}', 422, "stop: must be a string"),
    ("stop-list", "POST", "/v1/completions", JSON, '{"prompt": "x", "stop": ["a", 1]}', 422, "stop"),
    ("n-2", "POST", "/v1/completions", JSON, '{"prompt": "x", "n": 2}', 422, "only n=1"),
    ("echo", "POST", "/v1/completions", JSON, '{"prompt": "x", "echo": true}', 422, "echo: is not supported"),
    (
        "stream-str",
        "POST",
        "/v1/completions",
        JSON,
        '{"prompt": "x", "stream": "yes"}',
        422,
        "stream: must be true or false",
    ),
    ("temperature-str", "POST", "/v1/completions", JSON, '{"prompt": "x", "temperature": "hot"}', 422, "temperature"),
    ("adafuse-str", "POST", "/v1/completions", JSON, '{"prompt": "x", "adafuse": "fast"}', 422, "must be an object"),
    ("adafuse-key", "POST", "/v1/completions", JSON, '{"prompt": "x", "adafuse": {"speed": 1}}', 422, "unknown option"),
    (
        "method",
        "POST",
        "/v1/completions",
        JSON,
        '{"prompt": "x", "adafuse": {"method": "magic"}}',
        422,
        "method must be one of adafuse, token",
    ),
    (
        "theta",
        "POST",
        "/v1/completions",
        JSON,
        '{"prompt": "x", "adafuse": {"theta": 2}}',
        422,
        "theta must be in [0, 1]",
    ),
    (
        "beam-float",
        "POST",
        "/v1/completions",
        JSON,
        '{"prompt": "x", "adafuse": {"beam": 1.5}}',
        422,
        "beam must be an integer, got 1.5",
    ),
    (
        "weights",
        "POST",
        "/v1/completions",
        JSON,
        '{"prompt": "x", "adafuse": {"weights": [1]}}',
        422,
        "1 weights given for 2",
    ),
    (
        "weights-word",
        "POST",
        "/v1/completions",
        JSON,
        '{"prompt": "x", "adafuse": {"weights": "best"}}',
        422,
        "weights must be auto, equal or numbers",
    ),
    (
        "granularity",
        "POST",
        "/v1/completions",
        JSON,
        '{"prompt": "x", "adafuse": {"granularity": "chapter"}}',
        422,
        "granularity must be one of",
    ),
    (
        "deleted-option",
        "POST",
        "/v1/completions",
        JSON,
        '{"prompt": "x", "adafuse": {"combiner": "vote"}}',
        422,
        "adafuse: unknown option 'combiner'; valid options: method, theta",
    ),
    (
        "min-weight",
        "POST",
        "/v1/completions",
        JSON,
        '{"prompt": "x", "adafuse": {"min_weight": 1}}',
        422,
        "min_weight must be in [0, 1), got 1",
    ),
    ("too-long", "POST", "/v1/completions", JSON, json.dumps({"prompt": LONG}), 400, "context window is 64"),
    ("no-messages", "POST", "/v1/chat/completions", JSON, "{}", 422, "messages"),
    ("messages-str", "POST", "/v1/chat/completions", JSON, '{"messages": "hi"}', 422, "non-empty list"),
    (
        "bad-role",
        "POST",
        "/v1/chat/completions",
        JSON,
        '{"messages": [{"role": "robot", "content": "hi"}]}',
        422,
        "role",
    ),
    (
        "int-content",
        "POST",
        "/v1/chat/completions",
        JSON,
        '{"messages": [{"role": "user", "content": 5}]}',
        422,
        "content",
    ),
    (
        "image-part",
        "POST",
        "/v1/chat/completions",
        JSON,
        '{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}',
        422,
        "text",
    ),
    (
        "empty-chat",
        "POST",
        "/v1/chat/completions",
        JSON,
        '{"messages": [{"role": "user", "content": " "}]}',
        400,
        "conversation is empty",
    ),
    (
        "tools",
        "POST",
        "/v1/chat/completions",
        JSON,
        '{"messages": [{"role": "user", "content": "hi"}], "tools": [{}]}',
        422,
        "tools",
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_malformed_requests_get_the_right_4xx(strict_url, method, path, headers, body, status, words):
    resp = httpx.request(method, strict_url + path, headers=headers, content=body)
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert words in err["message"] and err["type"] and "\n" not in err["message"]
    if isinstance(body, str) and '"adafuse": {' in body:  # the ensemble's options: one reader, one param
        assert err["param"] == "adafuse", err
    if status == 401:
        assert resp.headers["www-authenticate"] == "Bearer"


def test_at_least_twenty_kinds_and_every_status(strict_url):
    assert len(CASES) >= 20 and {c[5] for c in CASES} >= {400, 401, 404, 405, 413, 415, 422}
    # ... and the server still answers afterwards.
    assert httpx.get(f"{strict_url}/health").json()["status"] == "ok"
    ok = httpx.post(f"{strict_url}/v1/completions", headers=JSON, json={"prompt": "", "max_tokens": 4})
    assert ok.status_code == 400  # the prompt is checked before anything runs
    ok = httpx.post(f"{strict_url}/v1/completions", headers=JSON, json={"prompt": "Q", "max_tokens": 4})
    assert ok.status_code == 200, ok.text


def test_chunked_body_over_the_limit_is_413_too(strict_url):
    def body() -> Iterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(40):
            yield b"x" * 100
        yield b'"}'

    resp = httpx.post(f"{strict_url}/v1/completions", headers=JSON, content=body())
    assert resp.status_code == 413 and "exceeds the limit" in resp.json()["error"]["message"]


def test_models_lists_the_members_and_defaults(strict_url):
    data = httpx.get(f"{strict_url}/v1/models", headers=AUTH).json()["data"]
    assert [m["id"] for m in data] == ["adafuse"]
    assert [m["name"] for m in data[0]["members"]] == ["a", "b"] and data[0]["defaults"]["max_new_tokens"] == 8
    assert httpx.get(f"{strict_url}/v1/models/adafuse", headers=AUTH).json()["id"] == "adafuse"


# -- responses, streaming, stop strings ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def open_url() -> Iterator[str]:
    app = create_app(Ensemble([scripted("a"), scripted("b")]), DecodeConfig(max_words=1))
    with serve(app) as url:
        yield url


def sse(resp) -> list[dict]:  # type: ignore[no-untyped-def]
    events = []
    for line in resp.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            events.append(json.loads(line[len("data: ") :]))
    return events


def test_every_response_carries_usage_and_telemetry(open_url):
    body = {"prompt": "Q", "adafuse": {"trace": True}}
    plain = httpx.post(f"{open_url}/v1/completions", json=body).json()
    assert plain["choices"][0]["text"] == " George V. was king" and plain["choices"][0]["finish_reason"] == "stop"
    assert plain["usage"]["completion_tokens"] == 5 and plain["usage"]["total_tokens"] > 5
    tel = plain["adafuse"]["telemetry"]
    assert tel["rounds"] == 4 and tel["dropped"] == {} and [m["name"] for m in tel["members"]] == ["a", "b"]
    assert len(plain["adafuse"]["rounds"]) == 4  # the trace, on request
    with httpx.stream("POST", f"{open_url}/v1/completions", json={**body, "stream": True}) as resp:
        events = sse(resp)
    assert "".join(e["choices"][0]["text"] for e in events) == plain["choices"][0]["text"]
    assert events[-1]["usage"] == plain["usage"] and events[-1]["adafuse"]["telemetry"]["rounds"] == 4
    assert [e["choices"][0]["text"] for e in events[:2]] == [" George", " V."]  # one chunk per committed span


def test_requests_choose_granularity_and_auto_weights(open_url):
    body = {"prompt": "Q", "adafuse": {"weights": "auto", "granularity": "adaptive"}}
    reply = httpx.post(f"{open_url}/v1/completions", json=body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["text"] == " George V. was king"


def test_requests_may_bench_light_members(open_url):
    body = {"prompt": "Q", "adafuse": {"weights": [1, 3], "min_weight": 0.3, "trace": True}}
    reply = httpx.post(f"{open_url}/v1/completions", json=body)
    assert reply.status_code == 200, reply.text
    tel = reply.json()["adafuse"]["telemetry"]
    assert tel["benched"] == ["a"] and tel["weights"] == {"a": 0.25, "b": 0.75}
    assert all(p["member"] == "b" for r in reply.json()["adafuse"]["rounds"] for p in r["proposals"])


def test_streaming_never_sends_text_a_stop_string_later_removes(open_url):
    """A stop string spanning two rounds: the streamed text equals the final text (nothing to take back)."""
    body = {"prompt": "Q", "stop": ["V. was"], "stream": True}
    with httpx.stream("POST", f"{open_url}/v1/completions", json=body) as resp:
        events = sse(resp)
    assert "".join(e["choices"][0]["text"] for e in events) == " George "
    plain = httpx.post(f"{open_url}/v1/completions", json={**body, "stream": False}).json()
    assert plain["choices"][0]["text"] == " George "


def test_chat_renders_the_conversation_and_streams_the_role_first():
    # Scripted members have no chat template: the documented plain layout is what they are prompted with.
    members = [ScriptedMember(n, PIECES, table(ANSWER), prompt="User: Q\n\nAssistant:") for n in "ab"]
    body = {"messages": [{"role": "user", "content": "Q"}], "stream": True, "max_tokens": 3}
    with (
        serve(create_app(Ensemble(members))) as url,
        httpx.stream("POST", f"{url}/v1/chat/completions", json=body) as resp,
    ):
        events = sse(resp)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert events[-1]["choices"][0]["finish_reason"] == "length" and events[-1]["object"] == "chat.completion.chunk"


# -- member failures -----------------------------------------------------------------------------------------------


class Down(ScriptedMember):
    concurrent = True

    def _logprobs(self, context):  # type: ignore[no-untyped-def]
        raise MemberError(self.name, "POST /v1/completions failed after 4 attempts: cannot connect")


def _policy(ens: Ensemble, policy: str, monkeypatch: pytest.MonkeyPatch) -> Ensemble:
    ens.on_member_failure = policy  # type: ignore[attr-defined]
    if not hasattr(ensemble_module, "FailurePolicy"):  # until Ensemble applies the policy itself
        real_run = ensemble_module.run

        def run(state, strategy, method, on_round=None):  # type: ignore[no-untyped-def]
            wrapped = FailurePolicy(strategy, getattr(ens, "on_member_failure", "fail"))
            result = real_run(state, wrapped, method, on_round)
            result.telemetry.dropped.update(wrapped.dropped)
            return result

        monkeypatch.setattr(ensemble_module, "run", run)
    return ens


def test_a_failing_member_is_a_502_or_is_dropped(monkeypatch):
    down = Down("remote", PIECES, table(ANSWER), prompt="Q")
    ens = _policy(Ensemble([down, scripted("local")]), "fail", monkeypatch)
    with serve(create_app(ens)) as url:
        resp = httpx.post(f"{url}/v1/completions", json={"prompt": "Q"})
        assert resp.status_code == 502 and resp.json()["error"]["message"].startswith("member 'remote': POST")
        with httpx.stream("POST", f"{url}/v1/completions", json={"prompt": "Q", "stream": True}) as streamed:
            assert streamed.status_code == 502  # failed before the first span: a status, not a broken stream
        ens.on_member_failure = "drop"  # type: ignore[attr-defined]
        resp = httpx.post(f"{url}/v1/completions", json={"prompt": "Q"})
        assert resp.status_code == 200 and resp.json()["choices"][0]["text"] == " George V. was king"
        assert resp.json()["adafuse"]["telemetry"]["dropped"] == {
            "remote": "POST /v1/completions failed after 4 attempts: cannot connect"
        }
        assert httpx.get(f"{url}/v1/models").json()["data"][0]["on_member_failure"] == "drop"


# -- concurrency: queue bound, cancellation -------------------------------------------------------------------------


def test_queue_bound_gives_429_and_a_disconnected_stream_frees_its_slot():
    app = create_app(Ensemble([Slow()]), DecodeConfig(max_new_tokens=400), max_concurrency=1, max_queue=1)
    with serve(app) as url:
        holder = httpx.Client(timeout=30)
        first = holder.send(
            holder.build_request("POST", f"{url}/v1/completions", json={"prompt": "la", "stream": True}), stream=True
        )
        assert first.status_code == 200
        lines = first.iter_lines()
        assert next(lines).startswith("data: ")  # generating, and holding the only slot
        queued: dict[str, object] = {}

        def waiter() -> None:
            r = httpx.post(f"{url}/v1/completions", json={"prompt": "la", "max_tokens": 2}, timeout=60)
            queued["status"], queued["text"] = r.status_code, r.json()["choices"][0]["text"]

        thread = threading.Thread(target=waiter)
        thread.start()
        deadline = time.monotonic() + 10
        while httpx.get(f"{url}/health").json()["queued"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        busy = httpx.post(f"{url}/v1/completions", json={"prompt": "la"})
        assert busy.status_code == 429 and "busy" in busy.json()["error"]["message"]
        assert busy.json()["error"]["type"] == "rate_limit_error"
        # The streaming client goes away mid-stream: its generation stops at the next round, the queued one runs.
        first.close()
        holder.close()
        thread.join(30)
        assert queued == {"status": 200, "text": " la la"}
        wait_idle(url)


def test_a_client_that_gives_up_on_a_plain_request_frees_its_slot():
    slow = Slow()
    app = create_app(Ensemble([slow]), DecodeConfig(max_new_tokens=400))
    with serve(app) as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/completions", json={"prompt": "la"}, timeout=0.6)
        wait_idle(url, within=5)
        calls = len(slow.calls)
        time.sleep(0.3)
        assert len(slow.calls) == calls  # the generation really stopped
        assert httpx.post(f"{url}/v1/completions", json={"prompt": "la", "max_tokens": 1}).status_code == 200


# -- the official OpenAI client against the built-in models --------------------------------------------------------


@pytest.fixture(scope="module")
def openai_client(zoo_members):
    openai = pytest.importorskip("openai")
    app = create_app(Ensemble(zoo_members), DecodeConfig(max_new_tokens=8), api_key=KEY)
    with serve(app) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=300)


@pytest.mark.models
def test_openai_client_completions_plain_and_streaming(openai_client):
    prompt = "Question: What is the capital of France?\nAnswer:"
    plain = openai_client.completions.create(model="adafuse", prompt=prompt, max_tokens=6, stop=["\n"])
    text = plain.choices[0].text
    assert text.strip() and plain.usage.completion_tokens <= 6 and plain.model == "adafuse"
    assert plain.model_extra["adafuse"]["telemetry"]["rounds"] >= 1
    chunks = list(
        openai_client.completions.create(model="adafuse", prompt=prompt, max_tokens=6, stop=["\n"], stream=True)
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


@pytest.mark.models
def test_openai_client_chat_plain_and_streaming(openai_client):
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 2 + 2?"}]
    plain = openai_client.chat.completions.create(model="adafuse", messages=messages, max_tokens=6)
    text = plain.choices[0].message.content
    assert text and plain.choices[0].message.role == "assistant" and plain.usage.prompt_tokens > 10
    stream = openai_client.chat.completions.create(model="adafuse", messages=messages, max_tokens=6, stream=True)
    parts = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(parts) == text
    models = openai_client.models.list()
    assert [m.id for m in models.data] == ["adafuse"]
    with pytest.raises(Exception, match="401"):
        type(openai_client)(base_url=str(openai_client.base_url), api_key="wrong", max_retries=0).models.list()


def test_serve_command_rejects_bad_options_with_one_line():
    from typer.testing import CliRunner

    from adafuse.cli import app as cli

    runner = CliRunner()
    for args, words in [
        (["--on-member-failure", "maybe"], "--on-member-failure must be one of fail, drop"),
        (["--port", "0"], "--port must be from 1 to 65535"),
        (["--max-concurrency", "0"], "--max-concurrency must be >= 1"),
        (["--n-ctx", "8"], "--n-ctx must be at least 16"),
        (["--request-seconds", "0"], "--request-seconds must be > 0"),
        (["--beam", "99"], "beam must be in [1, 16]"),
    ]:
        res = runner.invoke(cli, ["serve", *args])
        assert res.exit_code == 2 and words in res.output, res.output
        assert res.output.count("\n") == 1
