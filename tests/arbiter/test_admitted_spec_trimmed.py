"""A job's admitted pod spec is held trimmed to what its readers use, and they answer the
same for it as for the whole spec.

The operator holds each job's admitted pod spec (a dry-run create's) between passes: whole,
with the trainer's command, environment and volumes, about 15 KiB a job. The readers are
the node filters (which nodes admit a worker and why not the others, the key that groups
jobs the same nodes admit, how many workers a node may run) and the requests (the CPU and
memory a worker reserves). Each spec below carries what a dry run returns besides (image,
command, environment, volumes, security context, DNS and service account settings) and the
fields the readers need; each kept field is shown to change some reader's answer, so a trim
that dropped it would fail here.

Covers: the readers agree on whole and trimmed specs; what is kept and what is dropped.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from trainscale.operator import api
from trainscale.operator.api.quantities import compute_pod_requests
from trainscale.operator.autoscaling.cluster import SCHEDULING_SPEC_FIELDS, trim_scheduling_spec
from trainscale.operator.autoscaling.node_filters import (
    HOSTNAME_KEY,
    compute_eligible_nodes,
    compute_max_workers_per_node,
    explain_misfit,
    explain_no_node,
    scheduling_key,
)

GPU = api.GPU_RESOURCE
POOL = "pool"
OWN = {"app": "train", "job": "j", "index": "0"}
PEER = {"app": "train", "job": "j", "index": "1"}
STRANGER = {"app": "train", "job": "j-another", "index": "0"}


def _node(name: str, pool: str, taints: list[dict[str, str]] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {HOSTNAME_KEY: name, POOL: pool}},
            "spec": {"taints": taints or []},
            "status": {"allocatable": {GPU: "8", "cpu": "32", "memory": "128Gi"}}}  # fmt: skip


GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
NODES = [
    _node("a-1", "a", [GPU_TAINT]),
    _node("a-2", "a", [GPU_TAINT]),
    _node("b-1", "b", [GPU_TAINT]),  # excluded by the node selector
    _node("a-3", "a", [GPU_TAINT, {"key": "maintenance", "effect": "NoSchedule"}]),
    _node("c-1", "c"),  # excluded by the required node affinity (and the selector)
]


def _container(name: str, requests: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": f"registry.example/{name}:1",
            "command": ["python", "-m", name], "args": ["--config", "/etc/job.yaml"],
            "env": [{"name": f"VAR_{i}", "value": "x" * 40} for i in range(20)],
            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False},
            "terminationMessagePath": "/dev/termination-log",
            "resources": {"requests": requests, "limits": {GPU: "1"}}, **extra}  # fmt: skip


def _spec(**scheduling: Any) -> dict[str, Any]:
    """A worker's pod spec as a dry-run create returns it, with ``scheduling`` fields."""
    return {
        "containers": [_container("trainer", {"cpu": "4", "memory": "16Gi"})],
        "initContainers": [
            _container("fetch", {"cpu": "6", "memory": "2Gi"}),  # larger than the main one
            _container("proxy", {"cpu": "1", "memory": "1Gi"}, restartPolicy="Always"),
        ],
        "overhead": {"cpu": "250m", "memory": "128Mi"},
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
        "restartPolicy": "Never", "serviceAccountName": "trainer", "dnsPolicy": "ClusterFirst",
        "securityContext": {"fsGroup": 1000}, "schedulerName": "default-scheduler",
        "priority": 0, "enableServiceLinks": True, "preemptionPolicy": "PreemptLowerPriority",
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                         "effect": "NoSchedule"}],
        "nodeSelector": {POOL: "a"},
        **scheduling,
    }  # fmt: skip


NODE_AFFINITY = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
    "nodeSelectorTerms": [{"matchExpressions": [
        {"key": POOL, "operator": "In", "values": ["a", "b"]}]}]}}}  # fmt: skip
ANTI_AFFINITY = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
    {"labelSelector": {"matchLabels": {"job": "j"}}, "topologyKey": HOSTNAME_KEY}]}}  # fmt: skip
SPREAD = [{"maxSkew": 2, "topologyKey": HOSTNAME_KEY, "whenUnsatisfiable": "DoNotSchedule",
           "labelSelector": {"matchLabels": {"job": "j"}}}]  # fmt: skip

SPECS = {
    "node affinity and pod anti-affinity": _spec(affinity={**NODE_AFFINITY, **ANTI_AFFINITY}),
    "spread constraint": _spec(affinity=NODE_AFFINITY, topologySpreadConstraints=SPREAD),
}


def _readers(pod_spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "eligible": compute_eligible_nodes(pod_spec, NODES),
        "misfits": {n["metadata"]["name"]: explain_misfit(pod_spec, n) for n in NODES},
        "no node": explain_no_node(pod_spec, NODES[4:], NODES[:4]),
        "key": scheduling_key(pod_spec),
        "workers per node": compute_max_workers_per_node(
            pod_spec,
            OWN,
            PEER,
            "team",
            stranger_labels=STRANGER,
            nodes=NODES[:4],
            max_replicas=8,
            other_nodes=NODES[4:],
        ),
        "requests": compute_pod_requests(pod_spec),
    }


@pytest.mark.parametrize("name", SPECS)
def test_the_readers_answer_the_same_for_a_trimmed_spec(name: str) -> None:
    whole = _readers(SPECS[name])
    # What the fixture exercises, so that a reader ignoring a field cannot pass unnoticed.
    assert whole["eligible"] == {"a-1", "a-2"}
    # the larger of the main container with its sidecar and the init container, the overhead
    assert whole["requests"].cpu_millis == max(4000 + 1000, 6000) + 250
    assert whole["workers per node"] is not None
    assert _readers(trim_scheduling_spec(SPECS[name])) == whole


@pytest.mark.parametrize("field", SCHEDULING_SPEC_FIELDS)
def test_every_kept_field_changes_an_answer(field: str) -> None:
    """Each field the trim keeps is read: without it some reader answers otherwise."""
    changed = []
    for spec in SPECS.values():
        without = {k: v for k, v in spec.items() if k != field}
        changed.append(_readers(without) != _readers(spec))
    assert any(changed), f"no reader reads {field}"


def test_a_trimmed_spec_keeps_the_scheduling_fields_and_the_containers_requests() -> None:
    spec = SPECS["spread constraint"]
    trimmed = trim_scheduling_spec(spec)
    assert set(trimmed) == {"containers", "initContainers", *SCHEDULING_SPEC_FIELDS}
    assert trimmed["containers"] == [
        {"name": "trainer", "resources": spec["containers"][0]["resources"]}
    ]
    assert trimmed["initContainers"][1] == {
        "name": "proxy", "resources": spec["initContainers"][1]["resources"],
        "restartPolicy": "Always",
    }  # fmt: skip
    before = copy.deepcopy(spec)
    trim_scheduling_spec(spec)
    assert spec == before  # the spec trimmed is not changed
    assert len(repr(trimmed)) < len(repr(spec)) / 4
