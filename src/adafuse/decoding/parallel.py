"""Running members side by side: ``map_active`` runs one function per active member, members that declare
``concurrent = True`` (remote ones, and in-process ones that leave cores free) in a thread pool."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from adafuse.backends.base import runs_concurrently
from adafuse.decoding.state import DecodeState

T = TypeVar("T")

# Remote members only wait on sockets, so a generous bound costs nothing; created lazily, shared by every ensemble.
_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=32, thread_name_prefix="adafuse-member")
    return _POOL


def map_active(state: DecodeState, fn: Callable[[int], T]) -> list[T]:
    """``[fn(i) for i in state.active]``, with members that declare ``concurrent`` run in worker threads.

    An in-process member that uses every core runs here, one after another: two of them computing at once spin
    on the same cores. One given fewer threads than there are cores (``--threads 1``) declares itself
    concurrent, like remote members, which only wait on the network: one-token decodes of small models barely
    use a second thread, so members side by side beat one member with all of them (docs/PERFORMANCE.md). Each
    member's numbers do not depend on the timing, so neither does the answer. Every call finishes before this
    returns, and the first error in member order is raised, so a failure is reported the same way whatever the
    timing.
    """
    members = list(state.active)
    concurrent = [i for i in members if runs_concurrently(state.views[i].member)]
    if len(members) < 2 or not concurrent:
        return [fn(i) for i in members]
    futures: dict[int, Future[T]] = {i: _pool().submit(fn, i) for i in concurrent}
    results: dict[int, T] = {}
    errors: dict[int, BaseException] = {}
    for i in members:
        if i in futures:
            continue
        try:
            results[i] = fn(i)
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after the threads are done with the state
            errors[i] = exc
            break
    for i, fut in futures.items():
        try:
            results[i] = fut.result()
        except BaseException as exc:  # noqa: BLE001 - same
            errors[i] = exc
    if errors:
        raise errors[min(errors, key=members.index)]
    return [results[i] for i in members]
