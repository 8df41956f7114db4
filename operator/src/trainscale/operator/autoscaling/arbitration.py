"""From Kubernetes objects to the arbiter's input, and its decision: ``decide_arbitration``.

Why this module exists: the cluster-level loop sees TrainingJobs, Nodes and Pods as the API
server returns them (plain dicts); :func:`~trainscale.operator.autoscaling.arbiter.allocate`
wants numbers. Turning one into the other is a set of rules worth testing on their own, away
from kopf and the client: which GPUs trainscale may use (allocatable ``nvidia.com/gpu`` of
ready, schedulable nodes minus what running pods *not* managed by trainscale request — those
are never touched), which jobs take part (not finished; a job with autoscaling disabled runs
at its fixed size and is *pinned*: its GPUs are subtracted and it is never resized), what each
one runs now (its scheduled, not deleted pods and their nodes), its priority (the pods'
resolved ``spec.priority``, else its template's PriorityClass value) and its constraints
(the efficiency floor of the efficiency objective, the budget of the budget objective).

Pure: the caller lists the objects, passes the clock and, per job, the throughput table its
``JobAutoscaler`` predicts (:func:`tabulate_throughput`) and its learned restart cost. The
label keys come from the caller too (the controller's builders define them), so names stay
defined once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from trainscale.operator.api import (
    GPU_RESOURCE,
    ArbitrationStatus,
    Objective,
    TrainingJobSpec,
    count_gpus,
)
from trainscale.operator.api.reporting import parse_time
from trainscale.operator.autoscaling.arbiter import (
    Allocation,
    ArbiterSettings,
    Capacity,
    JobAllocation,
    JobDemand,
    allocate,
)

__all__ = [
    "DEFAULT_RESTART_COST_SECONDS",
    "PodLabels",
    "build_arbitration_status",
    "build_capacity",
    "build_demand",
    "decide_arbitration",
    "job_key",
    "tabulate_throughput",
]

DEFAULT_RESTART_COST_SECONDS = 60.0
"""Restart cost assumed for a job whose autoscaler has learned none and whose spec sets none."""

FINISHED_PHASES = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True)
class PodLabels:
    """The labels that tie pods to trainscale (the caller passes the builders' constants).

    Attributes:
        managed_by: ``(key, value)`` on every pod trainscale creates.
        job_name: the key whose value is the owning TrainingJob's name.
    """

    managed_by: tuple[str, str]
    job_name: str

    def is_managed(self, pod: Mapping[str, Any]) -> bool:
        key, value = self.managed_by
        return bool(_labels(pod).get(key) == value)


def job_key(obj: Mapping[str, Any]) -> str:
    """``namespace/name`` of an object."""
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def tabulate_throughput(
    predict: Callable[[int], float | None], max_replicas: int
) -> dict[int, float]:
    """The throughput table of a demand from a predictor such as
    ``JobAutoscaler.predict_throughput``: every count from 1 to ``max_replicas`` it predicts
    (counts it returns None for are left out; the arbiter interpolates)."""
    table: dict[int, float] = {}
    for n in range(1, max_replicas + 1):
        value = predict(n)
        if value is not None:
            table[n] = value
    return table


def _labels(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return (obj.get("metadata") or {}).get("labels") or {}


def _holds_resources(pod: Mapping[str, Any]) -> bool:
    """Scheduled on a node and not finished: its requests count against that node."""
    node = (pod.get("spec") or {}).get("nodeName")
    phase = (pod.get("status") or {}).get("phase")
    return bool(node) and phase not in ("Succeeded", "Failed")


def _node_usable(node: Mapping[str, Any]) -> bool:
    if (node.get("spec") or {}).get("unschedulable"):
        return False
    for condition in (node.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return bool(condition.get("status") == "True")
    return True  # no Ready condition reported: trust it (fresh or simulated nodes)


def build_capacity(
    nodes: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]], labels: PodLabels
) -> Capacity:
    """GPUs per node trainscale may use: allocatable ``nvidia.com/gpu`` of ready, schedulable
    nodes, minus the requests of scheduled pods not managed by trainscale."""
    free: dict[str, int] = {}
    for node in nodes:
        name = (node.get("metadata") or {}).get("name", "")
        allocatable = ((node.get("status") or {}).get("allocatable") or {}).get(GPU_RESOURCE)
        free[name] = int(allocatable or 0) if _node_usable(node) else 0
    for pod in pods:
        if labels.is_managed(pod) or not _holds_resources(pod):
            continue
        node_name = pod["spec"]["nodeName"]
        if node_name in free:
            free[node_name] = max(
                0, free[node_name] - count_gpus((pod.get("spec") or {}).get("containers") or [])
            )
    return Capacity(free)


def build_demand(
    job: Mapping[str, Any],
    pods: Iterable[Mapping[str, Any]],
    *,
    throughput: Mapping[int, float],
    restart_cost_seconds: float | None = None,
    priority_classes: Mapping[str, int] | None = None,
) -> JobDemand:
    """One TrainingJob (and its own pods) as a :class:`JobDemand`.

    Raises:
        pydantic.ValidationError: when the job's spec is invalid.
    """
    spec = TrainingJobSpec.model_validate(job.get("spec") or {})
    auto = spec.autoscaling
    running = [
        p
        for p in pods
        if _holds_resources(p) and not (p.get("metadata") or {}).get("deletionTimestamp")
    ]
    where: dict[str, int] = {}
    for pod in running:
        node = pod["spec"]["nodeName"]
        where[node] = where.get(node, 0) + 1
    priorities = [
        int(p["spec"]["priority"])
        for p in running
        if (p.get("spec") or {}).get("priority") is not None
    ]
    if priorities:
        priority = max(priorities)
    else:
        class_name = (spec.template.get("spec") or {}).get("priorityClassName")
        priority = (priority_classes or {}).get(class_name or "", 0)
    created = parse_time((job.get("metadata") or {}).get("creationTimestamp"))
    restart = restart_cost_seconds
    if restart is None:
        restart = auto.restart_cost_seconds
    if restart is None:
        restart = DEFAULT_RESTART_COST_SECONDS
    pinned = not auto.enabled
    return JobDemand(
        key=job_key(job),
        throughput=dict(throughput),
        gpus_per_worker=max(1, spec.gpus_per_replica),
        min_replicas=spec.min_replicas,
        max_replicas=spec.max_replicas,
        min_efficiency=auto.min_efficiency if auto.objective == Objective.EFFICIENCY else None,
        max_cost_per_hour=auto.max_cost_per_hour if auto.objective == Objective.BUDGET else None,
        cost_per_gpu_hour=auto.cost_per_gpu_hour,
        priority=priority,
        created=created.timestamp() if created is not None else 0.0,
        current_replicas=spec.replicas if pinned else len(running),
        current_nodes=where,
        restart_cost_seconds=restart,
        pinned=pinned,
    )


def decide_arbitration(
    jobs: Iterable[Mapping[str, Any]],
    nodes: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
    now: float,
    *,
    labels: PodLabels,
    throughput: Mapping[str, Mapping[int, float]] | None = None,
    restart_costs: Mapping[str, float] | None = None,
    priority_classes: Mapping[str, int] | None = None,
    settings: ArbiterSettings | None = None,
) -> Allocation:
    """Divide the cluster's GPUs between the TrainingJobs (module docstring).

    Args:
        jobs: TrainingJob objects; finished ones (phase Succeeded or Failed) are left out,
            and so are ones whose spec does not validate (the reconciler reports those).
        nodes: Node objects.
        pods: every pod that may hold GPUs (all namespaces).
        now: seconds since the epoch (the jobs' creation times are read in that epoch).
        labels: the labels of trainscale's pods.
        throughput: per job key, its predicted throughput table (:func:`tabulate_throughput`);
            a job without one is treated as nothing measured yet.
        restart_costs: per job key, the restart cost its autoscaler learned.
        priority_classes: PriorityClass name -> value, for jobs without running pods.
        settings: the arbiter's tunables.

    Returns:
        The :class:`Allocation`, keyed by ``namespace/name``.
    """
    pods = list(pods)
    by_job: dict[str, list[Mapping[str, Any]]] = {}
    for pod in pods:
        if not labels.is_managed(pod):
            continue
        name = _labels(pod).get(labels.job_name)
        if name:
            namespace = (pod.get("metadata") or {}).get("namespace", "")
            by_job.setdefault(f"{namespace}/{name}", []).append(pod)
    demands: list[JobDemand] = []
    for job in jobs:
        if ((job.get("status") or {}).get("phase")) in FINISHED_PHASES:
            continue
        key = job_key(job)
        try:
            demand = build_demand(
                job,
                by_job.get(key, []),
                throughput=(throughput or {}).get(key, {}),
                restart_cost_seconds=(restart_costs or {}).get(key),
                priority_classes=priority_classes,
            )
        except ValueError:
            continue
        demands.append(demand)
    return allocate(demands, build_capacity(nodes, pods, labels), now=now, settings=settings)


def build_arbitration_status(
    job: JobAllocation, allocation: Allocation, *, time: str
) -> ArbitrationStatus:
    """The ``status.arbitration`` of one job from the arbiter's answer; ``time`` is the
    decision's RFC 3339 time. A pinned job has no ceiling (it is not arbitrated)."""
    return ArbitrationStatus(
        ceiling=None if job.pinned else job.replicas,
        queued=job.queued,
        reason=job.reason,
        waiting_jobs=allocation.waiting,
        last_decision_time=time,
    )
