"""From Kubernetes objects to the arbiter's decision (``decide_arbitration``).

Covers: capacity (allocatable GPUs of ready, schedulable nodes minus what foreign scheduled
pods request; trainscale's own pods and finished or unscheduled pods not subtracted); a job's
demand (bounds, GPUs per worker, running pods and their nodes, deleted pods left out,
priority from pods or the PriorityClass, objective constraints, restart cost learned, from
the spec or the default, creation time); autoscaling disabled means pinned at spec.replicas;
finished and invalid jobs left out; the throughput table from a predictor; and a whole
decision over two jobs and a foreign pod; the status it becomes.
"""

from __future__ import annotations

from typing import Any

import pytest

from trainscale.operator.autoscaling.arbitration import (
    DEFAULT_RESTART_COST_SECONDS,
    PodLabels,
    build_arbitration_status,
    build_capacity,
    build_demand,
    decide_arbitration,
    tabulate_throughput,
)
from trainscale.operator.controller.builders import LABEL_JOB_NAME, LABEL_MANAGED_BY, MANAGED_BY

LABELS = PodLabels(managed_by=(LABEL_MANAGED_BY, MANAGED_BY), job_name=LABEL_JOB_NAME)


def node(name: str, gpus: int, *, ready: str = "True", cordoned: bool = False) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"unschedulable": cordoned},
        "status": {
            "allocatable": {"nvidia.com/gpu": str(gpus)},
            "conditions": [{"type": "Ready", "status": ready}],
        },
    }


def pod(
    node_name: str | None,
    gpus: int = 1,
    *,
    job: str | None = None,
    phase: str = "Running",
    priority: int | None = None,
    deleting: bool = False,
) -> dict[str, Any]:
    labels = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_JOB_NAME: job} if job else {"app": "other"}
    meta: dict[str, Any] = {"namespace": "ns", "labels": labels}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    spec: dict[str, Any] = {
        "containers": [{"name": "c", "resources": {"requests": {"nvidia.com/gpu": str(gpus)}}}]
    }
    if node_name:
        spec["nodeName"] = node_name
    if priority is not None:
        spec["priority"] = priority
    return {"metadata": meta, "spec": spec, "status": {"phase": phase}}


def training_job(
    name: str, *, lo: int = 1, hi: int = 8, replicas: int | None = None, gpus: int = 1, **auto: Any
) -> dict[str, Any]:
    template: dict[str, Any] = {
        "spec": {
            "containers": [
                {"name": "w", "image": "t:1", "resources": {"limits": {"nvidia.com/gpu": gpus}}}
            ]
        }
    }
    if "priorityClassName" in auto:
        template["spec"]["priorityClassName"] = auto.pop("priorityClassName")
    return {
        "metadata": {"namespace": "ns", "name": name, "creationTimestamp": "2026-01-01T00:00:10Z"},
        "spec": {
            "replicas": lo if replicas is None else replicas,
            "minReplicas": lo,
            "maxReplicas": hi,
            "template": template,
            "autoscaling": {"enabled": True, **auto},
        },
    }


@pytest.mark.parametrize(
    ("nodes", "pods", "free"),
    [
        pytest.param([node("a", 4), node("b", 8)], [], {"a": 4, "b": 8}, id="allocatable"),
        pytest.param([node("a", 4)], [pod("a", 3)], {"a": 1}, id="foreign-pod-subtracted"),
        pytest.param([node("a", 4)], [pod("a", 3, job="j")], {"a": 4}, id="own-pods-not"),
        pytest.param([node("a", 4)], [pod(None, 3)], {"a": 4}, id="unscheduled-not"),
        pytest.param([node("a", 4)], [pod("a", 3, phase="Succeeded")], {"a": 4},
                     id="finished-not"),
        pytest.param([node("a", 4)], [pod("a", 6)], {"a": 0}, id="never-negative"),
        pytest.param([node("a", 4, ready="False"), node("b", 4, cordoned=True)], [],
                     {"a": 0, "b": 0}, id="not-ready-or-cordoned"),
        pytest.param([node("a", 4)], [pod("zzz", 2)], {"a": 4}, id="pod-on-unknown-node"),
    ],
)  # fmt: skip
def test_build_capacity(
    nodes: list[dict[str, Any]], pods: list[dict[str, Any]], free: dict[str, int]
) -> None:
    assert dict(build_capacity(nodes, pods, LABELS).free_gpus) == free


@pytest.mark.parametrize(
    ("job", "pods", "kw", "expected"),
    [
        pytest.param(training_job("j", lo=2, hi=6, gpus=2), [], {},
                     {"key": "ns/j", "min_replicas": 2, "max_replicas": 6, "gpus_per_worker": 2,
                      "current_replicas": 0, "pinned": False, "created": 1767225610.0},
                     id="bounds-and-gpus"),
        pytest.param(training_job("j"), [pod("a", job="j"), pod("a", job="j"), pod("b", job="j"),
                                         pod(None, job="j"), pod("b", job="j", deleting=True)],
                     {}, {"current_replicas": 3, "current_nodes": {"a": 2, "b": 1}},
                     id="running-pods-and-nodes"),
        pytest.param(training_job("j", priorityClassName="high"), [pod("a", job="j", priority=7)],
                     {"priority_classes": {"high": 100}}, {"priority": 7},
                     id="priority-from-pods"),
        pytest.param(training_job("j", priorityClassName="high"), [],
                     {"priority_classes": {"high": 100}}, {"priority": 100},
                     id="priority-from-class"),
        pytest.param(training_job("j", objective="efficiency", minEfficiency=0.6), [], {},
                     {"min_efficiency": 0.6, "max_cost_per_hour": None}, id="efficiency-floor"),
        pytest.param(training_job("j", objective="budget", maxCostPerHour=8.0,
                                  costPerGpuHour=2.0), [], {},
                     {"min_efficiency": None, "max_cost_per_hour": 8.0, "cost_per_gpu_hour": 2.0},
                     id="budget"),
        pytest.param(training_job("j", objective="utilization"), [], {},
                     {"min_efficiency": None, "max_cost_per_hour": None}, id="utilization"),
        pytest.param(training_job("j", restartCostSeconds=30.0), [],
                     {"restart_cost_seconds": 45.0}, {"restart_cost_seconds": 45.0},
                     id="restart-cost-learned"),
        pytest.param(training_job("j", restartCostSeconds=30.0), [], {},
                     {"restart_cost_seconds": 30.0}, id="restart-cost-from-spec"),
        pytest.param(training_job("j"), [], {},
                     {"restart_cost_seconds": DEFAULT_RESTART_COST_SECONDS},
                     id="restart-cost-default"),
        pytest.param(training_job("j", replicas=3, enabled=False), [pod("a", job="j")], {},
                     {"pinned": True, "current_replicas": 3}, id="autoscaling-off-pinned"),
    ],
)  # fmt: skip
def test_build_demand(
    job: dict[str, Any], pods: list[dict[str, Any]], kw: dict[str, Any], expected: dict[str, Any]
) -> None:
    demand = build_demand(job, pods, throughput={1: 10.0}, **kw)
    assert {k: getattr(demand, k) for k in expected} == expected


def test_tabulate_throughput() -> None:
    assert tabulate_throughput(lambda n: None if n == 2 else 10.0 * n, 3) == {1: 10.0, 3: 30.0}


def test_decide_arbitration() -> None:
    done = training_job("done")
    done["status"] = {"phase": "Succeeded"}
    broken = training_job("broken", lo=5, hi=2)
    allocation = decide_arbitration(
        [training_job("a"), training_job("b", lo=2), done, broken],
        [node("n0", 4), node("n1", 4)],
        [pod("n0", 2), pod("n0", job="a")],
        now=1767225700.0,
        labels=LABELS,
        throughput={
            "ns/a": {n: 100.0 * n for n in range(1, 9)},
            "ns/b": {n: 100.0 * n for n in range(1, 9)},
        },
    )
    assert set(allocation.jobs) == {"ns/a", "ns/b"}
    assert allocation["ns/a"].replicas + allocation["ns/b"].replicas == 6  # 8 minus the foreign 2
    assert allocation["ns/b"].replicas >= 2
    assert allocation["ns/a"].placement[0][0] == "n0"  # stays where it runs


def test_build_arbitration_status() -> None:
    allocation = decide_arbitration(
        [training_job("a", lo=3), training_job("b", lo=3), training_job("p", enabled=False)],
        [node("n0", 4)],
        [],
        now=0.0,
        labels=LABELS,
    )
    a, b, p = (
        build_arbitration_status(allocation[f"ns/{k}"], allocation, time="2026-01-01T00:00:00Z")
        for k in "abp"
    )
    assert (a.ceiling, a.queued, a.waiting_jobs) == (3, False, 1)
    assert (b.ceiling, b.queued, b.reason) == (0, True, "queued: needs 3 GPUs, 0 free")
    assert (p.ceiling, p.queued) == (None, False)
    assert b.model_dump(by_alias=True, exclude_none=True) == {
        "ceiling": 0,
        "queued": True,
        "reason": "queued: needs 3 GPUs, 0 free",
        "waitingJobs": 1,
        "lastDecisionTime": "2026-01-01T00:00:00Z",
    }
