"""llama.cpp member through llama-cpp-python's low-level API.

The high-level ``Llama`` class keeps logits for every position only with ``logits_all=True`` (n_ctx x vocab
floats: about 1 GiB per 1k tokens for Gemma's 262k vocabulary). Driving ``llama_decode`` directly lets us ask for
logits only where a decision needs them, keep the KV cache as a token list we can roll back to any prefix, and
remember the few distributions we will ask for again (branching returns to the same context B times). The
chunked prefix cache itself is shared with the transformers backend (``prefix_cache``); this module supplies its
hooks on llama.cpp's KV sequence.
"""

from __future__ import annotations

import ctypes
import math
import os
import threading
from collections.abc import Container, Sequence
from pathlib import Path

import numpy as np

from adafuse.backends.base import MemberStats, available_cores, common_prefix_len, file_fingerprint
from adafuse.backends.prefix_cache import CHUNK, PrefixCachedMember, Row, chunks
from adafuse.errors import MemberError, ModelLoadError, ModelNotFoundError

try:
    import llama_cpp
except ImportError:  # pragma: no cover - exercised only without the extra
    llama_cpp = None

_init_lock = threading.Lock()
_initialised = False
# KV cells a context starts with; it grows by doubling up to the member's window (``LlamaCppMember._grow``).
_INITIAL_CTX = 512
# Rows of an evidence chunk normalised together (``_row_logsumexp``): 4 x 262k floats is 4 MiB of scratch.
_LSE_BLOCK = 4


@ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
def _quiet_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    # llama.cpp prints hundreds of lines per load; failures are reported through return codes instead.
    return None


def _init_backend() -> None:
    global _initialised
    if llama_cpp is None:
        raise ModelLoadError("the llama.cpp backend needs llama-cpp-python; run: pip install 'adafuse[llamacpp]'")
    with _init_lock:
        if not _initialised:
            if not os.environ.get("ADAFUSE_LLAMA_VERBOSE"):
                llama_cpp.llama_log_set(_quiet_log, ctypes.c_void_p())
            llama_cpp.llama_backend_init()
            _initialised = True


def _check_gguf(path: Path) -> None:
    if not path.is_file():
        raise ModelNotFoundError(f"model file not found: {path}")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelLoadError(f"{path} is not a GGUF file (starts with {magic!r}, expected b'GGUF')")


def _logsumexp(row: np.ndarray) -> float:
    m = float(row.max())
    return m + float(np.log(np.exp(row - m).sum()))


def _row(logits: np.ndarray) -> Row:
    """A kept row: a copy of llama.cpp's logits (its buffer is overwritten by the next decode) and their lse."""
    values = logits.copy()
    return Row(values, _logsumexp(values))


def _row_logsumexp(rows: np.ndarray, block: int = _LSE_BLOCK) -> np.ndarray:
    """log-sum-exp of every row of a chunk's logits, ``block`` rows at a time in one reused buffer.

    The whole chunk at once made two temporaries the size of llama.cpp's output (64 x 262k floats for Gemma: 64 MiB
    each), which set the process's peak memory. Each row is reduced alone either way, so the numbers are the same.
    """
    out = np.empty(len(rows), dtype=np.float64)
    buf = np.empty((min(block, len(rows)), rows.shape[1]), dtype=rows.dtype)
    for lo in range(0, len(rows), block):
        part = rows[lo : lo + block]
        tmp = buf[: len(part)]
        peak = part.max(axis=1, keepdims=True)
        np.subtract(part, peak, out=tmp)
        np.exp(tmp, out=tmp)
        out[lo : lo + len(part)] = peak[:, 0] + np.log(tmp.sum(axis=1))
    return out


class LlamaCppMember(PrefixCachedMember):
    """A GGUF model run in-process by llama.cpp, with a rollback-able prefix cache on one KV sequence."""

    # Each scored token is one decode (``_score_one``), evaluated alone: scoring may stop on a candidate that
    # cannot win, and a token's numbers do not depend on where the cache walked (``prefix_cache``).
    scores_stepwise = True
    # Each output is one thread's dot product (no CPU flash attention): cores may move in the middle of a call.
    exact_across_threads = True

    def __init__(
        self,
        path: str | Path,
        name: str | None = None,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_batch: int = CHUNK,
    ) -> None:
        super().__init__()
        _init_backend()
        self.path = Path(path)
        self.name = name or self.path.stem
        self._fingerprint: str | None = None
        _check_gguf(self.path)
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = int(os.environ.get("ADAFUSE_N_GPU_LAYERS", "0"))
        # K-quant weights repacked for faster prompt kernels: their numbers are the ones results were recorded with.
        mparams.use_extra_bufts = True
        # Read into the process's memory, not mapped: with a mapping, the file pages llama.cpp repacks from stay
        # resident beside their repacked copy (40 MiB for the built-in three: benchmarks/memory.py). Same numbers.
        mparams.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE
        self._model = llama_cpp.llama_model_load_from_file(str(self.path).encode(), mparams)
        if not self._model:
            raise ModelLoadError(f"llama.cpp could not load {self.path} (corrupt or unsupported GGUF file)")
        cores = available_cores()
        threads = n_threads or cores
        # With no thread count the ensemble shares the cores out per call (``decoding.parallel``, ``SharesCores``);
        # a member given fewer threads than there are cores keeps them and runs beside the others.
        self.shares_cores = n_threads is None
        self.concurrent = threads < cores
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_batch = n_batch
        # Prompts are decoded in CHUNK-token calls and everything else one token at a time, so llama.cpp's
        # compute buffers (sized by the micro-batch) need not be larger. The saving is small for these models
        # (benchmarks/memory.py) and the numbers are unchanged: no call ever held more than one chunk.
        cparams.n_ubatch = min(n_batch, CHUNK)
        cparams.n_seq_max = 1
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        self._threads_wanted = threads
        # Sliding-window models (Gemma 3) can only roll back inside a full-size cache.
        cparams.swa_full = True
        # CPU flash attention splits a one-token decode's KV cells among the threads from 512 cells up, and the
        # split moves logits by up to 0.3 nats between 1 and 2 threads (measured on SQuAD prompts). Without it every
        # output is one thread's dot product: a member's numbers, and so an answer, do not depend on the thread
        # count, which lets the ensemble share cores out per call (``decoding.parallel``) and gives the same bytes
        # on machines with other core counts; the cost is 0-25% on 1,000-token prompts (docs/PERFORMANCE.md).
        cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        cparams.no_perf = True
        self._cparams = cparams
        # ``n_ctx`` is the window a request may fill; the KV cache starts small and doubles when a request needs
        # more (``_grow``), so memory follows the longest context actually seen, not the largest allowed.
        self.n_ctx = n_ctx
        ctx = self._new_context(min(n_ctx, _INITIAL_CTX))
        if not ctx:
            llama_cpp.llama_model_free(self._model)
            raise ModelLoadError(
                f"llama.cpp could not create a context of {min(n_ctx, _INITIAL_CTX)} tokens for {self.path}"
            )
        self._ctx = ctx
        self._ctx_size = llama_cpp.llama_n_ctx(ctx)
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self.n_batch = n_batch
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self.stats = MemberStats()
        tmpl = llama_cpp.llama_model_chat_template(self._model, None)
        self.chat_template: str | None = tmpl.decode("utf-8") if tmpl else None
        self._eos = llama_cpp.llama_vocab_eos(self._vocab)
        self._bos = llama_cpp.llama_vocab_bos(self._vocab)
        # By id, not a dict: token healing reads every piece once, and a list of 262k is the smaller of the two.
        self._piece_cache: list[bytes | None] = [None] * self.n_vocab
        # log P(cache[i] | cache[:i]) where an evidence read asked for its row (``evidence``), else NaN.
        self._lp: list[float] = []
        self._closed = False

    # -- tokenizer ---------------------------------------------------------------------------------------------

    def tokenize(self, text: str, *, special: bool = False, bos: bool = True) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        while True:
            buf = (llama_cpp.llama_token * cap)()
            n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, cap, bos, special)
            if n >= 0:
                return list(buf[:n])
            cap = -n

    def token_bytes(self, token_id: int) -> bytes:
        piece = self._piece_cache[token_id] if 0 <= token_id < self.n_vocab else None
        if piece is None:
            buf = ctypes.create_string_buffer(64)
            n = llama_cpp.llama_token_to_piece(self._vocab, token_id, buf, 64, 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = llama_cpp.llama_token_to_piece(self._vocab, token_id, buf, -n, 0, False)
            piece = buf.raw[:n]
            if 0 <= token_id < self.n_vocab:
                self._piece_cache[token_id] = piece
        return piece

    def is_eog(self, token_id: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token_id))

    @property
    def eos_id(self) -> int:
        return self._eos

    def special_text(self, which: str) -> str:
        tok = self._bos if which == "bos" else self._eos
        if tok < 0:
            return ""
        return llama_cpp.llama_vocab_get_text(self._vocab, tok).decode("utf-8", errors="replace")

    # -- cache hooks -------------------------------------------------------------------------------------------

    def _forward_chunk(self, chunk: list[int], pos: int, last_row: bool) -> Row | None:
        self._decode_chunk(chunk, pos, (len(chunk) - 1,) if last_row else ())
        self._lp.extend([math.nan] * len(chunk))
        if not last_row:
            return None
        return _row(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._ctx, -1), shape=(self.n_vocab,)))

    def _crop(self, n: int) -> bool:
        llama_cpp.llama_memory_seq_rm(self._mem, 0, n, -1)
        del self._lp[n:]
        return True

    def set_threads(self, n: int) -> None:
        """Compute the next ``llama_decode`` calls with ``n`` threads (only for a member loaded without a thread
        count, which ``decoding.parallel`` shares cores with): each output is one thread's dot product, so the
        numbers stay the same (tested). It never waits: the member's own thread applies it before its next
        decode, so cores can be handed to a member in the middle of a call."""
        if self.shares_cores:
            self._threads_wanted = n

    @property
    def threads(self) -> int:
        """The thread count the next ``llama_decode`` computes with."""
        return self._threads_wanted

    def _apply_threads(self) -> None:
        n = self._threads_wanted
        if n != self._cparams.n_threads:
            self._cparams.n_threads = self._cparams.n_threads_batch = n
            llama_cpp.llama_set_n_threads(self._ctx, n, n)

    def _new_context(self, size: int) -> ctypes.c_void_p | None:
        self._cparams.n_ctx = size
        ctx = llama_cpp.llama_init_from_model(self._model, self._cparams)
        if ctx:
            self._mem = llama_cpp.llama_get_memory(ctx)
        return ctx

    def _grow(self, needed: int) -> None:
        """Move the cache into a context of at least ``needed`` cells (doubling, at most ``n_ctx``).

        The cached cells are copied, not recomputed: every later number is exactly what a context created at the
        full size gives, since only the cells in use enter llama.cpp's arithmetic (tested).
        """
        size = self._ctx_size
        while size < needed:
            size *= 2
        self._move(min(size, self.n_ctx))

    def _move(self, size: int) -> None:
        """Move the cache into a fresh context of ``size`` cells (see ``_grow``)."""
        old = self._ctx
        state = None
        n = 0
        if self._cache:
            cap = llama_cpp.llama_state_seq_get_size(old, 0)
            state = (ctypes.c_uint8 * cap)()
            n = llama_cpp.llama_state_seq_get_data(old, state, cap, 0)
        new = self._new_context(size)
        if not new:
            self._mem = llama_cpp.llama_get_memory(old)
            raise MemberError(
                self.name,
                f"llama.cpp could not grow the context to {size} tokens (out of memory?); use a smaller n_ctx",
            )
        if state is not None and llama_cpp.llama_state_seq_set_data(new, state, n, 0) != n:
            llama_cpp.llama_free(new)
            self._mem = llama_cpp.llama_get_memory(old)
            raise MemberError(self.name, f"llama.cpp could not move the cache into a context of {size} tokens")
        llama_cpp.llama_free(old)
        self._ctx = new
        self._ctx_size = llama_cpp.llama_n_ctx(new)

    def _decode_chunk(self, chunk: Sequence[int], pos: int, rows: Container[int]) -> None:
        """One ``llama_decode`` of ``chunk`` at positions ``pos...``, with logits for the tokens at ``rows``."""
        if pos + len(chunk) > self._ctx_size:
            self._grow(pos + len(chunk))
        self._apply_threads()
        b = self._batch
        b.n_tokens = len(chunk)
        for i, tok in enumerate(chunk):
            b.token[i] = tok
            b.pos[i] = pos + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = i in rows
        rc = llama_cpp.llama_decode(self._ctx, b)
        self.stats.forward_calls += 1
        self.stats.tokens_evaluated += len(chunk)
        if rc != 0:
            self._reset()
            raise MemberError(self.name, f"llama_decode failed with code {rc}")

    def _reset(self) -> None:
        llama_cpp.llama_memory_clear(self._mem, True)
        self._lp.clear()
        self._forget()

    # -- primitives --------------------------------------------------------------------------------------------

    def _compute_evidence(self, context: Sequence[int], wanted: Sequence[int] | None) -> list[float]:
        """The context is decoded in the chunks ``prefill`` uses, with the rows ``wanted`` needs kept. Rows of whole
        chunks are the same whatever ran before, so their log-probabilities are remembered with the cache (``_lp``)
        and reused by a later read that shares them; a trailing part chunk is decoded afresh each time (its numbers
        depend on where it ends).
        """
        n = len(context)
        need = {t for t in wanted if 0 < t < n} if wanted is not None else set(range(1, n))
        held = common_prefix_len(self._cache, context)
        start = min(held, n, self._canonical)
        start -= start % CHUNK
        unknown = (t for t in need if t < min(start + 1, held) and math.isnan(self._lp[t]))
        start = min((t - t % CHUNK for t in unknown), default=start)
        if start < n:
            # The first re-read token's log-probability comes from the row before it: known, or read again.
            while start in need and (start >= held or math.isnan(self._lp[start])):
                start -= CHUNK
            first = self._lp[start] if 0 < start < held else math.nan
            self._truncate(start)
            self._rows.clear()
            self._decode_keeping_rows(list(context[start:]), start, first, need)
            # llama.cpp keeps the output buffer (every row asked for in one call) and the compute buffer's pages
            # the rows touched for the context's life; a fresh context holds them for one row again, so the
            # read's memory is not added to what decoding needs next. The cells are moved, not recomputed.
            self._move(self._ctx_size)
        return [float(x) for x in self._lp[1:n]]

    def _decode_keeping_rows(self, tokens: list[int], start: int, first: float, need: set[int]) -> None:
        """``_extend`` for a prompt, with the log-probability of each position in ``need`` kept in ``_lp`` (NaN
        where no row was asked for).

        ``first`` is the log-probability of ``tokens[0]``, whose row comes before this walk. Only the rows a
        position needs are asked of llama.cpp: its output buffer holds every row asked for in a call (64 x 262k
        floats for Gemma: 64 MiB) for the context's life. llama.cpp's repacked kernels compute the rows of a call in
        groups of 4 alike and the remainder past them otherwise, so the rows kept are a multiple of 4 plus that
        remainder: every row is then bit for bit what a read of every row gives (tested).
        """
        prev: tuple[np.ndarray, float] | None = None
        for pos, chunk in chunks(tokens, start):
            last = len(chunk) - 1
            # Rows before ``head`` are computed in groups of 4: pad the ones asked for to a multiple of 4. The rows
            # past it are computed apart in a read of every row: keep them all.
            head = len(chunk) - len(chunk) % 4
            grouped = {t - pos - 1 for t in need if pos < t <= pos + head} | ({last} if last < head else set())
            spare = (i for i in range(head) if i not in grouped)
            grouped |= {next(spare) for _ in range(-len(grouped) % 4)}
            # Row index in the chunk -> row in llama.cpp's output, which keeps the chunk's order.
            at = {i: k for k, i in enumerate(sorted(grouped | set(range(head, len(chunk)))))}
            self._decode_chunk(chunk, pos, at)
            rows = np.ctypeslib.as_array(llama_cpp.llama_get_logits(self._ctx), shape=(len(at), self.n_vocab))
            lse = _row_logsumexp(rows)
            for i, tok in enumerate(chunk):
                # The row before a chunk's first token is the previous chunk's last.
                if i > 0:
                    k = at.get(i - 1)
                    self._lp.append(math.nan if k is None else float(rows[k, tok] - lse[k]))
                elif prev is not None:
                    self._lp.append(float(prev[0][tok] - prev[1]))
                else:
                    self._lp.append(first)
            self._took(chunk, pos)
            prev = (rows[-1].copy(), float(lse[-1]))
            self._remember(pos + last, _row(rows[-1]))

    def score(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[list[float]]:
        with self._guard():
            return [self._score_one(context, cont) if cont else [] for context, cont in requests]

    def _score_one(self, context: Sequence[int], cont: Sequence[int]) -> list[float]:
        # One token per step, through the same cache as proposals: rows a draft already walked are reused, and
        # the numbers are exactly a proposer's. llama.cpp switches matrix kernels with the batch shape: for the
        # K-quant models here (Gemma, Qwen) a token decoded together with others gets logits up to ~2 apart from
        # the same token decoded alone (measured), so batched scoring would let a member prefer its own
        # candidates through numerical noise.
        ids = list(context)
        lps: list[float] = []
        for tok in cont:
            lps.append(self._row_after(ids).logprob(tok))
            ids.append(tok)
        return lps

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = file_fingerprint([self.path])
        return self._fingerprint

    def close(self) -> None:
        if self._closed or llama_cpp is None:
            return
        self._closed = True
        llama_cpp.llama_batch_free(self._batch)
        llama_cpp.llama_free(self._ctx)
        llama_cpp.llama_model_free(self._model)

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        # Not contextlib.suppress: at interpreter exit module globals may already be None.
        try:  # noqa: SIM105
            self.close()
        except Exception:
            pass
