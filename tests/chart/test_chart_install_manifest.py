"""manifests/install.yaml, the plain `kubectl apply` install, rendered from the chart.

Behaviours covered:

* the committed file is exactly the chart rendered with default values into the
  ``trainscale-system`` namespace, preceded by that Namespace (``TRAINSCALE_UPDATE_GOLDEN=1``
  rewrites it), so the plain install and the chart can never disagree;
* it holds the CRD, the operator and its RBAC, and every object but the cluster-scoped ones
  lives in ``trainscale-system``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALL = REPO_ROOT / "manifests" / "install.yaml"
NAMESPACE = "trainscale-system"
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}

HEADER = f"""\
# trainscale: plain install (no Helm). Generated from charts/trainscale with default values:
#   helm template trainscale charts/trainscale --namespace {NAMESPACE}
# Do not edit: change the chart and run `TRAINSCALE_UPDATE_GOLDEN=1 .venv/bin/pytest tests/chart`.
# Apply with: kubectl apply --server-side -f manifests/install.yaml
"""

NAMESPACE_OBJECT = {
    "apiVersion": "v1",
    "kind": "Namespace",
    "metadata": {
        "name": NAMESPACE,
        "labels": {
            "app.kubernetes.io/name": "trainscale",
            "app.kubernetes.io/part-of": "trainscale",
            # The operator runs with the restricted profile; enforce it for the namespace.
            "pod-security.kubernetes.io/enforce": "restricted",
        },
    },
}


def render_install_yaml(helm: Any) -> str:
    """The expected text of manifests/install.yaml."""
    chart: str = helm.template_text({})
    return HEADER + "---\n" + yaml.safe_dump(NAMESPACE_OBJECT, sort_keys=False) + chart


def test_install_yaml_is_the_rendered_chart(helm: Any) -> None:
    expected = render_install_yaml(helm)
    if os.environ.get("TRAINSCALE_UPDATE_GOLDEN") == "1":
        INSTALL.write_text(expected, encoding="utf-8")
    assert INSTALL.exists(), "manifests/install.yaml is missing: run the update command below"
    assert INSTALL.read_text(encoding="utf-8") == expected, (
        "manifests/install.yaml drifted from the chart: "
        "run `TRAINSCALE_UPDATE_GOLDEN=1 .venv/bin/pytest tests/chart`"
    )


def test_install_yaml_contents() -> None:
    objects = [d for d in yaml.safe_load_all(INSTALL.read_text(encoding="utf-8")) if d]
    kinds = [o["kind"] for o in objects]
    assert kinds[0] == "Namespace"
    assert {"CustomResourceDefinition", "Deployment", "ClusterRole", "ServiceAccount"} <= set(kinds)
    for obj in objects:
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["kind"]
