"""Text-only members (``text+http://``): they propose, the members that can score judge their candidates.

Against real engines on loopback: llama-cpp-python's server with a built-in model (its log-probabilities unused),
``adafuse serve`` itself, and loopback proxies in front of them that answer 429 first, hang, or cut a response.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from fakes import EOS, ScriptedMember, table
from test_remote import LlamaServer, free_port

from adafuse.backends import load_member
from adafuse.backends.remote.text import Completion, TextMember
from adafuse.config import DecodeConfig
from adafuse.ensemble import Ensemble
from adafuse.errors import ConfigError, MemberError

QUESTION = "Question: Which British king married Mary of Teck?\nAnswer:"
#: the installed command, as a user runs it.
ADAFUSE = str(Path(sys.executable).with_name("adafuse"))
SECRET = "sk-test-7f3a9c1e5b2d4f6a8c0e"


class ScriptedText(TextMember):
    """A text-only member whose endpoint is a script: (prompt + continuation) -> the answer it writes."""

    def __init__(self, answers: dict[str, str], name: str = "api", max_calls: int = 4) -> None:
        super().__init__(f"text+http://127.0.0.1:9/v1?name={name}&max_calls={max_calls}#m")
        self.answers = answers
        self.asked: list[str] = []

    def complete(self, prompt, continuation, max_tokens, stop):  # type: ignore[override]
        self.asked.append(continuation)
        return Completion(self.answers[prompt + continuation], "stop", 3, 2, 0.0)


PIECES = [" a", " b", " c.", " x", EOS]


def judge(name: str, rows: dict[str, dict[str, float]]) -> ScriptedMember:
    return ScriptedMember(name, PIECES, table(rows), prompt="Q:")


def judges() -> list[ScriptedMember]:
    # Unsure between " a" and " b", then sure of " x" after " a".
    rows = {"": {" a": 0.5, " b": 0.45}, " a": {" x": 0.9}, " b": {" c.": 0.9}, " a x": {EOS: 0.9}}
    return [judge("j1", rows), judge("j2", rows)]


def test_a_text_only_member_proposes_its_answer_a_word_a_round_and_is_judged_by_the_others():
    api = ScriptedText({"Q:": " a x"})
    res = Ensemble([api, *judges()]).generate("Q:", DecodeConfig(max_words=1, max_new_tokens=8))
    first = res.rounds[0]
    assert [p.member for p in first.proposals] == ["j1", "j2", "api"]
    offered = next(c for c in first.candidates if "api" in c.proposers)
    assert offered.text == " a" and set(offered.scores) == {"j1", "j2"}  # judged by both, voting not
    assert res.models == ["j1", "j2", "api"]
    usage = res.telemetry.api["api"]
    assert usage["calls"] == 1 and usage["rounds_proposed"] >= 1
    assert api.asked == [""]  # one call while the answer stayed on its path


def test_off_its_path_it_drafts_again_from_the_committed_text_up_to_max_calls():
    # The judges commit " b" (the api's " a" loses), so the api drafts again from " b".
    walk = {"": {" b": 0.9}, " b": {" c.": 0.9}, " b c.": {EOS: 0.9}}
    api = ScriptedText({"Q:": " a", "Q: b": " c."}, max_calls=2)
    ens = Ensemble([api, judge("j1", walk), judge("j2", walk)])
    res = ens.generate("Q:", DecodeConfig(max_words=1, max_new_tokens=8))
    assert res.text == " b c."
    assert api.asked == ["", " b"]
    assert res.telemetry.api["api"]["calls"] == 2
    one = ScriptedText({"Q:": " a"}, max_calls=1)
    res = Ensemble([one, judge("j1", walk), judge("j2", walk)]).generate(
        "Q:", DecodeConfig(max_words=1, max_new_tokens=8)
    )
    assert one.asked == [""] and "max_calls" in res.telemetry.api["api"]["sat_out"]


def test_text_only_members_need_a_judge_and_the_adafuse_method():
    with pytest.raises(ConfigError, match="need at least one member that can score"):
        Ensemble([ScriptedText({})])
    ens = Ensemble([ScriptedText({}), *judges()])
    with pytest.raises(ConfigError, match="adafuse rounds only"):
        ens.generate("Q:", DecodeConfig(method="token"))


@pytest.mark.parametrize(
    "spec, message",
    [
        ("text+http://h:1/v1?key_env=ADAFUSE_NO_SUCH_VAR#m", "'ADAFUSE_NO_SUCH_VAR' named by key_env is not set"),
        ("text+http://h:1/v1?api=grpc#m", "api must be one of completions, chat"),
        ("text+http://h:1/v1?color=red#m", "unknown option(s) ['color']"),
        ("text+http://h:1/v1?max_calls=0#m", "max_calls >= 1"),
        ("text+http:///v1#m", "needs a host"),
    ],
)
def test_bad_text_member_specs_get_one_line(spec, message):
    with pytest.raises(ConfigError) as info:
        load_member(spec)
    assert message in str(info.value) and "\n" not in str(info.value)


# -- real engines on loopback ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gemma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    server = LlamaServer(tmp_path_factory.mktemp("text"), "--api_key", SECRET, model="gemma3-270m", alias=True)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def local_judges() -> Iterator[list]:
    members = [load_member(n, n_ctx=2048, n_threads=2) for n in ("smollm2-135m", "qwen2.5-coder-0.5b")]
    yield members
    for m in members:
        m.close()


def _spec(url: str, extra: str = "") -> str:
    return f"text+{url}?key_env=ADAFUSE_TEST_KEY{extra}#gemma3-270m"


@pytest.mark.models
def test_the_issue_command_with_a_llama_cpp_python_server_as_the_text_only_member(gemma_server, monkeypatch):
    monkeypatch.setenv("ADAFUSE_TEST_KEY", SECRET)
    spec = _spec(gemma_server.url)
    cmd = [ADAFUSE, "generate", QUESTION.replace("\n", "\\n"), "--stop", "\\n"]
    cmd += ["--models", f"{spec},smollm2-135m,qwen2.5-coder-0.5b", "--json", "--n-ctx", "2048"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert done.returncode == 0, done.stderr[-2000:]
    res = json.loads(done.stdout)
    assert res["models"] == ["smollm2-135m", "qwen2.5-coder-0.5b", "gemma3-270m"]
    # Its proposals are candidates like any other's, scored by both judges (a round where all agreed needs none).
    rounds = [r for r in res["rounds"] if not r["fast_path"]]
    offered = [c for r in rounds for c in r["candidates"] if "gemma3-270m" in c["proposers"]]
    assert offered and all(set(c["scores"]) == {"smollm2-135m", "qwen2.5-coder-0.5b"} for c in offered)
    assert any(p["member"] == "gemma3-270m" for p in res["rounds"][0]["proposals"])
    api = res["telemetry"]["api"]["gemma3-270m"]
    assert 1 <= api["calls"] <= 4 and api["prompt_tokens"] > 0 and api["completion_tokens"] > 0
    # The key was used (the server refuses requests without it) and appears in nothing we wrote.
    assert SECRET not in done.stdout + done.stderr


@pytest.mark.models
def test_the_key_never_appears_in_any_output(gemma_server, local_judges, monkeypatch, caplog):
    monkeypatch.setenv("ADAFUSE_TEST_KEY", SECRET)
    member = load_member(_spec(gemma_server.url))
    assert SECRET not in repr(member) and SECRET not in str(vars(member))
    res = Ensemble([member, *local_judges]).generate(QUESTION, DecodeConfig(stop=("\n",), max_new_tokens=16))
    member.close()
    assert SECRET not in res.to_json() and SECRET not in caplog.text
    # A wrong key: the server's refusal is one line, without the key.
    monkeypatch.setenv("ADAFUSE_TEST_KEY", SECRET[::-1])
    wrong = load_member(_spec(gemma_server.url, "&retries=0"))
    ens = Ensemble([wrong, *local_judges])
    with pytest.raises(MemberError) as info:
        ens.generate(QUESTION, DecodeConfig(stop=("\n",), max_new_tokens=4))
    assert "HTTP 401" in str(info.value) and SECRET[::-1] not in str(info.value) and "\n" not in str(info.value)
    wrong.close()


class Proxy:
    """A loopback HTTP server in front of an engine that misbehaves as told: ``mode`` is "429" (answers 429 with
    Retry-After: 1 to the first completion request, then forwards), "hang" (never answers) or "cut" (sends half a
    response and closes the connection)."""

    def __init__(self, target: str, mode: str) -> None:
        self.target, self.mode, self.hits = target, mode, 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                proxy.hits += 1
                if proxy.mode == "hang":
                    time.sleep(5)  # far past the member's 1 s timeout
                    return
                if proxy.mode == "cut":
                    self.send_response(200)
                    self.send_header("content-length", "1000")
                    self.end_headers()
                    self.wfile.write(b'{"choices": [')
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if proxy.mode == "429" and proxy.hits == 1:
                    self.send_response(429)
                    self.send_header("retry-after", "1")
                    self.send_header("content-type", "application/json")
                    self.end_headers()
                    self.wfile.write(b'{"error": {"message": "rate limited"}}')
                    return
                got = httpx.post(
                    proxy.target + self.path[len("/v1") :],
                    content=body,
                    headers={"content-type": "application/json", "authorization": self.headers["authorization"]},
                    timeout=120,
                )
                self.send_response(got.status_code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(got.content)))
                self.end_headers()
                self.wfile.write(got.content)

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.models
def test_a_429_then_200_is_retried_after_the_wait_it_asks_for(gemma_server, local_judges, monkeypatch):
    monkeypatch.setenv("ADAFUSE_TEST_KEY", SECRET)
    proxy = Proxy(gemma_server.url, "429")
    cfg = DecodeConfig(stop=("\n",), max_new_tokens=16)
    try:
        direct = Ensemble([load_member(_spec(gemma_server.url)), *local_judges]).generate(QUESTION, cfg)
        start = time.perf_counter()
        res = Ensemble([load_member(_spec(proxy.url)), *local_judges]).generate(QUESTION, cfg)
        assert time.perf_counter() - start >= 1.0 and proxy.hits >= 2
        assert res.text == direct.text and not res.telemetry.dropped
        assert res.telemetry.api["gemma3-270m"]["calls"] == direct.telemetry.api["gemma3-270m"]["calls"]
    finally:
        proxy.close()


@pytest.mark.models
@pytest.mark.parametrize("mode, reason", [("hang", "no answer within 1s"), ("cut", "connection lost")])
def test_a_hanging_or_cut_off_endpoint_is_dropped_or_fails_in_one_line(
    gemma_server, local_judges, monkeypatch, mode, reason
):
    monkeypatch.setenv("ADAFUSE_TEST_KEY", SECRET)
    proxy = Proxy(gemma_server.url, mode)
    cfg = DecodeConfig(stop=("\n",), max_new_tokens=12)
    try:
        spec = _spec(proxy.url, "&timeout=1&retries=1")
        with pytest.raises(MemberError, match=reason) as info:
            Ensemble([load_member(spec), *local_judges]).generate(QUESTION, cfg)
        assert "\n" not in str(info.value)
        res = Ensemble([load_member(spec), *local_judges], on_member_failure="drop").generate(QUESTION, cfg)
        assert reason in res.telemetry.dropped["gemma3-270m"]
        # The judges carry on as the two of them would have alone.
        assert res.text == Ensemble(local_judges).generate(QUESTION, cfg).text
    finally:
        proxy.close()


@pytest.mark.models
def test_a_killed_server_is_dropped(tmp_path, local_judges, monkeypatch):
    monkeypatch.setenv("ADAFUSE_TEST_KEY", SECRET)
    server = LlamaServer(tmp_path, "--api_key", SECRET, model="gemma3-270m", alias=True)
    member = load_member(_spec(server.url, "&timeout=5&retries=1"))
    server.stop()
    cfg = DecodeConfig(stop=("\n",), max_new_tokens=12)
    res = Ensemble([member, *local_judges], on_member_failure="drop").generate(QUESTION, cfg)
    assert "cannot connect" in res.telemetry.dropped["gemma3-270m"]
    assert res.text == Ensemble(local_judges).generate(QUESTION, cfg).text


@pytest.mark.models
def test_adafuse_serve_as_a_text_only_member_of_another_ensemble(tmp_path: Path, local_judges):
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    cmd = [ADAFUSE, "serve", "--models", "gemma3-270m", "--port", str(port), "--n-ctx", "2048"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        member = load_member(f"text+{url}?name=inner#adafuse")
        res = Ensemble([member, *local_judges]).generate(QUESTION, DecodeConfig(stop=("\n",), max_new_tokens=16))
        offered = [c for r in res.rounds if not r.fast_path for c in r.candidates if "inner" in c.proposers]
        assert offered and all(set(c.scores) == {"smollm2-135m", "qwen2.5-coder-0.5b"} for c in offered)
        assert res.telemetry.api["inner"]["calls"] >= 1
        member.close()
    finally:
        proc.terminate()
        proc.wait(20)
