"""The test-bed's pure builders: no process is started here.

Covers:
- every component's address/URL flag names 127.0.0.1 (nothing listens beyond loopback);
- each component gets its own port; the apiserver runs with RBAC;
- fake nodes carry the kwok annotation and the requested GPU capacity; bad counts are refused;
- the kubeconfig trusts the CA and presents the token.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from trainscale.testbed.cluster import (
    COMPONENTS,
    GPU_RESOURCE,
    KWOK_NODE_ANNOTATION,
    Paths,
    Ports,
    Testbed,
    build_commands,
    build_kubeconfig,
    build_node,
)

PORTS = Ports(etcd_client=2379, etcd_peer=2380, apiserver=6443, scheduler=10259,
              controller_manager=10257, kwok=10247)  # fmt: skip


def test_every_listener_is_loopback() -> None:
    commands = build_commands(Path("/bin"), Paths(Path("/state")), PORTS)
    assert set(commands) == set(COMPONENTS)
    address_flags = ("--bind-address", "--listen-client-urls", "--listen-peer-urls",
                     "--advertise-address", "--server-address")  # fmt: skip
    checked = 0
    for argv in commands.values():
        for arg in argv[1:]:
            flag, _, value = arg.partition("=")
            if flag in address_flags:
                checked += 1
                host = value.split("://")[-1].rsplit(":", 1)[0]
                assert host == "127.0.0.1", arg
    # apiserver x2, scheduler, controller-manager, etcd x2, kwok
    assert checked == 7


def test_ports_and_rbac() -> None:
    commands = build_commands(Path("/bin"), Paths(Path("/state")), PORTS)
    api = commands["kube-apiserver"]
    assert "--secure-port=6443" in api
    assert "--authorization-mode=Node,RBAC" in api
    assert "--secure-port=10259" in commands["kube-scheduler"]
    # kubernetes/kubernetes#141694: a preemptor parked for 5 minutes beside a free GPU.
    assert "--pod-max-in-unschedulable-pods-duration=10s" in commands["kube-scheduler"]
    assert "--secure-port=10257" in commands["kube-controller-manager"]


def test_node_has_gpus_and_kwok_annotation() -> None:
    node = build_node("gpu-node-0", 8)
    key, value = KWOK_NODE_ANNOTATION
    assert node["metadata"]["annotations"][key] == value
    assert node["status"]["capacity"][GPU_RESOURCE] == "8"
    assert node["status"]["allocatable"][GPU_RESOURCE] == "8"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"nodes": 0}, "nodes must be >= 1, got 0", id="no-nodes"),
        pytest.param({"gpus_per_node": -1}, "gpus_per_node must be >= 0, got -1", id="neg-gpus"),
    ],
)
def test_bad_sizes_are_refused(kwargs: dict[str, int], message: str, tmp_path: Path) -> None:
    sizes = {"nodes": 2, "gpus_per_node": 8} | kwargs
    with pytest.raises(ValueError, match=message):
        Testbed(tmp_path, nodes=sizes["nodes"], gpus_per_node=sizes["gpus_per_node"])


def test_kubeconfig_trusts_ca_and_presents_token() -> None:
    config = build_kubeconfig("https://127.0.0.1:6443", "PEM", "tok")
    cluster = config["clusters"][0]["cluster"]
    assert cluster["server"] == "https://127.0.0.1:6443"
    assert base64.b64decode(cluster["certificate-authority-data"]) == b"PEM"
    assert config["users"][0]["user"] == {"token": "tok"}
    assert config["current-context"] == config["contexts"][0]["name"]
