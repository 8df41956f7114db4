"""``spec.suspend``: the pure reconcile rule (rule 9) and what cluster arbitration counts.

Covers: suspending deletes every worker gracefully (highest index first, reason Suspended),
creates nothing, deletes the rendezvous pod only once no worker pod is left (the Service
stays), reports phase Suspended with ``Suspended=True`` / ``Ready=False`` and gives up the
job's arbitration admission; a suspended job says nothing new pass after pass; suspension
wins over queueing but not over a finished job; un-suspending recreates spec.replicas workers
and the rendezvous, with ``Suspended=False/JobResumed`` and one ``Resumed`` event; cluster
arbitration does not arbitrate a suspended job and counts only the workers it still has.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from trainscale.operator.api import TrainingJobSpec
from trainscale.operator.autoscaling.arbiter import Capacity
from trainscale.operator.autoscaling.cluster import ManagedJob, build_demand, decide_arbitration
from trainscale.operator.controller.reconcile import ReconcilePlan, WorkerPod, decide_reconcile

NOW = dt.datetime(2026, 11, 21, 12, 0, 0, tzinfo=dt.UTC)


def _spec(spec_dict: dict[str, Any], **changes: Any) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate({**spec_dict, **changes})


def running(index: int) -> WorkerPod:
    return WorkerPod(name=f"j-worker-{index}", index=index, phase="Running", ready=True)


def terminating(index: int) -> WorkerPod:
    return WorkerPod(name=f"j-worker-{index}", index=index, phase="Running", terminating=True)


def decide(
    spec: TrainingJobSpec,
    workers: list[WorkerPod],
    status: dict[str, Any] | None = None,
    rendezvous: bool = True,
    queued: str | None = None,
) -> ReconcilePlan:
    return decide_reconcile(
        spec, "j", 3, status or {}, workers, rendezvous, rendezvous, NOW, queued=queued
    )


def condition(plan: ReconcilePlan, type_: str) -> tuple[str, str]:
    (found,) = [c for c in plan.status["conditions"] if c["type"] == type_]
    return found["status"], found["reason"]


RUNNING_STATUS = {"phase": "Running", "arbitration": {"queued": False, "ceiling": 4}}


def test_suspending_deletes_every_worker_gracefully_and_creates_nothing(
    spec_dict: dict[str, Any],
) -> None:
    spec = _spec(spec_dict, replicas=3, suspend=True)
    plan = decide(spec, [running(0), running(1), running(2)], RUNNING_STATUS)
    assert plan.delete_workers == (
        ("j-worker-2", "Suspended"),
        ("j-worker-1", "Suspended"),
        ("j-worker-0", "Suspended"),
    )
    assert plan.create_workers == ()
    assert not (plan.create_rendezvous_pod or plan.create_rendezvous_service)
    assert not plan.delete_rendezvous_pod  # the workers still need it while they checkpoint
    assert plan.requeue_after is not None
    assert plan.status["phase"] == "Suspended"
    assert (plan.status["replicas"], plan.status["readyReplicas"]) == (0, 0)
    assert condition(plan, "Suspended") == ("True", "JobSuspended")
    assert condition(plan, "Ready") == ("False", "Suspended")
    assert plan.status["arbitration"] is None  # the admission is given up
    reasons = [e.reason for e in plan.events]
    assert reasons == ["Suspending", "PhaseSuspended"]
    assert "SIGTERM" in plan.events[0].message


def test_the_rendezvous_pod_goes_once_no_worker_pod_is_left(spec_dict: dict[str, Any]) -> None:
    spec = _spec(spec_dict, replicas=2, suspend=True)
    first = decide(spec, [running(0), running(1)], RUNNING_STATUS)
    waiting = decide(spec, [terminating(0), terminating(1)], {**RUNNING_STATUS, **first.status})
    assert waiting.delete_workers == ()  # already going: not deleted twice
    assert not waiting.delete_rendezvous_pod
    assert waiting.events == ()
    gone = decide(spec, [], {**RUNNING_STATUS, **waiting.status})
    assert gone.delete_rendezvous_pod
    assert (gone.delete_workers, gone.create_workers, gone.events) == ((), (), ())
    assert gone.status["phase"] == "Suspended"
    quiet = decide(spec, [], {**RUNNING_STATUS, **gone.status}, rendezvous=False)
    assert not quiet.delete_rendezvous_pod and quiet.events == ()


def test_suspension_wins_over_queueing_but_not_over_a_finished_job(
    spec_dict: dict[str, Any],
) -> None:
    spec = _spec(spec_dict, replicas=2, suspend=True)
    queued = decide(spec, [running(0)], RUNNING_STATUS, queued="needs 4 GPUs")
    assert queued.status["phase"] == "Suspended"
    done = decide(spec, [], {"phase": "Succeeded"})
    assert done.status["phase"] == "Succeeded"
    failed = decide(spec, [running(0)], {"phase": "Failed"})
    assert failed.status["phase"] == "Failed"
    assert failed.delete_workers == (("j-worker-0", "JobFailed"),)


def test_a_worker_failing_while_suspending_is_counted_once(spec_dict: dict[str, Any]) -> None:
    spec = _spec(spec_dict, replicas=2, suspend=True)
    crashed = WorkerPod(name="j-worker-1", index=1, phase="Failed", message="exit 1")
    plan = decide(spec, [running(0), crashed], RUNNING_STATUS)
    assert plan.delete_workers == (("j-worker-1", "WorkerFailed"), ("j-worker-0", "Suspended"))
    assert plan.status["restarts"] == 1


def test_resuming_recreates_the_workers_and_says_so_once(spec_dict: dict[str, Any]) -> None:
    suspended = decide(_spec(spec_dict, replicas=3, suspend=True), [], rendezvous=False)
    spec = _spec(spec_dict, replicas=3)
    plan = decide(spec, [], suspended.status, rendezvous=False)
    assert plan.create_workers == (0, 1, 2)
    assert plan.create_rendezvous_pod and plan.create_rendezvous_service
    assert plan.status["phase"] == "Pending"
    assert condition(plan, "Suspended") == ("False", "JobResumed")
    assert "Resumed" in [e.reason for e in plan.events]
    later = decide(spec, [running(0), running(1), running(2)], {**suspended.status, **plan.status})
    assert later.status["phase"] == "Running"
    assert "Resumed" not in [e.reason for e in later.events]
    assert condition(later, "Suspended") == ("False", "JobResumed")


def test_a_job_never_suspended_gets_no_suspended_condition(spec_dict: dict[str, Any]) -> None:
    plan = decide(_spec(spec_dict, replicas=1), [running(0)], {"phase": "Running"})
    assert "Suspended" not in [c["type"] for c in plan.status["conditions"]]


@pytest.mark.parametrize(("worker_nodes", "held"), [((), 0), (("n1", "n1"), 2)])
def test_arbitration_counts_only_the_workers_a_suspended_job_still_has(
    spec_dict: dict[str, Any], worker_nodes: tuple[str, ...], held: int
) -> None:
    autoscaled = {"enabled": True}
    suspended = ManagedJob(
        "d/paused", _spec(spec_dict, replicas=4, suspend=True, autoscaling=autoscaled),
        created=1.0, worker_nodes=worker_nodes,
    )  # fmt: skip
    assert not suspended.arbitrated
    demand = build_demand(suspended)
    assert demand.pinned and demand.current_replicas == held
    other = ManagedJob("d/other", _spec(spec_dict, replicas=1, maxReplicas=4,
                                        autoscaling=autoscaled), created=2.0,
                       throughput={1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0})  # fmt: skip
    gpus = spec_dict["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    results = decide_arbitration([suspended, other], Capacity({"n1": 8}), {}, NOW)
    assert set(results) == {"d/other"}  # the suspended job gets no share and no status
    # 8 GPUs, 2 per worker: the other job gets every worker the suspended one does not hold
    assert results["d/other"].ceiling == min(4, (8 - held * gpus) // gpus)
