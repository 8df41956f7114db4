"""Worker placement on the real scheduler (kube-scheduler v1.35, stock configuration) and
how the operator reads it back, on the 2 x 8-GPU test-bed. No operator runs here: the worker
pods are the ones :func:`build_worker_pod` builds, created through the Kubernetes adapter.

Covers:
- with the default packing preference, a burst of 4 one-GPU workers lands on one node, and 6
  more fill that node before the next (8 + 2); a second job's 4 workers, next to a first
  job's 6, all go to the other node;
- with ``placement.packWorkers: false`` the stock scheduler spreads the same 4 workers over
  both nodes (the behaviour the preference corrects): workers that request CPU and memory
  go to the least allocated node;
- where other pods hold 2 GPUs of each node, 8 packed workers run 6 + 2, and the model takes
  6 workers to a node from that placement;
- ``k8s.fetch_nodes`` lists the GPU nodes trimmed to name, labels, taints, cordon and
  allocatable GPUs, and a node without GPUs apart (name, labels, taints and cordon: what a
  spread constraint counts it by); ``build_placement`` over ``k8s.fetch_worker_pods`` and it says
  where the workers are; without permission to list nodes it warns and returns none.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.testbed import (
    GPUS_PER_NODE,
    NODES,
    foreign_gpu_pod,
    get_json,
    node_without_gpus,
    wait_for,
)
from trainscale.operator import api
from trainscale.operator.adapters import k8s
from trainscale.operator.autoscaling.cluster import SCHEDULING_SPEC_FIELDS, trim_scheduling_spec
from trainscale.operator.autoscaling.observed_placement import build_placement
from trainscale.operator.autoscaling.placement import Placement, infer_workers_per_node
from trainscale.operator.controller import builders
from trainscale.operator.daemons.common import AdmittedPodSpecs
from trainscale.testbed.cluster import GPU_RESOURCE, Testbed

pytestmark = [pytest.mark.testbed, pytest.mark.slow]

# A realistic GPU worker asks for CPU and memory too (the kwok nodes have 64 CPUs, 512Gi):
# the stock scheduler's LeastAllocated and BalancedAllocation scores then pull every next
# pod to the emptier node, which the packing preference must outweigh up to a full node.
# (Without such requests those scores tie, and the stock scheduler picks among the nodes at
# random: neither packed nor spread.)
WORKER_REQUESTS = {"cpu": "6", "memory": "48Gi"}


def make_job(kubectl: Any, namespace: str, name: str, *, pack: bool
             ) -> tuple[builders.JobRef, api.TrainingJobSpec]:  # fmt: skip
    """A TrainingJob in the apiserver (its uid owns the pods, or the GC deletes them)."""
    spec = {
        "replicas": 1, "minReplicas": 1, "maxReplicas": 16,
        "placement": {"packWorkers": pack},
        "template": {"spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "trainer", "image": "registry.example/none:1",
                            "resources": {"requests": WORKER_REQUESTS,
                                          "limits": {GPU_RESOURCE: 1}}}]}},
    }  # fmt: skip
    body = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": name},
            "spec": spec}  # fmt: skip
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))
    uid = get_json(kubectl, f"tj/{name}", "-n", namespace)["metadata"]["uid"]
    job = builders.JobRef(name=name, namespace=namespace, uid=uid)
    return job, api.TrainingJobSpec.model_validate(spec)


def create_workers(clients: k8s.KubernetesClients, job: builders.JobRef,
                   spec: api.TrainingJobSpec, indices: range) -> None:  # fmt: skip
    """Create the workers back to back, as a reconcile pass does (a burst)."""
    for index in indices:
        assert k8s.apply_create(clients, builders.build_worker_pod(job, spec, index))


def placed(clients: k8s.KubernetesClients, job: builders.JobRef, count: int) -> Placement | None:
    """The job's placement once ``count`` workers are bound, else None."""
    placement = build_placement(
        k8s.fetch_worker_pods(clients, job.namespace, job.name), k8s.fetch_nodes(clients).gpu
    )
    return placement if placement.replicas == count else None


def test_workers_fill_one_node_before_the_next(
    crd: dict[str, Any], kubectl: Any, namespace: str, clients: k8s.KubernetesClients
) -> None:
    job, spec = make_job(kubectl, namespace, "packed", pack=True)
    create_workers(clients, job, spec, range(4))
    first = wait_for(lambda: placed(clients, job, 4), timeout=60, what="4 workers bound")
    assert first == Placement((4,), GPUS_PER_NODE)

    create_workers(clients, job, spec, range(4, 10))
    grown = wait_for(lambda: placed(clients, job, 10), timeout=60, what="10 workers bound")
    assert grown == Placement((8, 2), GPUS_PER_NODE)


def test_next_job_packs_on_the_node_with_room(
    crd: dict[str, Any], kubectl: Any, namespace: str, clients: k8s.KubernetesClients
) -> None:
    first, first_spec = make_job(kubectl, namespace, "first", pack=True)
    create_workers(clients, first, first_spec, range(6))
    wait_for(lambda: placed(clients, first, 6), timeout=60, what="6 workers of first bound")
    second, second_spec = make_job(kubectl, namespace, "second", pack=True)
    create_workers(clients, second, second_spec, range(4))
    # The first worker goes to the emptier node (the scheduler's own choice); the rest follow
    # it there rather than to the 2 GPUs left beside the other job.
    assert wait_for(lambda: placed(clients, second, 4), timeout=60, what="4 workers bound") \
        == Placement((4,), GPUS_PER_NODE)  # fmt: skip
    nodes_of = {
        p["spec"]["nodeName"] for p in k8s.fetch_worker_pods(clients, namespace, "first")
    } | {p["spec"]["nodeName"] for p in k8s.fetch_worker_pods(clients, namespace, "second")}
    assert len(nodes_of) == NODES


def test_without_packing_the_stock_scheduler_spreads_workers(
    crd: dict[str, Any], kubectl: Any, namespace: str, clients: k8s.KubernetesClients
) -> None:
    job, spec = make_job(kubectl, namespace, "spread", pack=False)
    pod = builders.build_worker_pod(job, spec, 0)
    assert "affinity" not in pod["spec"]
    create_workers(clients, job, spec, range(4))
    placement = wait_for(lambda: placed(clients, job, 4), timeout=60, what="4 workers bound")
    assert placement.nodes == NODES, placement


def test_on_nodes_partly_taken_packing_fills_what_is_free_and_the_model_follows(
    crd: dict[str, Any], kubectl: Any, namespace: str, clients: k8s.KubernetesClients,
    testbed: Testbed,
) -> None:  # fmt: skip
    """Other pods hold 2 GPUs of each 8-GPU node: 8 packed workers run 6 + 2, and the node
    takes 6 of the job's workers for the model's predictions, not the 8 the node size
    says (the shape ``benchmarks/policy.py --fragmented 0.75`` measures)."""
    for node in testbed.node_names:
        other = foreign_gpu_pod(f"other-{node}", 2, node=node)
        kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(other))
    job, spec = make_job(kubectl, namespace, "partly", pack=True)
    create_workers(clients, job, spec, range(4))
    assert wait_for(lambda: placed(clients, job, 4), timeout=60, what="4 workers bound") \
        == Placement((4,), GPUS_PER_NODE)  # fmt: skip
    create_workers(clients, job, spec, range(4, 8))
    spilled = wait_for(lambda: placed(clients, job, 8), timeout=60, what="8 workers bound")
    assert spilled == Placement((6, 2), GPUS_PER_NODE)
    assert infer_workers_per_node(GPUS_PER_NODE, spilled) == 6


@pytest.fixture
def cpu_node(kubectl: Any) -> Iterator[str]:
    """A Node object without GPUs."""
    with node_without_gpus(kubectl, "cpu-node-placement") as name:
        yield name


def test_fetch_nodes_lists_gpu_nodes_trimmed_and_the_rest_apart(
    clients: k8s.KubernetesClients, cpu_node: str, testbed: Testbed, kubectl: Any
) -> None:
    """Trimmed to what placement, arbitration and the node filters read: the name, labels,
    taints, whether it is cordoned, its GPUs, CPU and memory; a node without GPUs apart,
    without its allocatable."""
    tainted = testbed.node_names[0]
    taint = {"key": "trainscale-test/fetch", "value": "x", "effect": "NoSchedule"}
    kubectl("taint", "node", tainted, "trainscale-test/fetch=x:NoSchedule")
    try:
        listed = k8s.fetch_nodes(clients)
        nodes = listed.gpu
        labels = {
            n["metadata"]["name"]: n["metadata"].get("labels") or {}
            for n in json.loads(kubectl("get", "nodes", "-o", "json").stdout)["items"]
        }
    finally:
        kubectl("taint", "node", tainted, "trainscale-test/fetch-", check=False)
    assert sorted(nodes, key=lambda n: n["metadata"]["name"]) == [
        {
            "metadata": {"name": name, "labels": labels[name]},
            "spec": {"unschedulable": False, "taints": [taint] if name == tainted else []},
            "status": {
                "allocatable": {GPU_RESOURCE: str(GPUS_PER_NODE), "cpu": "64", "memory": "512Gi"}
            },
        }
        for name in testbed.node_names
    ]
    assert all(labels[name]["nvidia.com/gpu.present"] == "true" for name in testbed.node_names)
    # (the node controller may taint the unmanaged node at any moment: its taints not compared)
    [other] = listed.other
    assert other["metadata"] == {"name": cpu_node, "labels": labels[cpu_node]}
    assert other["spec"]["unschedulable"] is False and isinstance(other["spec"]["taints"], list)
    assert set(other) == {"metadata", "spec"}


def test_fetch_nodes_without_permission_returns_none(
    kubectl: Any, namespace: str, testbed: Testbed, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """An operator installed without ``list nodes`` still autoscales, without node sizes."""
    kubectl("create", "serviceaccount", "no-nodes", "-n", namespace)
    token = kubectl("create", "token", "no-nodes", "-n", namespace).stdout.strip()
    config = yaml.safe_load(testbed.kubeconfig.read_text())
    config["users"][0]["user"] = {"token": token}
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setattr(k8s, "_nodes_forbidden_logged", False)
    with caplog.at_level(logging.WARNING):
        assert k8s.fetch_nodes(k8s.load_clients()) == k8s.ListedNodes()
    assert "cannot list nodes" in caplog.text and "403" in caplog.text


GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}


def test_fetch_admitted_pod_returns_the_pod_as_admission_leaves_it(
    crd: dict[str, Any], kubectl: Any, namespace: str, clients: k8s.KubernetesClients
) -> None:
    """A dry-run create: the test-bed's apiserver runs ExtendedResourceToleration (as
    GKE's does), so a worker requesting nvidia.com/gpu comes back tolerating that taint,
    which its template lacks; a namespace LimitRange's default CPU request is added; and
    nothing is stored (its worker 0 does not exist afterwards, and a second dry run of the
    same pod name is not refused, nor one once the worker exists). A dry run a quota refuses
    returns None."""
    limits = {"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "defaults"},
              "spec": {"limits": [{"type": "Container", "defaultRequest": {"cpu": "3"}}]}}  # fmt: skip
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(limits))
    job, spec = make_job(kubectl, namespace, "admitted", pack=True)
    spec = spec.model_copy(update={"template": {**spec.template, "spec": {
        **spec.template["spec"], "containers": [{"name": "trainer", "image": "r.example/x:1",
                                                 "resources": {"limits": {GPU_RESOURCE: 1}}}]}}})  # fmt: skip
    pod = builders.build_worker_pod(job, spec, 0)
    assert GPU_TOLERATION not in (pod["spec"].get("tolerations") or [])
    for _ in range(2):
        admitted = k8s.fetch_admitted_pod(clients, pod)
        assert admitted is not None
        assert GPU_TOLERATION in admitted["spec"]["tolerations"], admitted["spec"]
        assert admitted["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "3"
        assert admitted["metadata"]["name"].startswith(f"{pod['metadata']['name']}-dry-run-")
    assert k8s.fetch_worker_pods(clients, namespace, job.name) == []
    assert k8s.apply_create(clients, pod)  # its name taken: the dry run is still answered
    assert k8s.fetch_admitted_pod(clients, pod) is not None
    quota = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-pods"},
             "spec": {"hard": {"pods": "0"}}}  # fmt: skip
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(quota))
    wait_for(lambda: k8s.fetch_admitted_pod(clients, pod) is None, timeout=30,
             what="the dry run refused by the quota")  # fmt: skip


def test_the_admitted_pod_spec_is_kept_while_the_template_is_unchanged(
    crd: dict[str, Any], kubectl: Any, namespace: str, clients: k8s.KubernetesClients,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """One dry run per job, again once ``ttl_seconds`` have passed, its template changed, or
    it was forgotten (deleted); a refused one is tried again after ``retry_seconds``, its
    pod as built standing in meanwhile."""
    job, spec = make_job(kubectl, namespace, "kept", pack=True)
    runs: list[str] = []
    real = k8s.fetch_admitted_pod
    refuse = False

    def counted(clients_: k8s.KubernetesClients, pod: Any) -> Any:
        runs.append(pod["metadata"]["name"])
        return None if refuse else real(clients_, pod)

    monkeypatch.setattr(k8s, "fetch_admitted_pod", counted)
    specs = AdmittedPodSpecs(ttl_seconds=60, retry_seconds=30)
    first = specs.pod_spec(clients, job, spec, now=0)
    assert GPU_TOLERATION in first["tolerations"]
    # held trimmed to what the node filters and the requests read
    assert set(first) <= {"containers", "initContainers", *SCHEDULING_SPEC_FIELDS}
    assert [set(c) for c in first["containers"]] == [{"name", "resources"}]
    assert first["containers"][0]["resources"]["requests"]["cpu"] == WORKER_REQUESTS["cpu"]
    assert specs.pod_spec(clients, job, spec, now=59) is first and len(runs) == 1
    assert specs.pod_spec(clients, job, spec, now=60) is not first and len(runs) == 2
    changed = spec.model_copy(
        update={"template": {**spec.template, "metadata": {"labels": {"x": "y"}}}}
    )
    specs.pod_spec(clients, job, changed, now=61)
    assert len(runs) == 3
    specs.forget(namespace, job.name)
    specs.pod_spec(clients, job, changed, now=62)
    assert len(runs) == 4
    refuse = True  # as a webhook or a quota refusing the dry run
    specs.forget(namespace, job.name)
    built = specs.pod_spec(clients, job, changed, now=100)
    pod_spec = builders.build_worker_pod(job, changed, 0)["spec"]
    assert built == trim_scheduling_spec(pod_spec) and len(runs) == 5
    assert specs.pod_spec(clients, job, changed, now=129) is built and len(runs) == 5
    refuse = False
    assert GPU_TOLERATION in specs.pod_spec(clients, job, changed, now=130)["tolerations"]
    assert len(runs) == 6
