"""The chart and manifests/install.yaml against the real control-plane test-bed.

Behaviours covered (real kube-apiserver with RBAC and PodSecurity admission, real helm):

* ``helm install`` of the chart succeeds, and the operator pod is admitted into a namespace
  that enforces the ``restricted`` Pod Security Standard;
* the real RBAC authorizer grants the operator's ServiceAccount what it needs (pods, services,
  events, trainingjobs and their status/scale subresources, CRD discovery) and nothing more
  (no secrets, no deployments, no nodes);
* with ``operator.watchNamespaces`` it may touch pods only in the watched namespaces;
* the real operator, run with nothing but the namespaced release's ServiceAccount token,
  reconciles an example TrainingJob in its watched namespace (rendezvous pod and Service,
  workers, scale-up through the scale subresource, Events) without a single Forbidden;
* every object of manifests/install.yaml is accepted by the apiserver (server-side dry run),
  with no PodSecurity warning.

The TrainingJob CRD comes from the shared ``crd`` fixture, so the releases are installed with
``crds.enabled=false`` and never take the CRD away from the other tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from trainscale.testbed.cluster import Testbed, build_kubeconfig

pytestmark = pytest.mark.testbed

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "charts" / "trainscale"
INSTALL = REPO_ROOT / "manifests" / "install.yaml"
EXAMPLE = REPO_ROOT / "examples" / "manual-scale.yaml"
TRAINSCALE = Path(sys.executable).with_name("trainscale")

# (verb, resource) the operator must be allowed in a namespace it serves.
NEEDED = [
    ("create", "pods"),
    ("delete", "pods"),
    ("watch", "pods"),
    ("patch", "services"),
    ("create", "events"),
    ("create", "events.events.k8s.io"),
    ("patch", "trainingjobs.trainscale.dev"),
    ("patch", "trainingjobs.trainscale.dev/status"),
    ("update", "trainingjobs.trainscale.dev/scale"),
]
# ... and what it must never be allowed anywhere.
FORBIDDEN = [
    ("get", "secrets"),
    ("list", "configmaps"),
    ("create", "deployments.apps"),
    ("delete", "trainingjobs.trainscale.dev"),
    ("create", "trainingjobs.trainscale.dev"),
    ("create", "pods/exec"),
    ("escalate", "clusterroles.rbac.authorization.k8s.io"),
]


def _can_i(kubectl: Any, account: str, verb: str, resource: str, namespace: str | None) -> bool:
    resource, _, sub = resource.partition("/")
    args = ["auth", "can-i", verb, resource, "--as", account]
    if sub:
        args += ["--subresource", sub]
    args += ["-n", namespace] if namespace else []
    done = kubectl(*args, check=False)
    answer: str = done.stdout.strip()
    assert answer in ("yes", "no"), done.stdout + done.stderr
    return answer == "yes"


class Release:
    """A helm release of the chart in its own namespace, uninstalled afterwards."""

    def __init__(self, testbed: Testbed, kubectl: Any, plugin: Any, name: str) -> None:
        self.testbed, self.kubectl, self.plugin, self.name = testbed, kubectl, plugin, name
        self.namespace = plugin.make_namespace(kubectl, f"{name}-")
        kubectl("label", "namespace", self.namespace,
                "pod-security.kubernetes.io/enforce=restricted")  # fmt: skip

    @property
    def account(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}-trainscale"

    def install(self, values: dict[str, Any], tmp_path: Path) -> None:
        path = tmp_path / f"{self.name}-values.yaml"
        path.write_text(yaml.safe_dump({"crds": {"enabled": False}, **values}))
        self.testbed.helm("install", self.name, str(CHART_DIR), "--namespace", self.namespace,
                          "--values", str(path), timeout=120)  # fmt: skip

    def wait_for_operator_pod(self) -> None:
        selector = f"app.kubernetes.io/instance={self.name},app.kubernetes.io/component=operator"

        def pod_exists() -> bool:
            done = self.kubectl("get", "pods", "-n", self.namespace, "-l", selector, "-o", "json")
            items: list[Any] = json.loads(done.stdout)["items"]
            return bool(items)

        self.plugin.wait_for(pod_exists, timeout=60,
                             what=f"the operator pod of {self.name} (PodSecurity restricted)")  # fmt: skip

    def uninstall(self) -> None:
        self.testbed.helm("uninstall", self.name, "--namespace", self.namespace, check=False)
        self.plugin.cleanup_namespace(self.kubectl, self.namespace)


@pytest.fixture
def plugin() -> Any:
    from tests.support import testbed

    return testbed


@pytest.fixture
def release_factory(
    testbed: Testbed, kubectl: Any, crd: dict[str, Any], plugin: Any
) -> Iterator[Any]:
    releases: list[Release] = []

    def make(name: str) -> Release:
        release = Release(testbed, kubectl, plugin, name)
        releases.append(release)
        return release

    yield make
    for release in releases:
        release.uninstall()


def test_cluster_wide_release_is_admitted_and_least_privilege(
    release_factory: Any, kubectl: Any, namespace: str, tmp_path: Path
) -> None:
    release = release_factory("chart-all")
    release.install({}, tmp_path)
    release.wait_for_operator_pod()
    for verb, resource in NEEDED:
        assert _can_i(kubectl, release.account, verb, resource, namespace), (verb, resource)
    for verb, resource in FORBIDDEN:
        assert not _can_i(kubectl, release.account, verb, resource, namespace), (verb, resource)
    assert _can_i(kubectl, release.account, "watch", "customresourcedefinitions", None)
    assert not _can_i(kubectl, release.account, "delete", "customresourcedefinitions", None)
    # Cluster arbitration reads node capacity, and may never change a node.
    assert _can_i(kubectl, release.account, "list", "nodes", None)
    for verb in ("patch", "update", "delete", "create"):
        assert not _can_i(kubectl, release.account, verb, "nodes", None), verb


def test_without_arbitration_and_its_node_view_the_release_cannot_list_nodes(
    release_factory: Any, kubectl: Any, namespace: str, tmp_path: Path
) -> None:
    release = release_factory("chart-noarb")
    off = {"arbitration": {"enabled": False}, "clusterView": {"nodes": False}}
    release.install({"operator": off}, tmp_path)
    release.wait_for_operator_pod()
    assert not _can_i(kubectl, release.account, "list", "nodes", None)


def test_namespaced_release_touches_only_watched_namespaces(
    release_factory: Any, kubectl: Any, namespace: str, plugin: Any, tmp_path: Path
) -> None:
    watched = plugin.make_namespace(kubectl, "chart-watched-")
    try:
        release = release_factory("chart-ns")
        release.install({"operator": {"watchNamespaces": [watched]}}, tmp_path)
        release.wait_for_operator_pod()
        for verb, resource in NEEDED:
            assert _can_i(kubectl, release.account, verb, resource, watched), (verb, resource)
            assert not _can_i(kubectl, release.account, verb, resource, namespace), (
                verb,
                resource,
            )
        assert _can_i(kubectl, release.account, "list", "namespaces", None)
    finally:
        plugin.cleanup_namespace(kubectl, watched)


def _pods(kubectl: Any, namespace: str, selector: str) -> list[dict[str, Any]]:
    done = kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json")
    items: list[dict[str, Any]] = json.loads(done.stdout)["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def test_operator_runs_with_only_the_charts_rbac(
    testbed: Testbed, release_factory: Any, kubectl: Any, plugin: Any, tmp_path: Path
) -> None:
    watched = plugin.make_namespace(kubectl, "chart-run-")
    release = release_factory("chart-run")
    release.install({"operator": {"watchNamespaces": [watched]}}, tmp_path)
    sa = f"{release.name}-trainscale"
    token = kubectl("create", "token", sa, "-n", release.namespace, "--duration=1h").stdout
    kubeconfig = tmp_path / "operator.kubeconfig"
    ca_pem = testbed.paths.ca_cert.read_text()
    kubeconfig.write_text(yaml.safe_dump(build_kubeconfig(testbed.server, ca_pem, token.strip())))
    env = {**testbed.env(), "KUBECONFIG": str(kubeconfig)}
    log = tmp_path / "operator.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(TRAINSCALE), "operator", "--namespace", watched, "--metrics-port", "0",
             "--liveness-port", "0"],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    job = "digits-manual"
    workers = f"trainscale.dev/job-name={job},app.kubernetes.io/component=worker"
    try:
        kubectl("apply", "-n", watched, "-f", str(EXAMPLE))
        plugin.wait_for(lambda: len(_pods(kubectl, watched, workers)) == 2, timeout=90,
                        what="2 worker pods created by the operator")  # fmt: skip
        kubectl("get", "service", f"{job}-rdzv", "-n", watched)
        kubectl("scale", f"trainingjob/{job}", "-n", watched, "--replicas=3")
        plugin.wait_for(lambda: len(_pods(kubectl, watched, workers)) == 3, timeout=90,
                        what="a third worker after kubectl scale")  # fmt: skip
        events = json.loads(kubectl("get", "events", "-n", watched, "-o", "json").stdout)
        assert any(e["involvedObject"]["kind"] == "TrainingJob" for e in events["items"])
    finally:
        # Delete the job while the operator still runs: it lifts the job's finalizer.
        kubectl("delete", "trainingjobs", "--all", "-n", watched, "--timeout=60s", check=False)
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        plugin.cleanup_namespace(kubectl, watched)
        print("operator log (tail):", *log.read_text(errors="replace").splitlines()[-30:], sep="\n")
    text = log.read_text(errors="replace")
    assert "Forbidden" not in text and " 403" not in text, text[-3000:]


def test_install_yaml_is_accepted_by_the_apiserver(kubectl: Any, crd: dict[str, Any]) -> None:
    docs = [d for d in yaml.safe_load_all(INSTALL.read_text()) if d]
    (ns,) = [d for d in docs if d["kind"] == "Namespace"]
    # The CRD is the shared fixture's; everything else is dry-run, so nothing is left behind
    # but the namespace, which is deleted at the end.
    rest = [d for d in docs if d["kind"] not in ("Namespace", "CustomResourceDefinition")]
    kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump(ns))
    try:
        done = kubectl("apply", "--server-side", "--dry-run=server", "-f", "-",
                       input=yaml.safe_dump_all(rest))  # fmt: skip
        assert "PodSecurity" not in done.stderr, done.stderr
        for obj in rest:
            assert f"{obj['kind'].lower()}" in done.stdout.lower()
    finally:
        kubectl("delete", "namespace", ns["metadata"]["name"], "--wait=false", check=False)
