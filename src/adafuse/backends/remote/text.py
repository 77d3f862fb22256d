"""A text-only member: any OpenAI-compatible endpoint (a hosted API, llama-cpp-python's server, vLLM, Ollama,
``adafuse serve``) that writes answers but whose log-probabilities are not used.

Spec: ``text+http://HOST:PORT/v1[?key=value&...]#MODEL`` (or ``text+https://``). Query keys: ``key_env`` (the
environment variable holding the API key, sent as a bearer token; the key itself never appears in a spec, a
trace, the telemetry or an error message), ``api`` (``completions``, the default: the prompt and the committed
text continued as raw text; ``chat``: the prompt sent as one user message, which cannot continue a committed
answer), ``name``, ``timeout`` (seconds per call), ``retries`` and ``max_calls`` (API calls per request).

It cannot score, so it never votes: it proposes, and the members that can score judge its candidates
(``decoding/text_proposals.py``). The calls go through ``EngineClient.request``: retries with backoff on connect
errors, timeouts, 408, 429 (``Retry-After`` honoured) and 5xx, and one-line errors.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from adafuse.backends.base import MemberStats
from adafuse.chat import Message
from adafuse.errors import ConfigError, MemberError

SCHEMES = ("text+http://", "text+https://")
APIS = ("completions", "chat")
_KNOWN = {"key_env", "api", "name", "timeout", "retries", "max_calls"}


@dataclass(frozen=True)
class Completion:
    """One answer the endpoint wrote: its text, why it ended ("stop": a stop string or the model's end, "length":
    the token cap) and the tokens the API reported."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float


@dataclass
class ApiUsage:
    """Per-request cost counters of a text-only member, as the API reports them."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    def add(self, c: Completion) -> None:
        self.calls += 1
        self.prompt_tokens += c.prompt_tokens
        self.completion_tokens += c.completion_tokens
        self.seconds += c.seconds


class Secret:
    """An API key that prints as ``[key]``: a repr, a log line or a debugger shows no part of it."""

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "[key]"

    __str__ = __repr__


class TextMember:
    """An OpenAI-compatible endpoint used for its text only; see the module docstring."""

    #: never scores or votes: ``Ensemble`` keeps it apart from the members that do.
    text_only = True

    def __init__(self, spec: str, *, backoff: float = 0.25) -> None:
        spec = spec.strip()
        if not spec.startswith(SCHEMES):
            raise ConfigError(f"a text-only member spec looks like text+http://HOST:PORT/v1#MODEL, got {spec!r}")
        parts = urlsplit(spec[len("text+") :])
        if not parts.netloc:
            raise ConfigError(f"a text-only member spec needs a host: {spec!r}")
        opts = dict(parse_qsl(parts.query, keep_blank_values=True))
        unknown = sorted(set(opts) - _KNOWN)
        if unknown:
            raise ConfigError(f"unknown option(s) {unknown} in {spec!r}; known: {sorted(_KNOWN)}")
        self.api = opts.get("api", "completions")
        if self.api not in APIS:
            raise ConfigError(f"{spec!r}: api must be one of {', '.join(APIS)}, got {self.api!r}")
        self.model = parts.fragment or None
        self.timeout = _number(opts, "timeout", 60.0, spec)
        self.retries = int(_number(opts, "retries", 3, spec))
        self.max_calls = int(_number(opts, "max_calls", 4, spec))
        if self.timeout <= 0 or self.retries < 0 or self.max_calls < 1:
            raise ConfigError(f"{spec!r}: timeout must be > 0, retries >= 0 and max_calls >= 1")
        self._key = Secret("")
        headers: dict[str, str] = {}
        if "key_env" in opts:
            var = opts["key_env"]
            self._key = Secret(os.environ.get(var, ""))
            if not self._key.reveal():
                raise ConfigError(f"{spec!r}: the environment variable {var!r} named by key_env is not set")
            headers["Authorization"] = f"Bearer {self._key.reveal()}"
        self.name = opts.get("name") or (self.model.rsplit("/", 1)[-1] if self.model else parts.netloc)
        path = parts.path.rstrip("/")
        self.base_url = f"{parts.scheme}://{parts.netloc}"
        self._api_root = path if path else "/v1"
        #: failures are counted by the client; tokens in its stats are not meaningful for a text-only member.
        self.stats = MemberStats()
        # Imported here: httpx (10 MiB resident) is loaded only by a process that talks to an engine.
        from adafuse.backends.remote.client import EngineClient

        self._client = EngineClient(
            self.base_url,
            self.model,
            self.name,
            self.stats,
            timeout=self.timeout,
            retries=self.retries,
            concurrency=4,
            backoff=backoff,
            headers=headers,
        )
        self._lock = threading.Lock()

    def complete(
        self, prompt: str | Sequence[Message], continuation: str, max_tokens: int, stop: tuple[str, ...]
    ) -> Completion:
        """One call: the endpoint's greedy continuation of ``prompt + continuation`` (``api=completions``), or its
        answer to ``prompt`` as a user message or a conversation (``api=chat``, or ``prompt`` a list of messages;
        ``continuation`` must then be empty)."""
        body: dict[str, Any] = {"max_tokens": max(1, max_tokens), "temperature": 0.0}
        if self.model:
            body["model"] = self.model
        if stop:
            body["stop"] = list(stop[:4])  # the OpenAI API takes at most four
        if self.api == "chat" or not isinstance(prompt, str):
            assert not continuation, "a chat endpoint cannot continue a committed answer"
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            body["messages"] = messages
            path = f"{self._api_root}/chat/completions"
        else:
            body["prompt"] = prompt + continuation
            path = f"{self._api_root}/completions"
        start = time.perf_counter()
        try:
            got = self._client.request("POST", path, body, what=f"POST {path}")
        except MemberError as exc:
            raise MemberError(self.name, self.redact(_reason(exc, self.name))) from None
        seconds = time.perf_counter() - start
        try:
            choice = got["choices"][0]
            text = choice["message"]["content"] if "message" in choice else choice["text"]
            if not isinstance(text, str):
                raise TypeError(type(text).__name__)
        except (KeyError, IndexError, TypeError) as exc:
            raise MemberError(self.name, f"{path} answered without a completion text ({exc})") from None
        usage = got.get("usage") if isinstance(got.get("usage"), dict) else {}
        return Completion(
            text,
            str(choice.get("finish_reason") or "stop"),
            int(usage.get("prompt_tokens") or 0),
            int(usage.get("completion_tokens") or 0),
            seconds,
        )

    def continues(self, prompt: str | Sequence[Message]) -> bool:
        """Whether a new draft can start from a committed answer (raw completions of a text prompt)."""
        return self.api == "completions" and isinstance(prompt, str)

    def redact(self, text: str) -> str:
        """``text`` with the API key, and any long enough piece of it, replaced (an API may echo part of a key)."""
        key = self._key.reveal()
        if not key:
            return text
        for n in range(len(key), 7, -1):
            for i in range(0, len(key) - n + 1):
                if key[i : i + n] in text:
                    text = text.replace(key[i : i + n], "[key]")
        return text

    def close(self) -> None:
        self._client.close()

    def __repr__(self) -> str:  # never the key
        return f"TextMember({self.name!r}, {self.base_url}{self._api_root}, api={self.api})"


def _reason(exc: MemberError, name: str) -> str:
    text = str(exc)
    prefix = f"member {name!r}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


def _number(opts: dict[str, str], key: str, default: float, spec: str) -> float:
    try:
        return float(opts[key]) if key in opts else default
    except ValueError:
        raise ConfigError(f"{spec!r}: {key} must be a number, got {opts[key]!r}") from None
