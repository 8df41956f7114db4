"""The Helm chart charts/trainscale, rendered by the real helm.

Behaviours covered:

* ``helm lint --strict`` passes with default and with every optional feature switched on;
* every rendered object of a built-in kind validates (strict: no unknown fields) against
  the Kubernetes 1.35 OpenAPI schemas; the only other kinds are the ones we expect;
* every object carries the ``app.kubernetes.io/{name,instance,version,managed-by}`` labels;
* the operator runs with the restricted security context (non-root, read-only root
  filesystem, no capabilities, RuntimeDefault seccomp), a /healthz liveness probe and
  resources;
* its arguments are exactly the flags ``trainscale operator`` accepts (parsed by the real CLI
  parser): all namespaces by default, one ``--namespace`` per watched namespace, ``--peering``;
* RBAC is least privilege: the exact rule table, no ``*``, no secrets, cluster-wide only when
  watching all namespaces, per-namespace Roles otherwise, peering objects only with peering;
* the chart's TrainingJob CRD is the generated manifests/crd/ file (a symlink, which
  ``helm package`` dereferences), plus a keep annotation and the chart's labels;
* Service, ServiceMonitor, PodDisruptionBudget and dashboard ConfigMap select/contain what
  they should, and are absent unless enabled;
* bad value combinations fail with a message naming the value;
* values.yaml documents every key (``# --``) and docs/install.md lists every key.
"""

from __future__ import annotations

import re
import tarfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from trainscale.operator.api.crd import build_crd
from trainscale.operator.app.cli import build_parser, operator_options
from trainscale.operator.controller.builders import (
    COMPONENT_WORKER,
    METRICS_PORT_NAME,
    build_common_labels,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "charts" / "trainscale"
KUBE_VERSION = "1.35.0"  # the test-bed's control plane (scripts/testbed/versions.env)
CHART = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
)
NOT_BUILT_IN = {"ServiceMonitor", "PodMonitor"}

EVERYTHING_ON: dict[str, Any] = {
    "commonLabels": {"team": "ml-platform"},
    "image": {"tag": "9.9.9", "pullSecrets": [{"name": "regcred"}]},
    "operator": {
        "replicas": 2,
        "watchNamespaces": ["ml-a", "ml-b"],
        "peering": {"enabled": True, "name": "trainscale"},
        "extraArgs": ["--log-level", "DEBUG"],
        "env": [{"name": "EXTRA", "value": "1"}],
        "podAnnotations": {"example.com/a": "b"},
        "podLabels": {"example.com/tier": "control"},
        "priorityClassName": "system-cluster-critical",
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {
                                "matchLabels": {"app.kubernetes.io/component": "operator"}
                            },
                        },
                    }
                ]
            }
        },
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "operator"}},
            }
        ],
        "podDisruptionBudget": {"enabled": True, "minAvailable": 1},
    },
    "serviceAccount": {"annotations": {"iam.example.com/role": "trainscale"}},
    "metrics": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "kps"}},
        "workerPodMonitor": {"enabled": True, "labels": {"release": "kps"}},
    },
    "grafana": {"dashboard": {"enabled": True, "namespace": "monitoring"}},
}

SCENARIOS = [
    pytest.param({}, id="defaults"),
    pytest.param(EVERYTHING_ON, id="everything-on"),
    pytest.param({"operator": {"peering": {"enabled": True}}}, id="peering-cluster-wide"),
    pytest.param({"crds": {"enabled": False}}, id="no-crds"),
    pytest.param(
        {"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "existing"}},
        id="bring-your-own-rbac",
    ),
]


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def operator_role(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The operator's ClusterRole (not the user roles aggregated into view/edit/admin)."""
    roles = [
        o
        for o in by_kind(objects, "ClusterRole")
        if o["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"
    ]
    assert len(roles) == 1, [o["metadata"]["name"] for o in by_kind(objects, "ClusterRole")]
    return roles[0]


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["operator"]
    result: dict[str, Any] = pod["containers"][0]
    return result


def rules_of(obj: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    """(apiGroup, resource[/name]) -> verbs of a Role or ClusterRole."""
    table: dict[tuple[str, str], set[str]] = {}
    for rule in obj["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                key = resource + "".join(f"#{n}" for n in rule.get("resourceNames", []))
                table.setdefault((group, key), set()).update(rule["verbs"])
    return table


NAMESPACED_RULES = {
    ("trainscale.dev", "trainingjobs"): {"get", "list", "watch", "patch", "update"},
    ("trainscale.dev", "trainingjobs/status"): {"get", "patch", "update"},
    ("trainscale.dev", "trainingjobs/scale"): {"get", "patch", "update"},
    ("", "pods"): {"create", "delete", "get", "list", "watch", "patch"},
    ("", "services"): {"create", "delete", "get", "list", "watch", "patch"},
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
}
DISCOVERY_RULES = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
    ("", "namespaces"): {"list", "watch"},
}
# The autoscaler's read-only cluster view (operator.clusterView, and always with arbitration):
# the GPUs per node, and the GPUs pods hold in every namespace.
NODES_RULES = {("", "nodes"): {"get", "list"}}
PODS_RULES = {("", "pods"): {"list"}}
# Cluster arbitration's reads besides that view (operator.arbitration.enabled).
ARBITRATION_RULES = {
    ("scheduling.k8s.io", "priorityclasses"): {"list"},
    ("trainscale.dev", "trainingjobs"): {"list"},
}


def merged(*tables: dict[tuple[str, str], set[str]]) -> dict[tuple[str, str], set[str]]:
    """Rule tables joined, verbs of the same resource united."""
    out: dict[tuple[str, str], set[str]] = {}
    for table in tables:
        for key, verbs in table.items():
            out.setdefault(key, set()).update(verbs)
    return out


def peering_rules(resource: str) -> dict[tuple[str, str], set[str]]:
    return {
        ("kopf.dev", resource): {"list", "watch", "create"},
        ("kopf.dev", f"{resource}#trainscale"): {"get", "patch"},
    }


# -- lint and schema validation --------------------------------------------------------------


def test_lint_strict_with_defaults_and_with_everything_on(helm: Any, tmp_path: Path) -> None:
    helm.run("lint", "--strict", str(CHART_DIR))
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(EVERYTHING_ON))
    helm.run("lint", "--strict", str(CHART_DIR), "--values", str(values))


@pytest.mark.parametrize("values", SCENARIOS)
def test_rendered_objects_are_valid_kubernetes(render: Any, values: dict[str, Any]) -> None:
    objects = render(values)
    assert objects
    for obj in objects:
        if obj["kind"] in NOT_BUILT_IN:
            continue
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            msg = f"{obj['kind']}/{obj['metadata']['name']}: {e.message} at {list(e.path)}"
            raise AssertionError(msg) from None


@pytest.mark.parametrize("values", SCENARIOS)
def test_every_object_has_the_standard_labels(render: Any, values: dict[str, Any]) -> None:
    for obj in render(values):
        labels = obj["metadata"].get("labels", {})
        missing = [k for k in STANDARD_LABELS if k not in labels]
        assert not missing, f"{obj['kind']}/{obj['metadata']['name']} lacks {missing}"
        assert labels["app.kubernetes.io/version"] == CHART["appVersion"]
        assert labels["app.kubernetes.io/instance"] == "trainscale"


def test_common_labels_reach_every_object(render: Any) -> None:
    for obj in render(EVERYTHING_ON):
        assert obj["metadata"]["labels"].get("team") == "ml-platform", obj["kind"]


def test_default_kinds(render: Any) -> None:
    kinds = sorted(o["kind"] for o in render({}))
    assert kinds == sorted(
        [
            "CustomResourceDefinition",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRole",  # trainingjob-view, aggregated into view
            "ClusterRole",  # trainingjob-edit, aggregated into edit and admin
            "ClusterRoleBinding",
            "Service",
            "Deployment",
        ]
    )


# -- the operator Deployment -----------------------------------------------------------------


def test_restricted_security_context_by_default(render: Any) -> None:
    objects = render({})
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    ctx = container(objects)["securityContext"]
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["runAsNonRoot"] is True
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not pod.get("hostNetwork") and not pod.get("hostPID")
    # A read-only root needs a writable scratch folder.
    mounts = {m["mountPath"] for m in container(objects)["volumeMounts"]}
    assert "/tmp" in mounts


def test_liveness_probe_resources_and_ports(render: Any) -> None:
    c = container(render({}))
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    probe = c["livenessProbe"]["httpGet"]
    assert probe == {"path": "/healthz", "port": "health"}
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]


def test_image_defaults_to_app_version_and_can_be_pinned(render: Any) -> None:
    assert container(render({}))["image"] == f"ghcr.io/trainscale/operator:{CHART['appVersion']}"
    assert container(render(EVERYTHING_ON))["image"] == "ghcr.io/trainscale/operator:9.9.9"
    assert container(render({"image": {"registry": ""}}))["image"].startswith("trainscale/")


def _parse_operator_args(args: list[str]) -> Any:
    assert args[0] == "operator"
    return build_parser().parse_args(args)


def test_default_args_watch_all_namespaces(render: Any) -> None:
    args = container(render({}))["args"]
    assert args == [
        "operator",
        "--all-namespaces",
        "--metrics-port",
        "8080",
        "--liveness-port",
        "8081",
        "--prometheus-url",
        "http://prometheus-operated.monitoring.svc:9090",
        "--arbitration-interval",
        "10",
    ]
    parsed = _parse_operator_args(args)
    assert parsed.all_namespaces and not parsed.namespace and parsed.peering is None
    assert parsed.arbitration and parsed.arbitration_interval == 10


def test_arbitration_preemption_only_to_start(render: Any) -> None:
    """``operator.arbitration.preemption: start`` reaches the operator (the default, grow,
    is its own default and adds no flag)."""
    args = container(render({"operator": {"arbitration": {"preemption": "start"}}}))["args"]
    assert args[args.index("--arbitration-preemption") + 1] == "start"
    assert not operator_options(_parse_operator_args(args), {}).arbitration_preempt_to_grow
    default = _parse_operator_args(container(render({}))["args"])
    assert operator_options(default, {}).arbitration_preempt_to_grow


def test_args_with_namespaces_peering_and_extra_flags(render: Any) -> None:
    args = container(render(EVERYTHING_ON))["args"]
    parsed = _parse_operator_args(args)
    assert parsed.namespace == ["ml-a", "ml-b"]
    assert not parsed.all_namespaces
    assert parsed.peering == "trainscale"
    assert parsed.log_level == "DEBUG"
    assert parsed.metrics_port == 8080 and parsed.liveness_port == 8081


def test_empty_prometheus_url_omits_the_flag(render: Any) -> None:
    args = container(render({"prometheus": {"url": ""}}))["args"]
    assert "--prometheus-url" not in args
    _parse_operator_args(args)


def test_rollout_never_overlaps_two_unpeered_operators(render: Any) -> None:
    assert one(render({}), "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    peered = one(render(EVERYTHING_ON), "Deployment")["spec"]
    assert peered["replicas"] == 2
    assert peered["strategy"]["type"] == "RollingUpdate"


def test_scheduling_values_reach_the_pod(render: Any) -> None:
    pod = one(render(EVERYTHING_ON), "Deployment")["spec"]["template"]
    spec = pod["spec"]
    assert spec["nodeSelector"] == EVERYTHING_ON["operator"]["nodeSelector"]
    assert spec["tolerations"] == EVERYTHING_ON["operator"]["tolerations"]
    assert spec["affinity"] == EVERYTHING_ON["operator"]["affinity"]
    assert (
        spec["topologySpreadConstraints"] == EVERYTHING_ON["operator"]["topologySpreadConstraints"]
    )
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["priorityClassName"] == "system-cluster-critical"
    assert pod["metadata"]["annotations"] == {"example.com/a": "b"}
    assert pod["metadata"]["labels"]["example.com/tier"] == "control"
    env = {e["name"] for e in spec["containers"][0]["env"]}
    assert {"POD_NAME", "POD_NAMESPACE", "EXTRA"} <= env


# -- RBAC ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", SCENARIOS)
def test_no_wildcards_and_no_secrets(render: Any, values: dict[str, Any]) -> None:
    for obj in render(values):
        if obj["kind"] not in ("Role", "ClusterRole"):
            continue
        for rule in obj["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], f"{obj['kind']} {rule}"
            assert not {"secrets", "configmaps"} & set(rule["resources"])
            if "nodes" in rule["resources"]:  # arbitration reads node capacity, never writes
                assert set(rule["verbs"]) <= {"get", "list", "watch"}, rule
            assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule["verbs"])


def test_cluster_wide_rbac_is_the_exact_table(render: Any) -> None:
    objects = render({})
    assert rules_of(operator_role(objects)) == merged(
        DISCOVERY_RULES, NAMESPACED_RULES, NODES_RULES, PODS_RULES, ARBITRATION_RULES
    )
    assert not by_kind(objects, "Role")
    binding = one(objects, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == operator_role(objects)["metadata"]["name"]
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": one(objects, "ServiceAccount")["metadata"]["name"],
            "namespace": "trainscale-system",
        }
    ]
    assert (
        one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
        == (one(objects, "ServiceAccount")["metadata"]["name"])
    )


def test_cluster_wide_peering_rbac(render: Any) -> None:
    objects = render({"operator": {"peering": {"enabled": True}}})
    assert rules_of(operator_role(objects)) == merged(
        DISCOVERY_RULES,
        NAMESPACED_RULES,
        NODES_RULES,
        PODS_RULES,
        ARBITRATION_RULES,
        peering_rules("clusterkopfpeerings"),
    )


def test_without_arbitration_the_operator_keeps_its_read_only_cluster_view(render: Any) -> None:
    objects = render({"operator": {"arbitration": {"enabled": False}}})
    assert rules_of(operator_role(objects)) == merged(
        DISCOVERY_RULES, NAMESPACED_RULES, NODES_RULES, PODS_RULES
    )
    args = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--no-arbitration" in args


@pytest.mark.parametrize(
    ("view", "expected"),
    [
        pytest.param({"nodes": False, "pods": False}, {}, id="neither"),
        pytest.param({"pods": False}, NODES_RULES, id="nodes-only"),
        pytest.param({"nodes": False}, PODS_RULES, id="pods-only"),
    ],
)
def test_the_cluster_view_can_be_withheld_without_arbitration(
    render: Any, view: dict[str, bool], expected: dict[tuple[str, str], set[str]]
) -> None:
    off = {"arbitration": {"enabled": False}, "clusterView": view}
    role = operator_role(render({"operator": {**off, "watchNamespaces": ["ml-a"]}}))
    assert rules_of(role) == merged(DISCOVERY_RULES, expected)
    # watching all namespaces, pods are listed there anyway: only nodes can be withheld
    role = operator_role(render({"operator": off}))
    assert rules_of(role) == merged(DISCOVERY_RULES, NAMESPACED_RULES, expected)


def test_arbitration_grants_the_cluster_view_it_needs(render: Any) -> None:
    off = {"clusterView": {"nodes": False, "pods": False}, "watchNamespaces": ["ml-a"]}
    role = operator_role(render({"operator": off}))
    assert rules_of(role) == merged(DISCOVERY_RULES, NODES_RULES, PODS_RULES, ARBITRATION_RULES)


def test_watched_namespaces_get_roles_and_nothing_cluster_wide_but_discovery(render: Any) -> None:
    objects = render(EVERYTHING_ON)
    assert rules_of(operator_role(objects)) == merged(
        DISCOVERY_RULES, NODES_RULES, PODS_RULES, ARBITRATION_RULES
    )
    roles = by_kind(objects, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["ml-a", "ml-b"]
    for role in roles:
        assert rules_of(role) == NAMESPACED_RULES | peering_rules("kopfpeerings")
    bindings = by_kind(objects, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["ml-a", "ml-b"]
    for binding in bindings:
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": roles[0]["metadata"]["name"],
        }
        assert binding["subjects"][0]["namespace"] == "trainscale-system"


def test_rbac_and_service_account_can_be_brought(render: Any) -> None:
    objects = render(SCENARIOS[4].values[0])
    kinds = {o["kind"] for o in objects}
    assert not kinds & {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role"}
    spec = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "existing"


# -- CRDs ---------------------------------------------------------------------------------------


def _strip_chart_metadata(crd: dict[str, Any]) -> dict[str, Any]:
    crd = dict(crd)
    crd["metadata"] = {"name": crd["metadata"]["name"], "labels": crd["metadata"]["labels"]}
    return crd


def test_chart_crd_is_the_generated_crd(render: Any) -> None:
    link = CHART_DIR / "files" / "crds" / "trainingjobs.trainscale.dev.yaml"
    assert link.is_symlink(), "the chart's CRD must be a symlink to manifests/crd/"
    assert link.resolve() == (REPO_ROOT / "manifests/crd/trainingjobs.trainscale.dev.yaml")
    rendered = one(render({}), "CustomResourceDefinition")
    expected = build_crd()
    # The chart adds its labels and the keep annotation; everything else is the file's.
    for key, value in expected["metadata"]["labels"].items():
        assert rendered["metadata"]["labels"][key] == value
    assert rendered["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    rendered["metadata"]["labels"] = expected["metadata"]["labels"]
    del rendered["metadata"]["annotations"]
    assert rendered == expected


def test_crds_can_be_left_out_or_released(render: Any) -> None:
    assert not by_kind(render({"crds": {"enabled": False}}), "CustomResourceDefinition")
    crd = one(render({"crds": {"keep": False}}), "CustomResourceDefinition")
    assert "helm.sh/resource-policy" not in crd["metadata"].get("annotations", {})


def test_peering_crds_only_with_peering(render: Any) -> None:
    def names(values: dict[str, Any]) -> set[str]:
        return {o["metadata"]["name"] for o in by_kind(render(values), "CustomResourceDefinition")}

    assert names({}) == {"trainingjobs.trainscale.dev"}
    assert names({"operator": {"peering": {"enabled": True}}}) == {
        "trainingjobs.trainscale.dev",
        "clusterkopfpeerings.kopf.dev",
        "kopfpeerings.kopf.dev",
    }
    assert names({"crds": {"enabled": False}, "operator": {"peering": {"enabled": True}}}) == set()


def test_packaged_chart_carries_the_crd(helm: Any, tmp_path: Path) -> None:
    helm.run("package", str(CHART_DIR), "--destination", str(tmp_path))
    (package,) = tmp_path.glob("trainscale-*.tgz")
    with tarfile.open(package) as tar:
        member = tar.getmember("trainscale/files/crds/trainingjobs.trainscale.dev.yaml")
        assert member.isfile(), "helm package must dereference the CRD symlink"
        data = tar.extractfile(member)
        assert data is not None
        assert yaml.safe_load(data.read()) == build_crd()


# -- optional components ------------------------------------------------------------------------


def test_metrics_service_selects_the_operator_pods(render: Any) -> None:
    objects = render({})
    service = one(objects, "Service")
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}
    ]


def test_service_monitor_scrapes_the_metrics_service(render: Any) -> None:
    assert not by_kind(render({}), "ServiceMonitor")
    objects = render(EVERYTHING_ON)
    monitor = one(objects, "ServiceMonitor")
    service = one(objects, "Service")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["metadata"]["labels"]["release"] == "kps"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert endpoint["honorLabels"] is True


@pytest.mark.parametrize(
    ("values", "namespace_selector"),
    [
        pytest.param({}, {"any": True}, id="all-namespaces"),
        pytest.param(EVERYTHING_ON, {"matchNames": ["ml-a", "ml-b"]}, id="watched-namespaces"),
    ],
)
def test_worker_pod_monitor_selects_the_operators_worker_pods(
    render: Any, values: dict[str, Any], namespace_selector: dict[str, Any]
) -> None:
    assert not by_kind(render({}), "PodMonitor")
    enabled = {**values, "metrics": {"workerPodMonitor": {"enabled": True}}}
    monitor = one(render(enabled), "PodMonitor")
    worker_labels = build_common_labels("digits", COMPONENT_WORKER)
    assert monitor["spec"]["selector"]["matchLabels"].items() <= worker_labels.items()
    rendezvous_labels = build_common_labels("digits", "rendezvous")
    assert not monitor["spec"]["selector"]["matchLabels"].items() <= rendezvous_labels.items()
    assert monitor["spec"]["namespaceSelector"] == namespace_selector
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == METRICS_PORT_NAME and endpoint["path"] == "/metrics"


def test_pod_disruption_budget(render: Any) -> None:
    assert not by_kind(render({}), "PodDisruptionBudget")
    objects = render(EVERYTHING_ON)
    pdb = one(objects, "PodDisruptionBudget")
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_grafana_dashboard_config_map(render: Any) -> None:
    assert not by_kind(render({}), "ConfigMap")
    cm = one(render(EVERYTHING_ON), "ConfigMap")
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    committed = (CHART_DIR / "dashboards" / "trainscale.json").read_text()
    assert cm["data"]["trainscale.json"] == committed.rstrip("\n")


# -- bad values -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        pytest.param({"operator": {"replicas": 2}}, "operator.replicas=2 needs operator.peering.enabled", id="ha-without-peering"),
        pytest.param(
            {"operator": {"podDisruptionBudget": {"enabled": True}}},
            "operator.podDisruptionBudget.enabled needs operator.replicas >= 2",
            id="pdb-single-replica",
        ),
        pytest.param(
            {"operator": {"watchNamespaces": ["ml-*"]}},
            'operator.watchNamespaces: "ml-*" is not a valid namespace name',
            id="namespace-glob",
        ),
        pytest.param(
            {"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}},
            "metrics.serviceMonitor.enabled needs metrics.service.enabled",
            id="monitor-without-service",
        ),
    ],
)  # fmt: skip
def test_bad_values_fail_with_a_clear_message(
    helm: Any, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(AssertionError) as failed:
        helm.template(values)
    assert message in str(failed.value)


# -- values documentation ------------------------------------------------------------------------


def _leaf_keys(values: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and path not in _OPAQUE_VALUES:
            keys.extend(_leaf_keys(value, path + "."))
        else:
            keys.append(path)
    return keys


# Dict-valued keys documented as one value (their insides are Kubernetes fields).
_OPAQUE_VALUES = {
    "operator.resources",
    "operator.podSecurityContext",
    "operator.securityContext",
    "grafana.dashboard.labels",
}


def _value_comments(text: str) -> dict[str, list[str]]:
    """Key path -> the comment lines directly above that key in values.yaml."""
    comments: dict[str, list[str]] = {}
    stack: list[str] = []
    block: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            block.append(stripped)
            continue
        match = re.match(r"^( *)([A-Za-z0-9_]+):", line)
        if match:
            depth = len(match.group(1)) // 2
            stack = [*stack[:depth], match.group(2)]
            comments[".".join(stack)] = block
        block = []
    return comments


def test_every_value_is_commented_and_documented() -> None:
    text = (CHART_DIR / "values.yaml").read_text()
    comments = _value_comments(text)
    docs = (REPO_ROOT / "docs" / "install.md").read_text()
    for path in _leaf_keys(yaml.safe_load(text)):
        block = comments.get(path, [])
        assert block and block[0].startswith("# --"), f"values.yaml: {path} lacks a `# --` comment"
        assert f"| `{path}` |" in docs, f"docs/install.md: the values table lacks `{path}`"
