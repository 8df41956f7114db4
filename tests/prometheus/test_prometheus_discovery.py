"""Prometheus discovers worker pods as the chart's PodMonitor would have it scrape them.

The chart's PodMonitor (``helm template``, worker PodMonitor on) is translated into the
scrape config prometheus-operator generates for it (``kubernetes_sd_configs``, role pod,
against the test-bed apiserver through its kubeconfig), so nothing in the test restates the
selector or the port. Debian's Prometheus has no Kubernetes discovery: the test uses one
built from Prometheus' Go module (trainscale.testbed.prometheus). kwok pods cannot be scraped (their IPs are made up), so the test checks
discovery and labels through ``/api/v1/targets``, not ``up``.

Covers:
- exactly the worker pods of the job become targets, on their ``metrics`` port only, with
  ``namespace``/``pod`` labels that the autoscaler's PromQL pod pattern matches;
- decoys are dropped: the rendezvous pod, a worker pod's other port, a pod with the worker
  labels that trainscale does not manage, and pods of an unwatched namespace (never listed);
- pure: the relabelling keeps what the PodMonitor selects (labels, port name), refuses
  PodMonitor fields it does not translate, and follows the namespace selector.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.testbed import Kubectl, cleanup_namespace, make_namespace, wait_for
from trainscale.operator.adapters.promql import build_worker_pod_regex
from trainscale.operator.api import TrainingJobSpec
from trainscale.operator.controller import builders
from trainscale.testbed.cluster import REPO_ROOT, Testbed
from trainscale.testbed.prometheus import (
    build_podmonitor_relabel_configs,
    build_podmonitor_scrape_configs,
    fetch_prometheus_with_kubernetes_sd,
    fetch_targets,
    render_chart_podmonitor,
    start_prometheus,
)

CHART_DIR = REPO_ROOT / "charts" / "trainscale"
JOB = "alpha"

MONITOR: dict[str, Any] = {
    "apiVersion": "monitoring.coreos.com/v1",
    "kind": "PodMonitor",
    "metadata": {"name": "ts-workers", "namespace": "monitoring"},
    "spec": {
        "selector": {"matchLabels": {"app.kubernetes.io/component": "worker"}},
        "namespaceSelector": {"any": True},
        "podMetricsEndpoints": [{"port": "metrics", "path": "/metrics", "interval": "15s"}],
    },
}


def _spec(extra_port: bool = False) -> TrainingJobSpec:
    container: dict[str, Any] = {
        "name": "trainer",
        "image": "ghcr.io/example/train:1",
        "command": ["trainscale-train", "--task", "x:task"],
        "resources": {"limits": {"nvidia.com/gpu": 1}},
    }
    if extra_port:
        container["ports"] = [{"name": "debug", "containerPort": 8080}]
    return TrainingJobSpec.model_validate(
        {"replicas": 2, "minReplicas": 1, "maxReplicas": 4,
         "template": {"spec": {"containers": [container],
          "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]}}}
    )  # fmt: skip


def _pods(namespace: str) -> list[dict[str, Any]]:
    """Two workers (one with a second port), the rendezvous pod, and an unmanaged look-alike."""
    job = builders.JobRef(name=JOB, namespace=namespace, uid="00000000-0000-0000-0000-000000000001")
    pods = [builders.build_worker_pod(job, _spec(extra_port=i == 1), i) for i in range(2)]
    pods.append(builders.build_rendezvous_pod(job, _spec()))
    lookalike = copy.deepcopy(pods[0])
    lookalike["metadata"]["name"] = f"{JOB}-worker-7"
    lookalike["metadata"]["labels"][builders.LABEL_MANAGED_BY] = "someone-else"
    pods.append(lookalike)
    for pod in pods:
        pod["metadata"].pop("ownerReferences", None)  # no TrainingJob object behind them
    return pods


@pytest.fixture
def other_namespace(kubectl: Kubectl) -> Iterator[str]:
    name = make_namespace(kubectl, "unwatched-")
    yield name
    cleanup_namespace(kubectl, name)


@pytest.mark.testbed
@pytest.mark.prometheus
@pytest.mark.slow
def test_discovers_exactly_the_jobs_worker_pods(
    testbed: Testbed, kubectl: Kubectl, namespace: str, other_namespace: str, tmp_path: Path
) -> None:
    for ns in (namespace, other_namespace):
        kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(
            {"apiVersion": "v1", "kind": "List", "items": _pods(ns)}))  # fmt: skip
    # SD lists only pods with an IP: wait until kwok has scheduled and "started" all of them
    wait_for(
        lambda: all(
            p["status"].get("podIP")
            for p in json.loads(kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)[
                "items"
            ]
        ),
        timeout=60,
        what="pod IPs",
    )
    monitor = render_chart_podmonitor(testbed.helm, CHART_DIR, [namespace])
    configs = build_podmonitor_scrape_configs(monitor, testbed.kubeconfig)
    binary = fetch_prometheus_with_kubernetes_sd(build=False)  # built by conftest.py
    server = start_prometheus(tmp_path / "prometheus", scrape_configs=configs, binary=binary)
    try:
        seen: list[Any] = []

        def discovered() -> dict[str, list[dict[str, Any]]] | None:
            try:
                seen.append(fetch_targets(server.url))
            except OSError as exc:
                seen.append(exc)
                return None
            targets = seen[-1]
            # one target per container port: workers 1 + 2 (metrics, debug), rendezvous 1,
            # look-alike 1
            found = len(targets["activeTargets"]) + len(targets["droppedTargets"])
            return targets if found >= 5 and targets["activeTargets"] else None

        def describe() -> str:
            log = (server.workdir / "prometheus.log").read_text(errors="replace")[-3000:]
            return f"last /api/v1/targets: {seen[-1:]}\nprometheus log:\n{log}"

        targets = wait_for(discovered, timeout=60, what="targets discovered", describe=describe)
    finally:
        server.stop()
    active = targets["activeTargets"]
    labels = sorted((t["labels"] for t in active), key=lambda lab: lab["pod"])
    job_label = f"{monitor['metadata']['namespace']}/{monitor['metadata']['name']}"
    assert [(lab["namespace"], lab["pod"], lab["container"], lab["endpoint"], lab["job"])
            for lab in labels] == [
        (namespace, f"{JOB}-worker-{i}", "trainer", "metrics", job_label) for i in range(2)
    ]  # fmt: skip
    for target in active:
        assert target["discoveredLabels"]["__meta_kubernetes_pod_container_port_number"] == "9400"
        assert re.fullmatch(build_worker_pod_regex(JOB), target["labels"]["pod"])
    dropped_pods = {
        (t["discoveredLabels"]["__meta_kubernetes_namespace"],
         t["discoveredLabels"]["__meta_kubernetes_pod_name"],
         t["discoveredLabels"].get("__meta_kubernetes_pod_container_port_name", ""))
        for t in targets["droppedTargets"]
    }  # fmt: skip
    assert dropped_pods == {
        (namespace, f"{JOB}-worker-1", "debug"),
        (namespace, f"{JOB}-rdzv", next(p for p in dropped_pods if "rdzv" in p[1])[2]),
        (namespace, f"{JOB}-worker-7", "metrics"),
    }
    assert not any(other_namespace in str(t) for t in [*active, *targets["droppedTargets"]])


def _keeps(rules: list[dict[str, Any]], meta: dict[str, str]) -> dict[str, str] | None:
    """Apply the keep/drop/replace rules the translation emits to a target's meta labels."""
    labels = dict(meta)
    for rule in rules:
        sources = ";".join(labels.get(s, "") for s in rule.get("source_labels", []))
        regex = rule.get("regex", "(.*)")
        action = rule.get("action", "replace")
        if action == "keep" and not re.fullmatch(regex, sources):
            return None
        if action == "drop" and re.fullmatch(regex, sources):
            return None
        if action == "replace":
            match = re.fullmatch(regex, sources)
            if match:
                repl = rule.get("replacement", "$1").replace("${1}", "$1")
                labels[rule["target_label"]] = repl.replace("$1", match.group(1) or "")
    return {k: v for k, v in labels.items() if not k.startswith("__")}


def _meta(pod_labels: dict[str, str], port: str, phase: str = "Running") -> dict[str, str]:
    meta = {"__meta_kubernetes_namespace": "ml", "__meta_kubernetes_pod_name": "a-worker-0",
            "__meta_kubernetes_pod_container_name": "trainer",
            "__meta_kubernetes_pod_container_port_name": port,
            "__meta_kubernetes_pod_phase": phase}  # fmt: skip
    for key, value in pod_labels.items():
        name = re.sub(r"[^a-zA-Z0-9_]", "_", key)
        meta[f"__meta_kubernetes_pod_label_{name}"] = value
        meta[f"__meta_kubernetes_pod_labelpresent_{name}"] = "true"
    return meta


def test_relabelling_keeps_what_the_podmonitor_selects() -> None:
    rules = build_podmonitor_relabel_configs(MONITOR, MONITOR["spec"]["podMetricsEndpoints"][0])
    worker = {"app.kubernetes.io/component": "worker"}
    assert _keeps(rules, _meta(worker, "metrics")) == {
        "namespace": "ml", "pod": "a-worker-0", "container": "trainer",
        "job": "monitoring/ts-workers", "endpoint": "metrics",
    }  # fmt: skip
    assert _keeps(rules, _meta(worker, "debug")) is None
    assert _keeps(rules, _meta({"app.kubernetes.io/component": "rendezvous"}, "metrics")) is None
    assert _keeps(rules, _meta({"app.kubernetes.io/component": "workerx"}, "metrics")) is None
    assert _keeps(rules, _meta({}, "metrics")) is None
    assert _keeps(rules, _meta(worker, "metrics", phase="Succeeded")) is None


def test_namespace_selection_follows_the_podmonitor(tmp_path: Path) -> None:
    def sd(selector: dict[str, Any]) -> dict[str, Any]:
        monitor = copy.deepcopy(MONITOR)
        monitor["spec"]["namespaceSelector"] = selector
        (config,) = build_podmonitor_scrape_configs(monitor, tmp_path / "kubeconfig")
        return dict(config["kubernetes_sd_configs"][0])

    assert "namespaces" not in sd({"any": True})
    assert sd({"matchNames": ["a", "b"]})["namespaces"] == {"names": ["a", "b"]}
    assert sd({})["namespaces"] == {"names": ["monitoring"]}  # the PodMonitor's own
    assert sd({})["kubeconfig_file"] == str(tmp_path / "kubeconfig")


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("spec", "selector", "matchExpressions"), [], "matchExpressions"),
        (("spec", "podTargetLabels"), ["team"], "podTargetLabels"),
        (("spec", "podMetricsEndpoints", 0, "relabelings"), [], "relabelings"),
        (("spec", "namespaceSelector", "matchLabels"), {}, "matchLabels"),
        (("spec", "podMetricsEndpoints", 0, "port"), None, "named port"),
    ],
)
def test_untranslated_fields_are_refused(path: tuple[Any, ...], value: Any, field: str) -> None:
    monitor = copy.deepcopy(MONITOR)
    target: Any = monitor
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ValueError, match=field):
        build_podmonitor_scrape_configs(monitor, Path("kubeconfig"))
