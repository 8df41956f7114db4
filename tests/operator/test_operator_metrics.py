"""The operator's own metrics: the managed-jobs gauge counts every phase a job can be in.

A phase missing from the gauge is a job that vanishes from the dashboard (Queued and
Suspended jobs did, while the gauge listed phases by hand)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from trainscale.operator.api.models import Phase
from trainscale.operator.observability.metric_names import (
    ARBITRATION_CEILING_NAME,
    MANAGED_JOBS_NAME,
    PREEMPTIONS_NAME,
    RECONCILE_DURATION_NAME,
    WORKERS_OFF_PLAN_NAME,
)
from trainscale.operator.observability.metrics import OperatorMetrics


def _by_phase(registry: CollectorRegistry) -> dict[str, float]:
    (family,) = [m for m in registry.collect() if m.name == MANAGED_JOBS_NAME]
    return {s.labels["phase"]: s.value for s in family.samples}


@pytest.mark.parametrize("phase", list(Phase))
def test_every_phase_is_counted_and_forgotten(phase: Phase) -> None:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    metrics.observe_job("ns", "a", phase.value, pods=0, desired=1)
    metrics.observe_job("ns", "b", phase.value, pods=0, desired=1)
    counts = _by_phase(registry)
    assert counts[phase.value] == 2
    assert set(counts) == {p.value for p in Phase}
    assert sum(counts.values()) == 2
    metrics.forget_job("ns", "a")
    assert _by_phase(registry)[phase.value] == 1


@pytest.mark.parametrize("seconds", [15.0, 45.0, 120.0, 300.0])
def test_reconcile_latency_buckets_tell_minutes_apart(seconds: float) -> None:
    """A pass of minutes (a burst on a loaded control plane) lands in a finite bucket near its
    duration, not in +Inf above a 10 s top bucket, where 15 s and 5 min look the same."""
    registry = CollectorRegistry()
    OperatorMetrics(registry).reconcile_duration.observe(seconds)
    (family,) = [m for m in registry.collect() if m.name == RECONCILE_DURATION_NAME]
    filled = [
        float(s.labels["le"]) for s in family.samples if s.name.endswith("_bucket") and s.value
    ]
    assert min(filled) <= 2.5 * seconds, sorted(filled)


def test_workers_off_plan_are_shown_per_job_and_forgotten() -> None:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    metrics.observe_job("ns", "a", "Running", pods=4, desired=4, off_plan=2)
    metrics.observe_job("ns", "b", "Running", pods=2, desired=2)

    def gauge() -> dict[str, float]:
        (family,) = [m for m in registry.collect() if m.name == WORKERS_OFF_PLAN_NAME]
        return {s.labels["trainingjob"]: s.value for s in family.samples}

    assert gauge() == {"a": 2, "b": 0}
    metrics.forget_job("ns", "a")
    assert gauge() == {"b": 0}


def test_arbitration_ceilings_and_preemptions_are_shown_per_job_and_forgotten() -> None:
    """Each pass sets the job's granted workers; a preemption counts once, from a series at
    0 (so ``increase()`` sees the first); no ceiling (no GPU visible: the job autoscales
    alone) is no series, not a stale one."""
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)

    def samples(name: str) -> dict[str, float]:
        family = [m for m in registry.collect() if m.name == name.removesuffix("_total")]
        return {
            s.labels["trainingjob"]: s.value
            for f in family
            for s in f.samples
            if not s.name.endswith("_created")
        }

    metrics.observe_arbitration("ns", "a", 4, preempted=False)
    metrics.observe_arbitration("ns", "b", 0, preempted=True)
    metrics.observe_arbitration("ns", "b", 0, preempted=False)  # still queued: no new one
    assert samples(ARBITRATION_CEILING_NAME) == {"a": 4, "b": 0}
    assert samples(PREEMPTIONS_NAME) == {"a": 0, "b": 1}
    metrics.observe_arbitration("ns", "a", None, preempted=False)
    assert samples(ARBITRATION_CEILING_NAME) == {"b": 0}
    metrics.forget_job("ns", "b")
    assert samples(ARBITRATION_CEILING_NAME) == {} and samples(PREEMPTIONS_NAME) == {"a": 0}
