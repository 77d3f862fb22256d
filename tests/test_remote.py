"""RemoteMember against a real engine (llama-cpp-python's server on loopback), and the member failure policy.

The server runs SmolLM2 without flash attention, as the in-process backend does (``Llama``'s default too): a fresh
prompt's next-token distribution matches an in-process member's within 1e-5; rows the server evaluates in other
batches than the in-process member differ by up to about 0.2 nats (llama.cpp's kernels change with the batch).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from adafuse import ensemble as ensemble_module
from adafuse.config import DecodeConfig
from adafuse.decoding.failure import FailurePolicy, reason_of
from adafuse.decoding.parallel import map_active
from adafuse.decoding.state import DecodeState, MemberView
from adafuse.ensemble import Ensemble
from adafuse.errors import ConfigError, MemberError, ModelLoadError

httpx = pytest.importorskip("httpx")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaServer:
    """``python -m llama_cpp.server`` on a free loopback port, as a subprocess."""

    def __init__(self, tmp: Path, *extra: str, model: str = "smollm2-135m", alias: bool = False) -> None:
        for mod in ("fastapi", "uvicorn", "sse_starlette", "starlette_context", "pydantic_settings"):
            pytest.importorskip(mod, reason="llama-cpp-python's server needs pip install 'llama-cpp-python[server]'")
        from adafuse.backends.zoo import zoo_path

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        args = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(zoo_path(model)),
            *(("--model_alias", model) if alias else ()),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_ctx",
            "2048",
            "--n_threads",
            "2",
            "--n_threads_batch",
            "2",
            "--flash_attn",
            "false",
            "--logits_all",
            "true",
            "--verbose",
            "false",
            *extra,
        ]
        self.log = tmp / f"llama-server-{self.port}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama server exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                # 401: up, and asking for the key it was started with (``--api_key``).
                if httpx.get(f"{self.url}/models", timeout=1).status_code in (200, 401):
                    return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("llama server did not start within 90 s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)  # a stopped process ignores SIGTERM until continued
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    server = LlamaServer(tmp_path_factory.mktemp("llama"))
    yield server
    server.stop()


@pytest.fixture
def spare_server(tmp_path: Path) -> Iterator[Callable[..., LlamaServer]]:
    """Servers a test may kill or stop; all are cleaned up afterwards."""
    started: list[LlamaServer] = []

    def start(*extra: str) -> LlamaServer:
        started.append(LlamaServer(tmp_path, *extra))
        return started[-1]

    yield start
    for s in started:
        s.stop()


@pytest.fixture(scope="module")
def remote(llama_server: LlamaServer):
    from adafuse.backends import load_member

    member = load_member(f"{llama_server.url}?timeout=60", n_ctx=2048)
    yield member
    member.close()


def with_policy(ens: Ensemble, policy: str, monkeypatch: pytest.MonkeyPatch) -> Ensemble:
    """Set the ensemble's failure policy; until ``Ensemble`` applies it itself, apply it around ``run``."""
    ens.on_member_failure = policy  # type: ignore[attr-defined]
    if not hasattr(ensemble_module, "FailurePolicy"):
        real_run = ensemble_module.run

        def run(state, strategy, method, on_round=None):  # type: ignore[no-untyped-def]
            wrapped = FailurePolicy(strategy, policy)
            result = real_run(state, wrapped, method, on_round)
            result.telemetry.dropped.update(wrapped.dropped)
            return result

        monkeypatch.setattr(ensemble_module, "run", run)
    return ens


# -- without a model: spec parsing, connection errors, a server that never answers ---------------------------------


def test_bad_specs_are_config_errors():
    from adafuse.backends.remote.member import RemoteMember

    with pytest.raises(ConfigError, match="http://HOST:PORT"):
        RemoteMember("ftp://127.0.0.1:1/v1")
    with pytest.raises(ConfigError, match="unknown option"):
        RemoteMember("http://127.0.0.1:1/v1?colour=red")
    with pytest.raises(ConfigError, match="not a number"):
        RemoteMember("http://127.0.0.1:1/v1?timeout=soon")
    with pytest.raises(ConfigError, match="retries >= 0"):
        RemoteMember("http://127.0.0.1:1/v1?retries=-1")


def test_nothing_listening_is_a_clear_one_line_error():
    from adafuse.backends import load_member

    start = time.monotonic()
    with pytest.raises(ModelLoadError) as info:
        load_member(f"http://127.0.0.1:{free_port()}/v1?retries=2&timeout=2", n_ctx=512)
    msg = str(info.value)
    assert "cannot connect" in msg and "after 3 attempts" in msg and "\n" not in msg
    assert time.monotonic() - start < 10  # backoff 0.25 s then 0.5 s, not minutes


def test_a_server_that_never_answers_hits_the_timeout():
    """A socket that accepts and never replies: every request times out, then one clear error."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        from adafuse.backends.remote.member import RemoteMember

        start = time.monotonic()
        with pytest.raises(ModelLoadError) as info:
            RemoteMember(f"http://127.0.0.1:{port}/v1", timeout=0.5, retries=1, backoff=0.1)
        took = time.monotonic() - start
        assert "no answer within 0.5s" in str(info.value) and "after 2 attempts" in str(info.value)
        assert 0.9 < took < 5
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        listener.close()


# -- the failure policy on scripted members (fast, deterministic) ---------------------------------------------------


class Flaky:
    """Wraps a member; after ``ok_calls`` model calls every call raises MemberError (an engine that went down)."""

    concurrent = True

    def __init__(self, inner, ok_calls: int) -> None:
        self.inner = inner
        self.ok_calls = ok_calls
        self.calls = 0

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def _tick(self) -> None:
        self.calls += 1
        if self.calls > self.ok_calls:
            raise MemberError(self.inner.name, "POST /v1/completions failed after 2 attempts: cannot connect")

    def next_token(self, context, k):
        self._tick()
        return self.inner.next_token(context, k)

    def score(self, requests):
        self._tick()
        return self.inner.score(requests)

    def logprobs_of(self, context, token_ids):
        self._tick()
        return self.inner.logprobs_of(context, token_ids)


ANSWER = {
    "": {" George": 0.95},
    " George": {" V": 0.95},
    " George V": {".": 0.95},
    " George V.": {" was": 0.9},
    " George V. was": {" king": 0.9},
}


def scripted(name: str):
    from fakes import ScriptedMember, table

    return ScriptedMember(name, [" George", " V", ".", " was", " king"], table(ANSWER), prompt="Q:")


def test_drop_removes_the_failing_member_retries_the_round_and_records_why(monkeypatch):
    flaky = Flaky(scripted("remote"), ok_calls=2)
    ens = with_policy(Ensemble([flaky, scripted("local")]), "drop", monkeypatch)
    res = ens.generate("Q:", DecodeConfig(max_words=1, max_new_tokens=8))
    assert res.telemetry.dropped == {"remote": "POST /v1/completions failed after 2 attempts: cannot connect"}
    assert res.text == " George V. was king" and res.finish_reason == "eos"
    # Once dropped, the member proposes in no later round.
    assert all(p.member == "local" for r in res.rounds[1:] for p in r.proposals)


def test_fail_propagates_one_line_member_error(monkeypatch):
    ens = with_policy(Ensemble([Flaky(scripted("remote"), ok_calls=2), scripted("local")]), "fail", monkeypatch)
    with pytest.raises(MemberError, match="^member 'remote': POST /v1/completions failed") as info:
        ens.generate("Q:", DecodeConfig(max_words=1, max_new_tokens=8))
    assert "\n" not in str(info.value)


def test_the_last_member_standing_is_never_dropped(monkeypatch):
    ens = with_policy(Ensemble([Flaky(scripted("remote"), ok_calls=1)]), "drop", monkeypatch)
    with pytest.raises(MemberError, match="cannot connect"):
        ens.generate("Q:", DecodeConfig(max_words=1, max_new_tokens=8))


def test_unknown_policy_is_rejected():
    with pytest.raises(ConfigError, match="fail, drop"):
        FailurePolicy(lambda s, i: None, "retry")  # type: ignore[arg-type,return-value]


def test_admit_drops_a_member_that_cannot_even_tokenise_the_prompt():
    class Down:
        name = "down"

        def tokenize(self, *a, **k):
            raise MemberError("down", "cannot connect")

    views = [MemberView(Down(), "Q:"), MemberView(scripted("local"), "Q:")]  # type: ignore[arg-type]
    policy = FailurePolicy(lambda s, i: None, "drop")  # type: ignore[arg-type,return-value]
    assert policy.admit(views, [0, 1]) == [1] and policy.dropped == {"down": "cannot connect"}
    with pytest.raises(MemberError):
        FailurePolicy(lambda s, i: None, "fail").admit(views, [0, 1])  # type: ignore[arg-type,return-value]


def test_reason_strips_the_member_prefix():
    assert reason_of(MemberError("m", "timed out")) == "timed out"


def test_map_active_runs_concurrent_members_in_threads_and_keeps_order():
    class Slow:
        concurrent = True

        def __init__(self, name: str) -> None:
            self.name = name

    views = [MemberView(Slow(f"r{i}"), "") for i in range(4)] + [MemberView(scripted("local"), "Q:")]  # type: ignore[arg-type]
    state = DecodeState(views, DecodeConfig(), (0.2,) * 5)
    threads: dict[int, str] = {}

    def fn(i: int) -> int:
        threads[i] = threading.current_thread().name
        if i < 4:
            time.sleep(0.3)
        return i * 10

    start = time.monotonic()
    assert map_active(state, fn) == [0, 10, 20, 30, 40]
    assert time.monotonic() - start < 0.9  # four 0.3 s waits overlapped
    assert threads[4] == threading.current_thread().name and threads[0] != threads[4]

    def boom(i: int) -> int:
        if i in (1, 3):
            raise MemberError(f"r{i}", "down")
        return i

    with pytest.raises(MemberError, match="'r1'"):  # the first failure in member order, whatever the timing
        map_active(state, boom)


# -- against the real engine ------------------------------------------------------------------------------------------


@pytest.mark.models
def test_capabilities_and_special_tokens_match_the_model(remote, zoo_members):
    local = zoo_members[0]  # smollm2-135m in-process
    caps = remote.capabilities
    assert caps["tokenizer"] == "llama-cpp-python" and caps["token_id_prompts"] is False
    assert caps["top_logprobs_keys"] == "text" and caps["logit_bias"] is True and caps["self_test_max_diff"] < 1e-3
    assert caps["echo_logprobs"] is True and caps["max_logprobs"] >= 20
    assert remote.eos_id == local.eos_id
    assert set(caps["eog"]) == {i for i in range(local.n_vocab) if local.is_eog(i)}
    for text in ["Hello world", "Question: Which British king?\nAnswer:", "  two  spaces\n\n", "naïve café"]:
        ids = remote.tokenize(text)
        assert ids == local.tokenize(text)
        assert b"".join(remote.token_bytes(t) for t in ids) == text.encode()
        assert [remote.token_bytes(t) for t in ids] == [local.token_bytes(t) for t in ids]


@pytest.mark.models
def test_primitives_agree_with_the_in_process_member(remote, zoo_members):
    local = zoo_members[0]
    ctx = local.tokenize("Once upon a time, there was a little")
    a, b = remote.next_token(ctx, 10), local.next_token(ctx, 10)
    assert a.ids == b.ids and max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=True)) < 1e-5
    ga, gb = remote.greedy(ctx, 10, 5), local.greedy(ctx, 10, 5)
    assert [s.token for s in ga] == [s.token for s in gb]
    # Off the greedy path (forced tokens), after a newline, and a continuation of several words.
    conts = [local.tokenize(t, bos=False) for t in [" dragon who lived", " girl named Lily.\n\nOne", " cat"]]
    requests = [(ctx, c) for c in conts] + [(ctx + conts[0][:1], conts[1])]
    # The server evaluates a forced token's context again from its last token alone, where the in-process member
    # took that row from the prompt's batch; without flash attention llama.cpp's numbers depend on the batch a
    # token is evaluated in (docs/PERFORMANCE.md, "Scoring"), so scores agree to about 0.2 nats, not exactly.
    sa, sb = remote.score(requests), local.score(requests)
    for x, y in zip(sa, sb, strict=True):
        assert max(abs(p - q) for p, q in zip(x, y, strict=True)) < 0.3
    assert remote.logprobs_of(ctx, list(b.ids[:3])) == pytest.approx(list(b.logprobs[:3]), abs=0.3)


@pytest.mark.models
@pytest.mark.slow
def test_ensemble_with_a_remote_member_writes_what_the_local_ensemble_writes(remote, zoo_members):
    """smollm2 served by llama-cpp-python + gemma and qwen in-process == all three in-process."""
    cfg = DecodeConfig(max_new_tokens=12)
    prompt = "Once upon a time, there was a little"
    local = Ensemble(zoo_members).generate(prompt, cfg)
    mixed = Ensemble([remote, zoo_members[1], zoo_members[2]]).generate(prompt, cfg)
    assert mixed.text == local.text, (mixed.text, local.text)
    assert [r.committed for r in mixed.rounds] == [r.committed for r in local.rounds]
    assert remote.approximate_requests == 0


@pytest.mark.models
def test_a_remote_member_heals_the_boundary_from_its_top_tokens(remote, zoo_members):
    """SmolLM2 writes ")" + ":" as one token "):". A remote member cannot list its vocabulary, so its prefix mass
    of ")" sums the engine's top tokens and the candidates' first tokens: a lower bound of the local member's
    exact sum, so its NLL is at most the local one, and never negative."""
    from adafuse.decoding.scoring import score_candidates
    from adafuse.result import Candidate

    context = "The results are in the first table (see above)"
    local = zoo_members[0]
    ctx = local.tokenize(context)
    assert local.tokenize(context + ":")[: len(ctx)] != ctx  # the merge this test is about
    scores = []
    for member in (remote, local):
        state = DecodeState([MemberView(member, "")], DecodeConfig(), (1.0,), committed=context)
        cands = [Candidate(":"), Candidate(", and")]
        score_candidates(state, cands, [])
        scores.append([c.scores[member.name] for c in cands])
    for served, exact in zip(*scores, strict=True):
        assert -1e-5 <= served <= exact + 1e-5
        assert served == pytest.approx(exact, abs=0.05), (served, exact)  # the top tokens hold most of the mass


@pytest.mark.models
def test_proposals_of_remote_and_local_members_run_concurrently_with_the_same_result(remote, zoo_members):
    from adafuse.decoding.adafuse import first_step, propose
    from adafuse.decoding.granularity import word_unit

    views = [MemberView(remote, "The capital of France is"), MemberView(zoo_members[0], "The capital of France is")]
    state = DecodeState(views, DecodeConfig(), (0.5, 0.5))
    unit = word_unit(state.config.max_words)
    together = map_active(state, lambda i: propose(state, i, first_step(state, i), unit))
    alone = [propose(state, i, first_step(state, i), unit) for i in state.active]
    assert [p.candidates for p, _ in together] == [p.candidates for p, _ in alone]
    assert together[0][0].candidates == together[1][0].candidates  # the same model, served or in-process


def _kill_after_first_round(server: LlamaServer, how: str) -> Callable[[object, str], None]:
    def on_round(rnd: object, text: str) -> None:
        if server.proc.poll() is None and not getattr(on_round, "done", False):
            on_round.done = True  # type: ignore[attr-defined]
            if how == "kill":
                server.proc.kill()
                server.proc.wait()
            else:
                os.kill(server.proc.pid, signal.SIGSTOP)

    return on_round


@pytest.mark.models
def test_killing_the_server_mid_generation_fails_with_a_clear_error(spare_server, zoo_members, monkeypatch):
    from adafuse.backends.remote.member import RemoteMember

    server = spare_server()
    member = RemoteMember(server.url, n_ctx=2048, timeout=5, retries=1, backoff=0.1, self_test=False)
    try:
        ens = with_policy(Ensemble([member, zoo_members[0]]), "fail", monkeypatch)
        start = time.monotonic()
        with pytest.raises(MemberError) as info:
            ens.generate(
                "Once upon a time",
                DecodeConfig(max_words=1, max_new_tokens=16),
                on_round=_kill_after_first_round(server, "kill"),
            )
        msg = str(info.value)
        assert msg.startswith(f"member {member.name!r}: ") and "after 2 attempts" in msg and "\n" not in msg
        assert "cannot connect" in msg or "connection lost" in msg
        assert time.monotonic() - start < 30
    finally:
        member.close()


@pytest.mark.models
def test_killing_the_server_mid_generation_drops_the_member(spare_server, zoo_members, monkeypatch):
    from adafuse.backends.remote.member import RemoteMember

    server = spare_server()
    member = RemoteMember(server.url, n_ctx=2048, timeout=5, retries=1, backoff=0.1, self_test=False)
    try:
        ens = with_policy(Ensemble([member, zoo_members[0]]), "drop", monkeypatch)
        cfg = DecodeConfig(max_words=1, max_new_tokens=12)
        res = ens.generate("Once upon a time", cfg, on_round=_kill_after_first_round(server, "kill"))
        assert list(res.telemetry.dropped) == [member.name]
        assert "cannot connect" in res.telemetry.dropped[member.name] or "lost" in res.telemetry.dropped[member.name]
        assert len(res.rounds) > 1 and all(p.member == "smollm2-135m" for r in res.rounds[1:] for p in r.proposals)
        # The local member alone carries on exactly as it would have: same text as a local-only run from there.
        alone = Ensemble([zoo_members[0]]).generate("Once upon a time", cfg)
        assert res.text == alone.text
    finally:
        member.close()


@pytest.mark.models
def test_a_hanging_server_mid_generation_hits_the_timeout(spare_server, zoo_members, monkeypatch):
    from adafuse.backends.remote.member import RemoteMember

    server = spare_server()
    member = RemoteMember(server.url, n_ctx=2048, timeout=1, retries=1, backoff=0.1, self_test=False)
    try:
        ens = with_policy(Ensemble([member, zoo_members[0]]), "fail", monkeypatch)
        start = time.monotonic()
        with pytest.raises(MemberError, match=r"no answer within 1s") as info:
            ens.generate(
                "Once upon a time",
                DecodeConfig(max_words=1, max_new_tokens=16),
                on_round=_kill_after_first_round(server, "stop"),
            )
        assert "after 2 attempts" in str(info.value)
        assert time.monotonic() - start < 20
    finally:
        member.close()


@pytest.mark.models
def test_engine_without_logprobs_is_refused_at_start_up(spare_server):
    from adafuse.backends.remote.member import RemoteMember

    server = spare_server("--logits_all", "false")
    with pytest.raises(ModelLoadError, match="logits_all"):
        RemoteMember(server.url, n_ctx=2048, timeout=10, retries=0)


def test_a_member_down_before_the_first_round_is_dropped_at_admission():
    if not hasattr(ensemble_module, "FailurePolicy"):
        pytest.skip("needs the Ensemble hook (policy.admit before the first round)")

    class DownFromTheStart:
        name = "remote"
        n_ctx = 4096
        chat_template = None

        def __init__(self) -> None:
            from adafuse.backends.base import MemberStats

            self.stats = MemberStats()

        def special_text(self, which: str) -> str:
            return ""

        def tokenize(self, *a, **k):
            raise MemberError("remote", "GET /v1/models failed after 4 attempts: cannot connect")

        def close(self) -> None:
            pass

    ens = Ensemble([DownFromTheStart(), scripted("local")], on_member_failure="drop")  # type: ignore[call-arg,list-item]
    res = ens.generate("Q:", DecodeConfig(max_words=1))
    assert res.text == " George V. was king" and list(res.telemetry.dropped) == ["remote"]
    assert res.telemetry.members[0].prompt_tokens == 0
    with pytest.raises(MemberError, match="cannot connect"):
        Ensemble([DownFromTheStart(), scripted("local")]).generate("Q:")  # type: ignore[list-item]


@pytest.mark.models
def test_gguf_hint_gives_the_chat_template_and_chat_matches_local(llama_server, zoo_members):
    from adafuse.backends import load_member

    local = zoo_members[0]
    member = load_member(f"{llama_server.url}?gguf=smollm2-135m&self_test=0&name=served", n_ctx=2048)
    try:
        assert member.name == "served" and member.chat_template == local.chat_template
        assert member.special_text("bos") == local.special_text("bos") == "<|im_start|>"
        assert member.special_text("eos") == local.special_text("eos") and member.eos_id == local.eos_id
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        cfg = DecodeConfig(max_new_tokens=10)
        served = Ensemble([member]).generate(messages, cfg, chat=True)
        alone = Ensemble([local]).generate(messages, cfg, chat=True)
        assert served.text == alone.text and served.finish_reason == alone.finish_reason
    finally:
        member.close()
