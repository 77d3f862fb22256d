"""Running members side by side: ``map_active`` runs one function per active member, the members that may run at
once in a thread pool, with the machine's cores shared out among the in-process ones.

The rule (measured in docs/PERFORMANCE.md, "Threads"): members loaded without a thread count work side by side
with the cores divided among them, and a member working alone gets every core. One-token decodes of models this
small barely use a second thread, so three members at one thread each beat three one after another with all the
threads; a member alone, as when one is trusted, decodes faster with all of them. The cores of a member that has
finished its part of a call go to those still working whose numbers do not depend on their thread count
(llama.cpp's, tested: the slowest member no longer decodes on one core while the others idle); a transformers
member keeps the count it started the call with, which depends only on the members working in it. Explicit thread
counts are kept: such a member runs beside the others when it leaves cores free. Remote members only wait on the
network and always run beside the others. So no answer depends on the timing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from adafuse.backends.base import available_cores, runs_concurrently, shares_cores
from adafuse.decoding.state import DecodeState

T = TypeVar("T")

# Remote members only wait on sockets, so a generous bound costs nothing; created lazily, shared by every ensemble.
_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=32, thread_name_prefix="adafuse-member")
    return _POOL


@dataclass(frozen=True)
class Allocation:
    """How one call runs its members (by position in the call): which go to worker threads, and the thread
    count each core-sharing member computes with."""

    pooled: frozenset[int]
    threads: dict[int, int] = field(default_factory=dict)


def allocate(members: Sequence[object], cores: int | None = None) -> Allocation:
    """The members that share cores split ``cores`` evenly (at least one thread each) and run side by side
    when there are two or more of them; one alone computes with every core, in the calling thread."""
    cores = cores or available_cores()
    sharing = [j for j, m in enumerate(members) if shares_cores(m)]
    others = {j for j, m in enumerate(members) if j not in sharing and runs_concurrently(m)}
    if len(sharing) < 2:
        return Allocation(frozenset(others), {j: cores for j in sharing})
    return Allocation(frozenset(others | set(sharing)), share(cores, sharing))


def share(cores: int, working: Sequence[int]) -> dict[int, int]:
    """The cores divided evenly among the core-sharing members still working, at least one thread each."""
    each = max(1, cores // max(1, len(working)))
    return {j: each for j in working}


def hand_on(shared: dict[int, Any], cores: int, working: set[int]) -> None:
    """A member has finished its part of the call: the cores go to the core-sharing members still working whose
    numbers do not depend on the thread count (the others keep theirs to the end of the call)."""
    for k, n in share(cores, sorted(working)).items():
        if shared[k].exact_across_threads:
            shared[k].set_threads(n)


def map_active(state: DecodeState, fn: Callable[[int], T]) -> list[T]:
    """``[fn(i) for i in state.active]``, with members run side by side as ``allocate`` decides.

    Every call finishes before this returns, and the first error in member order is raised, so a failure is
    reported the same way whatever the timing.
    """
    members = list(state.active)
    cores = available_cores()
    plan = allocate([state.views[i].member for i in members], cores)
    shared: dict[int, Any] = {j: state.views[members[j]].member for j in plan.threads}
    for j, n in plan.threads.items():
        shared[j].set_threads(n)
    working = set(shared)
    lock = threading.Lock()

    def run(i: int) -> T:
        try:
            return fn(i)
        finally:
            j = members.index(i)
            if j in working and len(shared) > 1:
                with lock:
                    working.discard(j)
                    hand_on(shared, cores, working)

    try:
        return _run(members, [i for j, i in enumerate(members) if j in plan.pooled], run)
    finally:
        # Calls made outside this function (a baseline's lone member) compute with every core again.
        for member in shared.values():
            member.set_threads(cores)


def _run(members: list[int], pooled: list[int], fn: Callable[[int], T]) -> list[T]:
    if len(members) < 2 or not pooled:
        return [fn(i) for i in members]
    futures: dict[int, Future[T]] = {i: _pool().submit(fn, i) for i in pooled}
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
