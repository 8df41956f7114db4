"""Per-job state of the operator's loops is dropped with the job and never comes back.

A deleted job's pods go after it (the garbage collector deletes them once the job is gone),
and each of their events wakes the job's loop: a wake-up that created the loop's event again
left one entry per deleted job in the process for good (seen on the test-bed: 40 entries after
40 jobs were deleted). The gauge ``trainscale_operator_job_state_entries`` reports the count.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from trainscale.operator.daemons.common import Wakeups
from trainscale.operator.observability.metric_names import (
    AUTOSCALE_LOOP,
    JOB_STATE_NAME,
    RECONCILE_LOOP,
    STORE_LABEL,
)
from trainscale.operator.observability.metrics import OperatorMetrics


def test_a_wake_up_after_the_job_was_forgotten_keeps_nothing() -> None:
    wakeups = Wakeups()
    reconcile = wakeups.get("ns", "job")
    wakeups.lock("ns", "job")
    wakeups.wake("ns", "job")
    assert reconcile.is_set() and wakeups.jobs() == 1
    wakeups.forget("ns", "job")
    wakeups.wake("ns", "job")  # a pod of the deleted job going
    wakeups.wake("ns", "job", AUTOSCALE_LOOP)
    assert wakeups.jobs() == 0


def test_a_wake_up_before_the_loop_runs_keeps_nothing() -> None:
    """The loop starts with a pass: an earlier wake-up has nothing to do."""
    wakeups = Wakeups()
    wakeups.wake("ns", "job", RECONCILE_LOOP)
    assert wakeups.jobs() == 0


def test_the_job_state_gauge_reports_each_store_at_scrape_time() -> None:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    wakeups = Wakeups()
    metrics.track_state("wakeups", wakeups.jobs)
    wakeups.get("ns", "a")
    metrics.observe_job("ns", "a", "Running", pods=1, desired=1)

    def state() -> dict[str, float]:
        (family,) = [m for m in registry.collect() if m.name == JOB_STATE_NAME]
        return {s.labels[STORE_LABEL]: s.value for s in family.samples}

    assert state() == {"wakeups": 1, "phases": 1}
    wakeups.forget("ns", "a")
    metrics.forget_job("ns", "a")
    assert state() == {"wakeups": 0, "phases": 0}


def test_a_change_wakes_the_reconcile_loop_once_and_forgetting_drops_it() -> None:
    """``wake_on_change``: a job's reconcile loop wakes when what it reads changed, not again
    for the same inputs; before the loop runs and after the job was forgotten, nothing is
    kept (each would be an entry per deleted job for good)."""
    wakeups = Wakeups()
    wakeups.wake_on_change("ns", "job", "a")  # before the loop runs
    assert wakeups.jobs() == 0
    event = wakeups.get("ns", "job")
    wakeups.wake_on_change("ns", "job", "a")
    assert event.is_set()
    event.clear()
    wakeups.wake_on_change("ns", "job", "a")
    assert not event.is_set()
    wakeups.wake_on_change("ns", "job", "b")
    assert event.is_set()
    wakeups.forget("ns", "job")
    wakeups.wake_on_change("ns", "job", "c")
    assert wakeups.jobs() == 0
