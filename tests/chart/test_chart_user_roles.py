"""The ClusterRoles that let namespace users manage TrainingJobs (rbac.aggregateToDefaultRoles).

Behaviours covered (rendered with the real helm):

* by default the chart renders ``<release>-trainingjob-view`` (get/list/watch of trainingjobs,
  their status and scale; aggregated into ``view``, ``edit`` and ``admin``) and
  ``<release>-trainingjob-edit`` (create/update/patch/delete of trainingjobs, update/patch of
  their scale; aggregated into ``edit`` and ``admin``), bound to nobody;
* neither is rendered with ``rbac.aggregateToDefaultRoles=false`` or ``rbac.create=false``.

What the real RBAC authorizer makes of them is in ``test_chart_user_roles_testbed.py``.
"""

from __future__ import annotations

from typing import Any

from tests.chart.test_chart_render import by_kind, rules_of

AGGREGATE = "rbac.authorization.k8s.io/aggregate-to-"
GROUP = "trainscale.dev"


def user_roles(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Name -> ClusterRole of the chart's user-facing roles."""
    return {
        o["metadata"]["name"]: o
        for o in by_kind(objects, "ClusterRole")
        if o["metadata"]["labels"]["app.kubernetes.io/component"] == "user-roles"
    }


def aggregated_into(role: dict[str, Any]) -> set[str]:
    labels: dict[str, str] = role["metadata"]["labels"]
    return {k.removeprefix(AGGREGATE) for k, v in labels.items() if k.startswith(AGGREGATE) and v}


def test_view_and_edit_roles_aggregate_into_the_built_in_roles(render: Any) -> None:
    objects = render({})
    roles = user_roles(objects)
    assert set(roles) == {"trainscale-trainingjob-view", "trainscale-trainingjob-edit"}
    view, edit = roles["trainscale-trainingjob-view"], roles["trainscale-trainingjob-edit"]
    assert aggregated_into(view) == {"view", "edit", "admin"}
    assert aggregated_into(edit) == {"edit", "admin"}
    read = {"get", "list", "watch"}
    assert rules_of(view) == {
        (GROUP, "trainingjobs"): read,
        (GROUP, "trainingjobs/status"): read,
        (GROUP, "trainingjobs/scale"): read,
    }
    assert rules_of(edit) == {
        (GROUP, "trainingjobs"): {"create", "update", "patch", "delete"},
        (GROUP, "trainingjobs/scale"): {"update", "patch"},
    }
    # Bound to nobody: the built-in roles' own bindings carry them.
    bound = {b["roleRef"]["name"] for b in objects if b["kind"].endswith("Binding")}
    assert not bound & set(roles)


def test_user_roles_can_be_turned_off(render: Any) -> None:
    assert not user_roles(render({"rbac": {"aggregateToDefaultRoles": False}}))
    assert not user_roles(render({"rbac": {"create": False}}))
