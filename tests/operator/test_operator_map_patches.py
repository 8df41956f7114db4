"""Maps in status are written whole, though status is written with JSON merge patches.

A merge patch (RFC 7386) merges an object key by key: a map written as the patch's value
keeps every key it had before that the new map lacks. The arbitration plan
(``status.arbitration.preferredNodes``) of a job the plan moved from one node to another
said both nodes for good: the reconcile pass read a plan the arbiter never made, and every
later arbitration pass found the status changed and wrote it again (at 1,000 arbitrated
jobs, half of them every pass, each write waking the job's reconcile pass). The
autoscaler's model (``status.autoscaling.model``) kept a forgotten model's parameters.
``replace_map`` sets the keys no longer there to null. (The test-bed checks the same on the
real apiserver: tests/e2e/test_e2e_arbitration.py.)
"""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest

from trainscale.operator import api
from trainscale.operator.api.reporting import replace_map
from trainscale.operator.autoscaling.cluster import ArbitrationResult
from trainscale.operator.autoscaling.policy import Recommendation
from trainscale.operator.autoscaling.status import decide_autoscale

NOW = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)
PATH = ("arbitration", "preferredNodes")


def merged(target: Any, patch: Any) -> Any:
    """RFC 7386 applied, as the apiserver applies a merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merged(out.get(key), value)
    return out


@pytest.mark.parametrize(
    ("current", "patch", "expected"),
    [
        pytest.param({"arbitration": {"preferredNodes": {"a": 2}}},
                     {"arbitration": {"preferredNodes": {"b": 2}}},
                     {"arbitration": {"preferredNodes": {"a": None, "b": 2}}}, id="moved"),
        pytest.param({"arbitration": {"preferredNodes": {"a": 2, "b": 1}}},
                     {"arbitration": {"preferredNodes": {"b": 3}}},
                     {"arbitration": {"preferredNodes": {"a": None, "b": 3}}}, id="shrunk"),
        pytest.param({"arbitration": {"preferredNodes": {"a": 2}}},
                     {"arbitration": {"preferredNodes": {}}},
                     {"arbitration": {"preferredNodes": {"a": None}}}, id="emptied"),
        pytest.param({}, {"arbitration": {"preferredNodes": {"b": 2}}},
                     {"arbitration": {"preferredNodes": {"b": 2}}}, id="first-write"),
        pytest.param({"arbitration": {"preferredNodes": {"a": 2}}}, {"arbitration": {"ceiling": 2}},
                     {"arbitration": {"ceiling": 2}}, id="map-not-written"),
        pytest.param({"arbitration": None}, {"arbitration": {"preferredNodes": {"b": 2}}},
                     {"arbitration": {"preferredNodes": {"b": 2}}}, id="no-block-before"),
    ],
)  # fmt: skip
def test_a_map_written_whole_removes_the_keys_it_no_longer_has(
    current: dict[str, Any], patch: dict[str, Any], expected: dict[str, Any]
) -> None:
    before = copy.deepcopy(patch)
    assert replace_map(patch, current, PATH) == expected
    assert patch == before  # the patch given is not changed
    # applied, the map is the patch's own (or, not written, what it was)
    written = (merged(current, expected).get("arbitration") or {}).get("preferredNodes")
    wanted = patch["arbitration"].get("preferredNodes", _unchanged(current))
    assert written == wanted


def _unchanged(current: dict[str, Any]) -> Any:
    return (current.get("arbitration") or {}).get("preferredNodes")


def result(nodes: dict[str, int]) -> ArbitrationResult:
    status = api.ArbitrationStatus(ceiling=sum(nodes.values()), preferred_nodes=nodes,
                                   reason="granted", last_update_time="2026-12-06T00:00:00Z")  # fmt: skip
    return ArbitrationResult(key="ns/job", status=status)


def test_an_arbitration_plan_that_moved_a_job_reads_back_as_the_new_plan() -> None:
    stored = {"phase": "Running", **result({"a": 2, "c": 1}).status_patch}
    moved = result({"b": 3})
    back = merged(stored, moved.patch_over(stored))
    assert back["arbitration"]["preferredNodes"] == {"b": 3}
    # read back, it is the status the pass made: the next pass has nothing to write
    assert api.ArbitrationStatus.model_validate(back["arbitration"]) == moved.status
    # written as a plain merge patch, the old nodes stayed beside the new one
    assert merged(stored, moved.status_patch)["arbitration"]["preferredNodes"] == {
        "a": 2, "b": 3, "c": 1,
    }  # fmt: skip


def test_the_autoscalers_model_is_written_whole(spec_dict: dict[str, Any]) -> None:
    spec_dict["autoscaling"] = {"enabled": True}
    spec = api.TrainingJobSpec.model_validate(spec_dict)
    status = {"autoscaling": {"model": {"computeFraction": 0.5, "workersPerNode": 4.0}}}
    forgotten = Recommendation(replicas=2, target=2, current_replicas=2, reason="why")
    plan = decide_autoscale(spec, status, None, (), forgotten, NOW)
    assert merged(status, plan.status)["autoscaling"]["model"] == {}
