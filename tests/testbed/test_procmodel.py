"""The process runtime's pure rules: no process, namespace or apiserver here.

Covers:
- process nodes lack kwok's annotation (kwok leaves them alone), carry the process label,
  the GPU count and the bridge address;
- field references resolve like Kubernetes', unknown ones are refused by name; ``$(VAR)``
  expansion; a container without a command is refused with the reason;
- Service endpoints are the Ready selected pods of the Service's namespace (all with an IP when
  publishing not-ready addresses); hosts files give short names only in the pod's namespace;
- phases for each restart policy; restart decisions and backoff; named probe ports;
- bad process-node counts are refused, by ``Testbed`` and by the command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from trainscale.testbed import procmodel as model
from trainscale.testbed import procnode
from trainscale.testbed.cluster import GPU_RESOURCE, KWOK_NODE_ANNOTATION, Testbed, build_parser

POD: dict[str, Any] = {
    "metadata": {"name": "w-0", "namespace": "ml", "uid": "u-1",
                 "labels": {"role": "worker"}, "annotations": {"a": "b"}},
    "spec": {"nodeName": "proc-node-0", "serviceAccountName": "trainer"},
}  # fmt: skip


def test_process_node_is_not_kwoks() -> None:
    node = model.build_process_node("proc-node-0", 4, "10.241.0.1")
    assert KWOK_NODE_ANNOTATION[0] not in node["metadata"]["annotations"]
    assert node["metadata"]["labels"][model.PROCESS_NODE_LABEL] == "true"
    assert node["status"]["allocatable"][GPU_RESOURCE] == "4"
    assert {"type": "InternalIP", "address": "10.241.0.1"} in node["status"]["addresses"]
    ready = model.build_node_conditions("now", "then")[0]
    assert (ready["type"], ready["status"], ready["lastHeartbeatTime"]) == ("Ready", "True", "now")


@pytest.mark.parametrize(("path", "value"), [
    ("metadata.name", "w-0"), ("metadata.namespace", "ml"), ("metadata.uid", "u-1"),
    ("metadata.labels['role']", "worker"), ("metadata.annotations['a']", "b"),
    ("metadata.labels['absent']", ""), ("spec.nodeName", "proc-node-0"),
    ("spec.serviceAccountName", "trainer"), ("status.podIP", "10.241.0.7"),
    ("status.hostIP", "10.241.0.1"),
])  # fmt: skip
def test_field_refs(path: str, value: str) -> None:
    assert model.resolve_field(POD, path, "10.241.0.7", "10.241.0.1") == value


def test_unknown_field_ref_is_refused_by_name() -> None:
    with pytest.raises(model.PodConfigError, match=r"'spec\.nodeSelector'"):
        model.resolve_field(POD, "spec.nodeSelector", "", "")


def test_env_expansion_and_sources() -> None:
    container = {"name": "main", "env": [
        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "ADDR", "value": "$(IP):29500 $(NOPE) $$(IP)"},
    ]}  # fmt: skip
    env = model.build_container_env(POD, container, "10.241.0.7", "10.241.0.1", {"PATH": "/b"})
    assert env == {"PATH": "/b", "IP": "10.241.0.7", "ADDR": "10.241.0.7:29500 $(NOPE) $(IP)"}
    secret = {"name": "main", "env": [{"name": "T", "valueFrom": {"secretKeyRef": {}}}]}
    with pytest.raises(model.PodConfigError, match="env T valueFrom secretKeyRef"):
        model.build_container_env(POD, secret, "", "", {})


def test_unsupported_features_are_refused_by_name() -> None:
    model.check_supported(POD, {"name": "main", "volumeMounts": [{"name": "v", "mountPath": "/v"}]})
    with pytest.raises(model.PodConfigError, match="initContainers"):
        model.check_supported({"spec": {"initContainers": [{"name": "i"}]}}, {})
    sub = {"name": "main", "volumeMounts": [{"name": "v", "mountPath": "/v", "subPath": "x"}]}
    with pytest.raises(model.PodConfigError, match="'v' subPath"):
        model.check_supported(POD, sub)


def test_argv_needs_a_command() -> None:
    assert model.build_argv({"command": ["echo", "$(X)"], "args": ["b"]}, {"X": "a"}) == [
        "echo", "a", "b"]  # fmt: skip
    with pytest.raises(model.PodConfigError, match="no command"):
        model.build_argv({"name": "main", "args": ["x"]}, {})


def _pod(name: str, ns: str, ip: str, ready: bool, labels: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "labels": labels},
            "status": {"podIP": ip, "conditions": [
                {"type": "Ready", "status": "True" if ready else "False"}]}}  # fmt: skip


def _service(name: str, ns: str, selector: dict[str, str], **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns}, "spec": {"selector": selector, **spec}}


def test_endpoints_are_ready_selected_pods_of_the_namespace() -> None:
    pods = [_pod("a", "ml", "10.241.0.2", True, {"app": "x"}),
            _pod("b", "ml", "10.241.0.3", False, {"app": "x"}),
            _pod("c", "other", "10.241.0.4", True, {"app": "x"}),
            _pod("d", "ml", "10.241.0.5", True, {"app": "y"})]  # fmt: skip
    services = [_service("x", "ml", {"app": "x"}),
                _service("x-all", "ml", {"app": "x"}, publishNotReadyAddresses=True),
                _service("none", "ml", {})]  # fmt: skip
    assert model.build_endpoints(services, pods) == {
        ("ml", "x"): ["10.241.0.2"],
        ("ml", "x-all"): ["10.241.0.2", "10.241.0.3"],
        ("ml", "none"): [],
    }


def test_hosts_short_names_only_in_own_namespace() -> None:
    hosts = model.build_hosts("w-0", "10.241.0.7", "ml",
                              {("ml", "rdzv"): ["10.241.0.2"], ("db", "pg"): ["10.241.0.9"]},
                              {"10.241.0.7": "ml", "10.241.0.3": "ml"})  # fmt: skip
    lines = hosts.splitlines()
    assert "10.241.0.7\tw-0 10-241-0-7.ml.pod.cluster.local" in lines
    assert "10.241.0.3\t10-241-0-3.ml.pod.cluster.local" in lines
    assert "10.241.0.2\trdzv rdzv.ml rdzv.ml.svc rdzv.ml.svc.cluster.local" in lines
    assert "10.241.0.9\tpg.db pg.db.svc pg.db.svc.cluster.local" in lines


def _views(*states: tuple[str, int | None, int]) -> list[model.ContainerView]:
    return [model.ContainerView(name=f"c{i}", image="", state=s, exit_code=code, restart_count=n)
            for i, (s, code, n) in enumerate(states)]  # fmt: skip


@pytest.mark.parametrize(("policy", "states", "phase"), [
    ("Never", [(model.WAITING, None, 0)], "Pending"),
    ("Never", [(model.RUNNING, None, 0), (model.TERMINATED, 1, 0)], "Running"),
    ("Never", [(model.TERMINATED, 0, 0), (model.TERMINATED, 0, 0)], "Succeeded"),
    ("Never", [(model.TERMINATED, 0, 0), (model.TERMINATED, 3, 0)], "Failed"),
    ("OnFailure", [(model.TERMINATED, 0, 1)], "Succeeded"),
    ("OnFailure", [(model.WAITING, None, 1)], "Running"),
    ("Always", [(model.TERMINATED, 0, 0)], "Running"),
])  # fmt: skip
def test_phase(policy: str, states: list[tuple[str, int | None, int]], phase: str) -> None:
    assert model.pod_phase(policy, _views(*states)) == phase


def test_status_of_a_failed_pod() -> None:
    status = model.build_pod_status(restart_policy="Never",
                                    containers=_views((model.TERMINATED, 3, 0)),
                                    pod_ip="10.241.0.7", host_ip="10.241.0.1",
                                    start_time="t0", since="t1")  # fmt: skip
    assert status["phase"] == "Failed"
    assert status["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == "False"
    assert conditions["Ready"]["reason"] == "PodCompleted"
    assert conditions["PodScheduled"]["status"] == "True"


def test_restarts_and_backoff() -> None:
    assert model.restart_wanted("Always", 0) and model.restart_wanted("OnFailure", 1)
    assert not model.restart_wanted("OnFailure", 0) and not model.restart_wanted("Never", 1)
    assert [model.restart_backoff(n) for n in range(6)] == [1, 2, 4, 8, 10, 10]


def test_probe_ports() -> None:
    container = {"name": "main", "ports": [{"name": "metrics", "containerPort": 9400}]}
    assert model.probe_port("metrics", container) == 9400
    assert model.probe_port(80, container) == model.probe_port("80", container) == 80
    with pytest.raises(model.PodConfigError, match="'http'"):
        model.probe_port("http", container)


def test_runtime_command_names_nodes_and_bin_dirs() -> None:
    argv = procnode.build_runtime_command(Path("/k"), Path("/s"), ["n0", "n1"], 8, [Path("/b")])
    assert argv[1:3] == ["-m", "trainscale.testbed.procnode"]
    assert argv.count("--node") == 2 and argv[argv.index("--bin-dir") + 1] == "/b"


def test_bad_process_node_counts_are_refused(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    with pytest.raises(ValueError, match="process_nodes must be >= 0, got -1"):
        Testbed(tmp_path, process_nodes=-1)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["up", "--process-nodes", "-1"])
    assert "--process-nodes: must be >= 0, got -1" in capsys.readouterr().err
