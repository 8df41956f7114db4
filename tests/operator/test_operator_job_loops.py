"""The live-loop gauge counts a job loop from its start until it ends, however it ends.

``trainscale_operator_job_loops{loop}`` is what tells an operator that a loop outlived its
job (tests/e2e/test_e2e_loops.py deletes jobs in a burst and waits for it to drop to 0), so it
must go down on a return, an exception and a cancellation alike; and a cancellation (a loop
that kopf had to cancel because it ignored the stop flag) is counted on its own.
"""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from trainscale.operator.observability.metric_names import (
    AUTOSCALE_LOOP,
    JOB_LOOPS_CANCELLED_NAME,
    JOB_LOOPS_NAME,
    RECONCILE_LOOP,
)
from trainscale.operator.observability.metrics import OperatorMetrics


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
