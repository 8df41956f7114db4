"""The node arbitration planned for each new worker, and how a pod asks for it.

Covers:
- :func:`assign_planned_nodes`: existing workers (bound, or Pending with a planned node) take
  their slots first; new workers fill the nodes the job is on, then the node with the most
  slots left, then by name; past the plan, no preference; a worker outside the plan takes
  no slot;
- :func:`read_plan` keeps node names and positive whole counts only;
- the reconcile decision plans each created worker (rule 10), not for a queued job, not with
  ``packWorkers: false``, not without a plan; a replaced worker gets its node back;
- ``parse_worker_pod`` reads the bound node and the planned-node annotation;
- the workers counted off their plan: bound elsewhere than planned, live;
- the worker pod prefers its planned node by name (``matchFields``) and names it in an
  annotation, beside the packing term and the template's own node affinity.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from trainscale.operator.api import ANNOTATION_PLANNED_NODE, TrainingJobSpec
from trainscale.operator.api.planned_nodes import assign_planned_nodes, choose_moves, read_plan
from trainscale.operator.controller import builders
from trainscale.operator.controller.reconcile import (
    WorkerPod,
    count_workers_off_plan,
    decide_reconcile,
    parse_worker_pod,
)

NOW = dt.datetime(2026, 12, 5, 12, 0, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("plan", "existing", "new", "expected"),
    [
        pytest.param({"a": 2}, [], 2, ["a", "a"], id="a-new-job-on-its-one-node"),
        pytest.param(
            {"a": 2, "b": 3},
            [],
            5,
            ["b", "b", "b", "a", "a"],
            id="the-node-with-most-slots-first-then-the-job-stays-there",
        ),
        pytest.param(
            {"a": 4, "b": 4},
            ["b", "b"],
            3,
            ["b", "b", "a"],
            id="where-the-job-runs-before-an-empty-node",
        ),
        pytest.param({"a": 1, "b": 1}, [], 2, ["a", "b"], id="ties-by-name"),
        pytest.param({"a": 2}, ["a", "a"], 1, [None], id="past-the-plan-no-preference"),
        pytest.param(
            {"a": 2, "b": 2},
            ["a", "c"],
            3,
            ["a", "b", "b"],
            id="a-worker-outside-the-plan-takes-no-slot",
        ),
        pytest.param(
            {"a": 2, "b": 1},
            [None, "a"],
            2,
            ["a", "b"],
            id="an-unplanned-pending-worker-takes-no-slot",
        ),
        pytest.param({}, [], 2, [None, None], id="no-plan"),
    ],
)
def test_new_workers_take_the_slots_the_plan_has_left(
    plan: dict[str, int], existing: list[str | None], new: int, expected: list[str | None]
) -> None:
    assert assign_planned_nodes(plan, existing, new) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(
            {"gpu-node-0": 3, "n.example.com": 1},
            {"gpu-node-0": 3, "n.example.com": 1},
            id="node-names",
        ),
        pytest.param({"a": 0, "b": -1, "c": 2}, {"c": 2}, id="positive-counts-only"),
        pytest.param({"a": 2.5, "b": "2", "c": True}, {}, id="whole-numbers-only"),
        pytest.param({"Not_A_Node": 1, "": 1, "x" * 254: 1, "-a": 1}, {}, id="bad-names"),
        pytest.param(None, {}, id="missing"),
        pytest.param(["a"], {}, id="not-a-map"),
    ],
)
def test_a_plan_is_read_from_status_with_valid_entries_only(raw: Any, expected: dict) -> None:
    assert read_plan(raw) == expected


def _worker(index: int, node: str | None = None, planned: str | None = None,
            phase: str = "Running") -> WorkerPod:  # fmt: skip
    return WorkerPod(name=f"j-worker-{index}", index=index, phase=phase, ready=phase == "Running",
                     node=node, planned_node=planned)  # fmt: skip


def _decide(spec: TrainingJobSpec, workers: list[WorkerPod], plan: Any,
            queued: str | None = None) -> dict[int, str]:  # fmt: skip
    status: dict[str, Any] = {"phase": "Running"}
    if plan is not None:
        status["arbitration"] = {"ceiling": 8, "preferredNodes": plan}
    result = decide_reconcile(spec, "j", 3, status, workers, True, True, NOW, queued=queued)
    assert set(dict(result.planned_nodes)) <= set(result.create_workers)
    return dict(result.planned_nodes)


def test_each_created_worker_gets_the_node_planned_for_it(spec_dict: dict[str, Any]) -> None:
    spec = TrainingJobSpec.model_validate({**spec_dict, "replicas": 6, "maxReplicas": 8})
    workers = [_worker(0, "b"), _worker(1, "b"), _worker(2, planned="a", phase="Pending")]
    assert _decide(spec, workers, {"a": 3, "b": 2, "c": 4}) == {3: "a", 4: "a", 5: "c"}


def test_a_replaced_worker_gets_its_planned_node_back(spec_dict: dict[str, Any]) -> None:
    spec = TrainingJobSpec.model_validate({**spec_dict, "replicas": 3})
    workers = [_worker(0, "a"), _worker(2, "b")]  # worker 1 (on a) failed and is gone
    assert _decide(spec, workers, {"a": 2, "b": 1}) == {1: "a"}


@pytest.mark.parametrize(
    ("changes", "plan", "queued"),
    [
        pytest.param({"placement": {"packWorkers": False}}, {"a": 4}, None, id="packing-off"),
        pytest.param({}, None, None, id="no-arbitration"),
        pytest.param({}, {"a": 4}, "queued: no GPUs", id="queued"),
        pytest.param({}, {"Bad_Name": 4}, None, id="bad-plan"),
    ],
)
def test_no_planned_node_without_a_usable_plan(
    spec_dict: dict[str, Any], changes: dict[str, Any], plan: Any, queued: str | None
) -> None:
    spec = TrainingJobSpec.model_validate({**spec_dict, "replicas": 2, **changes})
    assert _decide(spec, [], plan, queued) == {}


def test_parse_worker_pod_reads_its_node_and_planned_node() -> None:
    pod = {
        "metadata": {
            "name": "j-worker-0",
            "labels": {"trainscale.dev/replica-index": "0"},
            "annotations": {ANNOTATION_PLANNED_NODE: "gpu-node-1"},
        },
        "spec": {"nodeName": "gpu-node-0"},
        "status": {"phase": "Running"},
    }
    worker = parse_worker_pod(pod)
    assert worker is not None
    assert (worker.node, worker.planned_node) == ("gpu-node-0", "gpu-node-1")
    del pod["spec"]["nodeName"], pod["metadata"]["annotations"]
    worker = parse_worker_pod(pod)
    assert worker is not None
    assert (worker.node, worker.planned_node) == (None, None)


def test_a_worker_pod_prefers_its_planned_node_by_name(spec_dict: dict[str, Any]) -> None:
    user_node_term = {"weight": 5, "preference": {"matchExpressions": [
        {"key": "zone", "operator": "In", "values": ["z1"]}]}}  # fmt: skip
    spec_dict = {**spec_dict, "replicas": 2}
    spec_dict["template"]["spec"]["affinity"] = {
        "nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [user_node_term]}
    }
    spec = TrainingJobSpec.model_validate(spec_dict)
    job = builders.JobRef(name="j", namespace="ns", uid="u")
    pod = builders.build_worker_pod(job, spec, 1, planned_node="gpu-node-1")
    assert pod["metadata"]["annotations"][ANNOTATION_PLANNED_NODE] == "gpu-node-1"
    affinity = pod["spec"]["affinity"]
    preferred = affinity["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred == [
        user_node_term,
        {
            "weight": 100,
            "preference": {
                "matchFields": [
                    {"key": "metadata.name", "operator": "In", "values": ["gpu-node-1"]}
                ]
            },
        },
    ]
    assert (
        builders.build_packing_term("j")
        in (affinity["podAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"])
    )
    plain = builders.build_worker_pod(job, spec, 1)
    assert ANNOTATION_PLANNED_NODE not in plain["metadata"]["annotations"]
    assert (
        plain["spec"]["affinity"]["nodeAffinity"]
        == spec_dict["template"]["spec"]["affinity"]["nodeAffinity"]
    )


def test_a_job_that_opted_out_of_packing_gets_no_planned_node(spec_dict: dict[str, Any]) -> None:
    spec = TrainingJobSpec.model_validate({**spec_dict, "placement": {"packWorkers": False}})
    job = builders.JobRef(name="j", namespace="ns", uid="u")
    pod = builders.build_worker_pod(job, spec, 0, planned_node="gpu-node-1")
    assert ANNOTATION_PLANNED_NODE not in pod["metadata"].get("annotations", {})
    assert "nodeAffinity" not in (pod["spec"].get("affinity") or {})


def test_workers_bound_off_their_planned_node_are_counted() -> None:
    workers = [
        _worker(0, "a", planned="a"),  # on plan
        _worker(1, "b", planned="a"),  # off plan
        _worker(2, None, planned="a", phase="Pending"),  # not bound yet
        _worker(3, "c"),  # no plan
        _worker(4, "b", planned="c", phase="Succeeded"),  # finished
        WorkerPod(name="j-worker-5", index=5, phase="Running", terminating=True, node="b",
                  planned_node="a"),  # going away
    ]  # fmt: skip
    assert count_workers_off_plan(workers) == 1


def _moves(spec: TrainingJobSpec, workers: list[WorkerPod], plan: Any,
           queued: str | None = None) -> tuple[dict[str, str], dict[int, str]]:  # fmt: skip
    """Rule 11: the workers deleted (name -> reason) and the planned node of each created."""
    status: dict[str, Any] = {"phase": "Running"}
    if plan is not None:
        status["arbitration"] = {"ceiling": 8, "preferredNodes": plan}
    result = decide_reconcile(spec, "j", 3, status, workers, True, True, NOW, queued=queued)
    return dict(result.delete_workers), dict(result.planned_nodes)


def test_a_job_shrinking_moves_its_workers_off_the_node_the_plan_left(
    spec_dict: dict[str, Any],
) -> None:
    """4 workers on a and b shrink to 2, and the plan holds both on a: worker 1 (on b)
    goes as well as 2 and 3; it is recreated when its pod is gone, on a."""
    spec = TrainingJobSpec.model_validate({**spec_dict, "replicas": 2})
    workers = [_worker(0, "a"), _worker(1, "b"), _worker(2, "a"), _worker(3, "b")]
    deleted, _ = _moves(spec, workers, {"a": 2})
    assert deleted == {"j-worker-1": "MovedToPlannedNode", "j-worker-2": "ScaledDown",
                       "j-worker-3": "ScaledDown"}  # fmt: skip
    gone = [_worker(0, "a")]  # a later pass: worker 1's pod is gone
    assert _moves(spec, gone, {"a": 2}) == ({}, {1: "a"})


def test_a_job_growing_moves_its_workers_to_the_node_that_holds_them_all(
    spec_dict: dict[str, Any],
) -> None:
    spec = TrainingJobSpec.model_validate({**spec_dict, "replicas": 3})
    deleted, planned = _moves(spec, [_worker(0, "a"), _worker(1, "b")], {"c": 3})
    assert deleted == {"j-worker-0": "MovedToPlannedNode", "j-worker-1": "MovedToPlannedNode"}
    assert planned == {2: "c"}


@pytest.mark.parametrize(
    ("replicas", "workers", "changes", "queued"),
    [
        pytest.param(2, [_worker(0, "a"), _worker(1, "b")], {}, None, id="no-resize"),
        pytest.param(
            3,
            [_worker(0, "a", planned="a"), _worker(1, "b", planned="a")],
            {},
            None,
            id="a-worker-the-scheduler-put-off-its-plan-is-not-moved-again",
        ),
        pytest.param(
            3,
            [_worker(0, "a"), _worker(1, "b")],
            {"placement": {"packWorkers": False}},
            None,
            id="packing-off",
        ),
        pytest.param(1, [_worker(0, "a"), _worker(1, "b")], {}, "queued: no GPUs", id="queued"),
    ],
)
def test_no_worker_moves_without_a_resize_a_plan_or_for_a_second_time(
    spec_dict: dict[str, Any],
    replicas: int,
    workers: list[WorkerPod],
    changes: dict[str, Any],
    queued: str | None,
) -> None:
    spec = TrainingJobSpec.model_validate({**spec_dict, "replicas": replicas, **changes})
    deleted, _ = _moves(spec, workers, {"a": 3}, queued)
    assert not any(reason == "MovedToPlannedNode" for reason in deleted.values())


def test_no_more_workers_move_than_the_plan_has_room_for(spec_dict: dict[str, Any]) -> None:
    spec = TrainingJobSpec.model_validate({**spec_dict, "replicas": 3})
    workers = [_worker(0, "b"), _worker(1, "b"), _worker(2, "a"), _worker(3, "x")]
    deleted, _ = _moves(spec, workers, {"a": 2})
    assert deleted == {"j-worker-0": "MovedToPlannedNode", "j-worker-3": "ScaledDown"}


@pytest.mark.parametrize(
    ("plan", "existing", "movable", "expected"),
    [
        pytest.param({"a": 3}, ["a", "b", "a", "b"], [True] * 4, [1], id="one-slot-left-on-a"),
        pytest.param({"a": 1, "c": 1}, ["a", "a"], [True] * 2, [1], id="lowest-indexes-keep-slots"),
        pytest.param({"c": 3}, ["a", "b"], [True, True], [0, 1], id="all-to-an-empty-node"),
        pytest.param({"a": 2}, ["b", "b", "a", "x"], [True] * 4, [0], id="no-more-than-room"),
        pytest.param({"a": 3}, ["a", "b"], [True, False], [], id="not-movable"),
        pytest.param({"a": 2}, [None, "a", "b"], [False, True, True], [2], id="unbound-no-slot"),
        pytest.param({"a": 2, "b": 1}, ["a", "b"], [True, True], [], id="all-on-plan"),
    ],
)
def test_choose_moves_takes_off_their_node_the_workers_the_plan_has_no_slot_for(
    plan: dict[str, int], existing: list[str | None], movable: list[bool], expected: list[int]
) -> None:
    """What reconcile rule 11 and the cluster simulator both move at a resize."""
    assert choose_moves(plan, existing, movable) == expected
