"""What the server does with what it cannot honour, with bounds and budgets, and with text that is not Unicode."""

from __future__ import annotations

import time

import httpx
import pytest
from test_server import Slow, scripted, serve

from adafuse.config import DecodeConfig
from adafuse.decoding.guard import Budget
from adafuse.ensemble import Ensemble
from adafuse.serving.app import create_app


@pytest.fixture(scope="module")
def url():
    with serve(create_app(Ensemble([scripted("a"), scripted("b")]), DecodeConfig(max_words=1))) as base:
        yield base


def post(url: str, body: dict | str, route: str = "completions") -> httpx.Response:
    if isinstance(body, str):
        headers = {"content-type": "application/json"}
        return httpx.post(f"{url}/v1/{route}", content=body.encode(), headers=headers, timeout=30)
    return httpx.post(f"{url}/v1/{route}", json=body, timeout=30)


def test_sampling_fields_are_accepted_and_reported_as_not_honoured(url):
    reply = post(url, {"prompt": "Q", "temperature": 0.8, "top_p": 0.5, "seed": 3})
    assert reply.status_code == 200
    assert sorted(reply.json()["adafuse"]["not_honoured"]) == ["seed", "temperature", "top_p"]
    assert "not_honoured" not in post(url, {"prompt": "Q"}).json()["adafuse"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
        ({"seed": 1.5}, "seed"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logprobs": 2}, "logprobs"),
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"n": 2}, "n"),
        ({"temprature": 0}, "temprature"),
        ({"adafuse": {"beam": 17}}, "adafuse"),
        ({"adafuse": {"max_words": 65}}, "adafuse"),
        ({"adafuse": {"top_k": 101}}, "adafuse"),
        ({"max_tokens": 8193}, "max_tokens"),
    ],
)
def test_what_cannot_be_honoured_or_is_out_of_range_is_a_422_naming_the_field(url, body, param):
    reply = post(url, {"prompt": "Q", **body})
    assert reply.status_code == 422, reply.text
    assert reply.json()["error"]["param"] == param


def test_empty_values_of_refused_fields_ask_for_nothing(url):
    reply = post(url, {"prompt": "Q", "logit_bias": {}, "logprobs": False, "response_format": {"type": "text"}})
    assert reply.status_code == 200


@pytest.mark.parametrize(
    ("raw", "route"),
    [
        ('{"prompt": "Q \\udc80"}', "completions"),
        ('{"prompt": "Q", "stop": ["\\ud800"]}', "completions"),
        ('{"messages": [{"role": "user", "content": "hi \\udfff"}]}', "chat/completions"),
    ],
)
def test_text_that_is_not_unicode_is_a_client_error_not_a_500(url, raw, route):
    reply = post(url, raw, route)
    assert 400 <= reply.status_code < 500, reply.text
    assert "not valid Unicode" in reply.json()["error"]["message"]


def test_a_server_budget_ends_every_answer_where_it_runs_out():
    app = create_app(Ensemble([Slow()]), DecodeConfig(max_new_tokens=4000), budget=Budget(seconds=0.5))
    with serve(app) as base:
        start = time.monotonic()
        reply = post(base, {"prompt": "la", "max_tokens": 4000})
        assert time.monotonic() - start < 3
        assert reply.status_code == 200 and reply.json()["choices"][0]["finish_reason"] == "length"
        assert reply.json()["adafuse"]["finish_reason"] == "budget"


def test_a_client_that_leaves_frees_its_slot_within_a_second_whatever_it_asked_for():
    other = Slow()
    other.name = "slow2"
    two = Ensemble([Slow(), other])
    with serve(create_app(two, DecodeConfig(), max_concurrency=1)) as base:
        heavy = {"prompt": "la", "max_tokens": 4000, "adafuse": {"max_words": 64, "beam": 16, "weights": "equal"}}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{base}/v1/completions", json=heavy, timeout=1.0)
        left = time.monotonic()
        while httpx.get(f"{base}/health").json()["running"] and time.monotonic() - left < 5:
            time.sleep(0.02)
        assert time.monotonic() - left < 1.0
        assert post(base, {"prompt": "la", "max_tokens": 2}).status_code == 200


@pytest.mark.models
def test_a_request_with_every_option_at_its_bound_ends_within_the_servers_budget(zoo_members):
    """The three real models, equal weights (every member branches and scores) and every option that multiplies
    work at its bound (the answer's length at what the members' 2048-token windows hold; 8192 is refused with a
    400 before any work): the answer ends where the budget runs out, within a model call of it."""
    app = create_app(Ensemble(zoo_members), DecodeConfig(), budget=Budget(seconds=3))
    body = {
        "messages": [{"role": "user", "content": "Write a long story about a dragon."}],
        "max_tokens": 1900,
        "adafuse": {
            "max_words": 64,
            "beam": 16,
            "top_k": 100,
            "span_tokens": 256,
            "max_rounds": 8192,
            "weights": "equal",
            "min_weight": 0.0,
        },
    }
    with serve(app) as base:
        start = time.monotonic()
        reply = post(base, body, route="chat/completions")
        took = time.monotonic() - start
    assert reply.status_code == 200, reply.text
    assert reply.json()["adafuse"]["finish_reason"] in ("budget", "length", "stop", "eos")
    assert took < 3 + 2, took
