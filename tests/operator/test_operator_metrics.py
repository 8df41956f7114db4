"""The operator's own metrics: the managed-jobs gauge counts every phase a job can be in.

A phase missing from the gauge is a job that vanishes from the dashboard (Queued and
Suspended jobs did, while the gauge listed phases by hand)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from trainscale.operator.api.models import Phase
from trainscale.operator.observability.metric_names import MANAGED_JOBS_NAME
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
