"""The HTTP side of a remote member: one OpenAI-compatible engine, its tokenizer and what it can do.

JSON calls are retried with backoff on connect errors, timeouts, 408, 429 and 5xx only, and every failure is a
one-line ``MemberError``. ``EngineClient.start`` checks the engine's health and probes its dialect (vLLM or
llama-cpp-python), its tokenizer, whether it takes token-id prompts, how it names top-k entries, how many it
returns and whether it echoes or returns prompt log-probabilities; ``probe_eog`` finds its end tokens.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import threading
import time
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from adafuse.backends.base import MemberStats, common_prefix_len
from adafuse.errors import MemberError

#: Texts of end-of-generation tokens across model families, most likely "the" end token first. llama.cpp marks
#: the same texts as end-of-generation; each one found in the served vocabulary is confirmed on the engine.
EOG_TEXTS = (
    "<|im_end|>",
    "<|eot_id|>",
    "<end_of_turn>",
    "<|end|>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "</s>",
    "<eos>",
    "<｜end▁of▁sentence｜>",
    "<|eom_id|>",
    "<|return|>",
    "<EOT>",
    "<end_of_utterance>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<reponame>",
    "<fim-pad>",
    "<filename>",
)
BIAS = 100.0  # logit_bias that forces (or, negated, forbids) a token: far beyond any logit gap
_WIDE_K = 100  # the widest top-k probed for
_KNOWN_KEPT = 256


def ids_digest(ids: Sequence[int]) -> bytes:
    """A compact cache key for a token id sequence."""
    return hashlib.blake2b(array("q", ids).tobytes(), digest_size=16).digest()


def one_line(text: object, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _error_message(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return one_line(resp.text or resp.reason_phrase)
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return one_line(err["message"])
        if isinstance(err, str):
            return one_line(err)
        if "detail" in body:
            return one_line(body["detail"])
        if "message" in body:
            return one_line(body["message"])
    return one_line(body)


class EngineClient:
    """One engine over HTTP: JSON calls with retries and typed errors, its tokenizer (cached, with the texts that
    token ids were read from) and its capabilities, filled in by ``start``."""

    def __init__(
        self,
        base_url: str,
        model: str | None,
        name: str,
        stats: MemberStats,
        *,
        timeout: float,
        retries: int,
        concurrency: int,
        backoff: float,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.base_url = base_url
        self.api = "/v1"
        self.model = model
        #: the member's name, for error messages (``start`` may name it after the served model)
        self.name = name
        self._sem = threading.BoundedSemaphore(concurrency)
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        #: the member's cost counters; the engine's prefix cache is estimated from the last sequence sent
        self.stats = stats
        self.dialect = ""
        self.capabilities: dict[str, Any] = {}
        self.token_ids_prompt = False
        #: top-k entries named by id ("token_id:N") rather than by text
        self.ids_keys = False
        self.max_logprobs = 2
        #: whether the engine's tokenizer starts every text with BOS, and that BOS
        self.add_bos = False
        self.bos: int | None = None
        #: a plain token, and its text, that ``token_bytes`` detokenises before the token it reads
        self.prefix_id = -1
        self.prefix_text = ""
        self._lock = threading.RLock()
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            headers=headers,
            trust_env=False,  # a proxy from the environment must not sit between us and a loopback engine
        )
        self._tok_cache: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        # Token id sequences by digest: the text they were read from, and whether the engine spells it that way.
        self._known: OrderedDict[bytes, tuple[list[int], bytes]] = OrderedDict()
        self._canonical: OrderedDict[bytes, bool] = OrderedDict()
        self._server_seq: list[int] = []
        self._closed = False

    # -- start-up --------------------------------------------------------------------------------------------------

    def start(self, n_ctx: int) -> int:
        """Health, model, tokenizer dialect and facts, capabilities; returns the usable window (at most ``n_ctx``)."""
        models = self.request("GET", f"{self.api}/models", None, what="GET /v1/models (health check)")
        ids = [m.get("id") for m in models.get("data", []) if isinstance(m, dict)] if isinstance(models, dict) else []
        if not ids:
            raise MemberError(self.name, f"{self.base_url}{self.api}/models lists no model")
        if self.model is None:
            self.model = ids[0]
            if self.name == urlsplit(self.base_url).netloc:
                self.name = Path(str(ids[0])).stem or self.name
        elif self.model not in ids:
            raise MemberError(self.name, f"the engine serves {ids}, not {self.model!r}")
        max_len = next((m.get("max_model_len") for m in models["data"] if m.get("id") == self.model), None)
        window = min(n_ctx, int(max_len)) if isinstance(max_len, int) and max_len > 0 else n_ctx
        with contextlib.suppress(MemberError):
            # vLLM and llama.cpp's server answer /health; llama-cpp-python's does not, and /v1/models sufficed.
            self.request("GET", "/health", None, what="GET /health", retry=False, quiet_404=True)
        self.dialect = self._detect_dialect()
        self.capabilities["tokenizer"] = self.dialect
        empty = self.tokenize("")
        self.add_bos = len(empty) == 1
        self.bos = empty[0] if self.add_bos else None
        probe = self.tokenize("a", bos=False)
        if not probe:
            raise MemberError(self.name, "the engine tokenises 'a' to nothing")
        self.prefix_id = probe[-1]
        self.prefix_text = self.detokenize([self.prefix_id])
        self.token_ids_prompt = self._probe_id_prompts()
        self.capabilities["token_id_prompts"] = self.token_ids_prompt
        self.ids_keys = self._probe_id_keys()
        self.capabilities["top_logprobs_keys"] = "ids" if self.ids_keys else "text"
        self.max_logprobs = self._probe_max_logprobs()
        self.capabilities["max_logprobs"] = self.max_logprobs
        self.capabilities["echo_logprobs"] = self._probe_echo()
        self.capabilities["prompt_logprobs"] = self._probe_prompt_logprobs()
        return window

    def _detect_dialect(self) -> str:
        for dialect, path, body in (
            ("vllm", "/tokenize", {"model": self.model, "prompt": "a"}),
            ("llama-cpp-python", "/extras/tokenize", {"input": "a", "model": self.model}),
        ):
            try:
                got = self.request("POST", path, body, what=f"POST {path}", retry=False, quiet_404=True)
            except MemberError:
                continue
            if isinstance(got, dict) and isinstance(got.get("tokens"), list):
                return dialect
        raise MemberError(
            self.name,
            "the engine has no tokenizer endpoint (tried /tokenize and /extras/tokenize); a member needs its "
            "model's tokenizer, so this engine cannot take part",
        )

    def _probe_id_prompts(self) -> bool:
        ids = self.tokenize("Hello", remember=True)
        try:
            got = self.request(
                "POST",
                f"{self.api}/completions",
                self.body(ids, 1, 1),
                what="token-id prompt probe",
                retry=False,
                quiet_4xx=True,
            )
        except MemberError:
            return False
        return isinstance(got, dict) and bool(got.get("choices"))

    def _probe_id_keys(self) -> bool:
        ids, prompt = self._probe("Hello")
        resp = self.complete(ids, prompt, 1, 2, extra={"return_tokens_as_token_ids": True})
        tops = (resp["choices"][0].get("logprobs") or {}).get("top_logprobs") or []
        if not tops or not tops[0]:
            raise MemberError(
                self.name,
                "the engine returns no log-probabilities (llama-cpp-python: start the server with --logits_all true)",
            )
        return all(str(key).startswith("token_id:") for key in tops[0])

    def _probe_max_logprobs(self) -> int:
        best = 2
        for k in (20, _WIDE_K):
            try:
                self.complete(*self._probe("Hello"), 1, k, quiet_4xx=True)
            except MemberError:
                break
            best = k
        return best

    def _probe_echo(self) -> bool:
        ids, prompt = self._probe("Hello there")
        try:
            resp = self.complete(ids, prompt, 1, 0, extra={"echo": True}, quiet_4xx=True)
        except MemberError:
            return False
        lps = (resp["choices"][0].get("logprobs") or {}).get("token_logprobs") or []
        return len(lps) >= len(ids) - (1 if self.add_bos else 0)

    def _probe_prompt_logprobs(self) -> bool:
        try:
            resp = self.complete(*self._probe("Hello there"), 1, 1, extra={"prompt_logprobs": 1}, quiet_4xx=True)
        except MemberError:
            return False
        choice = resp["choices"][0]
        return bool(choice.get("prompt_logprobs") or resp.get("prompt_logprobs"))

    def probe_eog(self) -> tuple[set[int], str]:
        """End tokens: each known end text that is one token here and stops generation when forced; and the text
        of the first one found ("" if none), the likeliest end token."""
        found: set[int] = set()
        first = ""
        start, prompt = self._probe("Hello")
        for text in EOG_TEXTS:
            ids = self.tokenize(text, bos=False)
            if len(ids) != 1 or ids[0] in found or self.detokenize([ids[0]]) not in ("", text):
                continue
            resp = self.complete(start, prompt, 2, None, bias={ids[0]: BIAS})
            choice = resp["choices"][0]
            usage = resp.get("usage") or {}
            # An end token ends the generation before it is emitted: nothing comes back, finish_reason "stop".
            if choice.get("finish_reason") == "stop" and not choice.get("text") and not usage.get("completion_tokens"):
                found.add(ids[0])
                if not first:
                    first = text
        return found, first

    def _probe(self, text: str) -> tuple[list[int], str | list[int]]:
        """A probe's token ids (remembered, as a context's are) and the prompt that sends exactly them."""
        ids = self.tokenize(text, remember=True)
        return ids, (list(ids) if self.token_ids_prompt else text)

    # -- HTTP ------------------------------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        *,
        what: str,
        retry: bool = True,
        quiet_404: bool = False,
        quiet_4xx: bool = False,
    ) -> Any:
        """One JSON call; retried with exponential backoff on connect errors, timeouts, 408, 429 and 5xx only."""
        if self._closed:
            raise MemberError(self.name, "the member is closed")
        attempts = 1 + (self.retries if retry else 0)
        problem = ""
        tried = 0
        for attempt in range(attempts):
            tried += 1
            if attempt:
                delay = min(self.backoff * 2 ** (attempt - 1), 8.0)
                time.sleep(delay * (1 + 0.1 * random.random()))
            try:
                with self._sem:
                    resp = self._http.request(method, path, json=body)
            except httpx.TimeoutException:
                problem = f"no answer within {self.timeout:g}s"
                continue
            except httpx.ConnectError as exc:
                problem = f"cannot connect ({one_line(exc, 120) or 'connection refused'})"
                continue
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                problem = f"connection lost ({one_line(exc, 120) or type(exc).__name__})"
                continue
            except httpx.HTTPError as exc:
                raise MemberError(self.name, f"{what}: {one_line(exc)}") from None
            code = resp.status_code
            if code in (408, 429) or code >= 500:
                message = _error_message(resp)
                problem = f"HTTP {code}: {message}"
                if "codec can't decode" in message:
                    break  # llama-cpp-python cannot return a partial UTF-8 token as text; retrying will not help
                if code == 429:
                    with contextlib.suppress(ValueError, TypeError):
                        time.sleep(min(float(resp.headers.get("retry-after", 0)), 8.0))
                continue
            if code >= 400:
                if (quiet_404 and code == 404) or quiet_4xx:
                    raise MemberError(self.name, f"{what}: HTTP {code}")
                raise MemberError(self.name, f"{what} was refused with HTTP {code}: {_error_message(resp)}")
            try:
                return resp.json()
            except ValueError:
                raise MemberError(self.name, f"{what}: the engine answered with invalid JSON") from None
        tries = f"{tried} attempt{'s' if tried > 1 else ''}"
        raise MemberError(self.name, f"{what} at {self.base_url} failed after {tries}: {problem}")

    def body(
        self,
        prompt: str | list[int],
        max_tokens: int,
        logprobs: int | None,
        bias: dict[int, float] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "prompt": prompt,
            "max_tokens": max_tokens,
            # Greedy and unpenalised: the engine must report the model, not a sampler.
            "temperature": 0.0,
            "top_p": 1.0,
            "top_k": 0 if self.dialect == "llama-cpp-python" else -1,
            "min_p": 0.0,
            "repeat_penalty": 1.0,
            "repetition_penalty": 1.0,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "seed": 0,
            "stream": False,
        }
        if self.model is not None:
            body["model"] = self.model
        if logprobs is not None:
            body["logprobs"] = logprobs
        if bias:
            body["logit_bias"] = {str(t): b for t, b in bias.items()}
        return body

    def complete(
        self,
        ids: Sequence[int],
        prompt: str | list[int],
        max_tokens: int,
        logprobs: int | None,
        *,
        bias: dict[int, float] | None = None,
        extra: dict[str, Any] | None = None,
        quiet_4xx: bool = False,
    ) -> dict[str, Any]:
        """POST /v1/completions of ``prompt``, which sends exactly ``ids`` (the caller checked a text prompt)."""
        body = self.body(prompt, max_tokens, logprobs, bias)
        if self.ids_keys:
            body["return_tokens_as_token_ids"] = True
        if extra:
            body.update(extra)
        resp = self.request("POST", f"{self.api}/completions", body, what="POST /v1/completions", quiet_4xx=quiet_4xx)
        if not isinstance(resp, dict) or not resp.get("choices"):
            raise MemberError(self.name, "the engine's completion has no choices")
        self._count(ids, resp)
        return resp

    def _count(self, ids: Sequence[int], resp: dict[str, Any]) -> None:
        """Cost counters; the engine's prefix cache is estimated from the last sequence we had it hold."""
        usage = resp.get("usage") or {}
        generated = int(usage.get("completion_tokens") or 0)
        with self._lock:
            keep = common_prefix_len(self._server_seq, ids)
            self.stats.forward_calls += 1
            self.stats.tokens_reused += keep
            self.stats.tokens_evaluated += len(ids) - keep + generated
            self._server_seq = list(ids)

    # -- tokenizer -------------------------------------------------------------------------------------------------

    def tokenize(self, text: str, bos: bool = True, remember: bool = False) -> list[int]:
        """The engine's ids for ``text``; ``remember``: a context-to-be, whose text later contexts extend."""
        with self._lock:
            cached = self._tok_cache.get(text)
        if cached is None:
            if self.dialect == "vllm":
                body = {"model": self.model, "prompt": text, "add_special_tokens": True}
                got = self.request("POST", "/tokenize", body, what="POST /tokenize")
            else:
                got = self.request("POST", "/extras/tokenize", {"input": text, "model": self.model}, what="tokenize")
            toks = got.get("tokens") if isinstance(got, dict) else None
            if not isinstance(toks, list) or not all(isinstance(t, int) for t in toks):
                raise MemberError(self.name, "the engine's tokenize answer has no list of token ids")
            cached = tuple(toks)
            with self._lock:
                self._tok_cache[text] = cached
                trim(self._tok_cache, 512)
                key = ids_digest(cached)
                self._canonical[key] = True
                trim(self._canonical, 8192)
        if remember:
            with self._lock:
                key = ids_digest(cached)
                self._known[key] = (list(cached), text.encode("utf-8"))
                self._known.move_to_end(key)
                trim(self._known, _KNOWN_KEPT)
        ids = list(cached)
        if not bos and self.add_bos and ids:
            ids = ids[1:]
        return ids

    def detokenize(self, ids: Sequence[int]) -> str:
        if self.dialect == "vllm":
            got = self.request("POST", "/detokenize", {"model": self.model, "tokens": list(ids)}, what="detokenize")
            text = got.get("prompt") if isinstance(got, dict) else None
        else:
            got = self.request("POST", "/extras/detokenize", {"tokens": list(ids), "model": self.model}, what="detok")
            text = got.get("text") if isinstance(got, dict) else None
        if not isinstance(text, str):
            raise MemberError(self.name, "the engine's detokenize answer has no text")
        return text

    def known_texts(self, ids: Sequence[int]) -> tuple[bytes | None, list[tuple[list[int], bytes]]]:
        """The text ``ids`` were read from, if known, and the most recent known (ids, text) pairs, newest first."""
        with self._lock:
            hit = self._known.get(ids_digest(ids))
            entries = list(reversed(self._known.values()))[:64]
        return (hit[1] if hit is not None else None), entries

    def spells(self, ids: Sequence[int], text: str, raw: bytes) -> bool:
        """Whether the engine tokenises ``text`` (``raw``, encoded) into exactly ``ids``; remembered either way."""
        key = ids_digest(ids)
        with self._lock:
            known = self._canonical.get(key)
        if known is None:
            known = self.tokenize(text) == list(ids)
            with self._lock:
                self._canonical[key] = known
                trim(self._canonical, 8192)
        if known:
            with self._lock:
                # Remember the text: later contexts extend this one, and anchors must stay sendable.
                self._known[key] = (list(ids), raw)
                self._known.move_to_end(key)
                trim(self._known, _KNOWN_KEPT)
        return known

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._http.close()


def trim(d: OrderedDict[Any, Any], limit: int) -> None:
    while len(d) > limit:
        d.popitem(last=False)
