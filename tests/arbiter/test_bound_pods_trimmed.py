"""The cluster's bound pods are trimmed as they are decoded, to what their readers use.

Every arbitration pass lists every bound pod of the cluster; decoded whole, 3,000 pods of
1,000 jobs were 103 MiB of Python objects, and the operator's resident memory kept that
peak. ``trim_bound_pod`` keeps what the readers of those pods take (capacity, the CPU and
memory each node has left, each job's workers' nodes, the room a waiting job reads), and
the readers must answer the same for a trimmed pod as for the whole one: each pod below
carries what a real one does (managed fields, images, environments, volumes, status
conditions) and one of the fields a reader needs (a sidecar, an overhead, an init container
larger than the main one, a deletion under way, a finished phase).

Covers: the readers agree on whole and trimmed pods; what is dropped; the decoding hooks
(a pod of a list trimmed as it is decoded, managed fields dropped from any object's
metadata, nothing else touched).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from trainscale.operator import api
from trainscale.operator.adapters import k8s
from trainscale.operator.autoscaling.cluster import (
    build_capacity,
    build_node_free,
    compute_room,
    compute_worker_nodes,
    trim_bound_pod,
)

GPU = api.GPU_RESOURCE
MANAGED = [{"manager": "kube-scheduler", "operation": "Update", "apiVersion": "v1",
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:status": {"f:conditions": {".": {}, "k:{\"type\":\"PodScheduled\"}":
                                                       {".": {}, "f:status": {}}}}}}]  # fmt: skip


def _node(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {},
            "status": {"allocatable": {GPU: "8", "cpu": "32", "memory": "128Gi"}}}  # fmt: skip


NODES = [_node("gpu-a"), _node("gpu-b")]


def _container(name: str, requests: dict[str, str], limits: dict[str, str] | None = None,
               **extra: Any) -> dict[str, Any]:  # fmt: skip
    return {"name": name, "image": f"registry.example/{name}:1",
            "command": ["python", "-m", name], "env": [{"name": "RANK", "value": "0"}],
            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            "resources": {"requests": requests, "limits": limits or {}}, **extra}  # fmt: skip


def _pod(name: str, node: str, containers: list[dict[str, Any]], *,
         labels: dict[str, str] | None = None, phase: str = "Running",
         init: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:  # fmt: skip
    pod_spec = {"nodeName": node, "containers": containers, "volumes": [{"name": "data"}],
                "restartPolicy": "Never", "serviceAccountName": "default", **spec}  # fmt: skip
    if init is not None:
        pod_spec["initContainers"] = init
    return {
        "metadata": {"name": name, "namespace": "team", "uid": f"uid-{name}",
                     "labels": labels or {}, "managedFields": copy.deepcopy(MANAGED),
                     "annotations": {"note": "x" * 200}},
        "spec": pod_spec,
        "status": {"phase": phase, "podIP": "10.0.0.1", "hostIP": "10.1.0.1",
                   "conditions": [{"type": "Ready", "status": "True"}],
                   "containerStatuses": [{"name": c["name"], "ready": True,
                                          "image": c["image"]} for c in containers]},
    }  # fmt: skip


def _worker(job: str, index: int, node: str, **extra: Any) -> dict[str, Any]:
    labels = {api.LABEL_MANAGED_BY: api.MANAGED_BY, api.LABEL_JOB_NAME: job,
              api.LABEL_COMPONENT: api.COMPONENT_WORKER,
              api.LABEL_REPLICA_INDEX: str(index)}  # fmt: skip
    container = _container("trainer", {"cpu": "4", "memory": "16Gi"}, {GPU: "2"})
    return _pod(f"{job}-worker-{index}", node, [container], labels=labels, **extra)


PODS = [
    # A foreign GPU pod with a sidecar (an init container restarting Always: beside the
    # main ones) and a runtime's overhead.
    _pod("with-sidecar", "gpu-a",
         [_container("main", {"cpu": "2", "memory": "8Gi"}, {GPU: "1"})],
         init=[_container("proxy", {"cpu": "3", "memory": "1Gi"}, restartPolicy="Always")],
         overhead={"cpu": "500m", "memory": "256Mi"}),
    # A foreign pod whose init container asks for more than its main one (the larger counts).
    _pod("big-init", "gpu-b", [_container("main", {"cpu": "1", "memory": "1Gi"}, {GPU: "3"})],
         init=[_container("setup", {"cpu": "6", "memory": "20Gi"})]),
    # A finished pod: holds nothing.
    _pod("done", "gpu-b", [_container("main", {"cpu": "8"}, {GPU: "4"})], phase="Succeeded"),
    # trainscale's workers: two bound, one being deleted (its node no longer counted as the
    # job's), and the job's rendezvous pod (labelled, no GPU).
    _worker("j", 0, "gpu-b"),
    _worker("j", 1, "gpu-a"),
    {**_worker("j", 2, "gpu-a"),
     "metadata": {**_worker("j", 2, "gpu-a")["metadata"],
                  "deletionTimestamp": "2026-12-06T07:00:00Z"}},
    _pod("j-rendezvous", "gpu-a", [_container("rdzv", {"cpu": "100m"})],
         labels={api.LABEL_MANAGED_BY: api.MANAGED_BY, api.LABEL_JOB_NAME: "j",
                 api.LABEL_COMPONENT: "rendezvous"}),
]  # fmt: skip

WORKER_SPEC = {"containers": [{"name": "trainer",
                               "resources": {"requests": {"cpu": "4", "memory": "16Gi"},
                                             "limits": {GPU: "1"}}}]}  # fmt: skip


def _readers(pods: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "capacity": build_capacity(NODES, pods),
        "node free, trainscale's workers left out": build_node_free(NODES, pods, placed=None),
        "node free, job j's workers placed": build_node_free(NODES, pods, placed={"team/j"}),
        "node free, every pod counted": build_node_free(NODES, pods, placed=()),
        "workers' nodes": compute_worker_nodes(pods),
        "room": compute_room(NODES, pods, 1, WORKER_SPEC),
    }


def test_the_readers_answer_the_same_for_trimmed_pods() -> None:
    whole = _readers(PODS)
    # What the fixture exercises, so that a reader ignoring a field cannot pass unnoticed.
    assert whole["capacity"].free_gpus == {"gpu-a": 7, "gpu-b": 5}
    assert whole["node free, every pod counted"].cpu_millis == {
        # main, sidecar, overhead, workers 1 and 2 (being deleted, it holds them still), rdzv
        "gpu-a": 32000 - 2000 - 3000 - 500 - 4000 - 4000 - 100,
        "gpu-b": 32000 - 6000 - 4000,  # the init container's 6, worker 0; "done" not counted
    }
    assert whole["workers' nodes"] == {("team", "j"): ("gpu-b", "gpu-a")}
    assert _readers([trim_bound_pod(p) for p in PODS]) == whole


@pytest.mark.parametrize("pod", PODS, ids=lambda p: p["metadata"]["name"])
def test_a_trimmed_pod_keeps_its_metadata_requests_node_and_phase_only(
    pod: dict[str, Any],
) -> None:
    trimmed = trim_bound_pod(pod)
    meta = {k: v for k, v in pod["metadata"].items() if k != "managedFields"}
    assert trimmed["metadata"] == meta
    assert trimmed["status"] == {"phase": pod["status"]["phase"]}
    assert set(trimmed["spec"]) <= {"nodeName", "overhead", "containers", "initContainers"}
    for key in ("containers", "initContainers"):
        for kept, whole in zip(trimmed["spec"].get(key, []), pod["spec"].get(key, []),
                               strict=True):  # fmt: skip
            assert kept == {k: whole[k] for k in ("name", "resources", "restartPolicy")
                            if k in whole}  # fmt: skip


def test_the_bound_pod_hook_trims_each_pod_of_a_list_as_it_is_decoded() -> None:
    listing = {"kind": "PodList", "apiVersion": "v1",
               "metadata": {"resourceVersion": "42"}, "items": PODS}  # fmt: skip
    decoded = json.loads(json.dumps(listing), object_hook=k8s._bound_pod)
    assert decoded["metadata"] == {"resourceVersion": "42"}
    assert decoded["items"] == [trim_bound_pod(p) for p in PODS]


def test_managed_fields_are_dropped_from_metadata_and_nothing_else() -> None:
    job = {"apiVersion": api.API_VERSION, "kind": api.KIND,
           "metadata": {"name": "j", "namespace": "team", "managedFields": MANAGED},
           "spec": {"template": {"metadata": {"labels": {"a": "b"}},
                                 "spec": {"containers": [{"name": "c"}]}}},
           # A user's own key of that name, in an object that is no metadata, stays.
           "status": {"notes": {"managedFields": ["mine"]}}}  # fmt: skip
    decoded = json.loads(json.dumps(job), object_hook=k8s.drop_managed_fields)
    expected = copy.deepcopy(job)
    del expected["metadata"]["managedFields"]
    assert decoded == expected
