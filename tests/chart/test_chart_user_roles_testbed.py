"""Namespace users and TrainingJobs, under the real RBAC authorizer of the test-bed.

Behaviours covered (real kube-apiserver with RBAC, real clusterrole-aggregation controller,
the chart's ClusterRoles rendered by the real helm):

* a ServiceAccount bound in one namespace to the built-in ``edit`` ClusterRole creates a
  TrainingJob (``kubectl apply``) and resizes it (``kubectl scale tj``, the scale subresource),
  with nothing but the chart's ``<release>-trainingjob-edit`` aggregated into ``edit``;
* one bound to the built-in ``view`` ClusterRole gets and lists TrainingJobs but is refused
  (Forbidden) when it creates or scales one, and the editor may do nothing in another namespace.

Requests are made as the ServiceAccounts with ``kubectl --as`` (the test-bed's admin may
impersonate).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.chart.test_chart_user_roles import user_roles
from tests.e2e.test_e2e_trainingjob import job_manifest
from tests.support.testbed import cleanup_namespace, make_namespace, wait_for

pytestmark = pytest.mark.testbed

# A name of its own, so no other release's roles grant what this test checks.
FULLNAME = "user-roles-test"


@pytest.fixture
def chart_user_roles(helm: Any, kubectl: Any, crd: dict[str, Any]) -> Iterator[list[str]]:
    """The chart's user-facing ClusterRoles, applied to the test-bed and removed afterwards."""
    roles = list(user_roles(helm.template({"fullnameOverride": FULLNAME})).values())
    assert len(roles) == 2
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(roles))
    names = [r["metadata"]["name"] for r in roles]
    yield names
    kubectl("delete", "clusterrole", *names, "--ignore-not-found", check=False)


def service_account(kubectl: Any, namespace: str, name: str, cluster_role: str) -> str:
    """A ServiceAccount bound in ``namespace`` to ``cluster_role``; its user name."""
    kubectl("create", "serviceaccount", name, "-n", namespace)
    kubectl("create", "rolebinding", name, "-n", namespace, f"--clusterrole={cluster_role}",
            f"--serviceaccount={namespace}:{name}")  # fmt: skip
    return f"system:serviceaccount:{namespace}:{name}"


def can_i(kubectl: Any, user: str, verb: str, resource: str, namespace: str) -> bool:
    done = kubectl("auth", "can-i", verb, resource, "-n", namespace, "--as", user, check=False)
    return bool(done.stdout.strip() == "yes")


def test_an_editor_creates_and_scales_a_job_a_viewer_only_reads(
    kubectl: Any, namespace: str, chart_user_roles: list[str]
) -> None:
    editor = service_account(kubectl, namespace, "editor", "edit")
    viewer = service_account(kubectl, namespace, "viewer", "view")
    # The aggregation controller folds the chart's rules into edit/view asynchronously.
    wait_for(lambda: can_i(kubectl, editor, "create", "trainingjobs.trainscale.dev", namespace)
             and can_i(kubectl, viewer, "list", "trainingjobs.trainscale.dev", namespace),
             timeout=60, what="the chart's rules aggregated into edit and view")  # fmt: skip

    def as_user(user: str, *args: str, **kw: Any) -> Any:
        return kubectl(*args, "-n", namespace, "--as", user, **kw)

    job = job_manifest("by-editor", replicas=1, gpus=1)
    as_user(editor, "create", "-f", "-", input=json.dumps(job))
    as_user(editor, "scale", "tj/by-editor", "--replicas=2")
    tj = json.loads(as_user(viewer, "get", "tj/by-editor", "-o", "json").stdout)
    assert tj["spec"]["replicas"] == 2
    listed = json.loads(as_user(viewer, "get", "trainingjobs", "-o", "json").stdout)["items"]
    assert [t["metadata"]["name"] for t in listed] == ["by-editor"]

    job = job_manifest("by-viewer", replicas=1, gpus=1)
    refused = as_user(viewer, "create", "-f", "-", input=json.dumps(job), check=False)
    assert refused.returncode != 0 and "Forbidden" in refused.stderr, refused.stderr
    refused = as_user(viewer, "scale", "tj/by-editor", "--replicas=3", check=False)
    assert refused.returncode != 0 and "Forbidden" in refused.stderr, refused.stderr
    refused = as_user(viewer, "delete", "tj/by-editor", check=False)
    assert refused.returncode != 0 and "Forbidden" in refused.stderr, refused.stderr
    assert (
        json.loads(as_user(viewer, "get", "tj/by-editor", "-o", "json").stdout)["spec"]["replicas"]
        == 2
    )

    other = make_namespace(kubectl, "user-roles-other-")
    try:
        refused = kubectl("create", "-n", other, "--as", editor, "-f", "-",
                          input=json.dumps(job), check=False)  # fmt: skip
        assert refused.returncode != 0 and "Forbidden" in refused.stderr, refused.stderr
    finally:
        cleanup_namespace(kubectl, other)
