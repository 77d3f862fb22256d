"""The chunked prefix cache every in-process engine shares.

A member holds one KV sequence as the token list ``_cache`` and keeps the next-token rows it computed by position.
A call whose context shares a prefix with the cache crops the cache to that prefix and evaluates only the rest.
Engines' numbers for a token depend on the batch it was evaluated in (llama.cpp switches kernels with the batch
shape; CPU matrix kernels sum in an order that depends on the row count), so every evaluation is cut at fixed
multiples of ``CHUNK`` positions, and a request reuses only the leading whole chunks that were evaluated that way
(``_canonical``, see ``prefill``): its answer is then the same byte for byte whatever ran before.

From the prompt's last token on, a stepwise engine (``scores_stepwise``: llama.cpp) evaluates every token alone,
one per call, as its scoring and generation do anyway, and a walk back further into the prompt restarts at a chunk
boundary: a token's numbers then depend only on the tokens before it, never on where the cache walked within the
request.

An engine supplies two hooks, ``_forward_chunk`` (evaluate one chunk onto its cache) and ``_crop`` (drop the cache
from a position on), plus ``_compute_evidence``, its way of reading a prompt with every row kept.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np

from adafuse.backends.base import MemberStats, Step, TopK, Until, common_prefix_len, greedy_by_steps
from adafuse.errors import PromptError

#: Evaluations are cut at multiples of this many positions.
CHUNK = 64
#: Next-token rows remembered per member: branching returns to the same context B times. Each is a vocabulary of
#: floats (1 MiB for Gemma). Against 16: the same text, with 1.1% more tokens evaluated over the 70 golden cases.
ROWS_KEPT = 8
#: Finished evidence reads remembered per member: one per few-shot prompt in use is all a task needs.
EVIDENCE_KEPT = 32


@dataclass(frozen=True)
class Row:
    """The next-token distribution after one position: ``log P(t) = values[t] - shift`` (raw logits with their
    log-sum-exp, or log-probabilities with shift 0)."""

    values: np.ndarray
    shift: float = 0.0

    def logprob(self, token: int) -> float:
        return float(self.values[token] - self.shift)

    def logprobs(self, token_ids: Sequence[int]) -> list[float]:
        return [self.logprob(t) for t in token_ids]

    def top(self, k: int) -> TopK:
        k = max(1, min(k, len(self.values)))
        idx = np.argpartition(-self.values, k - 1)[:k]
        # Sort by value, then by id, so equal values give the same order on every run.
        order = np.lexsort((idx, -self.values[idx]))
        top = idx[order]
        return TopK(tuple(int(t) for t in top), tuple(self.logprob(t) for t in top))


def chunks(tokens: Sequence[int], start: int) -> Iterator[tuple[int, list[int]]]:
    """(position, tokens) of each piece of ``tokens`` placed at ``start``, cut at the multiples of ``CHUNK``."""
    lo = 0
    while lo < len(tokens):
        pos = start + lo
        chunk = list(tokens[lo : lo + CHUNK - pos % CHUNK])
        yield pos, chunk
        lo += len(chunk)


class PrefixCachedMember:
    """The member primitives on top of one chunked, rollback-able prefix cache; subclasses are the engines."""

    name: str
    n_ctx: int
    stats: MemberStats
    #: Every token from the prompt's last on is evaluated alone (the module's docstring; ``base.StepwiseScores``).
    scores_stepwise: bool = False

    def __init__(self) -> None:
        # Token ids held in the engine's cache, and the next-token rows we still hold, by position.
        self._cache: list[int] = []
        self._rows: OrderedDict[int, Row] = OrderedDict()
        # How many leading cached tokens were evaluated in whole, aligned chunks on such chunks: the only part a
        # later request may reuse, since a fresh member evaluates a prompt that way (tokens evaluated one by one,
        # as a generation is, give other numbers, so a conversation's next turn must not reuse them).
        self._canonical = 0
        # Where the current request's prompt ends (set by ``prefill``); None: everything is prompt.
        self._prompt_end: int | None = None
        # Finished evidence reads by their context.
        self._evidence: OrderedDict[tuple[tuple[int, ...], tuple[int, ...] | None], list[float]] = OrderedDict()
        # Reentrant: an engine's override of a primitive holds it around the shared one.
        self._lock = threading.RLock()

    # -- what an engine supplies -------------------------------------------------------------------------------

    def _forward_chunk(self, chunk: list[int], pos: int, last_row: bool) -> Row | None:
        """Evaluate ``chunk`` at positions ``pos...`` onto the engine's cache (counting it in ``stats``); the row
        after its last token if ``last_row``. The shared bookkeeping (``_took``) follows."""
        raise NotImplementedError

    def _crop(self, n: int) -> bool:
        """Drop the engine's cache from position ``n`` on (``n`` < tokens held); False when it could not and
        emptied itself instead (``_forget`` included)."""
        raise NotImplementedError

    def _compute_evidence(self, context: Sequence[int], wanted: Sequence[int] | None) -> list[float]:
        """``evidence`` of a context not read before, the lock held."""
        raise NotImplementedError

    def _guard(self) -> AbstractContextManager[Any]:
        """Held around every primitive: the lock, and any mode the engine computes in."""
        return self._lock

    # -- bookkeeping -------------------------------------------------------------------------------------------

    def _took(self, chunk: list[int], pos: int) -> None:
        """The engine evaluated ``chunk`` at ``pos`` onto its cache in one call."""
        self._cache.extend(chunk)
        if pos == self._canonical and len(chunk) == CHUNK:
            # One evaluation of exactly this chunk on a canonical prefix: what a fresh member computes.
            self._canonical += CHUNK

    def _forget(self) -> None:
        self._cache.clear()
        self._rows.clear()
        self._canonical = 0

    def _truncate(self, n: int) -> None:
        """Keep the first ``n`` cached tokens; an engine that cannot crop empties its cache instead, so callers
        read ``len(self._cache)`` afterwards."""
        if n >= len(self._cache) or not self._crop(n):
            return
        del self._cache[n:]
        self._canonical = min(self._canonical, n - n % CHUNK)
        # A row at position p depends on tokens 0..p only.
        for pos in [p for p in self._rows if p >= n]:
            del self._rows[pos]

    def _remember(self, pos: int, row: Row) -> None:
        self._rows[pos] = row
        self._rows.move_to_end(pos)
        # The prompt's last row stays: without it a stepwise engine would evaluate the prompt's last chunk again.
        pinned = None if self._prompt_end is None else self._prompt_end - 1
        while len(self._rows) > ROWS_KEPT:
            oldest = next(p for p in self._rows if p != pinned)
            del self._rows[oldest]

    def _extend(self, tokens: Sequence[int], want_last: bool) -> Row | None:
        """Append ``tokens`` to the cache in aligned chunks; the row after the last one if ``want_last``."""
        start = len(self._cache)
        if start + len(tokens) > self.n_ctx:
            raise PromptError(
                f"member {self.name!r}: context of {start + len(tokens)} tokens exceeds its window of {self.n_ctx}"
            )
        row = None
        end = start + len(tokens)
        for pos, chunk in self._pieces(tokens, start):
            row = self._forward_chunk(chunk, pos, want_last and pos + len(chunk) == end)
            self._took(chunk, pos)
        return row

    def _pieces(self, tokens: Sequence[int], start: int) -> Iterator[tuple[int, list[int]]]:
        """``chunks`` of ``tokens`` placed at ``start``, and for a stepwise engine one token per piece from the
        prompt's last token on."""
        stepwise = self._stepwise_from()
        split = len(tokens) if stepwise is None else max(0, min(len(tokens), stepwise - start))
        yield from chunks(tokens[:split], start)
        for k in range(split, len(tokens)):
            yield start + k, [tokens[k]]

    def _stepwise_from(self) -> int | None:
        """Where a stepwise engine starts evaluating one token per call: the prompt's last token, so that a
        candidate which re-tokenises it (token healing) walks back without evaluating the prompt's chunk again.
        None: every evaluation is cut in chunks (not a stepwise engine, or no prompt yet)."""
        if not self.scores_stepwise or self._prompt_end is None:
            return None
        return self._prompt_end - 1

    def _row_after(self, context: Sequence[int]) -> Row:
        """The row after ``context``, evaluating only what the cache does not already hold."""
        if not context:
            raise PromptError(f"member {self.name!r}: empty context")
        n = len(context)
        keep = common_prefix_len(self._cache, context)
        if keep == n and (n - 1) in self._rows:
            # Cached tokens beyond the context stay: the next call may walk on along the same path.
            self.stats.tokens_reused += n
            self._rows.move_to_end(n - 1)
            return self._rows[n - 1]
        # The last token is evaluated again when its row was not kept: a row cannot be had without it.
        keep = min(keep, n - 1)
        stepwise = self._stepwise_from()
        if stepwise is not None and keep < stepwise:
            keep -= keep % CHUNK  # the prompt's chunk is evaluated again whole, as ``prefill`` evaluated it
        self._truncate(keep)
        keep = len(self._cache)
        self.stats.tokens_reused += keep
        row = self._extend(context[keep:], want_last=True)
        assert row is not None
        self._remember(n - 1, row)
        return row

    # -- primitives --------------------------------------------------------------------------------------------

    def prefill(self, context: Sequence[int]) -> None:
        """Start of a request: reuse only whole canonical chunks of a cached prefix, so nothing depends on history.

        A shared few-shot prompt is still evaluated once; the rest of the prompt is evaluated from the last chunk
        boundary, exactly as on a fresh member.
        """
        if not context:
            raise PromptError(f"member {self.name!r}: empty context")
        with self._guard():
            self._rows.clear()
            self._prompt_end = len(context)
            keep = min(common_prefix_len(self._cache, context), len(context) - 1, self._canonical)
            self._truncate(keep - keep % CHUNK)
            keep = len(self._cache)
            self.stats.tokens_reused += keep
            row = self._extend(context[keep:], want_last=True)
            assert row is not None
            self._remember(len(context) - 1, row)

    def evidence(self, context: Sequence[int], wanted: Sequence[int] | None = None) -> list[float] | None:
        """log P(context[t] | context[:t]) for every t >= 1; see ``Member.evidence``. Whole reads are remembered by
        their context and positions: a task's few-shot part is read once."""
        if not context:
            raise PromptError(f"member {self.name!r}: empty context")
        key = (tuple(context), None if wanted is None else tuple(wanted))
        with self._guard():
            if key in self._evidence:
                self._evidence.move_to_end(key)
                return list(self._evidence[key])
            out = self._compute_evidence(context, wanted)
            self._evidence[key] = out
            while len(self._evidence) > EVIDENCE_KEPT:
                self._evidence.popitem(last=False)
            return list(out)

    def next_token(self, context: Sequence[int], k: int) -> TopK:
        with self._guard():
            row = self._row_after(context)
        return row.top(k)

    def logprobs_of(self, context: Sequence[int], token_ids: Sequence[int]) -> list[float]:
        with self._guard():
            row = self._row_after(context)
        return row.logprobs(token_ids)

    def greedy(self, context: Sequence[int], max_tokens: int, k: int, until: Until | None = None) -> list[Step]:
        # Each step is one token on the cache: plain argmax, no engine sampling defaults involved.
        return greedy_by_steps(self, context, max_tokens, k, until)
