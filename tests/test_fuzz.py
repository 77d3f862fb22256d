"""Fuzzing every input surface (Hypothesis, fixed seed, bounded time): each case ends in a clear error or a valid
result - no traceback from deep inside, no 5xx, no hang - and the server still answers a normal request after
every batch."""

from __future__ import annotations

import json
import math
from pathlib import Path

import httpx
import pytest
from fakes import EOS, ScriptedMember, table
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adafuse.config import FIELDS, DecodeConfig, option_names, read_config
from adafuse.decoding.guard import Budget
from adafuse.ensemble import Ensemble
from adafuse.errors import AdafuseError, ConfigError, DataError
from adafuse.evaluation.tasks import custom_task
from adafuse.result import Result


def fuzz(examples: int = 100) -> settings:
    """Deterministic (a fixed seed, no example database) and bounded: ``examples`` cases per test."""
    return settings(
        derandomize=True, database=None, deadline=None, max_examples=examples, suppress_health_check=list(HealthCheck)
    )


PIECES = [" George", " V", ".", " la"]

json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["auto", "equal", "default", "word", "adaptive", "token", "span", "1,2", "none", "nan", "-1"]),
)
json_value = st.recursive(
    json_scalar, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
)
option_key = st.sampled_from([*option_names(), "combiner", "normalise", "", "theta ", "trace"])


# -- the option reader ----------------------------------------------------------------------------------------------


@fuzz(500)
@given(st.dictionaries(option_key, st.one_of(json_value, st.floats(), st.text(max_size=10)), max_size=5), st.booleans())
def test_the_option_reader_gives_a_config_or_one_config_error(options, text):
    try:
        config = read_config(options, text=text)
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc)
        return
    assert isinstance(config, DecodeConfig)
    for name, f in FIELDS.items():  # every value is in its range
        meta, value = f.metadata, getattr(config, name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            assert math.isfinite(value)
            assert meta["low"] is None or value >= meta["low"]
            assert meta["high"] is None or value <= meta["high"]


# -- the HTTP API ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(zoo_members):
    from test_server import serve

    from adafuse.serving.app import create_app

    # The built-in models, so any text a client sends meets real tokenizers; the server's budget bounds each answer.
    app = create_app(
        Ensemble(zoo_members), DecodeConfig(max_new_tokens=3), max_concurrency=2, budget=Budget(tokens=300)
    )
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


@pytest.fixture
def batch(server):
    """A fuzz test's server; once its whole batch has run, a normal request must still be answered."""
    yield server
    _normal(server)
    assert server.get("/health").json()["running"] == 0


def _check(reply: httpx.Response) -> None:
    assert reply.status_code < 500, reply.text
    body = reply.json()
    if reply.status_code >= 400:
        assert set(body) == {"error"} and body["error"]["message"] and "\n" not in body["error"]["message"]
    else:
        assert body["choices"][0]["finish_reason"] in ("stop", "length")


def _normal(client: httpx.Client) -> None:
    reply = client.post("/v1/completions", json={"prompt": "Question: What is the capital of France?\nAnswer:"})
    assert reply.status_code == 200 and reply.json()["choices"][0]["text"]


request_key = st.sampled_from(
    ["prompt", "messages", "max_tokens", "stop", "stream", "temperature", "seed", "n", "logprobs", "adafuse"]
    + ["model", "user", "response_format", "top_p", "best_of", "echo", "x"]
)
adafuse_body = st.dictionaries(option_key, json_value, max_size=4)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "bot"]), "content": json_value}
)
near_body = st.fixed_dictionaries(
    {"prompt": st.one_of(st.text(max_size=20), json_value)},
    optional={
        "messages": st.lists(message, max_size=3),
        "max_tokens": st.one_of(st.integers(-2, 9000), json_value),
        "stop": st.one_of(st.text(max_size=3), st.lists(st.text(max_size=3), max_size=20), json_value),
        "stream": st.one_of(st.booleans(), json_value),
        "adafuse": st.one_of(adafuse_body, json_value),
    },
) | st.dictionaries(request_key, json_value, max_size=5)


@pytest.mark.models
@fuzz(60)
@given(body=near_body, chat=st.booleans())
def test_random_json_near_the_schema_gets_a_valid_answer_or_a_4xx(batch, body, chat):
    server = batch
    route = "/v1/chat/completions" if chat else "/v1/completions"
    if body.get("stream") is True:
        with server.stream("POST", route, json=body) as reply:
            assert reply.status_code < 500
            reply.read()
    else:
        _check(server.post(route, json=body))


@pytest.mark.models
@fuzz(120)
@given(raw=st.binary(max_size=64), ctype=st.sampled_from(["application/json", "text/plain", "", "application/json; x"]))
def test_random_bytes_and_headers_get_a_4xx(batch, raw, ctype):
    server = batch
    headers = {"content-type": ctype} if ctype else {}
    reply = server.post("/v1/completions", content=raw, headers=headers)
    assert 400 <= reply.status_code < 500 or reply.status_code == 200, reply.text


@pytest.mark.models
@fuzz(100)
@given(
    headers=st.dictionaries(
        st.sampled_from(["authorization", "content-length", "content-type", "accept", "x-junk"]),
        st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=20),
        max_size=3,
    )
)
def test_random_headers_never_give_a_5xx(batch, headers):
    server = batch
    try:
        reply = server.post("/v1/completions", content=b'{"prompt": "Q", "max_tokens": 2}', headers=headers)
    except httpx.HTTPError:
        return  # a header the client itself cannot send (e.g. a wrong content-length) never reaches the server
    assert reply.status_code < 500


# -- the data loaders and the result JSON ---------------------------------------------------------------------------

jsonl_line = st.one_of(
    st.text(max_size=30),
    st.builds(json.dumps, st.dictionaries(st.sampled_from(["question", "answer", "id", "x"]), json_value, max_size=3)),
)


@fuzz(300)
@given(lines=st.lists(jsonl_line, max_size=5), kind=st.sampled_from(["qa", "math", "translation"]))
def test_random_jsonl_lines_load_or_give_a_data_error_naming_the_line(tmp_path_factory, lines, kind):
    folder = Path(tmp_path_factory.mktemp("data"))
    (folder / "data.jsonl").write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
    (folder / "prompt.txt").write_text("Answer.\n")
    task = custom_task(folder / "data.jsonl", folder / "prompt.txt", kind=kind)
    try:
        items = task.items()
    except DataError as exc:
        assert "data.jsonl" in str(exc) and "\n" not in str(exc)
        return
    for item in items:
        assert isinstance(item.question, str)


@fuzz(100)
@given(
    rows=st.dictionaries(
        st.sampled_from(["", " George", " V", " George V"]),
        st.dictionaries(st.sampled_from([*PIECES, EOS]), st.floats(0.01, 0.3), min_size=1, max_size=3),
        max_size=4,
    ),
    method=st.sampled_from(["adafuse", "token", "span", "sample", "single"]),
)
def test_results_round_trip_through_json(rows, method):
    members = [ScriptedMember(n, PIECES, table(rows), prompt="Q") for n in ("a", "b")]
    try:
        result = Ensemble(members).generate("Q", DecodeConfig(method=method, weights="equal", max_new_tokens=6))
    except AdafuseError:
        return
    again = Result.from_dict(json.loads(result.to_json()))
    assert again.to_json() == result.to_json()


# -- the command line -----------------------------------------------------------------------------------------------

flag = st.sampled_from([f"--{n.replace('_', '-')}" for n in option_names()] + ["--n-ctx", "--threads", "--chat"])
flag_value = st.one_of(
    st.sampled_from(["0", "-1", "1e9", "nan", "inf", "0.5", "3", "auto", "equal", "1,2", "x", "", "\\n", "\\ud800"]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=6),
)


@fuzz(150)
@given(argv=st.lists(st.tuples(flag, flag_value), max_size=4), prompt=st.text(max_size=12))
def test_random_command_lines_end_in_one_error_line_never_a_traceback(tmp_path_factory, argv, prompt):
    from typer.testing import CliRunner

    from adafuse.cli import app

    missing = str(tmp_path_factory.getbasetemp() / "absent.gguf")  # a valid command line stops here, loading nothing
    args = ["generate", prompt or " ", "--models", missing, *[part for pair in argv for part in pair]]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, (args, res.output, res.exception)
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit), res.exception
