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
from collections.abc import AsyncIterator

from trainscale.operator.adapters import k8s

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
    async def slot(self, *, first: bool) -> AsyncIterator[None]:
        """Hold one of the ``limit`` places for the block (a job's ``first`` pass goes ahead
        of every waiting later pass)."""
        await self._acquire(FIRST_PASS if first else LATER_PASS)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, priority: int) -> None:
        if self._running < self._limit:  # then nobody waits: a freed place goes to a waiter
            self._running += 1
            return
        place: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (priority, next(self._arrivals), place))
        try:
            await place
        except asyncio.CancelledError:
            # Cancelled while waiting: the place is cancelled too and skipped by _release.
            # Cancelled just after a place was handed over: hand it on.
            if place.done() and not place.cancelled():
                self._release()
            raise

    def _release(self) -> None:
        while self._waiting:
            _, _, place = heapq.heappop(self._waiting)
            if not place.done():
                place.set_result(None)  # the place goes to it: ``running`` stays
                return
        self._running -= 1


PASSES = PassGate(k8s.API_CONCURRENCY)
