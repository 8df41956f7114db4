"""The status conditions of each TrainingJob as a gauge, so alerts can say how long one held.

Why this module exists: a job's conditions (``Degraded``, ``Schedulable``, ``Ready``,
``ReplicaFailure``) live in its status, which Prometheus cannot read; the chart's
PrometheusRule alerts on a job Degraded or with unschedulable workers for a while, so the
reconcile loop exports them here after each pass, like kube-state-metrics'
``kube_*_status_condition``: ``trainscale_operator_job_condition{namespace, trainingjob,
condition}`` is 1 while the condition is True, 0 while False, and absent while it is Unknown,
not set, or the job is gone. A module of its own (not :mod:`.metrics`) so the exporter's
registry of names stays untouched; it shares the default registry.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Gauge

from trainscale.operator.observability.metric_names import JOB_LABEL, NAMESPACE_LABEL, PREFIX

JOB_CONDITION_NAME = PREFIX + "job_condition"
CONDITION_LABEL = "condition"
# The condition types exported (the reconcile loop's own; the autoscaler's are not).
EXPORTED_CONDITIONS = ("Ready", "Degraded", "Schedulable", "ReplicaFailure")


class JobConditionMetric:
    """``trainscale_operator_job_condition``: 1 True, 0 False, absent otherwise."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.gauge = Gauge(
            JOB_CONDITION_NAME,
            "Status conditions of each TrainingJob: 1 while True, 0 while False.",
            [NAMESPACE_LABEL, JOB_LABEL, CONDITION_LABEL],
            registry=registry,
        )
        self._shown: dict[tuple[str, str], set[str]] = {}

    def observe(self, namespace: str, job: str, conditions: Iterable[Mapping[str, Any]]) -> None:
        """Export the job's conditions as written by a reconcile pass."""
        values = {
            c["type"]: 1.0 if c.get("status") == "True" else 0.0
            for c in conditions
            if c.get("type") in EXPORTED_CONDITIONS and c.get("status") in ("True", "False")
        }
        shown = self._shown.setdefault((namespace, job), set())
        for gone in shown - set(values):
            self.gauge.remove(namespace, job, gone)
        for condition, value in values.items():
            self.gauge.labels(namespace, job, condition).set(value)
        self._shown[(namespace, job)] = set(values)

    def forget(self, namespace: str, job: str) -> None:
        """Drop a deleted job's series."""
        for condition in self._shown.pop((namespace, job), set()):
            self.gauge.remove(namespace, job, condition)


@functools.cache
def get_job_condition_metric() -> JobConditionMetric:
    """The process-wide gauge (created on first use, in the default registry)."""
    return JobConditionMetric()
