"""The live-loop gauge counts a job loop from its start until it ends, however it ends.

``trainscale_operator_job_loops{loop}`` is what tells an operator that a loop outlived its
job (tests/e2e/test_e2e_loops.py deletes jobs in a burst and waits for it to drop to 0), so it
must go down on a return, an exception and a cancellation alike; and a cancellation (a loop
that kopf had to cancel because it ignored the stop flag) is counted on its own. The loops'
sleep must let that cancellation through wherever it lands. And the autoscale loop of a job
that does not autoscale idles on what kopf's copy of the job says (no API request); the
reconcile loop of a job with nothing to do sleeps until an event wakes it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any

import pytest
from kopf._cogs.aiokits.aioenums import FlagSetter
from kopf._core.intents.stoppers import DaemonStoppingReason
from prometheus_client import CollectorRegistry

from trainscale.operator.adapters import k8s
from trainscale.operator.api.reporting import EventSpec
from trainscale.operator.controller.reconcile import ReconcilePlan
from trainscale.operator.daemons import startup
from trainscale.operator.daemons.autoscale import Idle, idle_state
from trainscale.operator.daemons.common import IDLE_RESYNC_SECONDS, RESYNC_SECONDS, sleep_or_wake
from trainscale.operator.daemons.reconcile import next_pass_delay
from trainscale.operator.observability.metric_names import (
    AUTOSCALE_LOOP,
    JOB_LOOPS_CANCELLED_NAME,
    JOB_LOOPS_NAME,
    RECONCILE_LOOP,
)
from trainscale.operator.observability.metrics import OperatorMetrics

LANDING_POINTS = 40  # event-loop ticks after which a cancellation is tried (a pass: ~5)


def _sample(registry: CollectorRegistry, name: str, loop: str) -> float:
    value = registry.get_sample_value(name, {"loop": loop})
    return 0.0 if value is None else value


async def test_the_gauge_counts_live_loops_until_they_return_fail_or_are_cancelled() -> None:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    release = asyncio.Event()

    async def loop(kind: str, fail: bool = False) -> None:
        with metrics.job_loop(kind):
            await release.wait()
            if fail:
                raise RuntimeError("a pass failed")

    returning = asyncio.create_task(loop(RECONCILE_LOOP))
    failing = asyncio.create_task(loop(RECONCILE_LOOP, fail=True))
    cancelled = asyncio.create_task(loop(AUTOSCALE_LOOP))
    await asyncio.sleep(0)
    assert _sample(registry, JOB_LOOPS_NAME, RECONCILE_LOOP) == 2
    assert _sample(registry, JOB_LOOPS_NAME, AUTOSCALE_LOOP) == 1

    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    assert _sample(registry, JOB_LOOPS_NAME, AUTOSCALE_LOOP) == 0
    assert _sample(registry, JOB_LOOPS_CANCELLED_NAME, AUTOSCALE_LOOP) == 1

    release.set()
    results = await asyncio.gather(returning, failing, return_exceptions=True)
    assert results[0] is None and isinstance(results[1], RuntimeError)
    assert _sample(registry, JOB_LOOPS_NAME, RECONCILE_LOOP) == 0
    assert _sample(registry, JOB_LOOPS_CANCELLED_NAME, RECONCILE_LOOP) == 0


async def test_sleep_or_wake_never_swallows_the_cancellation_of_its_loop() -> None:
    """kopf cancels a loop that did not stop at its flag; the cancellation must end the loop
    wherever it lands in ``sleep_or_wake`` (its wait, or the clean-up of its waiters), or the
    loop outlives its job ("did not exit in time. Leaving it orphaned")."""
    setter: FlagSetter[DaemonStoppingReason] = FlagSetter()
    setter.set(DaemonStoppingReason.RESOURCE_DELETED)

    async def ignores_the_flag() -> None:
        while True:  # a loop that ignores kopf's stop flag: only a cancellation ends it
            await sleep_or_wake(setter.async_waiter, 10.0)

    for ticks in range(LANDING_POINTS):  # lands the cancellation on each await in turn
        task = asyncio.create_task(ignores_the_flag())
        for _ in range(ticks):
            await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=5)
        assert task in done and task.cancelled(), f"cancellation after {ticks} ticks swallowed"


@pytest.mark.parametrize(
    ("spec_change", "phase", "expected"),
    [
        ({}, "Running", Idle.OFF),  # autoscaling is off by default
        ({"autoscaling": {"enabled": True}}, "Running", None),
        ({"autoscaling": {"enabled": True}}, "Pending", None),
        ({"autoscaling": {"enabled": True}, "suspend": True}, "Suspended", Idle.PAUSED),
        ({"autoscaling": {"enabled": True}}, "Succeeded", Idle.OFF),
        ({"autoscaling": {"enabled": True}}, "Failed", Idle.OFF),
        ({"autoscaling": {"enabled": True}, "replicas": "many"}, "Running", Idle.PAUSED),
    ],
)
def test_the_autoscale_loop_idles_on_what_the_job_says(
    spec_dict: dict[str, Any], spec_change: dict[str, Any], phase: str, expected: Idle | None
) -> None:
    """The loop decides from kopf's live copy of the job, without an API request, whether it
    has anything to do: only an enabled, unsuspended, unfinished job with a valid spec."""
    body = {"spec": {**spec_dict, **spec_change}, "status": {"phase": phase}}
    assert idle_state(body) is expected


QUIET = ReconcilePlan(status={"phase": "Running"})


@pytest.mark.parametrize(
    ("plan", "refused", "patched", "delay"),
    [
        pytest.param(QUIET, False, False, IDLE_RESYNC_SECONDS, id="quiet: idle until woken"),
        pytest.param(QUIET, False, True, RESYNC_SECONDS, id="status patched"),
        pytest.param(QUIET, True, False, RESYNC_SECONDS, id="a creation refused"),
        pytest.param(ReconcilePlan(create_workers=(2,)), False, False, RESYNC_SECONDS,
                     id="created a worker"),
        pytest.param(ReconcilePlan(delete_workers=(("j-worker-3", "scale-down"),)), False, False,
                     RESYNC_SECONDS, id="deleted a worker"),
        pytest.param(ReconcilePlan(create_rendezvous_service=True), False, False, RESYNC_SECONDS,
                     id="created the Service"),
        pytest.param(ReconcilePlan(create_rendezvous_pod=True), False, False, RESYNC_SECONDS,
                     id="created the rendezvous pod"),
        pytest.param(ReconcilePlan(delete_rendezvous_pod=True), False, False, RESYNC_SECONDS,
                     id="deleted the rendezvous pod"),
        pytest.param(ReconcilePlan(events=(EventSpec("Normal", "X", "y"),)), False, False,
                     RESYNC_SECONDS, id="posted an event"),
        pytest.param(ReconcilePlan(creation_held=True), False, False, RESYNC_SECONDS,
                     id="a creation held"),
        pytest.param(ReconcilePlan(requeue_after=3.5), False, False, 3.5, id="backoff ends in 3.5 s"),
        pytest.param(ReconcilePlan(requeue_after=0.01), False, False, 0.2, id="at least 0.2 s"),
        pytest.param(ReconcilePlan(requeue_after=900.0), False, False, RESYNC_SECONDS,
                     id="a long backoff is looked at every resync"),
    ],
)  # fmt: skip
def test_the_next_reconcile_pass(
    plan: ReconcilePlan, refused: bool, patched: bool, delay: float
) -> None:
    assert next_pass_delay(plan, refused=refused, patched=patched) == delay


async def test_a_burst_of_jobs_calls_the_api_from_many_threads_at_once() -> None:
    # Every job loop's blocking API call runs in asyncio's default pool: with CPUs + 4 threads
    # (6 on a 2-core node) a burst of new jobs' first passes queued behind one another. All
    # API_CONCURRENCY calls must be in flight together (a barrier only they can pass).
    loop = asyncio.get_running_loop()
    await startup.trainscale_api_threads()
    try:
        barrier = threading.Barrier(k8s.API_CONCURRENCY)
        waits = [asyncio.to_thread(barrier.wait, 10) for _ in range(k8s.API_CONCURRENCY)]
        assert len(set(await asyncio.gather(*waits))) == k8s.API_CONCURRENCY
    finally:
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor())


@pytest.mark.parametrize("grow", [True, False])
def test_the_arbitration_state_takes_the_operators_options(grow: bool) -> None:
    """``--arbitration-interval`` and ``--arbitration-preemption`` reach the one arbitration
    state the job loops share."""
    import kopf

    from trainscale.operator.daemons.options import OperatorOptions

    options = OperatorOptions(arbitration_interval_seconds=3.0, arbitration_preempt_to_grow=grow)
    memo = kopf.Memo(options=options)
    startup.trainscale_startup(settings=kopf.OperatorSettings(), memo=memo)
    assert memo.arbitration.interval_seconds == 3.0
    assert memo.arbitration.settings.preempt_to_grow is grow
