"""Which reconcile passes run now: a bounded number at once, new jobs' first passes first.

Why this module exists: a pass is a few blocking API calls in a row, each through the
thread pool (``asyncio.to_thread``). With every job's loop free to start a pass, a burst of
N new jobs put N first calls in the pool's queue, then N second calls behind them, and so
on: every job waited for nearly every other job's first pass before its pods were created,
and the passes woken by the burst's own pod events (jobs already going) queued among them.
The gate lets ``API_CONCURRENCY`` passes run at once (as many as there are threads, so a pass
that runs is not queued behind the others' calls) and hands a freed place to a waiting first
pass of a job before any other pass, then in order of arrival.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator, Awaitable
from typing import Any, Protocol

from trainscale.operator.adapters import k8s


class Stop(Protocol):
    """A stop flag (kopf's ``DaemonStopped``, an ``asyncio.Event``)."""

    def is_set(self) -> bool: ...

    def wait(self) -> Awaitable[object]: ...


FIRST_PASS = 0
LATER_PASS = 1


class PassGate:
    """At most ``limit`` passes at once; waiting passes by (priority, arrival)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self._limit = limit
        self._running = 0
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, f in self._waiting if not f.done())

    @contextlib.asynccontextmanager
    async def slot(self, *, first: bool, unless: Stop | None = None) -> AsyncIterator[bool]:
        """Hold one of the ``limit`` places for the block (a job's ``first`` pass goes ahead
        of every waiting later pass). Yields whether it got one: not when ``unless`` (kopf's
        stop flag of the loop) was set while it waited, so a deleted job's loop never waits
        for a place it no longer needs."""
        admitted = await self._acquire(FIRST_PASS if first else LATER_PASS, unless)
        try:
            yield admitted
        finally:
            if admitted:
                self._release()

    async def _acquire(self, priority: int, unless: Stop | None) -> bool:
        if unless is not None and unless.is_set():
            return False
        if self._running < self._limit:  # then nobody waits: a freed place goes to a waiter
            self._running += 1
            return True
        place: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (priority, next(self._arrivals), place))
        waiters: list[asyncio.Future[Any]] = [place]
        stop = asyncio.ensure_future(unless.wait()) if unless is not None else None
        if stop is not None:
            waiters.append(stop)
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self._abandon(place)
            raise
        finally:
            if stop is not None:
                stop.cancel()
                await asyncio.gather(stop, return_exceptions=True)
        if place.done() and not place.cancelled():
            return True
        self._abandon(place)
        return False

    def _abandon(self, place: asyncio.Future[None]) -> None:
        """A waiter leaves: its place is skipped (not handed over yet) or handed on."""
        if place.done() and not place.cancelled():
            self._release()
        else:
            place.cancel()

    def _release(self) -> None:
        while self._waiting:
            _, _, place = heapq.heappop(self._waiting)
            if not place.done():
                place.set_result(None)  # the place goes to it: ``running`` stays
                return
        self._running -= 1


PASSES = PassGate(k8s.API_CONCURRENCY)
