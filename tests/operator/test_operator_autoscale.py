"""What the operator writes after the policy decides: spec, status, conditions, events.

Covers: a rescale sets the new replicas, records the decision (bounded history) and posts an
Event with the policy's reason; a hold writes no replicas and no event; the latest
observation, model, efficiency and cost appear in status; MetricsUnavailable follows
Prometheus errors and missing data; ScalingLimited follows the policy's limit; metric labels
stay within a small vocabulary.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from trainscale.operator.api import TrainingJobSpec
from trainscale.operator.api.reporting import format_time
from trainscale.operator.autoscaling.policy import AWAIT_WORLD_SECONDS as AWAIT
from trainscale.operator.autoscaling.policy import LimitedBy, Observation, Recommendation
from trainscale.operator.autoscaling.status import (
    MAX_DECISIONS_KEPT,
    classify_reason,
    decide_autoscale,
)
from trainscale.operator.daemons.autoscale import JobLoop, settling_reason

NOW = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def spec(spec_dict: dict[str, Any]) -> TrainingJobSpec:
    spec_dict["autoscaling"] = {"enabled": True, "costPerGpuHour": 2.5}
    return TrainingJobSpec.model_validate(spec_dict)  # 2 replicas x 2 GPUs


def rec(replicas: int, current: int = 2, **kw: Any) -> Recommendation:
    return Recommendation(
        replicas=replicas, target=replicas, current_replicas=current, reason="why", **kw
    )


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


OBS = Observation(timestamp=1.0, replicas=2, gpu_utilization=0.8123, samples_per_second=412.345)


def test_rescale_writes_replicas_decision_and_event(spec: TrainingJobSpec) -> None:
    plan = decide_autoscale(spec, {}, OBS, (), rec(4, efficiency=0.91), NOW)
    assert plan.replicas == 4
    assert plan.direction == "up" and plan.reason_class == "objective"
    assert plan.event is not None and plan.event.reason == "AutoscaledUp"
    assert plan.event.message == "2 -> 4 workers: why"
    auto = plan.status["autoscaling"]
    assert auto["decisions"] == [
        {"time": "2026-11-21T12:00:00Z", "fromReplicas": 2, "toReplicas": 4, "reason": "why"}
    ]
    assert auto["lastScaleTime"] == "2026-11-21T12:00:00Z"
    assert auto["costPerHour"] == 4 * 2 * 2.5, "cost of the new size"
    assert auto["efficiency"] == 0.91
    assert auto["step"] is None  # a hand-made recommendation names no step
    assert (
        decide_autoscale(spec, {}, OBS, (), rec(4, step="confidence"), NOW).status["autoscaling"][
            "step"
        ]
        == "confidence"
    )
    assert plan.status["gpuUtilization"] == 0.812 and plan.status["throughput"] == 412.3


def earlier_decision(n: int) -> dict[str, Any]:
    """A decision as an earlier pass wrote it into status (distinct per ``n``)."""
    return {"time": "2026-11-21T11:00:00Z", "fromReplicas": n, "toReplicas": n + 1, "reason": "r"}


def test_hold_writes_no_replicas_and_no_event(spec: TrainingJobSpec) -> None:
    previous = {
        "autoscaling": {"lastScaleTime": "2026-11-21T11:00:00Z", "decisions": [earlier_decision(1)]}
    }
    plan = decide_autoscale(spec, previous, OBS, (), rec(2), NOW)
    assert plan.replicas is None and plan.event is None and plan.direction == "hold"
    assert plan.status["autoscaling"]["lastScaleTime"] == "2026-11-21T11:00:00Z"
    assert plan.status["autoscaling"]["decisions"] == [earlier_decision(1)]
    assert plan.status["autoscaling"]["costPerHour"] == 2 * 2 * 2.5


def test_a_hold_that_forgot_a_changed_curve_says_so_in_an_event(spec: TrainingJobSpec) -> None:
    plan = decide_autoscale(spec, {}, OBS, (), rec(2, forgotten=140), NOW)
    assert plan.replicas is None and plan.direction == "hold"
    assert plan.event is not None and plan.event.reason == "CurveChanged"
    assert plan.event.message == "at 2 workers: why"
    # a move that forgot says so in its own event (its reason carries the note)
    moved = decide_autoscale(spec, {}, OBS, (), rec(4, forgotten=140), NOW)
    assert moved.event is not None and moved.event.reason == "AutoscaledUp"


def test_decision_history_is_bounded(spec: TrainingJobSpec) -> None:
    previous = {
        "autoscaling": {"decisions": [earlier_decision(i) for i in range(MAX_DECISIONS_KEPT)]}
    }
    plan = decide_autoscale(spec, previous, OBS, (), rec(1), NOW)
    decisions = plan.status["autoscaling"]["decisions"]
    assert len(decisions) == MAX_DECISIONS_KEPT
    assert decisions[-1]["toReplicas"] == 1 and decisions[0] == earlier_decision(1)
    assert plan.event is not None and plan.event.reason == "AutoscaledDown"


def test_prometheus_errors_set_metrics_unavailable(spec: TrainingJobSpec) -> None:
    empty = Observation(timestamp=1.0, replicas=2, gpu_utilization=None, samples_per_second=None)
    plan = decide_autoscale(
        spec, {}, empty, ("gpu utilization: connection refused",), rec(2, metrics_stale=True), NOW
    )
    cond = conditions(plan.status)["MetricsUnavailable"]
    assert (cond["status"], cond["reason"]) == ("True", "PrometheusError")
    assert "connection refused" in cond["message"]
    assert plan.reason_class == "stale"
    assert plan.status["gpuUtilization"] is None


def test_no_data_without_errors_is_also_unavailable(spec: TrainingJobSpec) -> None:
    plan = decide_autoscale(spec, {}, None, (), rec(2, metrics_stale=True), NOW)
    cond = conditions(plan.status)["MetricsUnavailable"]
    assert (cond["status"], cond["reason"]) == ("True", "NoFreshMetrics")


def test_fresh_metrics_clear_the_condition_and_keep_others(spec: TrainingJobSpec) -> None:
    status = {
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "MinReplicasReady",
                "message": "",
                "lastTransitionTime": "2026-11-21T10:00:00Z",
            },
            {
                "type": "MetricsUnavailable",
                "status": "True",
                "reason": "PrometheusError",
                "message": "",
                "lastTransitionTime": "2026-11-21T10:00:00Z",
            },
        ]
    }
    plan = decide_autoscale(spec, status, OBS, (), rec(2), NOW)
    conds = conditions(plan.status)
    assert conds["Ready"]["status"] == "True", "the reconcile loop's conditions are kept"
    assert conds["MetricsUnavailable"]["status"] == "False"
    assert conds["MetricsUnavailable"]["lastTransitionTime"] == "2026-11-21T12:00:00Z"


@pytest.mark.parametrize(
    ("limited_by", "reason"),
    [
        (LimitedBy.BOUND, "Bound"),
        (LimitedBy.BUDGET, "Budget"),
        (LimitedBy.UNSCHEDULABLE, "Unschedulable"),
        (LimitedBy.CEILING, "Ceiling"),
    ],
)
def test_scaling_limited_names_the_limit(
    spec: TrainingJobSpec, limited_by: LimitedBy, reason: str
) -> None:
    plan = decide_autoscale(spec, {}, OBS, (), rec(2, limited_by=limited_by), NOW)
    cond = conditions(plan.status)["ScalingLimited"]
    assert (cond["status"], cond["reason"], cond["message"]) == ("True", reason, "why")
    assert plan.reason_class == limited_by.value


def test_reason_classes_are_a_small_vocabulary() -> None:
    assert classify_reason(rec(3, exploring=True)) == "explore"
    assert classify_reason(rec(3)) == "objective"
    assert classify_reason(rec(2, metrics_stale=True, limited_by=LimitedBy.BOUND)) == "stale"


def test_memory_is_written_with_each_status_patch_and_kept_otherwise(
    spec: TrainingJobSpec,
) -> None:
    memory = {"points": [{"replicas": 2, "nodes": 1, "samples": 6, "gpuUtilization": 0.8}]}
    plan = decide_autoscale(spec, {}, OBS, (), rec(2), NOW, memory=memory)
    assert plan.status["autoscaling"]["memory"] == memory
    kept = decide_autoscale(spec, {"autoscaling": {"memory": memory}}, OBS, (), rec(2), NOW)
    assert kept.status["autoscaling"]["memory"] == memory


def test_daemon_restores_the_autoscaler_from_status_memory(spec: TrainingJobSpec) -> None:
    from trainscale.operator.daemons.autoscale import restore_autoscaler

    memory = {
        "points": [
            {"replicas": 2, "nodes": 1, "samples": 20, "samplesPerSecond": 200.0},
            {"replicas": 4, "nodes": 1, "samples": 20, "samplesPerSecond": 380.0},
        ],
        "restartCostSeconds": 42.0,
        "leftDownwards": [8],
    }
    autoscaler = restore_autoscaler(spec, {"autoscaling": {"memory": memory}})
    rec = autoscaler.decide(
        [Observation(10_000.0, 2, None, 200.0)], current_replicas=2, now=10_000.0
    )
    assert rec.model is not None and rec.model.counts == (2, 4)
    assert rec.restart_cost_seconds == 42.0
    assert autoscaler.memory().left_downwards == (8,)
    assert restore_autoscaler(spec, {}).predict_throughput(2) is None


@pytest.mark.parametrize(
    ("passes", "settled"),
    [
        pytest.param([(2, 2.0, 0), (2, 2.0, 5)], 5, id="steady"),
        pytest.param([(1, 1.0, 0), (2, 1.0, 5), (2, 1.0, 8)], 0, id="pod-runs-old-world"),
        pytest.param([(1, 1.0, 0), (2, 1.0, 5), (2, 2.0, 9), (2, 2.0, 12)], 3, id="new-world"),
        pytest.param([(3, 3.0, 0), (2, 3.0, 5), (2, 2.0, 12), (2, 2.0, 13)], 1, id="scale-down"),
        pytest.param([(2, 2.0, 0), (2, None, 5), (2, 2.0, 6)], 6, id="world-unreported"),
        pytest.param([(2, None, 0), (1, None, 5), (1, None, 7)], 2, id="no-world-gauge"),
        pytest.param([(2, 2.0, 0), (3, 3.0, 4), (3, 3.0, 6)], 2, id="both-in-one-pass"),
        pytest.param([(2, 2.0, 0), (1, 2.0, 7), (1, 1.0, 20), (2, 1.0, 25)], 0, id="pod-lost"),
        # a replaced pod rejoins a world of the same size: no change to wait for forever
        pytest.param(
            [(2, 2.0, 0), (1, 2.0, 7), (2, 2.0, 9), (2, 2.0, 9 + AWAIT + 4)],
            4,
            id="same-size-world",
        ),
    ],
)
def test_settling_waits_for_the_new_world(
    passes: list[tuple[int, float | None, float]], settled: float
) -> None:
    """(running pods, reported world size, time) per pass -> seconds settled at the last:
    a new pod count counts once the workers train in a new world, not when the pods run."""
    loop = JobLoop()
    for running, world, now in passes:
        loop.observe_workers(running, world, now)
    assert loop.settled_seconds(passes[-1][2]) == settled


def test_the_settling_reason_stays_the_same_from_pass_to_pass(spec: TrainingJobSpec) -> None:
    """Each settling pass writes its reason; one that changed every pass ("for 30 s of ...")
    made every write a change of the job, which the apiserver sent to every watcher and which
    woke the job's other loop. It changes when the workers or their world do."""
    loop = JobLoop()
    settle = spec.autoscaling.settle_seconds
    reasons = []
    for running, world, now in [(1, 1.0, 1000), (1, 1.0, 1030), (2, 1.0, 1060), (2, 1.0, 1090),
                                (2, 2.0, 1100), (2, 2.0, 1130)]:  # fmt: skip
        loop.observe_workers(running, world, now)
        reasons.append(settling_reason(loop, spec))
    assert reasons[0] == reasons[1] and reasons[2] == reasons[3] and reasons[4] == reasons[5]
    assert len(set(reasons)) == 3, reasons
    moment = dt.datetime.fromtimestamp(1000 + settle, dt.UTC)
    assert reasons[0].startswith("settling: 1 workers running, training in a world of 1; ")
    assert f"measured from {format_time(moment)} (settleSeconds {settle})" in reasons[0]
    awaited = dt.datetime.fromtimestamp(1060 + AWAIT + settle, dt.UTC)
    assert (
        f"waiting for their new world, measured from {format_time(awaited)} at the latest"
        in (reasons[2])
    )
    assert format_time(dt.datetime.fromtimestamp(1100 + settle, dt.UTC)) in reasons[4]
    assert reasons[4].endswith(f"holding at {spec.replicas}")
