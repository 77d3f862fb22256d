"""Load test for ``adafuse serve``: concurrent chat requests, some streaming, some cancelled mid-way, some malformed
and some at every option's bound; ``--seconds`` keeps firing waves of them (a soak run).

    python benchmarks/load.py --start --models smollm2-135m,gemma3-270m,qwen2.5-coder-0.5b
    python benchmarks/load.py --start --seconds 300 --requests 12 --request-seconds 20   # the soak run
    python benchmarks/load.py --url http://127.0.0.1:8000 --api-key KEY

Every request ends in exactly one bucket: completed (200 with an answer), cancelled (we hung up on purpose),
refused (a 4xx we provoked: malformed or out of range), rejected (429, queue full) or failed (anything else). The
run fails (exit 1) when a request is lost, any answer is a 5xx, or the server still holds a slot after the last
client left. With ``--start`` the server's resident memory is reported at the start and the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

import httpx

QUESTIONS = [
    "What is the capital of France?",
    "Name a primary colour.",
    "What is 7 times 6?",
    "Who wrote Hamlet?",
    "What gas do plants take in?",
    "Translate 'thank you' into German.",
    "What is the largest planet?",
    "Give one word that rhymes with cat.",
]


@dataclass
class Outcome:
    index: int
    kind: str  # plain | stream | cancel-stream | cancel-plain
    status: int | None = None
    latency: float = 0.0
    first_chunk: float | None = None
    text: str = ""
    error: str = ""
    bucket: str = ""
    extra: dict = field(default_factory=dict)


#: requests that must be refused with a 4xx, each with why.
MALFORMED: list[tuple[str, bytes]] = [
    ("not JSON", b"{not json"),
    ("lone surrogate", b'{"messages": [{"role": "user", "content": "hi \\udc80"}]}'),
    ("negative temperature", b'{"messages": [{"role": "user", "content": "hi"}], "temperature": -1}'),
    ("unknown option", b'{"messages": [{"role": "user", "content": "hi"}], "adafuse": {"combiner": "vote"}}'),
    ("beam past its bound", b'{"messages": [{"role": "user", "content": "hi"}], "adafuse": {"beam": 1000}}'),
    ("no messages", b'{"messages": []}'),
]
#: every option that multiplies work at its bound: finishes within the server's budget.
AT_BOUNDS = {"max_words": 64, "beam": 16, "top_k": 100, "weights": "equal", "min_weight": 0.0}


def kind_of(i: int) -> str:
    if i % 8 == 3:
        return "cancel-stream"
    if i % 8 == 7:
        return "cancel-plain"
    if i % 8 == 5:
        return "malformed"
    if i % 8 == 6:
        return "at-bounds"
    return "stream" if i % 4 == 1 else "plain"


async def one(client: httpx.AsyncClient, url: str, i: int, max_tokens: int, cancel_after: float) -> Outcome:
    out = Outcome(i, kind_of(i))
    body = {
        "model": "adafuse",
        "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
        "max_tokens": max_tokens,
        "stream": out.kind in ("stream", "cancel-stream"),
    }
    if out.kind == "at-bounds":
        body["adafuse"] = AT_BOUNDS
    start = time.perf_counter()
    try:
        if out.kind == "malformed":
            why, raw = MALFORMED[i // 8 % len(MALFORMED)]
            headers = {"content-type": "application/json"}
            resp = await client.post(f"{url}/v1/chat/completions", content=raw, headers=headers)
            out.status, out.extra["why"] = resp.status_code, why
            if 400 <= resp.status_code < 500 and resp.status_code != 429:
                out.bucket = "refused"
        elif body["stream"]:
            async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as resp:
                out.status = resp.status_code
                if resp.status_code != 200:
                    out.error = (await resp.aread()).decode()[:200]
                else:
                    async for line in resp.aiter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        event = json.loads(line[6:])
                        if "error" in event:
                            out.error = event["error"]["message"]
                            break
                        if out.first_chunk is None:
                            out.first_chunk = time.perf_counter() - start
                        if event.get("choices"):
                            out.text += event["choices"][0]["delta"].get("content") or ""
                        if out.kind == "cancel-stream" and out.text:
                            out.bucket = "cancelled"  # hang up after the first span of text
                            break
                        if event.get("usage"):
                            out.extra["usage"] = event["usage"]
        elif out.kind == "cancel-plain":
            try:
                await asyncio.wait_for(client.post(f"{url}/v1/chat/completions", json=body), cancel_after)
                out.status = 200
            except TimeoutError:
                out.bucket = "cancelled"  # still queued or running: the connection is dropped
        else:
            resp = await client.post(f"{url}/v1/chat/completions", json=body)
            out.status = resp.status_code
            data = resp.json()
            if resp.status_code == 200:
                out.text = data["choices"][0]["message"]["content"]
                out.extra["usage"] = data["usage"]
            else:
                out.error = data.get("error", {}).get("message", "")[:200]
    except httpx.HTTPError as exc:
        out.error = f"{type(exc).__name__}: {exc}"
    out.latency = time.perf_counter() - start
    if not out.bucket:
        if out.status == 200 and not out.error:
            out.bucket = "completed"
        elif out.status == 429:
            out.bucket = "rejected"
        else:
            out.bucket = "failed"
    return out


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    """Resident memory of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@contextlib.contextmanager
def started_server(models: str, max_queue: int, api_key: str | None, request_seconds: float | None):
    port = free_port()
    cmd = [sys.executable, "-c", "from adafuse.cli import main; main()", "serve", "--port", str(port)]
    cmd += ["--models", models, "--max-queue", str(max_queue), "--log-level", "warning"]
    if request_seconds:
        cmd += ["--request-seconds", str(request_seconds)]
    if api_key:
        cmd += ["--api-key", api_key]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"adafuse serve exited with code {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("adafuse serve did not come up within 300 s")
            time.sleep(0.5)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


async def fire(url: str, n: int, max_tokens: int, cancel_after: float, api_key: str | None, timeout: float):
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=n + 4, max_keepalive_connections=0)
    async with httpx.AsyncClient(headers=headers, timeout=timeout, limits=limits) as client:
        start = time.perf_counter()
        outcomes = await asyncio.gather(*(one(client, url, i, max_tokens, cancel_after) for i in range(n)))
        return outcomes, time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--start", action="store_true", help="start 'adafuse serve' on a free loopback port first")
    ap.add_argument("--models", default="smollm2-135m,gemma3-270m,qwen2.5-coder-0.5b")
    ap.add_argument("--api-key", default=os.environ.get("ADAFUSE_API_KEY"))
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--cancel-after", type=float, default=2.0, help="seconds before a plain request is abandoned")
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--seconds", type=float, default=0.0, help="soak: keep firing waves of requests this long")
    ap.add_argument("--request-seconds", type=float, default=None, help="with --start: the server's budget")
    args = ap.parse_args()

    ctx = (
        started_server(args.models, args.requests, args.api_key, args.request_seconds)
        if args.start
        else contextlib.nullcontext((args.url, None))
    )
    with ctx as (url, pid):
        memory = [rss_mib(pid)] if pid else []
        outcomes: list[Outcome] = []
        start = time.perf_counter()
        while True:
            wave, _ = asyncio.run(
                fire(url, args.requests, args.max_tokens, args.cancel_after, args.api_key, args.timeout)
            )
            outcomes += wave
            if pid:
                memory.append(rss_mib(pid))
            if time.perf_counter() - start >= args.seconds:
                break
        wall = time.perf_counter() - start
        time.sleep(0.5)
        deadline = time.monotonic() + 60
        health = httpx.get(f"{url}/health").json()
        while (health["running"] or health["queued"]) and time.monotonic() < deadline:
            time.sleep(0.25)  # cancelled generations stop at their next round
            health = httpx.get(f"{url}/health").json()

    names = ("completed", "cancelled", "refused", "rejected", "failed")
    buckets = {b: [o for o in outcomes if o.bucket == b] for b in names}
    latencies = [o.latency for o in buckets["completed"]]
    firsts = [o.first_chunk for o in buckets["completed"] if o.first_chunk is not None]
    server_errors = [o for o in outcomes if o.status is not None and o.status >= 500]
    lost = len(outcomes) - sum(len(v) for v in buckets.values())
    print(f"requests   {len(outcomes)} in {wall:.1f} s  ({', '.join(f'{k} {len(v)}' for k, v in buckets.items())})")
    kinds = sorted({o.kind for o in outcomes})
    print("kinds      " + ", ".join(f"{k} {sum(o.kind == k for o in outcomes)}" for k in kinds))
    p50, p95, top = pct(latencies, 0.5), pct(latencies, 0.95), max(latencies, default=0.0)
    print(f"latency    p50 {p50:.2f} s  p95 {p95:.2f} s  max {top:.2f} s  (completed, from send to last byte)")
    if firsts:
        print(f"1st chunk  p50 {pct(firsts, 0.5):.2f} s  p95 {pct(firsts, 0.95):.2f} s  (streaming, completed)")
    after = f"running {health['running']} queued {health['queued']}"
    print(f"5xx        {len(server_errors)}   lost {lost}   server after the run: {after}")
    statuses = sorted({o.status for o in outcomes if o.status})
    print("by status  " + ", ".join(f"{s}: {sum(o.status == s for o in outcomes)}" for s in statuses))
    if memory:
        waves = f"max {max(memory):.0f} MiB over {len(memory) - 1} waves"
        print(f"memory     server RSS {memory[0]:.0f} MiB at the start, {memory[-1]:.0f} MiB at the end ({waves})")
        # The series shows whether memory settles (caches reach their size) or keeps climbing (a leak).
        print("           after each wave: " + " ".join(f"{m:.0f}" for m in memory[1:]))
    for o in buckets["failed"]:
        print(f"  failed #{o.index} {o.kind} status={o.status} {o.error}")
    ok = not server_errors and lost == 0 and not buckets["failed"] and not health["running"] and not health["queued"]
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
