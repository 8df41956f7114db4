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

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.testbed import operator_samples
from trainscale.operator.observability.metric_names import ARBITRATION_PASSES_NAME
from trainscale.testbed.cluster import Testbed, build_kubeconfig
from trainscale.trainer.launch.local import find_free_port

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


@contextlib.contextmanager
def _operator_as(
    testbed: Testbed,
    kubectl: Any,
    plugin: Any,
    release: Release,
    watched: str,
    tmp_path: Path,
    *args: str,
) -> Iterator[Path]:
    """The real operator for ``watched``, run with nothing but the release's ServiceAccount
    token; yields its log. On exit the jobs are deleted while it still runs (it lifts their
    finalizer), then it is stopped and the namespace cleaned up."""
    sa = f"{release.name}-trainscale"
    token = kubectl("create", "token", sa, "-n", release.namespace, "--duration=1h").stdout
    kubeconfig = tmp_path / "operator.kubeconfig"
    ca_pem = testbed.paths.ca_cert.read_text()
    kubeconfig.write_text(yaml.safe_dump(build_kubeconfig(testbed.server, ca_pem, token.strip())))
    env = {**testbed.env(), "KUBECONFIG": str(kubeconfig)}
    log = tmp_path / "operator.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(TRAINSCALE), "operator", "--namespace", watched, "--liveness-port", "0", *args],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        yield log
    finally:
        kubectl("delete", "trainingjobs", "--all", "-n", watched, "--timeout=60s", check=False)
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        plugin.cleanup_namespace(kubectl, watched)
        print("operator log (tail):", *log.read_text(errors="replace").splitlines()[-30:], sep="\n")


def test_operator_runs_with_only_the_charts_rbac(
    testbed: Testbed, release_factory: Any, kubectl: Any, plugin: Any, tmp_path: Path
) -> None:
    watched = plugin.make_namespace(kubectl, "chart-run-")
    release = release_factory("chart-run")
    release.install({"operator": {"watchNamespaces": [watched]}}, tmp_path)
    job = "digits-manual"
    workers = f"trainscale.dev/job-name={job},app.kubernetes.io/component=worker"
    with _operator_as(
        testbed, kubectl, plugin, release, watched, tmp_path, "--metrics-port", "0"
    ) as log:
        kubectl("apply", "-n", watched, "-f", str(EXAMPLE))
        plugin.wait_for(lambda: len(_pods(kubectl, watched, workers)) == 2, timeout=90,
                        what="2 worker pods created by the operator")  # fmt: skip
        kubectl("get", "service", f"{job}-rdzv", "-n", watched)
        kubectl("scale", f"trainingjob/{job}", "-n", watched, "--replicas=3")
        plugin.wait_for(lambda: len(_pods(kubectl, watched, workers)) == 3, timeout=90,
                        what="a third worker after kubectl scale")  # fmt: skip
        events = json.loads(kubectl("get", "events", "-n", watched, "-o", "json").stdout)
        assert any(e["involvedObject"]["kind"] == "TrainingJob" for e in events["items"])
    text = log.read_text(errors="replace")
    assert "Forbidden" not in text and " 403" not in text, text[-3000:]


def _arbitration_passes(port: int) -> dict[str, float]:
    """The operator's arbitration pass counter by outcome; empty until it answers."""
    return {
        sample.labels["outcome"]: sample.value
        for sample in operator_samples(port)
        if sample.name == ARBITRATION_PASSES_NAME
    }


def test_a_failing_arbitration_pass_is_counted_logged_and_holds_no_job_back(
    testbed: Testbed, release_factory: Any, kubectl: Any, plugin: Any, tmp_path: Path
) -> None:
    """The release's ClusterRole without its PriorityClass rule (RBAC drifted from the chart,
    say): every arbitration pass is refused. The operator counts each one failed
    (``arbitration_passes_total{outcome="error"}``, the TrainScaleArbitrationFailing
    alert's input), logs why once, and an arbitrated job is not held waiting for an
    admission that cannot come: its worker is created. Once the rule is back, passes
    succeed, the log says so, and the job is admitted."""
    watched = plugin.make_namespace(kubectl, "chart-arb-")
    release = release_factory("chart-arb")
    release.install({"operator": {"watchNamespaces": [watched]}}, tmp_path)
    role_name = f"{release.name}-trainscale"
    role = json.loads(kubectl("get", "clusterrole", role_name, "-o", "json").stdout)
    role["metadata"].pop("resourceVersion")  # replaced unconditionally, twice
    kept = [r for r in role["rules"] if "priorityclasses" not in r.get("resources", [])]
    assert len(kept) == len(role["rules"]) - 1, role["rules"]
    broken = {**role, "rules": kept}
    kubectl("replace", "-f", "-", input=json.dumps(broken))
    port = find_free_port()
    job = {
        "apiVersion": "trainscale.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "arb"},
        "spec": {
            "replicas": 1, "minReplicas": 1, "maxReplicas": 1,
            "autoscaling": {"enabled": True},
            "template": {"spec": {"terminationGracePeriodSeconds": 0, "containers": [
                {"name": "trainer", "image": "trainer:1",
                 "resources": {"limits": {"nvidia.com/gpu": 1}}}]}},
        },
    }  # fmt: skip
    workers = "trainscale.dev/job-name=arb,app.kubernetes.io/component=worker"
    args = ("--arbitration-interval", "1", "--metrics-port", str(port),
            "--metrics-address", "127.0.0.1", "--prometheus-url", "http://127.0.0.1:9")  # fmt: skip
    with _operator_as(testbed, kubectl, plugin, release, watched, tmp_path, *args) as log:
        kubectl("apply", "-n", watched, "-f", "-", input=json.dumps(job))
        plugin.wait_for(lambda: _arbitration_passes(port).get("error", 0) >= 2, timeout=60,
                        what="failed arbitration passes counted",
                        describe=lambda: str(_arbitration_passes(port)))  # fmt: skip
        assert _arbitration_passes(port).get("ok") == 0
        plugin.wait_for(lambda: len(_pods(kubectl, watched, workers)) == 1, timeout=90,
                        what="the arbitrated job's worker, not held for admission")  # fmt: skip
        text = log.read_text(errors="replace")
        assert text.count("cluster arbitration failed") == 1, text[-3000:]
        assert "priorityclasses" in text, text[-3000:]
        kubectl("replace", "-f", "-", input=json.dumps(role))

        def admitted() -> bool:
            found = json.loads(kubectl("get", "tj/arb", "-n", watched, "-o", "json").stdout)
            return bool((found.get("status") or {}).get("arbitration"))

        plugin.wait_for(lambda: _arbitration_passes(port).get("ok", 0) >= 1, timeout=60,
                        what="an arbitration pass that succeeds once the rule is back")  # fmt: skip
        plugin.wait_for(admitted, timeout=60, what="the job's status.arbitration")
        assert "cluster arbitration works again" in log.read_text(errors="replace")


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
