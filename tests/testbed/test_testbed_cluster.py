"""The test-bed behaves like a cluster with GPU nodes, using only built-in Kubernetes objects.

Covers:
- the kwok nodes are Ready, advertise nvidia.com/gpu capacity and keep a node Lease;
- a pod asking for GPUs is placed by the real scheduler on a GPU node and kwok runs it;
- a pod asking for more GPUs than any node has stays Pending with reason Unschedulable;
- the garbage collector deletes dependents when their owner goes (owner references);
- every listening socket of the control plane is bound to 127.0.0.1;
- helm (from the same cache) reaches the cluster with a writable home.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.support.testbed import GPUS_PER_NODE, NODES, get_json, wait_for
from trainscale.testbed.cluster import COMPONENTS, GPU_RESOURCE, Testbed

pytestmark = pytest.mark.testbed


def gpu_pod(name: str, gpus: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "image": "registry.example/none:1",
                    "resources": {"limits": {GPU_RESOURCE: str(gpus)}},
                }
            ]
        },
    }


def test_nodes_are_ready_with_gpu_capacity(kubectl: Any) -> None:
    nodes = get_json(kubectl, "nodes")["items"]
    assert len(nodes) == NODES
    for node in nodes:
        assert node["status"]["allocatable"][GPU_RESOURCE] == str(GPUS_PER_NODE)
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True"
    # kwok must renew a Lease per node, or the node-lifecycle controller marks the nodes
    # NotReady after its grace period (~50 s) and evicts their pods.
    leases = get_json(kubectl, "leases", "-n", "kube-node-lease")["items"]
    renewed = {lease["metadata"]["name"] for lease in leases if lease["spec"].get("renewTime")}
    assert renewed == {node["metadata"]["name"] for node in nodes}


def test_gpu_pod_is_scheduled_and_running(kubectl: Any, namespace: str) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(gpu_pod("fits", 4)))
    pod = wait_for(
        lambda: (
            (p := get_json(kubectl, "pod/fits", "-n", namespace))["status"].get("phase")
            == "Running"
            and p
        ),
        timeout=60,
        what="pod fits Running",
    )
    assert pod["spec"]["nodeName"].startswith("gpu-node-")
    assert pod["status"]["podIP"]


def test_pod_beyond_gpu_capacity_stays_unschedulable(kubectl: Any, namespace: str) -> None:
    too_many = GPUS_PER_NODE + 1
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(gpu_pod("too-big", too_many)))

    def unschedulable() -> dict[str, Any] | None:
        pod = get_json(kubectl, "pod/too-big", "-n", namespace)
        for cond in pod["status"].get("conditions", []):
            if cond["type"] == "PodScheduled" and cond["status"] == "False":
                return dict(cond)
        return None

    cond = wait_for(unschedulable, timeout=60, what="PodScheduled=False on too-big")
    assert cond["reason"] == "Unschedulable"
    assert f"Insufficient {GPU_RESOURCE}" in cond["message"]
    pod = get_json(kubectl, "pod/too-big", "-n", namespace)
    assert pod["status"]["phase"] == "Pending"
    assert not pod["spec"].get("nodeName")


def test_garbage_collector_deletes_dependents(kubectl: Any, namespace: str) -> None:
    kubectl("create", "configmap", "owner", "-n", namespace)
    owner = get_json(kubectl, "configmap/owner", "-n", namespace)
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
           "uid": owner["metadata"]["uid"]}  # fmt: skip
    child = gpu_pod("child", 1)
    child["metadata"]["ownerReferences"] = [ref]
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(child))
    kubectl("delete", "configmap/owner", "-n", namespace, "--wait=false")
    wait_for(
        lambda: kubectl("get", "pod/child", "-n", namespace, check=False).returncode != 0,
        timeout=60,
        what="pod child garbage-collected",
    )


def _listening_inodes() -> dict[str, str]:
    """inode -> local address of every TCP socket in LISTEN state."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                found[fields[9]] = fields[1]
    return found


def test_control_plane_listens_on_loopback_only(testbed: Testbed) -> None:
    listening = _listening_inodes()
    seen = 0
    for name in COMPONENTS:
        pid = testbed.pids[name]
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            target = os.readlink(fd)
            if target.startswith("socket:["):
                addr = listening.get(target[8:-1])
                if addr is not None:
                    seen += 1
                    # 0100007F is 127.0.0.1 in /proc's little-endian hex.
                    assert addr.split(":")[0] == "0100007F", f"{name} listens on {addr}"
    assert seen >= len(COMPONENTS)  # each component serves at least one port


def test_helm_reaches_the_cluster(testbed: Testbed) -> None:
    done = testbed.helm("list", "--all-namespaces", "-o", "json")
    assert json.loads(done.stdout) == []
