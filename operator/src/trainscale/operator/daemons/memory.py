"""Giving the memory a burst of jobs freed back to the operating system.

Why this module exists: measured with rounds of 200 jobs created and deleted at once
(docs/operator-scale.md), what the operator *holds* after the jobs are gone is flat round
over round (the same Python objects, the same bytes in use in both allocators), yet its RSS
stayed 60-80 MiB above the start. All of that was allocator retention of the burst's peak:
freed chunks that glibc's malloc keeps in its heaps (~25-35 MiB, released by
``malloc_trim``) and partly used pymalloc arenas (~35-40 MiB, each returned only once every
object in it is freed; bounded by the peak). ``MALLOC_ARENA_MAX`` made no difference.
glibc gives freed memory back by itself only from the top of a heap, so a burst's memory
stays resident for good unless someone trims.

So once the number of jobs has changed (jobs listed, added or deleted) and then the watch
events (of the jobs and of their pods and Services: a deleted job's pods go after it, and
handling their events allocates and frees again) have stopped for ``QUIET_SECONDS`` — or
``MAX_DELAY_SECONDS`` after the change, if events keep coming — the operator calls
``malloc_trim(0)`` once (a few milliseconds). An operator whose jobs do not come and go
never trims, as it has nothing to give back.

A trim that ``MAX_DELAY_SECONDS`` forced (the events had not stopped) comes before the burst
has peaked: a thousand new arbitrated jobs are created in 10 s, but their pods start, their
admissions are written and their first autoscale passes run for a minute or two after the
first trim, and that peak stayed resident (549 MiB with the jobs running, of which a trim
then returned 98). So a forced trim keeps the release pending: the next is due when the
events stop, or ``MAX_DELAY_SECONDS`` later, at most ``FOLLOW_UPS`` times in a row (events
that never stop, such as a thousand autoscaled jobs' status writes, do not make it a timer).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

QUIET_SECONDS = 5.0
"""How long the watch events must have stopped before the freed memory is given back."""
MAX_DELAY_SECONDS = 60.0
"""... but at most this long after the first change, while jobs keep coming and going."""
FOLLOW_UPS = 4
"""How many more times a release that ``MAX_DELAY_SECONDS`` forced is repeated while events
keep coming (each waits for the events to stop, or ``MAX_DELAY_SECONDS``)."""
RELEASE_LOG = "Returned freed memory to the OS"
"""The start of the INFO line each release logs (with the RSS before and after)."""


def trim_delay(now: float, first: float, last: float, quiet: float, max_delay: float) -> float:
    """Seconds from ``now`` until the trim is due, for changes at ``first`` (the earliest not
    yet followed by a trim) and ``last`` (the latest): ``quiet`` after the last, at most
    ``max_delay`` after the first; 0 when due."""
    return max(0.0, min(last + quiet, first + max_delay) - now)


def forced_in_a_row(now: float, last: float, quiet: float, before: int) -> int:
    """How many releases in a row, this one at ``now`` included, came while the events went
    on (the latest at ``last``, not ``quiet`` before): ``before + 1`` for one that
    ``max_delay`` forced, 0 for one the events' quiet spell made due."""
    return before + 1 if now < last + quiet else 0


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``; None on a C library without it (musl, macOS)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def rss_mib() -> float | None:
    """This process's resident memory in MiB (None where /proc is not there)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except OSError:
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def release_free_memory() -> bool:
    """Give the C heap's free pages back to the OS (``malloc_trim(0)``: every arena, also
    the free chunks below live ones). Returns whether the C library could."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


class MemoryRelease:
    """Calls ``release`` once the number of jobs has changed and then the events settled (see
    the module docstring). Driven by the event loop's timers: :meth:`jobs_changed` must be called
    on the running loop."""

    def __init__(
        self,
        release: Callable[[], bool] = release_free_memory,
        *,
        quiet: float = QUIET_SECONDS,
        max_delay: float = MAX_DELAY_SECONDS,
        follow_ups: int = FOLLOW_UPS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._release = release
        self._quiet = quiet
        self._max_delay = max_delay
        self._follow_ups = follow_ups
        self._clock = clock
        self._first: float | None = None
        self._last = 0.0
        self._forced = 0  # releases forced by max_delay in a row, since the jobs changed
        self._timer: asyncio.TimerHandle | None = None
        self.releases = 0

    def jobs_changed(self) -> None:
        """A job was listed, added or deleted: give the memory back once things settle."""
        now = self._clock()
        if self._first is None:
            self._first = now
        self._last = now
        self._forced = 0
        if self._timer is None:
            self._schedule(asyncio.get_running_loop())

    def busy(self) -> None:
        """A watch event of another kind: a pending release waits for it to settle too."""
        if self._first is not None:
            self._last = self._clock()

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._first is not None
        delay = trim_delay(self._clock(), self._first, self._last, self._quiet, self._max_delay)
        self._timer = loop.call_later(delay, self._due, loop)

    def _due(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._first is not None
        if trim_delay(self._clock(), self._first, self._last, self._quiet, self._max_delay) > 0:
            self._schedule(loop)  # changed again since the timer was set
            return
        now = self._clock()
        self._forced = forced_in_a_row(now, self._last, self._quiet, self._forced)
        self._timer = None
        self._first = None
        if 0 < self._forced <= self._follow_ups:
            self._first = now  # the burst goes on: release again once it ends
            self._schedule(loop)
        before, started = rss_mib(), time.monotonic()
        if self._release():
            self.releases += 1
            after = rss_mib()
            log.info(
                "%s after the number of jobs changed: RSS %s -> %s MiB (%.0f ms).",
                RELEASE_LOG,
                f"{before:.1f}" if before is not None else "?",
                f"{after:.1f}" if after is not None else "?",
                1000 * (time.monotonic() - started),
            )


MEMORY_RELEASE = MemoryRelease()
