"""Refused creations (ResourceQuota, admission, an invalid template), pass by pass.

Covers: a refused worker pod gives ReplicaFailure=True/FailedCreate naming the pod and the
server's message, one Warning event (not one per retry), the failure counted and timed in
status, the phase and replicas still reported, and a retry refused again posts no event; the
next creation waits an exponential backoff (2 s, 4 s, ... 5 min) and the rendezvous is held
too; a refused template (HTTP 400/422) is
also Degraded=True/InvalidSpec and is not retried for the same generation (Degraded kept);
when creation works again the condition clears and the count is dropped.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from trainscale.operator.api import TrainingJobSpec
from trainscale.operator.controller.reconcile import (
    CreateFailure,
    ReconcilePlan,
    WorkerPod,
    build_create_outcome,
    compute_create_backoff_seconds,
    decide_reconcile,
)

NOW = dt.datetime(2026, 11, 21, 12, 0, 0, tzinfo=dt.UTC)
QUOTA = CreateFailure("Pod", "j-worker-1", 403, "Forbidden",
                      'pods "j-worker-1" is forbidden: exceeded quota: q, requested: pods=1, '
                      "used: pods=2, limited: pods=2")  # fmt: skip
TYPO = CreateFailure("Pod", "j-worker-0", 400, "BadRequest",
                     'Pod in version "v1" cannot be handled as a Pod: strict decoding error: '
                     'unknown field "spec.containers[0].resource"')  # fmt: skip


def running(index: int) -> WorkerPod:
    return WorkerPod(name=f"j-worker-{index}", index=index, phase="Running", ready=True)


def one_pass(spec: TrainingJobSpec, status: dict[str, Any], workers: list[WorkerPod],
             failures: list[CreateFailure], now: dt.datetime = NOW,
             generation: int = 3) -> tuple[ReconcilePlan, dict[str, Any]]:  # fmt: skip
    """Decide, apply the outcome, and return the plan and the status the apiserver then holds."""
    plan = decide_reconcile(spec, "j", generation, status, workers, True, True, now)
    plan = build_create_outcome(plan, status, failures, generation, now)
    merged = {**status, **plan.status}
    return plan, {k: v for k, v in merged.items() if v is not None}


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


@pytest.fixture
def spec(spec_dict: dict[str, Any]) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate({**spec_dict, "replicas": 2})


def test_a_refused_worker_is_a_condition_an_event_and_a_backoff(spec: TrainingJobSpec) -> None:
    plan, status = one_pass(spec, {}, [running(0)], [QUOTA])
    failure = condition(status, "ReplicaFailure")
    assert (failure["status"], failure["reason"]) == ("True", "FailedCreate")
    assert "j-worker-1" in failure["message"] and "exceeded quota: q" in failure["message"]
    assert [e.reason for e in plan.events if e.type == "Warning"] == ["FailedCreate"]
    assert (status["createFailures"], status["lastCreateFailureTime"]) == (
        1,
        "2026-11-21T12:00:00Z",
    )
    assert (status["phase"], status["replicas"]) == ("Scaling", 1)
    assert plan.requeue_after == compute_create_backoff_seconds(1) == 2.0

    # Within the backoff nothing is created, the condition and the count are kept.
    held, status2 = one_pass(spec, status, [running(0)], [], NOW + dt.timedelta(seconds=1))
    assert held.creation_held and held.create_workers == ()
    assert held.requeue_after == pytest.approx(1.0)
    assert condition(status2, "ReplicaFailure")["status"] == "True"
    assert status2["createFailures"] == 1

    # The retry is refused again with the same message: counted, no second event.
    later = NOW + dt.timedelta(seconds=2)
    retry, status3 = one_pass(spec, status2, [running(0)], [QUOTA], later)
    assert retry.create_workers == (1,)
    assert [e for e in retry.events if e.type == "Warning"] == []
    assert retry.events == (), "a refused retry posts nothing (no 'Creating workers' per retry)"
    assert status3["createFailures"] == 2 and retry.requeue_after == 4.0
    assert condition(status3, "ReplicaFailure")["lastTransitionTime"] == "2026-11-21T12:00:00Z"

    # The quota was raised: the pod is created, the condition clears, the count goes.
    ok, status4 = one_pass(spec, status3, [running(0)], [], later + dt.timedelta(seconds=4))
    assert ok.create_workers == (1,)
    cleared = condition(status4, "ReplicaFailure")
    assert (cleared["status"], cleared["reason"]) == ("False", "Created")
    assert "createFailures" not in status4 and "lastCreateFailureTime" not in status4


def test_a_held_back_rendezvous_waits_too(spec: TrainingJobSpec) -> None:
    failure = CreateFailure("Service", "j-rdzv", 403, "Forbidden", "denied by webhook")
    plan = decide_reconcile(spec, "j", 3, {}, [], False, False, NOW)
    plan = build_create_outcome(plan, {}, [failure], 3, NOW)
    status = {k: v for k, v in plan.status.items() if v is not None}
    held = decide_reconcile(spec, "j", 3, status, [], False, False, NOW + dt.timedelta(seconds=1))
    assert not held.create_rendezvous_service and not held.create_rendezvous_pod
    assert held.create_workers == ()
    assert "Service j-rdzv: denied by webhook" in condition(status, "ReplicaFailure")["message"]


def test_an_invalid_template_is_degraded_and_not_retried_for_its_generation(
    spec: TrainingJobSpec,
) -> None:
    plan, status = one_pass(spec, {}, [], [TYPO, TYPO])
    degraded = condition(status, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "InvalidSpec")
    assert 'unknown field "spec.containers[0].resource"' in degraded["message"]
    assert condition(status, "ReplicaFailure")["reason"] == "InvalidSpec"
    assert [e.reason for e in plan.events if e.type == "Warning"] == ["InvalidSpec"]

    # Long after any backoff, the same generation is not retried and stays Degraded.
    much_later = NOW + dt.timedelta(hours=1)
    again, status2 = one_pass(spec, status, [], [], much_later)
    assert again.create_workers == () and again.creation_held
    assert condition(status2, "Degraded")["status"] == "True"
    assert [e for e in again.events if e.type == "Warning"] == []

    # An edited spec (a new generation) is tried at once.
    edited, _ = one_pass(spec, status2, [], [], much_later, generation=4)
    assert edited.create_workers == (0, 1)


def test_create_backoff_doubles_and_caps() -> None:
    assert [compute_create_backoff_seconds(n) for n in (0, 1, 2, 3, 10)] == [0, 2, 4, 8, 300]
