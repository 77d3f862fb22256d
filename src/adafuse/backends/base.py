"""The one protocol every member implements, whatever engine runs it.

Four primitives (see docs/BACKENDS.md): the member's own tokenizer, the top-k next tokens after a context,
greedy continuation, and the log-likelihood of continuations after a context. Every call takes the *whole*
context as token ids; a member keeps a prefix cache so that a context that only grew costs only its new tokens.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import os
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

#: A stop test on the tokens a greedy continuation has written so far.
Until = Callable[[list[int]], bool]


@dataclass(frozen=True)
class TopK:
    """The k most likely next tokens, most likely first, with natural-log probabilities (temperature 1)."""

    ids: tuple[int, ...]
    logprobs: tuple[float, ...]

    @property
    def margin(self) -> float:
        """p(1) - p(2): how far the favourite is ahead; 1.0 when only one token has any mass."""
        if len(self.logprobs) < 2:
            return 1.0
        return math.exp(self.logprobs[0]) - math.exp(self.logprobs[1])


@dataclass
class MemberStats:
    """Cost counters, cumulative over the member's life; the decoder reports per-request differences."""

    forward_calls: int = 0
    tokens_evaluated: int = 0
    tokens_reused: int = 0

    def snapshot(self) -> MemberStats:
        return MemberStats(self.forward_calls, self.tokens_evaluated, self.tokens_reused)


@dataclass(frozen=True)
class Step:
    """One greedy step: the distribution that was read and the token taken from it."""

    topk: TopK
    token: int

    @property
    def logprob(self) -> float:
        return self.topk.logprobs[self.topk.ids.index(self.token)]


@runtime_checkable
class Member(Protocol):
    """A model taking part in an ensemble: what every decoder calls.

    Abilities only some members have are the small protocols below, checked with ``isinstance``: batched steps
    (:class:`BatchedSteps`), the whole vocabulary (:class:`FullVocabulary`), running off the decoding thread
    (:class:`Concurrent`) and a continuation faster than step by step (:class:`Greedy`, see :func:`greedy`).
    """

    name: str
    n_ctx: int
    stats: MemberStats
    #: the GGUF / tokenizer chat template, or None when the model has none (base models).
    chat_template: str | None

    def tokenize(self, text: str, *, special: bool = False, bos: bool = True) -> list[int]:
        """Token ids of ``text``; with ``bos``, the BOS token too when the model expects one at the start."""
        ...

    def token_bytes(self, token_id: int) -> bytes:
        """The surface bytes of one token as it appears after other text (leading space kept)."""
        ...

    def is_eog(self, token_id: int) -> bool:
        """True for end-of-generation tokens (EOS, end-of-turn)."""
        ...

    @property
    def eos_id(self) -> int:
        """The end token that scores "the answer ends here"."""
        ...

    def special_text(self, which: str) -> str:
        """The text of the ``bos`` or ``eos`` token, for chat templates that print them ("" when unknown)."""
        ...

    def prefill(self, context: Sequence[int]) -> None:
        """Start of a request: evaluate ``context`` so that later results do not depend on earlier requests."""
        ...

    def next_token(self, context: Sequence[int], k: int) -> TopK:
        """Top-k next tokens after ``context``."""
        ...

    def evidence(self, context: Sequence[int], wanted: Sequence[int] | None = None) -> list[float] | None:
        """The member's likelihood of a text, for automatic weights: ``log P(context[t] | context[:t])`` for
        every t = 1 .. len(context) - 1. ``context`` is a prompt or its leading part (up to its last worked
        answer); backends remember what they read, so a few-shot part shared by many requests is read once.
        ``wanted``: the positions t the caller reads (None: all); a backend may return NaN at the others, and
        need not compute them. The numbers must not depend on what the member ran before, nor on ``wanted``.
        None when the backend cannot compute them (the automatic weights then keep the given ones), so every
        member answers the call."""
        ...

    def score(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[list[float]]:
        """For each (context, continuation): the log-probability of every continuation token in turn."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class BatchedSteps(Protocol):
    """Steps several contexts of one length that share a prefix in one call: an uncertain round's branches are
    walked in lockstep (``decoding.proposals.write_drafts``)."""

    def next_tokens(self, contexts: Sequence[Sequence[int]], k: int) -> list[TopK]:
        """``next_token`` for each context, in order."""
        ...


@runtime_checkable
class FullVocabulary(Protocol):
    """Reads every token's text and any token's log-probability cheaply (local engines): token healing then sums
    over the whole vocabulary (:func:`tokens_starting_with`)."""

    #: the number of token ids
    n_vocab: int

    def logprobs_of(self, context: Sequence[int], token_ids: Sequence[int]) -> list[float]:
        """Next-token log-probabilities of the given ids after ``context``."""
        ...


@runtime_checkable
class Concurrent(Protocol):
    """May run in a worker thread beside the other members while ``concurrent`` is True (``decoding.parallel``):
    remote members, which wait on the network, and in-process ones that leave cores free."""

    concurrent: bool


@runtime_checkable
class Greedy(Protocol):
    """A greedy continuation of its own, cheaper than one ``next_token`` per step (a remote member fetches several
    tokens a request); :func:`greedy` falls back to steps for other members."""

    def greedy(self, context: Sequence[int], max_tokens: int, k: int, until: Until | None = None) -> list[Step]:
        """Greedy continuation of up to ``max_tokens``; ends early at an end token or when ``until`` says so."""
        ...


@runtime_checkable
class Fingerprinted(Protocol):
    """Can name its weights by content, so a fitted controller refuses other weights under the same name."""

    def fingerprint(self) -> str:
        """A checksum of the member's weight files (``file_fingerprint``)."""
        ...


def fingerprint(member: object) -> str | None:
    return member.fingerprint() if isinstance(member, Fingerprinted) else None


def file_fingerprint(paths: Sequence[Path]) -> str:
    """sha256 over the files' sizes and contents, in the given order."""
    h = hashlib.sha256()
    for p in paths:
        h.update(str(p.stat().st_size).encode())
        with p.open("rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return "sha256:" + h.hexdigest()


@runtime_checkable
class StepwiseScores(Protocol):
    """Scores a continuation one token per call, each about one decode, and evaluates every token from the
    prompt's last on alone (llama.cpp, whose kernels change with the batch shape), so a token's numbers depend only
    on the tokens before it: ``decoding.bounded`` may then stop scoring a candidate that can no longer win."""

    scores_stepwise: bool


def scores_stepwise(member: object) -> bool:
    """True for a member that pays per scored token (:class:`StepwiseScores`)."""
    return isinstance(member, StepwiseScores) and bool(member.scores_stepwise)


@runtime_checkable
class SharesCores(Protocol):
    """An in-process member loaded without a thread count: ``decoding.parallel`` shares the machine's cores among
    the members working at once, and a member working alone gets them all."""

    #: False where the user gave a thread count: the member keeps it.
    shares_cores: bool
    #: True where the numbers do not depend on the thread count (llama.cpp: each output is one thread's dot
    #: product), so a finished member's cores may go to the others in the middle of a call. Otherwise (torch's
    #: float32 kernels move by about 1e-7) the count is fixed per call by the members working in it, so the
    #: answer is the same run to run whatever the timing.
    exact_across_threads: bool

    def set_threads(self, n: int) -> None:
        """Compute the next calls with ``n`` threads."""
        ...


def runs_concurrently(member: object) -> bool:
    """True for a member that declares it may run beside the others (:class:`Concurrent`)."""
    return isinstance(member, Concurrent) and bool(member.concurrent)


def shares_cores(member: object) -> bool:
    """True for a member whose thread count ``decoding.parallel`` may set (:class:`SharesCores`)."""
    return isinstance(member, SharesCores) and bool(member.shares_cores)


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, which containers and ``taskset`` narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def greedy(member: Member, context: Sequence[int], max_tokens: int, k: int, until: Until | None = None) -> list[Step]:
    """Greedy continuation of up to ``max_tokens`` by the member's own :class:`Greedy` if it has one, else by
    steps; ends early at an end token or when ``until`` says so."""
    if isinstance(member, Greedy):
        return member.greedy(context, max_tokens, k, until)
    return greedy_by_steps(member, context, max_tokens, k, until)


def greedy_by_steps(
    member: Member, context: Sequence[int], max_tokens: int, k: int, until: Until | None = None
) -> list[Step]:
    """Greedy decoding as repeated ``next_token`` calls; cheap on members whose prefix cache is local."""
    ctx = list(context)
    steps: list[Step] = []
    for _ in range(max_tokens):
        if len(ctx) >= member.n_ctx:
            break
        top = member.next_token(ctx, k)
        tok = top.ids[0]
        steps.append(Step(top, tok))
        ctx.append(tok)
        if member.is_eog(tok) or (until is not None and until([s.token for s in steps])):
            break
    return steps


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class _VocabularyIndex:
    """A member's token texts in sorted order, so that the tokens starting with a text are one contiguous run."""

    def __init__(self, member: Member, n_vocab: int) -> None:
        texts = [b"" if member.is_eog(t) else member.token_bytes(t) for t in range(n_vocab)]
        # Sorted as numpy arrays, not as (text, id) pairs: a vocabulary of 262k Python tuples and ints is tens of
        # MiB while sorting. Stable, so equal texts keep id order.
        order = np.argsort(np.array(texts, dtype=object), kind="stable")
        order = order[np.fromiter((bool(texts[i]) for i in order), dtype=bool, count=len(order))]
        self.texts = [texts[i] for i in order]
        self.ids = order.astype(np.int32)

    def starting_with(self, text: bytes) -> list[int]:
        start = end = bisect.bisect_left(self.texts, text)
        while end < len(self.texts) and self.texts[end].startswith(text):
            end += 1
        return [int(t) for t in self.ids[start:end]]


_INDEXES: weakref.WeakKeyDictionary[Member, _VocabularyIndex] = weakref.WeakKeyDictionary()


def tokens_starting_with(member: Member, text: bytes) -> list[int] | None:
    """Every ordinary token of ``member`` whose text starts with ``text``; None for a member without the
    :class:`FullVocabulary` ability (a remote engine, whose token texts cost a request each). The index is built on
    first use, once per member."""
    if not isinstance(member, FullVocabulary):
        return None
    index = _INDEXES.get(member)
    if index is None:
        index = _INDEXES[member] = _VocabularyIndex(member, member.n_vocab)
    return index.starting_with(text)
