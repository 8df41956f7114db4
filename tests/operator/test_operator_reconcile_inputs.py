"""``reconcile_inputs``: which changes of a job wake its reconcile loop.

Every autoscale pass with metrics writes the autoscaler's status (a new throughput, a new
observation time); each write woke a reconcile pass (four requests: the job, its pods, its
rendezvous pod and Service) that had nothing to do: about half of an autoscaled job's API
requests at 1,000 jobs. A change the reconcile pass decides on must still wake it: each row
below changes one thing and says whether the digest moves.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import kopf
import pytest

from trainscale.operator import api
from trainscale.operator.controller.reconcile import reconcile_inputs


def job() -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {
            "name": "j", "namespace": "ns", "uid": "u1", "generation": 3,
            "resourceVersion": "100", "labels": {"team": "a"}, "annotations": {"note": "x"},
            "finalizers": ["kopf.zalando.org/KopfFinalizerMarker"],
            "managedFields": [{"manager": "kubectl"}],
        },
        "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "t"}]}}},
        "status": {
            "phase": "Running", "replicas": 2, "restarts": 0,
            "gpuUtilization": 0.9, "throughput": 100.0,
            "autoscaling": {"reason": "hold", "lastObservationTime": "2026-12-06T00:00:00Z"},
            "arbitration": {"ceiling": 4},
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "AllReplicasReady"},
                {"type": api.AUTOSCALER_CONDITIONS[0], "status": "False", "reason": "MetricsFresh"},
                {"type": api.AUTOSCALER_CONDITIONS[1], "status": "False", "reason": "WithinLimits"},
            ],
        },
    }  # fmt: skip


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(body: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = body
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value

    return change


def _condition(type_: str, status: str) -> Callable[[dict[str, Any]], None]:
    def change(body: dict[str, Any]) -> None:
        for condition in body["status"]["conditions"]:
            if condition["type"] == type_:
                condition["status"] = status

    return change


IGNORED = [
    pytest.param(_set("metadata.resourceVersion", "101"), id="resourceVersion"),
    pytest.param(_set("metadata.managedFields", [{"manager": "trainscale"}]), id="managedFields"),
    pytest.param(_set("status.throughput", 120.0), id="throughput"),
    pytest.param(_set("status.gpuUtilization", None), id="gpuUtilization-removed"),
    pytest.param(
        _set("status.autoscaling.lastObservationTime", "2026-12-06T00:00:30Z"),
        id="autoscaling-observation-time",
    ),
    pytest.param(_set("status.autoscaling.reason", "settling"), id="autoscaling-reason"),
    pytest.param(_condition(api.AUTOSCALER_CONDITIONS[0], "True"), id="metrics-unavailable"),
    pytest.param(_condition(api.AUTOSCALER_CONDITIONS[1], "True"), id="scaling-limited"),
]

NOTICED = [
    pytest.param(_set("metadata.generation", 4), id="generation"),
    pytest.param(_set("spec.replicas", 3), id="spec-replicas"),
    pytest.param(_set("metadata.labels", {"team": "b"}), id="labels"),
    pytest.param(_set("metadata.annotations", {}), id="annotations"),
    pytest.param(_set("metadata.deletionTimestamp", "2026-12-06T00:01:00Z"), id="deleting"),
    pytest.param(_set("metadata.finalizers", None), id="finalizers"),
    pytest.param(_set("status.phase", None), id="phase-removed"),
    pytest.param(_set("status.restarts", 1), id="restarts"),
    pytest.param(_set("status.arbitration", {"ceiling": 2}), id="arbitration-ceiling"),
    pytest.param(_set("status.arbitration", None), id="arbitration-given-up"),
    pytest.param(_condition("Ready", "False"), id="ready-condition"),
    pytest.param(_set("status.conditions", []), id="conditions-cleared"),
]


@pytest.mark.parametrize("change", IGNORED)
def test_what_only_the_autoscaler_writes_wakes_no_reconcile_pass(
    change: Callable[[dict[str, Any]], None],
) -> None:
    changed = copy.deepcopy(job())
    change(changed)
    assert changed != job()
    assert reconcile_inputs(changed) == reconcile_inputs(job())


@pytest.mark.parametrize("change", NOTICED)
def test_what_a_reconcile_pass_reads_wakes_it(change: Callable[[dict[str, Any]], None]) -> None:
    changed = copy.deepcopy(job())
    change(changed)
    assert changed != job()
    assert reconcile_inputs(changed) != reconcile_inputs(job())


def test_kopfs_view_of_the_job_has_the_same_digest() -> None:
    """The watch handler gets a ``kopf.Body``, not a dict."""
    assert reconcile_inputs(kopf.Body(job())) == reconcile_inputs(job())


def test_a_job_without_status_or_metadata_has_a_digest() -> None:
    bare = {"spec": {"replicas": 1}}
    assert reconcile_inputs(bare) != reconcile_inputs({**bare, "status": {"phase": "Pending"}})
