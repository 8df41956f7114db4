"""Turns a policy :class:`~trainscale.operator.autoscaling.policy.Recommendation` into what the operator writes.

Why this module exists: :func:`~trainscale.operator.autoscaling.policy.recommend` says how many workers
a job should have; the operator must also say so to people — the new ``spec.replicas``, the
``status.autoscaling`` block (latest observation, fitted model, last decisions), the
``MetricsUnavailable`` and ``ScalingLimited`` conditions, an Event per rescale — and to
Prometheus (a decision label). That translation is pure (recommendation, observation and
clock in; an :class:`AutoscalePlan` out), so it is unit-tested here and the kopf daemon only
observes, decides and applies.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trainscale.operator import api
from trainscale.operator.api.models import METRICS_UNAVAILABLE, SCALING_LIMITED
from trainscale.operator.api.reporting import (
    EventSpec,
    build_condition,
    format_time,
    merge_conditions,
    replace_map,
)
from trainscale.operator.autoscaling.policy import (
    LimitedBy,
    Observation,
    Recommendation,
    compute_cost_per_hour,
)

MAX_DECISIONS_KEPT = 10


@dataclass(frozen=True)
class AutoscalePlan:
    """What one autoscaling pass writes.

    Attributes:
        replicas: The new ``spec.replicas``, or None to leave it.
        status: Merge patch of the autoscaler-owned status fields.
        event: The Event to post (on a rescale, or when the autoscaler found the job's
            curve changed and forgot its earlier measurements), if any.
        direction: ``up``, ``down`` or ``hold`` (metric label).
        reason_class: A small fixed vocabulary for the decision metric's label.
    """

    replicas: int | None
    status: dict[str, Any]
    event: EventSpec | None
    direction: str
    reason_class: str


def classify_reason(rec: Recommendation) -> str:
    """Bounded label for the decisions metric: stale, explore, bound, budget, unschedulable, objective."""
    if rec.metrics_stale:
        return "stale"
    if rec.limited_by is not None:
        return LimitedBy(rec.limited_by).value
    if rec.exploring:
        return "explore"
    return "objective"


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def decide_autoscale(
    spec: api.TrainingJobSpec,
    status: Mapping[str, Any],
    observation: Observation | None,
    errors: Sequence[str],
    rec: Recommendation,
    now: dt.datetime,
    generation: int | None = None,
    memory: Mapping[str, Any] | None = None,
) -> AutoscalePlan:
    """Return what to write after the policy decided ``rec`` for this job.

    Args:
        spec: The job's validated spec (autoscaling enabled).
        status: The job's current status dict (its conditions and previous decisions).
        observation: This pass's observation, None when no worker was running.
        errors: Prometheus query failures of this pass (empty when it answered).
        rec: The policy's recommendation for this pass.
        now: The current time (timezone-aware).
        generation: ``metadata.generation`` for the conditions.
        memory: The autoscaler's compact memory (``AutoscalerMemory.to_dict()``) to keep in
            ``status.autoscaling.memory``; None keeps what is there.
    """
    previous = dict(status.get("autoscaling") or {})
    decisions = [api.Decision.model_validate(d) for d in previous.get("decisions") or []]
    event: EventSpec | None = None
    new_replicas: int | None = None
    direction = rec.direction
    if rec.replicas != spec.replicas:
        new_replicas = rec.replicas
        decisions.append(
            api.Decision(
                time=format_time(now),
                from_replicas=spec.replicas,
                to_replicas=rec.replicas,
                reason=rec.reason,
            )
        )
        verb = "up" if rec.replicas > spec.replicas else "down"
        event = EventSpec(
            "Normal",
            "AutoscaledUp" if verb == "up" else "AutoscaledDown",
            f"{spec.replicas} -> {rec.replicas} workers: {rec.reason}",
        )
    elif rec.forgotten:
        # a hold that forgot what the job measured on its old curve: where users look
        event = EventSpec("Normal", "CurveChanged", f"at {spec.replicas} workers: {rec.reason}")

    gpu = observation.gpu_utilization if observation else None
    throughput = observation.samples_per_second if observation else None
    cost = compute_cost_per_hour(spec, spec.replicas if new_replicas is None else new_replicas)
    autoscaling = api.AutoscalingStatus(
        gpu_utilization=_round(gpu, 4),
        throughput=_round(throughput, 3),
        efficiency=_round(rec.efficiency, 4),
        cost_per_hour=round(cost, 4),
        recommended_replicas=rec.target,
        time_left_seconds=(None if rec.time_left_seconds is None else round(rec.time_left_seconds)),
        restart_cost_seconds=_round(rec.restart_cost_seconds, 1),
        restart_cost_source=rec.restart_cost_source.value,
        reason=rec.reason,
        step=rec.step or None,
        model=rec.model.as_status() if rec.model is not None else {},
        last_observation_time=(
            format_time(now)
            if observation is not None and (gpu is not None or throughput is not None)
            else previous.get("lastObservationTime")
        ),
        last_scale_time=(
            format_time(now) if new_replicas is not None else previous.get("lastScaleTime")
        ),
        decisions=decisions[-MAX_DECISIONS_KEPT:],
        memory=(
            api.AutoscalerMemoryStatus.model_validate(memory)
            if memory is not None
            else previous.get("memory")
        ),
    )

    prev_conditions = list(status.get("conditions") or [])
    no_data = gpu is None and throughput is None
    metrics_cond: tuple[api.ConditionStatus, str, str]
    if errors:
        metrics_cond = ("True", "PrometheusError", "; ".join(errors))
    elif rec.metrics_stale or no_data:
        metrics_cond = ("True", "NoFreshMetrics", rec.reason)
    else:
        metrics_cond = ("False", "MetricsFresh", "GPU utilization or throughput observed")
    limited: tuple[api.ConditionStatus, str, str]
    if rec.limited_by is not None:
        limited = ("True", classify_reason(rec).capitalize(), rec.reason)
    else:
        limited = ("False", "WithinLimits", "")
    conditions = [
        build_condition(prev_conditions, type_, state, reason, message, now, generation)
        for type_, (state, reason, message) in (
            (METRICS_UNAVAILABLE, metrics_cond),
            (SCALING_LIMITED, limited),
        )
    ]
    patch = api.TrainingJobStatus(
        gpu_utilization=_round(gpu, 3),
        throughput=_round(throughput, 1),
        autoscaling=autoscaling,
        conditions=merge_conditions(prev_conditions, conditions),
    ).to_merge_patch()
    return AutoscalePlan(
        replicas=new_replicas,
        # the model's parameters written whole: a forgotten model or a new source's keys
        # replace the old ones instead of sitting beside them
        status=replace_map(patch, status, ("autoscaling", "model")),
        event=event,
        direction=direction,
        reason_class=classify_reason(rec),
    )


def build_settling_status(reason: str) -> dict[str, Any]:
    """Merge patch for a pass that holds while the worker count settles: only the reason."""
    return api.TrainingJobStatus(autoscaling=api.AutoscalingStatus(reason=reason)).to_merge_patch()
