"""pytest fixtures for the real control-plane test-bed, shared by tests/testbed, tests/e2e and tests/chart.

Why a plugin and not a conftest fixture: several folders (testbed, e2e, chart) need the same
session-scoped control plane, and a fixture defined in two conftest files is two fixtures (two
control planes). The root conftest registers this module once, so its fixtures start once.

Fixtures: ``testbed`` (the started :class:`~trainscale.testbed.cluster.Testbed`),
``kubectl`` (runs kubectl against it), ``crd`` (the generated TrainingJob CRD, applied and
Established), ``namespace`` (a fresh namespace per test, with its default ServiceAccount),
``clients`` (the operator's Kubernetes adapter, pointed at the test-bed).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from trainscale.operator.adapters import k8s
from trainscale.operator.autoscaling.cluster import FINISHED_POD_PHASES, compute_pod_gpus
from trainscale.testbed.cluster import CRD_NAME, GPU_RESOURCE, Testbed, TestbedError, fetch_bin_dir

NODES = 2
GPUS_PER_NODE = 8


class Kubectl(Protocol):
    def __call__(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]: ...


@pytest.hookimpl(trylast=True)  # after -m/-k deselection: build only when a test needs it
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:  # fmt: skip
    """Build the binaries before any test runs (a cold build outlasts any test timeout)."""
    if not any(item.get_closest_marker("testbed") for item in items):
        return
    capture = config.pluginmanager.getplugin("capturemanager")
    ctx = capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()
    with ctx:
        try:
            fetch_bin_dir(build=True)
        except TestbedError as err:
            pytest.exit(f"cannot build the control-plane test-bed: {err}", returncode=1)


@pytest.fixture(scope="session")
def testbed() -> Iterator[Testbed]:
    """One control plane for the whole session: 2 kwok nodes x 8 nvidia.com/gpu."""
    bed = Testbed(nodes=NODES, gpus_per_node=GPUS_PER_NODE)
    with bed:
        yield bed


@pytest.fixture(scope="session")
def kubectl(testbed: Testbed) -> Kubectl:
    """kubectl against the test-bed; raises TestbedError on a non-zero exit when ``check``."""
    return testbed.kubectl


@pytest.fixture(scope="session")
def crd(testbed: Testbed, kubectl: Kubectl) -> dict[str, Any]:
    """The generated TrainingJob CRD, applied to the test-bed and Established."""
    testbed.apply_crd()
    crd: dict[str, Any] = get_json(kubectl, f"crd/{CRD_NAME}")
    return crd


@pytest.fixture
def clients(testbed: Testbed, monkeypatch: pytest.MonkeyPatch) -> k8s.KubernetesClients:
    """The operator's own Kubernetes adapter, pointed at the test-bed (for tests that run
    the operator's passes in-process)."""
    monkeypatch.setenv("KUBECONFIG", str(testbed.kubeconfig))
    return k8s.load_clients()


_counter = itertools.count()


def make_namespace(kubectl: Kubectl, prefix: str) -> str:
    """Create a namespace named ``{prefix}{n}`` and wait until it accepts pods."""
    name = f"{prefix}{next(_counter)}"
    kubectl("create", "namespace", name)
    # Pods are refused until the controller-manager made the namespace's default ServiceAccount.
    wait_for(lambda: kubectl("get", "serviceaccount", "default", "-n", name,
                             check=False).returncode == 0, timeout=30,
             what=f"default ServiceAccount in {name}")  # fmt: skip
    return name


def cleanup_namespace(kubectl: Kubectl, name: str) -> None:
    """Delete the jobs (an operator lifts their finalizer, the GC takes the children) and the
    pods, waiting until they are gone so the next test has every GPU; then drop the namespace
    without waiting for it."""
    kubectl("delete", "trainingjobs", "--all", "-n", name, "--timeout=60s", check=False)
    kubectl("delete", "pods", "--all", "-n", name, "--timeout=60s", check=False)
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def gpu_holders(kubectl: Kubectl, *, outside: str) -> list[str]:
    """The pods outside namespace ``outside`` that hold a GPU: bound to a node and not finished
    (a terminating pod holds its GPU until it is gone), as ``namespace/name (phase)``."""
    pods = json.loads(kubectl("get", "pods", "-A", "-o", "json").stdout)["items"]
    held = []
    for pod in pods:
        meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
        if (meta["namespace"] != outside and compute_pod_gpus(pod) and spec.get("nodeName")
                and status.get("phase") not in FINISHED_POD_PHASES):  # fmt: skip
            held.append(f"{meta['namespace']}/{meta['name']} ({status.get('phase')})")
    return held


def foreign_gpu_pod(name: str, gpus: int, *, node: str | None = None) -> dict[str, Any]:
    """Someone else's pod holding ``gpus`` GPUs (not trainscale's: the operator cannot move
    it, and without arbitration nothing tells the job), bound to ``node`` when given (else
    the scheduler places it)."""
    spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": 0,
        "containers": [
            {
                "name": "main",
                "image": "registry.example/other-team:1",
                "resources": {"limits": {GPU_RESOURCE: str(gpus)}},
            }
        ],
    }
    if node is not None:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


@contextlib.contextmanager
def node_without_gpus(kubectl: Kubectl, name: str, labels: dict[str, str] | None = None
                      ) -> Iterator[str]:  # fmt: skip
    """A Node object without GPUs, as a cluster's system pool has (kwok does not manage it,
    so nothing is scheduled on it), deleted afterwards."""
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels or {}},
            "status": {"capacity": {"cpu": "8"}, "allocatable": {"cpu": "8"}}}  # fmt: skip
    kubectl("create", "-f", "-", input=json.dumps(node))
    try:
        yield name
    finally:
        kubectl("delete", "node", name, "--wait=true", check=False)


def describe_pods(kubectl: Kubectl, namespace: str) -> str:
    """Every pod in ``namespace``, a line each: phase, node, nomination, whether it is being
    deleted and, when it is not scheduled, the scheduler's reason (for a failure message)."""
    found = json.loads(kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
    lines = []
    for pod in found:
        meta, spec, st = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
        why = [c.get("message", "") for c in st.get("conditions") or []
               if c.get("type") == "PodScheduled" and c.get("status") != "True"]  # fmt: skip
        lines.append(f"  {meta['name']}: {st.get('phase')} node={spec.get('nodeName')} "
                     f"nominated={st.get('nominatedNodeName')} "
                     f"deleting={bool(meta.get('deletionTimestamp'))} {' '.join(why)}")  # fmt: skip
    return "pods:\n" + "\n".join(sorted(lines))


def wait_for_every_gpu(kubectl: Kubectl, namespace: str) -> None:
    """Wait until no pod outside ``namespace`` holds a GPU: a test that counts on all of them
    must not start while an earlier test's pods are still going away."""
    wait_for(lambda: not gpu_holders(kubectl, outside=namespace), timeout=120,
             what=f"every GPU free for {namespace}",
             describe=lambda: "held by: " + ", ".join(gpu_holders(kubectl, outside=namespace)))  # fmt: skip


@pytest.fixture
def namespace(kubectl: Kubectl, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test, cleaned up afterwards."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    name = make_namespace(kubectl, f"{base}-")
    yield name
    cleanup_namespace(kubectl, name)


def wait_for(condition: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.25,
             describe: Callable[[], str] | None = None) -> Any:  # fmt: skip
    """Poll ``condition`` until it returns a truthy value (returned); fail after ``timeout``,
    with ``describe()`` (what was observed last) in the message."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            seen = f"\n{describe()}" if describe is not None else ""
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}{seen}")
        time.sleep(interval)


def get_json(kubectl: Kubectl, *args: str) -> Any:
    """``kubectl get ... -o json``, parsed."""
    return json.loads(kubectl("get", *args, "-o", "json").stdout)


def operator_samples(port: int) -> list[Sample]:
    """The samples of an operator's /metrics on a loopback ``port``; empty until it serves."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return []
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]
