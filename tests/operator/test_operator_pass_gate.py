"""Reconcile passes go through a gate: a bounded number at once, a new job's first pass first.

Without it a burst of new jobs interleaved every job's API calls in the thread pool's queue
(every job waited for nearly every other's first pass), and passes woken by the burst's own
pod events queued among the first passes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf
import pytest
from kopf._cogs.aiokits.aioenums import FlagSetter
from kopf._core.intents.stoppers import DaemonStoppingReason

from trainscale.operator.adapters import k8s
from trainscale.operator.daemons import reconcile as reconcile_daemon
from trainscale.operator.daemons.common import Wakeups
from trainscale.operator.daemons.passes import PASSES, PassGate


async def hold(gate: PassGate, first: bool, order: list[str], label: str,
               release: asyncio.Event) -> None:  # fmt: skip
    async with gate.slot(first=first):
        order.append(label)
        await release.wait()


async def settle() -> None:
    """Let every ready task run until it blocks."""
    for _ in range(5):
        await asyncio.sleep(0)


async def doomed_between(
    gate: PassGate, order: list[str], go: asyncio.Event
) -> tuple[asyncio.Task[None], asyncio.Task[None], asyncio.Task[None]]:
    """On a one-place gate: "running" holds the place, a first pass "doomed" and a later
    pass "behind" wait for it (in that order)."""
    running = asyncio.create_task(hold(gate, False, order, "running", go))
    await settle()
    doomed = asyncio.create_task(hold(gate, True, order, "doomed", go))
    behind = asyncio.create_task(hold(gate, False, order, "behind", go))
    await settle()
    return running, doomed, behind


async def test_a_first_pass_goes_ahead_of_later_passes_that_waited_longer() -> None:
    gate = PassGate(1)
    order: list[str] = []
    go = asyncio.Event()
    tasks = [asyncio.create_task(hold(gate, False, order, "running", go))]
    await settle()
    for label, first in (("later-1", False), ("later-2", False), ("first-1", True),
                         ("first-2", True)):  # fmt: skip
        tasks.append(asyncio.create_task(hold(gate, first, order, label, go)))
        await settle()
    assert order == ["running"] and gate.waiting == 4
    go.set()
    await asyncio.gather(*tasks)
    assert order == ["running", "first-1", "first-2", "later-1", "later-2"]
    assert gate.running == 0 and gate.waiting == 0


async def test_no_more_than_limit_passes_run_at_once() -> None:
    gate = PassGate(3)
    order: list[str] = []
    go = asyncio.Event()
    tasks = [asyncio.create_task(hold(gate, i % 2 == 0, order, str(i), go)) for i in range(10)]
    await settle()
    assert len(order) == 3 and gate.running == 3 and gate.waiting == 7
    go.set()
    await asyncio.gather(*tasks)
    assert len(order) == 10 and gate.running == 0


async def test_a_pass_cancelled_while_waiting_takes_no_place() -> None:
    """kopf cancels the loop of a job deleted while its pass waits for a place."""
    gate = PassGate(1)
    order: list[str] = []
    go = asyncio.Event()
    running, doomed, behind = await doomed_between(gate, order, go)
    doomed.cancel()
    await settle()
    go.set()
    async with asyncio.timeout(10):
        await asyncio.gather(running, behind)
    assert order == ["running", "behind"] and gate.running == 0
    with pytest.raises(asyncio.CancelledError):
        await doomed


async def test_a_pass_cancelled_as_its_place_comes_hands_it_on() -> None:
    gate = PassGate(1)
    order: list[str] = []
    go = asyncio.Event()
    running, doomed, behind = await doomed_between(gate, order, go)
    go.set()
    await asyncio.sleep(0)  # "running" leaves and hands its place to "doomed" ...
    doomed.cancel()  # ... which is cancelled before it could use it
    async with asyncio.timeout(10):  # a place lost with "doomed" would leave "behind" waiting
        await asyncio.gather(running, behind, doomed, return_exceptions=True)
    assert "behind" in order and gate.running == 0 and gate.waiting == 0


def test_the_operator_runs_as_many_passes_at_once_as_it_has_api_threads() -> None:
    assert PASSES._limit == k8s.API_CONCURRENCY
    with pytest.raises(ValueError, match="limit must be >= 1, got 0"):
        PassGate(0)


async def test_a_pass_stopped_while_waiting_leaves_without_a_place() -> None:
    """A deleted job's loop (kopf sets its stop flag) does not wait for a place."""
    gate = PassGate(1)
    order: list[str] = []
    go = asyncio.Event()
    running = asyncio.create_task(hold(gate, False, order, "running", go))
    await settle()
    stopped = asyncio.Event()

    async def stoppable() -> bool:
        async with gate.slot(first=True, unless=stopped) as admitted:
            return admitted

    waiting = asyncio.create_task(stoppable())
    behind = asyncio.create_task(hold(gate, False, order, "behind", go))
    await settle()
    stopped.set()
    async with asyncio.timeout(10):
        assert await waiting is False
    assert gate.running == 1 and gate.waiting == 1  # "running" still runs, "behind" waits
    go.set()
    async with asyncio.timeout(10):
        await asyncio.gather(running, behind)
    assert order == ["running", "behind"] and gate.running == 0
    async with gate.slot(first=True, unless=stopped) as admitted:  # stopped before: no place
        assert not admitted and gate.running == 0


async def test_wakes_that_come_while_a_pass_waits_for_its_place_are_answered_by_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The reconcile loop clears its wake once its pass has a place, not before it waits for
    one: the pass reads the job and its pods afresh, so the pod events of a burst that woke
    it while it waited cost no pass after it. A wake during the pass still does."""
    gate, wakeups = PassGate(1), Wakeups()
    monkeypatch.setattr(reconcile_daemon, "PASSES", gate)
    monkeypatch.setattr(reconcile_daemon, "WAKEUPS", wakeups)
    passes: list[int] = []

    async def reconcile_job(namespace: str, name: str, **_: Any) -> float:
        passes.append(len(passes) + 1)
        if len(passes) == 2:
            wakeups.wake(namespace, name)  # its own pods' events, while it runs
        return 3600.0  # idle: only a wake brings the next pass

    monkeypatch.setattr(reconcile_daemon, "reconcile_job", reconcile_job)
    stop: FlagSetter[DaemonStoppingReason] = FlagSetter()
    go = asyncio.Event()
    holder = asyncio.create_task(hold(gate, False, [], "another job's pass", go))
    await settle()
    loop = asyncio.create_task(reconcile_daemon.trainingjob_reconcile_loop(
        name="a", namespace="ns", logger=logging.getLogger(__name__), memo=kopf.Memo(),
        stopped=stop.async_waiter,
    ))  # fmt: skip
    await settle()
    assert gate.waiting == 1 and passes == []
    for _ in range(3):  # a burst's events while it waits
        wakeups.wake("ns", "a")
    go.set()
    await holder
    await settle()
    await asyncio.sleep(0.05)
    assert passes == [1], "a pass after the pass that answered the wakes"

    wakeups.wake("ns", "a")  # a change after it: a pass, which wakes itself once more
    for _ in range(100):
        if len(passes) == 3:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert passes == [1, 2, 3]

    stop.set(DaemonStoppingReason.RESOURCE_DELETED)
    await asyncio.wait_for(loop, 5)
