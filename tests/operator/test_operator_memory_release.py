"""Freed memory goes back to the OS once the number of jobs settles.

Measured on the test-bed (docs/operator-scale.md): after rounds of 200 jobs created and
deleted at once the operator held the same objects as before, but glibc kept the burst's
freed chunks resident (25-35 MiB); ``malloc_trim`` returns them. These tests check the rule
(when the operator trims) and that the call really returns a fragmented heap's free pages.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest

from trainscale.operator.daemons.memory import MemoryRelease, forced_in_a_row, trim_delay

# A heap of 2000-byte blocks (above pymalloc's 512 bytes: glibc's malloc) of which all but
# the last are freed: the last pins the top of the heap, so glibc keeps the freed ~76 MiB
# resident until trimmed.
FRAGMENTED_HEAP = """
import json
from trainscale.operator.daemons.memory import release_free_memory, rss_mib
blocks = [bytes(2000) for _ in range(40000)]
keep = blocks[-1]
del blocks
before = rss_mib()
released = release_free_memory()
print(json.dumps([before, rss_mib(), released]))
"""


def test_the_trim_is_due_a_quiet_spell_after_the_last_change_at_most_max_delay_after_the_first() -> (
    None
):
    assert trim_delay(now=10.0, first=10.0, last=10.0, quiet=5.0, max_delay=60.0) == 5.0
    assert trim_delay(now=12.0, first=10.0, last=12.0, quiet=5.0, max_delay=60.0) == 5.0
    assert trim_delay(now=16.0, first=10.0, last=12.0, quiet=5.0, max_delay=60.0) == 1.0
    assert trim_delay(now=17.0, first=10.0, last=12.0, quiet=5.0, max_delay=60.0) == 0.0
    # Jobs keep coming: due 60 s after the first change all the same.
    assert trim_delay(now=68.0, first=10.0, last=67.0, quiet=5.0, max_delay=60.0) == 2.0
    assert trim_delay(now=71.0, first=10.0, last=70.5, quiet=5.0, max_delay=60.0) == 0.0


class Releases:
    """A release function that records when it was called."""

    def __init__(self) -> None:
        self.at: list[float] = []
        self.called = asyncio.Event()

    def __call__(self) -> bool:
        self.at.append(time.monotonic())
        self.called.set()
        return True

    async def next(self) -> None:
        async with asyncio.timeout(30.0):
            await self.called.wait()
        self.called.clear()


async def test_a_burst_of_job_changes_releases_once_when_it_settles() -> None:
    released = Releases()
    release = MemoryRelease(released, quiet=0.05, max_delay=10.0)
    last = 0.0
    for _ in range(3):  # three changes, each before the quiet spell ends
        release.jobs_changed()
        last = time.monotonic()
        await asyncio.sleep(0.01)
    await released.next()
    assert released.at[0] - last >= 0.05
    await asyncio.sleep(0.3)
    assert len(released.at) == 1 and release.releases == 1
    # Nothing changed since: nothing more. A new change: one more.
    release.jobs_changed()
    await released.next()
    assert len(released.at) == 2


async def test_other_events_put_a_pending_release_off_but_arm_none() -> None:
    """A deleted job's pods go after it: their events allocate and free again."""
    released = Releases()
    release = MemoryRelease(released, quiet=0.1, max_delay=10.0)
    release.busy()  # no job came or went: nothing to give back
    await asyncio.sleep(0.3)
    assert not released.at
    release.jobs_changed()
    last = 0.0
    for _ in range(5):  # pod events, each before the quiet spell ends
        await asyncio.sleep(0.05)
        release.busy()
        last = time.monotonic()
    await released.next()
    assert released.at[0] - last >= 0.1 and len(released.at) == 1


async def test_jobs_that_keep_coming_do_not_put_the_release_off_past_max_delay() -> None:
    released = Releases()
    release = MemoryRelease(released, quiet=0.1, max_delay=0.2)
    began = time.monotonic()
    while time.monotonic() - began < 1.0:  # a change every 20 ms: never 0.1 s quiet
        release.jobs_changed()
        await asyncio.sleep(0.02)
    assert released.at and released.at[0] - began >= 0.2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_release_free_memory_returns_a_fragmented_heaps_free_pages() -> None:
    out = subprocess.run([sys.executable, "-c", FRAGMENTED_HEAP], capture_output=True,
                         text=True, check=True, timeout=120).stdout  # fmt: skip
    before, after, released = json.loads(out)
    assert released
    assert before - after > 50, (before, after)  # of the ~76 MiB freed


@pytest.mark.parametrize(
    ("now", "last", "before", "expected"),
    [
        (70.0, 68.0, 0, 1),  # due by max_delay, an event 2 s ago: forced, the first in a row
        (130.0, 129.5, 1, 2),  # and again
        (75.0, 68.0, 0, 0),  # due 5 s after the last event: the quiet spell, not forced
        (140.0, 135.0, 3, 0),  # quiet at last: the count starts over
    ],
)
def test_a_release_is_forced_when_the_events_had_not_stopped_for_the_quiet_spell(
    now: float, last: float, before: int, expected: int
) -> None:
    assert forced_in_a_row(now, last, 5.0, before) == expected


async def test_a_release_forced_while_events_keep_coming_is_followed_by_one_when_they_stop() -> (
    None
):
    """A thousand new jobs are created in seconds, but their pods, admissions and first passes
    go on for minutes: a trim forced by max_delay comes before that peak, so it is repeated
    once the events stop (at 1,000 arbitrated jobs such a trim gave back 98 MiB)."""
    released = Releases()
    release = MemoryRelease(released, quiet=0.3, max_delay=0.4, follow_ups=4)
    release.jobs_changed()
    began = time.monotonic()
    last = began
    while time.monotonic() - began < 1.0:  # pod events every 20 ms: never 0.3 s quiet
        await asyncio.sleep(0.02)
        release.busy()
        last = time.monotonic()
    await asyncio.sleep(0.8)
    assert len(released.at) >= 2, released.at  # forced at ~0.4 (and ~0.8 s), then one quiet
    assert released.at[0] - began >= 0.4
    assert released.at[-1] - last >= 0.3  # the last once the events stopped
    count = len(released.at)
    await asyncio.sleep(0.8)
    assert len(released.at) == count  # nothing more without a change


async def test_events_that_never_stop_get_at_most_follow_ups_more_releases() -> None:
    released = Releases()
    release = MemoryRelease(released, quiet=0.3, max_delay=0.3, follow_ups=2)
    release.jobs_changed()
    began = time.monotonic()
    while time.monotonic() - began < 2.0:  # status writes every 20 ms, for good
        await asyncio.sleep(0.02)
        release.busy()
    assert len(released.at) == 3, released.at  # the forced one and two follow-ups
    # A new change of the job count arms it again.
    released.called.clear()
    release.jobs_changed()
    await released.next()
    assert len(released.at) == 4
