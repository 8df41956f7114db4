"""trainscale_operator_job_condition: a job's status conditions as a gauge (for the chart's
PrometheusRule), read back through a real prometheus_client registry.

Covers: True -> 1, False -> 0, Unknown and unexported types -> no series; a condition that
disappears from the status loses its series; a deleted job loses all of them; jobs are
independent.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from trainscale.operator.observability.condition_metric import (
    JOB_CONDITION_NAME,
    JobConditionMetric,
)


def series(registry: CollectorRegistry) -> dict[tuple[str, str, str], float]:
    return {
        (s.labels["namespace"], s.labels["trainingjob"], s.labels["condition"]): s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == JOB_CONDITION_NAME
    }


def cond(type_: str, status: str) -> dict[str, str]:
    return {"type": type_, "status": status, "reason": "R", "message": ""}


def test_conditions_become_series_and_disappear_with_the_job() -> None:
    registry = CollectorRegistry()
    metric = JobConditionMetric(registry)
    metric.observe("ml", "bert", [cond("Ready", "True"), cond("Degraded", "False"),
                                  cond("Schedulable", "Unknown"), cond("Custom", "True")])  # fmt: skip
    metric.observe("ml", "gpt", [cond("Schedulable", "False")])
    assert series(registry) == {
        ("ml", "bert", "Ready"): 1.0,
        ("ml", "bert", "Degraded"): 0.0,
        ("ml", "gpt", "Schedulable"): 0.0,
    }
    metric.observe("ml", "bert", [cond("Degraded", "True")])
    assert series(registry) == {("ml", "bert", "Degraded"): 1.0, ("ml", "gpt", "Schedulable"): 0.0}
    metric.forget("ml", "bert")
    metric.forget("ml", "never-seen")
    assert series(registry) == {("ml", "gpt", "Schedulable"): 0.0}
