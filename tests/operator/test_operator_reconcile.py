"""The pure reconcile decision, pass by pass.

Covers: a new job gets its rendezvous and N workers; scale-up adds the missing indices;
scale-down deletes the highest indices first; a failed or evicted worker is deleted,
counted and recreated only after backoff; past maxRestarts the job Fails and frees its pods;
completed workers make the job Succeed and nothing is recreated; terminating pods block
their name; status fields, selector, conditions and their transition times.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trainscale.operator.api import TrainingJobSpec
from trainscale.operator.api.reporting import is_noop_merge_patch
from trainscale.operator.controller.reconcile import (
    ReconcilePlan,
    WorkerPod,
    compute_backoff_seconds,
    decide_reconcile,
    parse_worker_pod,
)

NOW = dt.datetime(2026, 11, 21, 12, 0, 0, tzinfo=dt.UTC)


def _spec(spec_dict: dict[str, Any], **changes: Any) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate({**spec_dict, **changes})


def running(index: int, ready: bool = True) -> WorkerPod:
    return WorkerPod(name=f"j-worker-{index}", index=index, phase="Running", ready=ready)


def decide(spec: TrainingJobSpec, workers: list[WorkerPod], status: dict[str, Any] | None = None,
           now: dt.datetime = NOW) -> ReconcilePlan:  # fmt: skip
    return decide_reconcile(spec, "j", 7, status or {}, workers, True, True, now)


def test_new_job_gets_rendezvous_and_all_workers(spec_dict: dict[str, Any]) -> None:
    plan = decide_reconcile(_spec(spec_dict, replicas=3), "j", 1, {}, [], False, False, NOW)
    assert plan.create_rendezvous_service and plan.create_rendezvous_pod
    assert plan.create_workers == (0, 1, 2)
    assert plan.delete_workers == ()
    assert plan.status["phase"] == "Pending"
    assert plan.status["selector"] == "app.kubernetes.io/component=worker,trainscale.dev/job-name=j"
    assert plan.status["observedGeneration"] == 1


def test_steady_state_does_nothing_and_reports_running(spec_dict: dict[str, Any]) -> None:
    plan = decide(
        _spec(spec_dict, replicas=2), [running(0), running(1)], status={"phase": "Running"}
    )
    assert (plan.create_workers, plan.delete_workers) == ((), ())
    assert plan.status["phase"] == "Running"
    assert (
        plan.status["replicas"],
        plan.status["readyReplicas"],
        plan.status["pendingReplicas"],
    ) == (2, 2, 0)
    ready = next(c for c in plan.status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert not plan.events


def test_scale_up_adds_missing_indices(spec_dict: dict[str, Any]) -> None:
    plan = decide(_spec(spec_dict, replicas=4), [running(0), running(1)])
    assert plan.create_workers == (2, 3)
    assert plan.status["phase"] == "Scaling"
    assert any(e.reason == "ScalingUp" for e in plan.events)


def test_scale_down_removes_highest_indices_first(spec_dict: dict[str, Any]) -> None:
    plan = decide(_spec(spec_dict, replicas=1), [running(0), running(1), running(2), running(3)])
    assert [name for name, _ in plan.delete_workers] == ["j-worker-3", "j-worker-2", "j-worker-1"]
    assert all(reason == "ScaledDown" for _, reason in plan.delete_workers)
    assert plan.create_workers == ()
    assert plan.status["replicas"] == 1
    assert any(e.reason == "ScalingDown" for e in plan.events)


def test_gap_in_indices_is_filled_not_shifted(spec_dict: dict[str, Any]) -> None:
    plan = decide(_spec(spec_dict, replicas=3), [running(0), running(2)])
    assert plan.create_workers == (1,)
    assert plan.delete_workers == ()


def test_terminating_pod_blocks_its_name(spec_dict: dict[str, Any]) -> None:
    gone = WorkerPod(name="j-worker-1", index=1, phase="Running", terminating=True)
    plan = decide(_spec(spec_dict, replicas=2), [running(0), gone])
    assert plan.create_workers == ()
    assert plan.requeue_after is not None and plan.requeue_after <= 1.0
    assert plan.status["replicas"] == 1


def test_failed_worker_is_counted_deleted_and_recreated_after_backoff(
    spec_dict: dict[str, Any],
) -> None:
    spec = _spec(spec_dict, replicas=2)
    failed = WorkerPod(name="j-worker-1", index=1, phase="Failed", message="exit 1")
    plan = decide(spec, [running(0), failed])
    assert plan.delete_workers == (("j-worker-1", "WorkerFailed"),)
    assert plan.create_workers == ()
    assert plan.status["restarts"] == 1
    assert any(
        e.type == "Warning" and e.reason == "WorkerFailed" and "exit 1" in e.message
        for e in plan.events
    )

    # Next pass: the failed pod is gone, but the backoff has not expired.
    plan2 = decide(spec, [running(0)], status=plan.status, now=NOW + dt.timedelta(seconds=2))
    assert plan2.create_workers == ()
    assert plan2.status["restarts"] == 1, "a failure is counted once"
    assert plan2.requeue_after == pytest.approx(compute_backoff_seconds(1) - 2)

    plan3 = decide(spec, [running(0)], status=plan.status, now=NOW + dt.timedelta(seconds=6))
    assert plan3.create_workers == (1,)


def test_evicted_worker_is_replaced_too(spec_dict: dict[str, Any]) -> None:
    evicted = WorkerPod(
        name="j-worker-0", index=0, phase="Failed", reason="Evicted", message="node pressure"
    )
    plan = decide(_spec(spec_dict, replicas=1), [evicted])
    assert plan.delete_workers == (("j-worker-0", "WorkerFailed"),)
    assert any("evicted" in e.message for e in plan.events)


def test_past_max_restarts_the_job_fails_and_frees_its_pods(spec_dict: dict[str, Any]) -> None:
    spec = _spec(spec_dict, replicas=2, maxRestarts=3)
    failed = WorkerPod(name="j-worker-1", index=1, phase="Failed")
    plan = decide(spec, [running(0), failed], status={"restarts": 3, "phase": "Running"})
    assert plan.status["phase"] == "Failed"
    assert plan.status["restarts"] == 4
    assert set(plan.delete_workers) == {("j-worker-1", "WorkerFailed"), ("j-worker-0", "JobFailed")}
    assert plan.delete_rendezvous_pod
    assert plan.create_workers == ()
    assert any(e.reason == "JobFailed" for e in plan.events)
    # A failed job stays failed: nothing is recreated on later passes.
    later = decide(spec, [], status=plan.status)
    assert later.status["phase"] == "Failed" and later.create_workers == ()


def test_completed_workers_make_the_job_succeed(spec_dict: dict[str, Any]) -> None:
    spec = _spec(spec_dict, replicas=2)
    done = [WorkerPod(name=f"j-worker-{i}", index=i, phase="Succeeded") for i in range(2)]
    plan = decide(spec, done, status={"phase": "Running"})
    assert plan.status["phase"] == "Succeeded"
    assert plan.create_workers == () and plan.delete_workers == ()
    assert plan.delete_rendezvous_pod
    # Even when asked for more replicas afterwards, nothing is recreated.
    again = decide(_spec(spec_dict, replicas=4), done, status=plan.status)
    assert again.create_workers == () and again.status["phase"] == "Succeeded"


def test_no_new_workers_while_others_are_finishing(spec_dict: dict[str, Any]) -> None:
    spec = _spec(spec_dict, replicas=3)
    pods = [WorkerPod(name="j-worker-0", index=0, phase="Succeeded"), running(1)]
    plan = decide(spec, pods, status={"phase": "Running"})
    assert plan.create_workers == ()
    assert plan.status["phase"] != "Succeeded"


def test_unschedulable_workers_are_reported(spec_dict: dict[str, Any]) -> None:
    stuck = WorkerPod(
        name="j-worker-2", index=2, phase="Pending", unschedulable=True,
        message="0/2 nodes are available: 2 Insufficient nvidia.com/gpu.",
    )  # fmt: skip
    plan = decide(_spec(spec_dict, replicas=3), [running(0), running(1), stuck])
    assert plan.status["pendingReplicas"] == 1
    cond = next(c for c in plan.status["conditions"] if c["type"] == "Schedulable")
    assert cond["status"] == "False" and cond["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in cond["message"]
    assert plan.status["phase"] == "Scaling"


def test_condition_transition_time_moves_only_on_change(spec_dict: dict[str, Any]) -> None:
    spec = _spec(spec_dict, replicas=1)
    first = decide(spec, [running(0)])
    later = decide(spec, [running(0)], status=first.status, now=NOW + dt.timedelta(hours=1))
    t0 = {c["type"]: c["lastTransitionTime"] for c in first.status["conditions"]}
    t1 = {c["type"]: c["lastTransitionTime"] for c in later.status["conditions"]}
    assert t0 == t1
    flipped = decide(
        spec, [running(0, ready=False)], status=first.status, now=NOW + dt.timedelta(hours=2)
    )
    ready = next(c for c in flipped.status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["lastTransitionTime"] == "2026-11-21T14:00:00Z"


def test_foreign_conditions_are_kept(spec_dict: dict[str, Any]) -> None:
    status = {"conditions": [{"type": "MetricsUnavailable", "status": "True", "reason": "x",
                              "message": "", "lastTransitionTime": "2026-11-21T10:00:00Z"}]}  # fmt: skip
    plan = decide(_spec(spec_dict, replicas=1), [running(0)], status=status)
    assert "MetricsUnavailable" in [c["type"] for c in plan.status["conditions"]]


@given(
    replicas=st.integers(min_value=1, max_value=8),
    existing=st.sets(st.integers(min_value=0, max_value=11)),
)
def test_after_applying_a_plan_exactly_the_desired_indices_remain(
    replicas: int, existing: set[int]
) -> None:
    spec = TrainingJobSpec.model_validate(
        {
            "replicas": replicas,
            "maxReplicas": 12,
            "template": {"spec": {"containers": [{"name": "t", "image": "i"}]}},
        }
    )
    workers = [running(i) for i in sorted(existing)]
    plan = decide(spec, workers)
    deleted = {name for name, _ in plan.delete_workers}
    remaining = {w.index for w in workers if w.name not in deleted} | set(plan.create_workers)
    assert remaining == set(range(replicas))
    assert all(int(name.rsplit("-", 1)[1]) >= replicas for name in deleted)


def test_parse_worker_pod_reads_phase_readiness_and_scheduling() -> None:
    pod = {
        "metadata": {"name": "j-worker-4", "labels": {"trainscale.dev/replica-index": "4"}},
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "no GPUs",
                }
            ],
        },
    }
    worker = parse_worker_pod(pod)
    assert worker == WorkerPod(
        name="j-worker-4", index=4, phase="Pending", unschedulable=True, message="no GPUs"
    )
    assert parse_worker_pod({"metadata": {"name": "x", "labels": {}}}) is None
    ready = {
        "metadata": {
            "name": "j-worker-0",
            "labels": {"trainscale.dev/replica-index": "0"},
            "deletionTimestamp": "t",
        },
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    parsed = parse_worker_pod(ready)
    assert parsed is not None and parsed.ready and parsed.terminating and not parsed.active


def test_parse_failed_pod_reports_exit_code() -> None:
    pod = {
        "metadata": {"name": "j-worker-0", "labels": {"trainscale.dev/replica-index": "0"}},
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                {
                    "name": "trainer",
                    "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
                }
            ],
        },
    }
    parsed = parse_worker_pod(pod)
    assert parsed is not None and "exited with code 137 (OOMKilled)" in parsed.message


def test_backoff_grows_and_caps() -> None:
    assert [compute_backoff_seconds(n) for n in (0, 1, 2, 3)] == [0.0, 5.0, 10.0, 20.0]
    assert compute_backoff_seconds(50) == 300.0


def test_a_new_queued_job_creates_nothing(spec_dict: dict[str, Any]) -> None:
    """Rule 7: no worker and no rendezvous pod while arbitration has not admitted the job."""
    reason = "queued: needs 4 GPUs, 2 free"
    plan = decide_reconcile(
        _spec(spec_dict, replicas=3), "j", 1, {}, [], False, False, NOW, queued=reason
    )
    assert (plan.create_workers, plan.create_rendezvous_pod, plan.create_rendezvous_service) == (
        (),
        False,
        False,
    )
    assert plan.status["phase"] == "Queued"
    ready = next(c for c in plan.status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"], ready["message"]) == ("False", "Queued", reason)


def test_a_queued_job_gives_its_workers_back_gracefully(spec_dict: dict[str, Any]) -> None:
    plan = decide(
        _spec(spec_dict, replicas=2),
        [running(0), running(1)],
        status={"phase": "Running"},
    )
    assert plan.delete_workers == ()
    queued = decide_reconcile(
        _spec(spec_dict, replicas=2), "j", 7, {"phase": "Running"}, [running(0), running(1)],
        True, True, NOW, queued="queued: the cluster shrank",
    )  # fmt: skip
    assert [name for name, _ in queued.delete_workers] == ["j-worker-1", "j-worker-0"]
    assert queued.create_workers == ()
    assert queued.status["phase"] == "Queued"


@pytest.mark.parametrize(
    ("replicas", "ceiling", "running_indexes", "creates", "deletes"),
    [
        pytest.param(4, 2, [], (0, 1), 0, id="new-job-only-up-to-the-ceiling"),
        pytest.param(4, None, [], (0, 1, 2, 3), 0, id="no-ceiling"),
        pytest.param(4, 3, [0, 1], (2,), 0, id="grows-to-the-ceiling"),
        pytest.param(4, 2, [0, 1, 2, 3], (), 0, id="running-above-it-stays"),
        pytest.param(4, 2, [0, 1, 2], (), 0, id="no-new-worker-above-it"),
        pytest.param(2, 4, [0], (1,), 0, id="ceiling-above-spec"),
        pytest.param(1, 2, [0, 1, 2], (), 2, id="spec-below-it-deletes"),
    ],
)
def test_workers_are_created_within_the_arbitration_ceiling(
    spec_dict: dict[str, Any],
    replicas: int,
    ceiling: int | None,
    running_indexes: list[int],
    creates: tuple[int, ...],
    deletes: int,
) -> None:
    """Rule 5 with a ceiling: an admitted job whose spec.replicas is still above the
    arbitration ceiling (the autoscaler lowers it in its own pass) creates no worker at or
    above it, where none runs already; the workers that run stay until the autoscaler
    resizes the job, and spec.replicas below the ceiling rules as before."""
    plan = decide_reconcile(
        _spec(spec_dict, replicas=replicas, minReplicas=1, maxReplicas=4), "j", 1,
        {"phase": "Running"}, [running(i) for i in running_indexes], True, True, NOW,
        ceiling=ceiling,
    )  # fmt: skip
    assert plan.create_workers == creates
    assert len(plan.delete_workers) == deletes


@pytest.mark.parametrize(
    ("current", "patch", "noop"),
    [
        pytest.param({"a": 1}, {"a": 1}, True, id="same-value"),
        pytest.param({"a": 1}, {"a": 2}, False, id="new-value"),
        pytest.param({}, {"a": 1}, False, id="new-key"),
        pytest.param({"a": 1}, {"a": None}, False, id="null-deletes"),
        pytest.param({}, {"a": None}, True, id="null-on-missing"),
        pytest.param({"a": None}, {"a": None}, True, id="null-on-null"),
        pytest.param({"a": {"b": 1, "c": 2}}, {"a": {"b": 1}}, True, id="nested-subset"),
        pytest.param({"a": {"b": 1}}, {"a": {"b": 1, "c": 2}}, False, id="nested-new-key"),
        pytest.param({"a": [1, 2]}, {"a": [1]}, False, id="lists-replace"),
        pytest.param({"a": 1}, {"a": {"b": 1}}, False, id="scalar-to-object"),
    ],
)
def test_a_status_patch_that_changes_nothing_is_recognised(
    current: dict[str, Any], patch: dict[str, Any], noop: bool
) -> None:
    assert is_noop_merge_patch(current, patch) is noop


def test_a_steady_job_needs_no_status_write(spec_dict: dict[str, Any]) -> None:
    first = decide(_spec(spec_dict, replicas=2), [running(0), running(1)], status={})
    second = decide(_spec(spec_dict, replicas=2), [running(0), running(1)], status=first.status)
    assert is_noop_merge_patch(first.status, second.status)
