"""A job's worker pods are listed trimmed to what their readers use, and the readers answer
the same for them as for the whole pods.

The operator keeps each job's last listing of its worker pods between passes
(``WorkerPodLists``): whole, a pod with the trainer's environment, volumes and managed
fields is tens of KiB of Python objects. The readers are ``parse_worker_pod`` (phase,
readiness, unschedulable, failure message, node, planned node, terminating) and
``node_of_pod`` (where it holds GPUs). Each pod below is built as the operator creates it
(``build_worker_pod``) with a status as the kubelet and the scheduler write it; each kept
field is shown to change some reader's answer, so a trim that dropped it would fail here.

Covers: the readers agree on whole and trimmed pods; what is kept; the adapter's decoding
hook trims each pod of a listing and nothing else.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from trainscale.operator import api
from trainscale.operator.adapters import k8s
from trainscale.operator.autoscaling.observed_placement import node_of_pod
from trainscale.operator.controller.builders import JobRef, build_worker_pod, build_worker_selector
from trainscale.operator.controller.reconcile import (
    CONDITION_FIELDS,
    WORKER_POD_CONDITIONS,
    WORKER_POD_LABELS,
    WORKER_POD_METADATA_FIELDS,
    WORKER_POD_STATUS_FIELDS,
    parse_worker_pod,
    trim_worker_pod,
)

JOB = JobRef(name="j", namespace="ns", uid="u-1")
SPEC = api.TrainingJobSpec.model_validate(
    {
        "replicas": 4,
        "minReplicas": 1,
        "maxReplicas": 8,
        "template": {
            "spec": {
                "containers": [
                    {
                        "name": "trainer",
                        "image": "registry.example/train:1",
                        "command": ["python", "-m", "train"],
                        "env": [{"name": f"VAR_{i}", "value": "x" * 40} for i in range(20)],
                        "resources": {"limits": {"nvidia.com/gpu": 1}},
                    }
                ]
            }
        },
    }
)


def _condition(type_: str, status: str, reason: str = "", message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2026-12-06T10:00:00Z", "lastProbeTime": None}  # fmt: skip


def _container_status(state: dict[str, Any]) -> dict[str, Any]:
    return {"name": "trainer", "state": state, "lastState": {}, "ready": False,
            "restartCount": 0, "image": "registry.example/train:1",
            "imageID": "registry.example/train@sha256:" + "0" * 64,
            "containerID": "containerd://" + "1" * 64, "started": False}  # fmt: skip


def _pod(index: int, node: str | None, status: dict[str, Any], **meta: Any) -> dict[str, Any]:
    pod = build_worker_pod(JOB, SPEC, index, planned_node=meta.pop("planned", None))
    pod["metadata"].setdefault("annotations", {}).update(meta.pop("annotations", {}))
    pod["metadata"].update(uid=f"pod-{index}", resourceVersion="123",
                           creationTimestamp="2026-12-06T10:00:00Z",
                           managedFields=[{"manager": "trainscale", "fieldsV1": {"f:spec": {}}}],
                           **meta)  # fmt: skip
    if node is not None:
        pod["spec"]["nodeName"] = node
    pod["status"] = {"hostIP": "10.0.0.1", "podIP": "10.1.0.1", "qosClass": "BestEffort",
                     "startTime": "2026-12-06T10:00:00Z", **status}  # fmt: skip
    return pod


PODS = {
    "running, ready": _pod(0, "node-1", {
        "phase": "Running",
        "conditions": [_condition("PodScheduled", "True"), _condition("Ready", "True")],
        "containerStatuses": [_container_status({"running": {"startedAt": "now"}})]}),
    "pending, unschedulable": _pod(1, None, {
        "phase": "Pending",
        "conditions": [_condition("PodScheduled", "False", "Unschedulable",
                                  "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.")]}),
    "failed, exit code": _pod(2, "node-2", {
        "phase": "Failed",
        "conditions": [_condition("Ready", "False", "PodFailed")],
        "containerStatuses": [_container_status(
            {"terminated": {"exitCode": 137, "reason": "OOMKilled", "startedAt": "then"}})]}),
    "evicted": _pod(3, "node-2", {
        "phase": "Failed", "reason": "Evicted",
        "message": "The node was low on resource: memory."}),
    "terminating, planned": _pod(1, "node-3", {
        "phase": "Running", "conditions": [_condition("Ready", "True")]},
        planned="node-3", deletionTimestamp="2026-12-06T10:05:00Z",
        annotations={"example.com/other": "y" * 200}),
}  # fmt: skip


def answers(pod: dict[str, Any]) -> tuple[Any, Any]:
    return parse_worker_pod(pod), node_of_pod(pod)


@pytest.mark.parametrize("pod", list(PODS.values()), ids=list(PODS))
def test_the_readers_answer_the_same_for_the_trimmed_pod(pod: dict[str, Any]) -> None:
    whole = copy.deepcopy(pod)
    trimmed = trim_worker_pod(pod)
    assert pod == whole  # not changed in place
    assert answers(trimmed) == answers(pod)
    assert len(json.dumps(trimmed)) < len(json.dumps(pod)) / 3


def test_the_fixture_pods_answer_what_their_names_say() -> None:
    """So that the equality above is not between two answers of nothing."""
    found = {name: parse_worker_pod(pod) for name, pod in PODS.items()}
    assert all(w is not None for w in found.values())
    running, pending, failed, evicted, leaving = found.values()
    assert running and running.phase == "Running" and running.ready and running.node == "node-1"
    assert pending and pending.unschedulable and "Insufficient" in pending.message
    assert failed and "exited with code 137 (OOMKilled)" in failed.message
    assert evicted and evicted.reason == "Evicted" and "low on resource" in evicted.message
    assert leaving and leaving.terminating and leaving.planned_node == "node-3"
    assert [node_of_pod(p) for p in PODS.values()] == ["node-1", None, None, None, None]


def _without(pod: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    """``pod`` without what ``path`` names; through a list, in each of its items; a last
    step ``type=T`` drops the status list's items of that type."""
    out = copy.deepcopy(pod)
    if path[-1].startswith("type="):
        status = out.get("status") or {}
        kind = path[-1].removeprefix("type=")
        status[path[-2]] = [c for c in status.get(path[-2], []) if c.get("type") != kind]
        return out
    wheres: list[Any] = [out]
    for key in path[:-1]:
        found = [w.get(key) for w in wheres if isinstance(w, dict)]
        wheres = [i for f in found for i in (f if isinstance(f, list) else [f]) if i]
    for where in wheres:
        where.pop(path[-1], None)
    return out


KEPT = (
    [("metadata", f) for f in WORKER_POD_METADATA_FIELDS]
    + [("metadata", "labels", label) for label in WORKER_POD_LABELS]
    + [("metadata", "annotations")]
    + [("spec", "nodeName")]
    + [("status", f) for f in WORKER_POD_STATUS_FIELDS]
    + [("status", "conditions", f"type={t}") for t in WORKER_POD_CONDITIONS]
    + [("status", "conditions", f) for f in CONDITION_FIELDS]
    + [("status", "containerStatuses", "name"), ("status", "containerStatuses", "state")]
)


@pytest.mark.parametrize("path", KEPT, ids=["/".join(p) for p in KEPT])
def test_every_kept_field_changes_some_readers_answer(path: tuple[str, ...]) -> None:
    """Read through the listing as the adapter returns it: its own check of the selector,
    then the readers."""
    trimmed = [trim_worker_pod(p) for p in PODS.values()]

    def read(pods: list[dict[str, Any]]) -> list[Any]:
        selector = build_worker_selector(JOB.name)
        return [answers(p) for p in pods if k8s._matches(p, selector)]

    assert read([_without(p, path) for p in trimmed]) != read(trimmed), path


def test_what_is_dropped() -> None:
    """Other labels and annotations, other conditions, the containers that did not exit."""
    trimmed = [trim_worker_pod(p) for p in PODS.values()]
    assert all(set(p["metadata"]["labels"]) == set(WORKER_POD_LABELS) for p in trimmed)
    assert {c["type"] for p in trimmed for c in p["status"].get("conditions", [])} == set(
        WORKER_POD_CONDITIONS
    )
    assert [len(p["status"].get("containerStatuses", [])) for p in trimmed] == [0, 0, 1, 0, 0]


def test_only_the_planned_node_annotation_is_kept() -> None:
    trimmed = trim_worker_pod(PODS["terminating, planned"])
    assert trimmed["metadata"]["annotations"] == {api.ANNOTATION_PLANNED_NODE: "node-3"}
    assert "annotations" not in trim_worker_pod(PODS["running, ready"])["metadata"]


def test_the_listing_is_decoded_trimmed() -> None:
    """``fetch_worker_pods`` decodes its LIST through this hook: each pod trimmed, the list's
    own fields kept (without managed fields)."""
    listing = {"kind": "PodList", "metadata": {"resourceVersion": "9"},
               "items": list(PODS.values())}  # fmt: skip
    decoded = json.loads(json.dumps(listing), object_hook=k8s._worker_pod)
    assert decoded["items"] == [trim_worker_pod(p) for p in PODS.values()]
    assert decoded["kind"] == "PodList" and decoded["metadata"] == {"resourceVersion": "9"}
