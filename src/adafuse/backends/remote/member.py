"""A member served by an OpenAI-compatible engine over HTTP (llama-cpp-python's server, vLLM), on top of
``client.EngineClient`` (the HTTP calls, the engine's tokenizer and its capabilities).

Spec: ``http://HOST:PORT/v1[?key=value&...][#model]``. Query keys: ``name``, ``timeout`` (seconds per request),
``retries``, ``concurrency`` (requests in flight to this engine), ``prefetch`` (greedy tokens fetched per request),
``gguf`` (a built-in model name or a GGUF path with the same tokenizer, read for the chat template and the special
tokens an engine does not publish) and ``self_test=0``.

What an engine gives us, and how the four primitives are built on it:

- Token-id prompts (vLLM) make every request exact. llama-cpp-python's server only takes text, so a context is
  sent as text and is *expressible* only when the engine tokenises that text back into exactly our ids
  (checked with its own tokenizer, cached). Greedy paths the engine wrote itself need no such check: they are
  re-generated from the last expressible context (the *anchor*) instead of being sent back as text, because a
  model's own greedy tokens are often not the canonical tokenisation of their text ("." + "\\n" vs ".\\n").
- Every completion request asks for several greedy tokens with top-k log-probabilities per step, end-of-generation
  tokens suppressed by ``logit_bias`` so the distribution at an end token is still returned (log-probabilities are
  reported before biasing). Each step's distribution is cached as a *row* keyed by its context, so a draft of n
  tokens costs one request, not n.
- A log-probability outside the cached top-k is read by forcing that token with ``logit_bias`` for one step.
- llama-cpp-python names top-k entries by their text, not their id. Text is mapped back to an id through the
  engine's tokenizer (one request per new string, cached) and accepted only when that id spells the text; control
  tokens all read as ``""``, which we take to be the end token (see ``_resolve_top``).

Not used, on purpose: ``echo`` scoring on llama-cpp-python sorts the whole vocabulary at every prompt position
in Python (seconds per request on long prompts) and is off by one on models without BOS; ``text_offset`` is
never used to locate tokens (we work in token space throughout).

Numerics: the in-process llama.cpp backend computes without flash attention (its numbers then do not depend on the
thread count), as llama-cpp-python's ``Llama`` does by default. A server started that way gives a fresh prompt's
next-token distribution within 1e-5 of a local member's, but it evaluates contexts in other batches (a forced
token's context again from its last token), and without flash attention llama.cpp's numbers depend on the batch:
scores differ by up to about 0.2 nats (tests/test_remote.py).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx

from adafuse.backends.base import MemberStats, Step, TopK, Until, common_prefix_len
from adafuse.backends.remote.client import BIAS, EngineClient, ids_digest, one_line, trim
from adafuse.errors import ConfigError, MemberError, ModelLoadError, PromptError

log = logging.getLogger(__name__)

#: Fixed sentence for the start-up self-test: plain ASCII, so every engine tokenises it the same way every time.
SELF_TEST_TEXT = "The capital of France is Paris, of Italy Rome."
_MIN_K = 10  # rows are fetched with at least this many entries, so later calls with a smaller k hit the cache
_ROWS_KEPT = 4096
_PATHS_KEPT = 64


class _Inexpressible(Exception):
    """This token sequence cannot be sent to a text-only engine as exactly these ids."""


@dataclass
class _Row:
    """The next-token distribution after one context, as far as the engine told us."""

    k: int
    #: (id, logprob) by decreasing logprob, cut before the first entry we could not name.
    top: list[tuple[int, float]]
    #: log-probabilities known exactly for these ids (chosen or forced tokens, trusted top-k entries).
    exact: dict[int, float] = field(default_factory=dict)
    #: the context could not be sent exactly: the engine conditioned on its own tokenisation of the same text.
    approximate: bool = False


@dataclass
class _Meta:
    chat_template: str | None = None
    bos_id: int | None = None
    eos_id: int | None = None
    bos_text: str = ""
    eos_text: str = ""
    eog: frozenset[int] = frozenset()


class RemoteMember:
    """A model behind an OpenAI-compatible HTTP API; see the module docstring for how requests are built."""

    def __init__(
        self,
        spec: str,
        n_ctx: int = 4096,
        *,
        name: str | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        concurrency: int | None = None,
        prefetch: int | None = None,
        gguf: str | None = None,
        chat_template: str | None = None,
        self_test: bool | None = None,
        backoff: float = 0.25,
    ) -> None:
        parts = urlsplit(spec.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"remote member spec must look like http://HOST:PORT/v1#model, got {spec!r}")
        opts = dict(parse_qsl(parts.query, keep_blank_values=True))
        known = {"name", "timeout", "retries", "concurrency", "prefetch", "gguf", "self_test"}
        unknown = sorted(set(opts) - known)
        if unknown:
            raise ConfigError(f"unknown option(s) {unknown} in {spec!r}; known: {sorted(known)}")
        self.timeout = float(timeout if timeout is not None else _num(opts, "timeout", 60.0, float))
        self.retries = int(retries if retries is not None else _num(opts, "retries", 3, int))
        self.concurrency = int(concurrency if concurrency is not None else _num(opts, "concurrency", 2, int))
        self.prefetch = int(prefetch if prefetch is not None else _num(opts, "prefetch", 4, int))
        if self.timeout <= 0 or self.retries < 0 or self.concurrency < 1 or self.prefetch < 1:
            raise ConfigError(f"{spec!r}: timeout must be > 0, retries >= 0, concurrency >= 1, prefetch >= 1")
        path = parts.path.rstrip("/")
        root_path = path[: -len("/v1")] if path.endswith("/v1") else path
        model = parts.fragment or None
        #: members always run remote requests off the decoding thread (see decoding.failure.map_active).
        self.concurrent = True
        self.stats = MemberStats()
        #: requests whose context could not be sent exactly (text-only engines); see ``_Row.approximate``.
        self.approximate_requests = 0
        self._engine = EngineClient(
            f"{parts.scheme}://{parts.netloc}{root_path}",
            model,
            name or opts.get("name") or (model.rsplit("/", 1)[-1] if model else parts.netloc),
            self.stats,
            timeout=self.timeout,
            retries=self.retries,
            concurrency=self.concurrency,
            backoff=backoff,
        )
        self.n_ctx = n_ctx
        self._lock = threading.RLock()
        self._rows: OrderedDict[bytes, _Row] = OrderedDict()
        self._paths: OrderedDict[bytes, tuple[list[int], list[int]]] = OrderedDict()
        self._bytes: dict[int, bytes] = {}
        self._strings: dict[str, int | None] = {}
        self._warned = False
        try:
            self._start(n_ctx, gguf or opts.get("gguf") or None, chat_template)
            run_test = self_test if self_test is not None else opts.get("self_test", "1") not in ("0", "false")
            if run_test:
                self._self_test()
        except (MemberError, httpx.HTTPError) as exc:
            self.close()
            raise ModelLoadError(f"remote member {self.name!r} at {self.base_url}: {one_line(exc)}") from None
        except BaseException:
            self.close()
            raise

    # -- start-up --------------------------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._engine.name

    @name.setter
    def name(self, value: str) -> None:
        self._engine.name = value

    @property
    def base_url(self) -> str:
        return self._engine.base_url

    @property
    def model(self) -> str | None:
        return self._engine.model

    def _start(self, n_ctx: int, gguf: str | None, chat_template: str | None) -> None:
        """The engine's health and capabilities, then the special tokens (from ``gguf`` if given) and forcing."""
        self.n_ctx = self._engine.start(n_ctx)
        self.capabilities = self._engine.capabilities
        meta = _gguf_meta(gguf) if gguf else None
        if meta is not None:
            self._check_same_tokenizer(gguf or "")
        eos_guess = ""
        if meta is None:
            self._eog, eos_guess = self._engine.probe_eog()
        else:
            self._eog = set(meta.eog)
        self.capabilities["eog"] = sorted(self._eog)
        self._bos = self._engine.bos if self._engine.add_bos else (meta.bos_id if meta else None)
        if meta is not None and meta.eos_id is not None:
            self._eos = meta.eos_id
        else:
            self._eos = self._pick_eos(eos_guess)
        self.chat_template = chat_template if chat_template is not None else (meta.chat_template if meta else None)
        self._bos_text = meta.bos_text if meta else ""
        self._eos_text = meta.eos_text if meta else eos_guess
        self._check_forcing()

    def _pick_eos(self, guess: str) -> int:
        if guess:
            return self._engine.tokenize(guess, bos=False)[0]
        return min(self._eog) if self._eog else -1

    def _check_same_tokenizer(self, gguf: str) -> None:
        from adafuse.backends.llamacpp import LlamaCppMember  # noqa: F401  (fails early without llama-cpp-python)

        local = _gguf_tokenize(gguf, SELF_TEST_TEXT)
        remote = self._engine.tokenize(SELF_TEST_TEXT)
        if local != remote:
            raise MemberError(self.name, f"gguf={gguf!r} does not have the served model's tokenizer")

    def _check_forcing(self) -> None:
        ids = self._engine.tokenize("Hello", remember=True)
        target = self._engine.tokenize(" world", bos=False)[-1]
        resp = self._complete(ids, 1, 1, bias={target: BIAS})
        got = self._chosen_ids(resp, ids)
        if got[:1] != [target]:
            raise MemberError(self.name, "the engine ignores logit_bias, which scoring needs")
        self.capabilities["logit_bias"] = True

    def _self_test(self) -> None:
        """Scored log-probabilities of a fixed sentence must agree with step-by-step next-token ones."""
        ids = self._engine.tokenize(SELF_TEST_TEXT, remember=True)
        cut = 3 if not self._engine.add_bos else 4
        if len(ids) <= cut + 2:
            raise MemberError(self.name, "self-test sentence is too short in this tokenizer")
        context, cont = ids[:cut], ids[cut:]
        if self.token_bytes_join(ids[1 if self._engine.add_bos else 0 :]) != SELF_TEST_TEXT.encode():
            raise MemberError(self.name, "self-test: the token pieces do not spell the text they were made from")
        scored = self.score([(context, cont)])[0]
        stepwise = []
        for i, tok in enumerate(cont):
            resp = self._complete(context + cont[:i], 1, 1, bias={tok: BIAS})
            chosen = self._chosen_ids(resp, context + cont[:i])
            if chosen[:1] != [tok]:
                raise MemberError(self.name, f"self-test: forced token {tok} came back as {chosen[:1]}")
            stepwise.append(float(resp["choices"][0]["logprobs"]["token_logprobs"][0]))
        worst = max(abs(a - b) for a, b in zip(scored, stepwise, strict=True))
        self.capabilities["self_test_max_diff"] = worst
        if not all(math.isfinite(x) for x in scored) or worst > 1e-3:
            raise MemberError(
                self.name,
                f"self-test failed: scoring and step-by-step log-probabilities differ by {worst:.4g} "
                f"(scored {[round(x, 4) for x in scored]}, stepwise {[round(x, 4) for x in stepwise]})",
            )
        with self._lock:
            # The test's rows are right, but a fresh cache keeps the first generation's counters honest.
            self._rows.clear()
            self._paths.clear()

    # -- requests ------------------------------------------------------------------------------------------------

    def _complete(
        self,
        ids: Sequence[int],
        max_tokens: int,
        logprobs: int | None,
        *,
        bias: dict[int, float] | None = None,
        extra: dict[str, Any] | None = None,
        quiet_4xx: bool = False,
        text: str | None = None,
    ) -> dict[str, Any]:
        """POST /v1/completions after exactly ``ids`` (or ``text`` when given: the caller checked it)."""
        prompt: str | list[int] = list(ids)
        if not self._engine.token_ids_prompt:
            prompt = text if text is not None else self._exact_text(ids)
        return self._engine.complete(ids, prompt, max_tokens, logprobs, bias=bias, extra=extra, quiet_4xx=quiet_4xx)

    # -- tokenizer -------------------------------------------------------------------------------------------------

    def tokenize(self, text: str, *, special: bool = False, bos: bool = True) -> list[int]:
        """The engine's tokenisation. Engines parse special-token text in prompts, so ``special`` has no effect."""
        return self._engine.tokenize(text, bos=bos, remember=bos)

    def token_bytes(self, token_id: int) -> bytes:
        piece = self._bytes.get(token_id)
        if piece is None:
            if token_id in self._eog or token_id == self._bos:
                piece = b""
            else:
                # Detokenised after a known token: a SentencePiece engine drops a *leading* space otherwise.
                try:
                    text = self._engine.detokenize([self._engine.prefix_id, token_id])
                except MemberError as exc:
                    raise MemberError(
                        self.name, f"cannot read the text of token {token_id} (not valid UTF-8 on its own?): {exc}"
                    ) from None
                if not text.startswith(self._engine.prefix_text):
                    raise MemberError(self.name, f"detokenize of token {token_id} does not keep its prefix")
                piece = text[len(self._engine.prefix_text) :].encode("utf-8")
            self._bytes[token_id] = piece
        return piece

    def token_bytes_join(self, ids: Sequence[int]) -> bytes:
        return b"".join(self.token_bytes(t) for t in ids)

    def is_eog(self, token_id: int) -> bool:
        return token_id in self._eog

    @property
    def eos_id(self) -> int:
        return self._eos

    def special_text(self, which: str) -> str:
        return self._bos_text if which == "bos" else self._eos_text

    # -- contexts as text ------------------------------------------------------------------------------------------

    def _text_of(self, ids: Sequence[int]) -> bytes | None:
        """The text whose tokenisation we took ``ids`` from, extended or cut by plain tokens; None if unknown."""
        ids = list(ids)
        hit, entries = self._engine.known_texts(ids)
        if hit is not None:
            return hit
        best: tuple[int, list[int], bytes] | None = None
        for seq, text in entries:
            n = common_prefix_len(seq, ids)
            if n > (best[0] if best else 0):
                best = (n, seq, text)
                if n == len(seq):
                    break  # a known text that ``ids`` extends: nothing to cut
        if best is None:
            # Ids that did not come from our tokenize(): their text is their tokens' text, if none is a control token.
            best = (0, [], b"")
        n, seq, text = best
        try:
            dropped, added = seq[n:], ids[n:]
            # A control token prints as nothing, so it can be neither cut from nor appended to a text.
            if any(t != self._bos and self.token_bytes(t) == b"" for t in (*dropped, *added)):
                return None
            cut = self.token_bytes_join(dropped)
            if cut and not text.endswith(cut):
                return None
            return text[: len(text) - len(cut)] + self.token_bytes_join(added)
        except MemberError:
            return None

    def _expressible(self, ids: Sequence[int]) -> str | None:
        """The prompt text that a text-only engine tokenises into exactly ``ids``, or None."""
        raw = self._text_of(ids)
        if raw is None:
            return None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
        return text if self._engine.spells(ids, text, raw) else None

    def _exact_text(self, ids: Sequence[int]) -> str:
        text = self._expressible(ids)
        if text is None:
            raise _Inexpressible
        return text

    # -- rows ------------------------------------------------------------------------------------------------------

    def _chosen_ids(self, resp: dict[str, Any], start: Sequence[int]) -> list[int]:
        """Ids of the generated tokens, as far as they can be named; stops at the first one that cannot."""
        lp = resp["choices"][0].get("logprobs") or {}
        strings = [str(s) for s in lp.get("tokens") or []]
        out: list[int] = []
        for s in strings:
            tid = self._name_token(s)
            if tid is None:
                break
            out.append(tid)
        return out

    def _name_token(self, s: str) -> int | None:
        if self._engine.ids_keys:
            if s.startswith("token_id:"):
                with contextlib.suppress(ValueError):
                    return int(s[len("token_id:") :])
            return None
        if s in self._strings:
            return self._strings[s]
        tid: int | None = None
        if s:
            ids = self._engine.tokenize(s, bos=False)
            if len(ids) == 1:
                try:
                    if self.token_bytes(ids[0]) == s.encode("utf-8"):
                        tid = ids[0]
                except MemberError:
                    tid = None
        self._strings[s] = tid
        return tid

    def _resolve_top(
        self, top: dict[str, float], chosen: str | None, chosen_lp: float | None
    ) -> list[tuple[int, float]]:
        """Name the entries of a top-k mapping, best first; cut before the first one we cannot name.

        Text-keyed engines print every control token (and partial UTF-8 bytes) as ``""``. A ``""`` entry counts as
        the end token unless the generated token itself was that ``""`` entry (then it is some other token).
        """
        items = sorted(((float(lp), str(s)) for s, lp in top.items() if lp is not None), key=lambda x: -x[0])
        out: list[tuple[int, float]] = []
        seen: set[int] = set()
        for lp, s in items:
            tid: int | None
            if not self._engine.ids_keys and s == "":
                tid = None if (chosen == "" and chosen_lp == lp) or self._eos < 0 else self._eos
            else:
                tid = self._name_token(s)
            if tid is None:
                break
            if tid in seen:
                continue
            seen.add(tid)
            out.append((tid, lp))
        out.sort(key=lambda e: (-e[1], e[0]))
        return out

    def _generate(
        self, start: list[int], steps: int, k: int, *, force: int | None = None, text: str | None = None
    ) -> list[int]:
        """One request: ``steps`` greedy tokens after ``start`` with top-``k`` rows; returns the path named."""
        room = self.n_ctx - len(start) - 1
        if room < 1:
            raise PromptError(f"member {self.name!r}: context of {len(start)} tokens fills its window of {self.n_ctx}")
        steps = max(1, min(steps, room))
        bias = {t: -BIAS for t in self._eog if t != force}
        if force is not None:
            bias[force] = BIAS
            steps = 1  # a bias holds for every step: only the first token can be forced
        resp = self._complete(start, steps, min(max(k, _MIN_K), self._engine.max_logprobs), bias=bias, text=text)
        lp = resp["choices"][0].get("logprobs") or {}
        strings = [str(s) for s in lp.get("tokens") or []]
        token_lps = lp.get("token_logprobs") or []
        tops = lp.get("top_logprobs") or []
        path = self._chosen_ids(resp, start)
        approximate = text is not None
        rows: list[tuple[bytes, _Row]] = []
        for j in range(min(len(strings), len(tops), len(token_lps))):
            ctx_j = start + path[:j]
            chosen_lp = None if token_lps[j] is None else float(token_lps[j])
            top = self._resolve_top(tops[j] or {}, strings[j], chosen_lp)
            row = _Row(min(max(k, _MIN_K), self._engine.max_logprobs), top[: max(k, _MIN_K)], approximate=approximate)
            for tid, value in top:
                row.exact.setdefault(tid, value)
            if j < len(path) and chosen_lp is not None:
                row.exact[path[j]] = chosen_lp
            rows.append((ids_digest(ctx_j), row))
            if j >= len(path):
                break  # the next context holds a token we could not name
        with self._lock:
            for key, row in rows:
                old = self._rows.get(key)
                if old is not None and force is not None:
                    old.exact.update(row.exact)  # a forced request adds one exact value; keep the wider row
                    row = old
                elif old is not None and old.k > row.k:
                    old.exact.update(row.exact)
                    row = old
                self._rows[key] = row
                self._rows.move_to_end(key)
            trim(self._rows, _ROWS_KEPT)
            if force is None and not approximate and path:
                key = ids_digest(start)
                self._paths[key] = (list(start), path)
                self._paths.move_to_end(key)
                trim(self._paths, _PATHS_KEPT)
        return path

    def _anchor_for(self, ctx: list[int]) -> tuple[list[int], int, int] | None:
        """A context we generated from whose greedy path ``ctx`` lies on or extends: (anchor, past it, path len)."""
        with self._lock:
            paths = list(reversed(self._paths.values()))
        for start, path in paths:
            n = len(start)
            if len(ctx) < n or ctx[:n] != start:
                continue
            tail = ctx[n:]
            if tail[: len(path)] == path[: len(tail)]:
                return start, len(tail), len(path)
        return None

    def _row(self, ctx: Sequence[int], k: int, want: int | None = None) -> _Row:
        ctx = list(ctx)
        if not ctx:
            raise PromptError(f"member {self.name!r}: empty context")
        k = min(max(k, 2), self._engine.max_logprobs)
        key = ids_digest(ctx)
        with self._lock:
            row = self._rows.get(key)
            if row is not None:
                self._rows.move_to_end(key)
        if row is not None and (row.k >= k or row.k >= self._engine.max_logprobs):
            return row
        ahead = max(want or self.prefetch, 1)
        anchor = self._anchor_for(ctx)
        try:
            if anchor is not None and anchor[1] < anchor[2]:
                # On a path we generated (the row was evicted or is too narrow): the engine re-writes its tokens.
                self._generate(anchor[0], anchor[1] + ahead, k)
            elif self._engine.token_ids_prompt or self._expressible(ctx) is not None:
                self._generate(ctx, ahead, k)
            elif anchor is not None:
                # Past the end of a path whose tokens are not the canonical spelling of their text: extend it.
                self._generate(anchor[0], anchor[1] + ahead, k)
            else:
                self._approximate(ctx, ahead, k)
        except _Inexpressible:
            self._approximate(ctx, ahead, k)
        with self._lock:
            row = self._rows.get(key)
        if row is None:
            # The path stopped short (an unnamed token or an unknown end token): ask for this context directly.
            try:
                self._generate(ctx, 1, k)
            except _Inexpressible:
                self._approximate(ctx, 1, k)
            with self._lock:
                row = self._rows.get(key)
        if row is None:
            raise MemberError(self.name, "the engine returned no distribution for the requested context")
        return row

    def _approximate(self, ctx: list[int], steps: int, k: int) -> None:
        """Send the context's text anyway: the engine then conditions on its own tokenisation of it."""
        raw = self._text_of(ctx)
        try:
            text = raw.decode("utf-8") if raw is not None else None
        except UnicodeDecodeError:
            text = None
        if text is None:
            raise MemberError(self.name, "a context holds tokens that this text-only engine cannot be sent")
        self.approximate_requests += 1
        if not self._warned:
            self._warned = True
            log.warning(
                "member %r: a context is not the engine's own tokenisation of its text; the text-only engine "
                "conditions on its own tokens there (an approximation; token-id prompts avoid it)",
                self.name,
            )
        self._generate(ctx, steps, k, text=text)

    def _logprob(self, ctx: list[int], token: int, want: int) -> float:
        row = self._row(ctx, _MIN_K, want)
        if token in row.exact:
            return row.exact[token]
        if token in self._eog:
            # An end token cannot be forced (the engine stops before emitting it): look further down the list.
            if row.k < self._engine.max_logprobs:
                row = self._row_wide(ctx)
                if token in row.exact:
                    return row.exact[token]
            self.approximate_requests += 1
            # Below the last entry we can see: its value bounds the end token's from above.
            return min((lp for _, lp in row.top), default=-30.0)
        try:
            text = None if self._engine.token_ids_prompt else self._exact_text(ctx)
        except _Inexpressible:
            text = None
            raw = self._text_of(ctx)
            if raw is None:
                raise MemberError(self.name, "cannot score after a context this engine cannot be sent") from None
            self.approximate_requests += 1
            text = raw.decode("utf-8", errors="replace")
        self._generate(ctx, 1, _MIN_K, force=token, text=text)
        with self._lock:
            row = self._rows.get(ids_digest(ctx))
        if row is None or token not in row.exact:
            raise MemberError(self.name, f"the engine did not report a log-probability for forced token {token}")
        return row.exact[token]

    def _row_wide(self, ctx: list[int]) -> _Row:
        key = ids_digest(ctx)
        with self._lock:
            self._rows.pop(key, None)
        return self._row(ctx, self._engine.max_logprobs, 1)

    # -- primitives ------------------------------------------------------------------------------------------------

    def prefill(self, context: Sequence[int]) -> None:
        """Start of a request: forget the previous request's rows, then fetch the first one.

        A failure here is not raised: this runs before the first round, outside the member failure policy, and the
        same request is made again (and its error reported) by the round that needs it.
        """
        with self._lock:
            self._rows.clear()
            self._paths.clear()
        with contextlib.suppress(MemberError, PromptError):
            self._row(context, _MIN_K)

    def evidence(self, context: Sequence[int], wanted: Sequence[int] | None = None) -> list[float] | None:
        # Engines differ in whether (and how) they return prompt log-probabilities; auto weights fall back.
        return None

    def next_token(self, context: Sequence[int], k: int) -> TopK:
        row = self._row(context, k)
        if not row.top:
            raise MemberError(
                self.name, "the engine's most likely next token has no text of its own, so it cannot be identified"
            )
        top = row.top[:k]
        return TopK(tuple(t for t, _ in top), tuple(lp for _, lp in top))

    def logprobs_of(self, context: Sequence[int], token_ids: Sequence[int]) -> list[float]:
        return [self._logprob(list(context), t, 1) for t in token_ids]

    def score(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[list[float]]:
        out: list[list[float]] = []
        for context, cont in requests:
            ctx = list(context)
            lps: list[float] = []
            for i, tok in enumerate(cont):
                lps.append(self._logprob(ctx, tok, len(cont) - i))
                ctx.append(tok)
            out.append(lps)
        return out

    def greedy(self, context: Sequence[int], max_tokens: int, k: int, until: Until | None = None) -> list[Step]:
        """Up to ``max_tokens`` greedy tokens, fetched several per request; ``until`` is applied afterwards."""
        ctx = list(context)
        steps: list[Step] = []
        while len(steps) < max_tokens and len(ctx) < self.n_ctx - 1:
            row = self._row(ctx, k, max_tokens - len(steps))
            if not row.top:
                raise MemberError(self.name, "the engine's most likely next token cannot be identified")
            top = TopK(tuple(t for t, _ in row.top[:k]), tuple(lp for _, lp in row.top[:k]))
            steps.append(Step(top, top.ids[0]))
            ctx.append(top.ids[0])
            if self.is_eog(top.ids[0]) or (until is not None and until([s.token for s in steps])):
                break
        return steps

    def close(self) -> None:
        self._engine.close()

    def __repr__(self) -> str:
        return f"RemoteMember({self.name!r}, {self.base_url}, model={self.model!r})"


def _num(opts: dict[str, str], key: str, default: Any, cast: Callable[[str], Any]) -> Any:
    if key not in opts:
        return default
    try:
        return cast(opts[key])
    except ValueError:
        raise ConfigError(f"option {key}={opts[key]!r} in the remote spec is not a number") from None


def _load_vocab(gguf: str) -> tuple[Any, Any]:
    from adafuse.backends.llamacpp import _init_backend, llama_cpp
    from adafuse.backends.zoo import resolve_model_path

    _init_backend()
    path = resolve_model_path(gguf)
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise ModelLoadError(f"cannot read the vocabulary of {path}")
    return llama_cpp, model


def _gguf_meta(gguf: str) -> _Meta:
    """Chat template and special tokens from a GGUF file with the served model's tokenizer (vocabulary only)."""
    llama_cpp, model = _load_vocab(gguf)
    try:
        vocab = llama_cpp.llama_model_get_vocab(model)
        tmpl = llama_cpp.llama_model_chat_template(model, None)
        bos = llama_cpp.llama_vocab_bos(vocab)
        eos = llama_cpp.llama_vocab_eos(vocab)
        n = llama_cpp.llama_vocab_n_tokens(vocab)
        eog = frozenset(i for i in range(n) if llama_cpp.llama_vocab_is_eog(vocab, i))

        def text(tok: int) -> str:
            return "" if tok < 0 else llama_cpp.llama_vocab_get_text(vocab, tok).decode("utf-8", errors="replace")

        return _Meta(
            chat_template=tmpl.decode("utf-8") if tmpl else None,
            bos_id=bos if bos >= 0 else None,
            eos_id=eos if eos >= 0 else None,
            bos_text=text(bos),
            eos_text=text(eos),
            eog=eog,
        )
    finally:
        llama_cpp.llama_model_free(model)


def _gguf_tokenize(gguf: str, text: str) -> list[int]:
    llama_cpp, model = _load_vocab(gguf)
    try:
        vocab = llama_cpp.llama_model_get_vocab(model)
        data = text.encode("utf-8")
        buf = (llama_cpp.llama_token * (len(data) + 8))()
        n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, len(data) + 8, True, True)
        return list(buf[: max(n, 0)])
    finally:
        llama_cpp.llama_model_free(model)
