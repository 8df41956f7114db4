"""The reconcile decision: what to create, delete and report for one TrainingJob.

Why this module exists: the operator is level triggered — every pass looks at the job and
its pods as they are and computes the whole next step. That computation is pure (observed
state and the clock in, a :class:`ReconcilePlan` out), so every rule below is unit-tested
without a cluster, and the kopf daemon only observes, calls :func:`decide_reconcile` and
applies the plan.

Rules, in order:

1. A job whose phase is Succeeded or Failed stays so: nothing is recreated; a Failed job's
   remaining workers and the rendezvous pod are deleted to free their GPUs.
2. When a worker has Succeeded and none is still Pending/Running, the job Succeeded.
   Once any worker has Succeeded, no new worker is created.
3. A Failed (or Evicted) worker is deleted and counted in ``status.restarts``; past
   ``maxRestarts`` the job is Failed. Its index is recreated after an exponential backoff.
4. Workers with index >= ``spec.replicas`` are deleted, highest index first (the normal
   delete is graceful: SIGTERM, then the pod's grace period for the final checkpoint).
5. Missing indices below ``spec.replicas`` are created, unless the old pod of that name is
   still terminating or the index is in backoff.
6. The rendezvous Service and pod exist while the job is not finished.
7. A job that cluster arbitration queued (its minReplicas do not fit, or arbitration has not
   admitted it yet) runs nothing: no worker and no rendezvous pod is created, workers that
   exist are deleted gracefully, and the phase is Queued with the arbiter's reason.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trainscale.operator import api
from trainscale.operator.api.reporting import (
    EventSpec,
    build_condition,
    format_time,
    merge_conditions,
    parse_time,
)
from trainscale.operator.controller.builders import (
    LABEL_REPLICA_INDEX,
    build_selector_string,
    build_worker_selector,
)

BACKOFF_BASE_SECONDS = 5.0
BACKOFF_MAX_SECONDS = 300.0


@dataclass(frozen=True)
class WorkerPod:
    """What the reconcile decision needs to know about one worker pod."""

    name: str
    index: int
    phase: str  # Pending, Running, Succeeded, Failed, Unknown
    ready: bool = False
    terminating: bool = False
    unschedulable: bool = False
    reason: str = ""
    message: str = ""

    @property
    def active(self) -> bool:
        """Counts as a replica: exists, not terminating, not finished."""
        return not self.terminating and self.phase in ("Pending", "Running", "Unknown")


@dataclass(frozen=True)
class ReconcilePlan:
    """Everything one reconcile pass should do, in the order it should be applied."""

    create_rendezvous_service: bool = False
    create_rendezvous_pod: bool = False
    delete_rendezvous_pod: bool = False
    delete_workers: tuple[tuple[str, str], ...] = ()  # (pod name, reason)
    create_workers: tuple[int, ...] = ()
    status: dict[str, Any] = field(default_factory=dict)  # merge patch of reconcile-owned fields
    events: tuple[EventSpec, ...] = ()
    requeue_after: float | None = None  # seconds until a backoff expires


def parse_worker_pod(pod: Mapping[str, Any]) -> WorkerPod | None:
    """Summarise a pod dict (as the API returns it); None when it is not one of our workers."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    try:
        index = int(labels[LABEL_REPLICA_INDEX])
    except (KeyError, ValueError):
        return None
    status = pod.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    ready = (conditions.get("Ready") or {}).get("status") == "True"
    scheduled = conditions.get("PodScheduled") or {}
    unschedulable = (
        scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable"
    )
    reason = status.get("reason") or ""
    message = status.get("message") or ""
    if unschedulable:
        message = scheduled.get("message") or message
    for cs in status.get("containerStatuses") or []:
        terminated = (cs.get("state") or {}).get("terminated")
        if terminated and terminated.get("exitCode", 0) != 0 and not message:
            message = (
                f"container {cs.get('name')} exited with code {terminated.get('exitCode')}"
                f" ({terminated.get('reason') or 'Error'})"
            )
    return WorkerPod(
        name=meta.get("name", ""),
        index=index,
        phase=status.get("phase") or "Pending",
        ready=ready,
        terminating=bool(meta.get("deletionTimestamp")),
        unschedulable=unschedulable,
        reason=reason,
        message=message,
    )


def compute_backoff_seconds(restarts: int) -> float:
    """Delay before recreating a failed worker: 5 s, 10 s, 20 s, ... capped at 5 minutes."""
    if restarts <= 0:
        return 0.0
    return float(min(BACKOFF_BASE_SECONDS * 2 ** (restarts - 1), BACKOFF_MAX_SECONDS))


def _failure_event(pod: WorkerPod) -> EventSpec:
    kind = "evicted" if pod.reason == "Evicted" else "failed"
    detail = f": {pod.message}" if pod.message else ""
    return EventSpec("Warning", "WorkerFailed", f"Worker {pod.name} {kind}{detail}")


@dataclass
class _Pass:
    """What one reconcile pass has decided so far; each step below adds to it."""

    spec: api.TrainingJobSpec
    now: dt.datetime
    phase: str
    restarts: int
    last_failure: dt.datetime | None
    finished: bool
    deletes: list[tuple[str, str]] = field(default_factory=list)
    creates: list[int] = field(default_factory=list)
    events: list[EventSpec] = field(default_factory=list)
    requeue: float | None = None

    @property
    def deleting(self) -> set[str]:
        return {name for name, _ in self.deletes}

    def wait(self, seconds: float) -> None:
        """Ask for another pass within ``seconds``."""
        self.requeue = seconds if self.requeue is None else min(self.requeue, seconds)


def decide_reconcile(
    spec: api.TrainingJobSpec,
    job_name: str,
    generation: int | None,
    status: Mapping[str, Any],
    workers: Sequence[WorkerPod],
    rendezvous_pod_exists: bool,
    rendezvous_service_exists: bool,
    now: dt.datetime,
    queued: str | None = None,
) -> ReconcilePlan:
    """Return the next step for one job from what exists now (the rules of the module doc).

    Args:
        spec: the validated spec.
        job_name: ``metadata.name`` of the job.
        generation: ``metadata.generation`` (recorded as observedGeneration).
        status: the job's current ``status`` dict (may be empty).
        workers: the job's worker pods as they are now.
        rendezvous_pod_exists / rendezvous_service_exists: what exists of the rendezvous.
        now: the current time (timezone-aware).
        queued: why cluster arbitration holds the job back (rule 7); None when it runs.
    """
    if queued is not None:
        spec = spec.model_copy(update={"replicas": 0})
    previous_phase = status.get("phase") or api.Phase.PENDING.value
    prev_conditions = list(status.get("conditions") or [])
    step = _Pass(
        spec=spec,
        now=now,
        phase=previous_phase,
        restarts=int(status.get("restarts") or 0),
        last_failure=parse_time(status.get("lastFailureTime")),
        finished=previous_phase in (api.Phase.SUCCEEDED.value, api.Phase.FAILED.value),
    )
    active = [w for w in workers if w.active]
    succeeded = any(w.phase == "Succeeded" for w in workers)

    _replace_failed_workers(step, workers)
    _finish_when_all_succeeded(step, succeeded, active)
    if step.finished:
        _stop_a_failed_job(step, active)
        return _finish_plan(
            spec,
            job_name,
            generation,
            step.phase,
            step.restarts,
            step.last_failure,
            prev_conditions,
            workers,
            step.deletes,
            step.events,
            rendezvous_pod_exists,
            now,
        )
    surplus = _scale_down(step, active)
    if not succeeded:
        _create_missing_workers(step, workers, active, surplus)

    live = [w for w in active if w.name not in step.deleting]
    ready = sum(1 for w in live if w.ready and w.phase == "Running")
    settling = bool(step.creates or step.deletes or any(w.terminating for w in workers))
    step.phase = _decide_phase(spec, len(live) + len(step.creates), ready, settling)
    conditions = _running_conditions(spec, prev_conditions, live, ready, now, generation)
    if queued is not None:
        step.phase = api.Phase.QUEUED.value
        conditions[0] = build_condition(
            prev_conditions, "Ready", "False", "Queued", queued, now, generation
        )
    new_status = _status_patch(
        job_name,
        generation,
        step.phase,
        len(live),
        ready,
        sum(1 for w in live if w.phase != "Running"),
        step.restarts,
        step.last_failure,
        merge_conditions(prev_conditions, conditions),
    )
    if step.phase != previous_phase:
        step.events.append(
            EventSpec("Normal", f"Phase{step.phase}", f"Phase {previous_phase} -> {step.phase}")
        )
    return ReconcilePlan(
        create_rendezvous_service=not rendezvous_service_exists and queued is None,
        create_rendezvous_pod=not rendezvous_pod_exists and queued is None,
        delete_workers=tuple(step.deletes),
        create_workers=tuple(step.creates),
        status=new_status,
        events=tuple(step.events),
        requeue_after=step.requeue,
    )


def _replace_failed_workers(step: _Pass, workers: Sequence[WorkerPod]) -> None:
    """Rule 3: delete and count failed workers; past maxRestarts the job is Failed."""
    failed = [w for w in workers if w.phase == "Failed" and not w.terminating]
    if not failed or step.finished:
        return
    for pod in sorted(failed, key=lambda w: w.index):
        step.restarts += 1
        step.deletes.append((pod.name, "WorkerFailed"))
        step.events.append(_failure_event(pod))
    step.last_failure = step.now
    if step.restarts > step.spec.max_restarts:
        step.phase = api.Phase.FAILED.value
        step.finished = True
        step.events.append(
            EventSpec(
                "Warning",
                "JobFailed",
                f"{step.restarts} worker failures exceed maxRestarts={step.spec.max_restarts}",
            )
        )


def _finish_when_all_succeeded(step: _Pass, succeeded: bool, active: Sequence[WorkerPod]) -> None:
    """Rule 2: a worker Succeeded and none is still Pending/Running: the job Succeeded."""
    if not step.finished and succeeded and not active:
        step.phase = api.Phase.SUCCEEDED.value
        step.finished = True
        step.events.append(
            EventSpec("Normal", "JobSucceeded", "All workers completed successfully")
        )


def _stop_a_failed_job(step: _Pass, active: Sequence[WorkerPod]) -> None:
    """Rule 1: a Failed job's remaining workers are deleted to free their GPUs."""
    if step.phase != api.Phase.FAILED.value:
        return
    deleting = step.deleting
    for pod in sorted(active, key=lambda w: -w.index):
        if pod.name not in deleting:
            step.deletes.append((pod.name, "JobFailed"))


def _scale_down(step: _Pass, active: Sequence[WorkerPod]) -> int:
    """Rule 4: delete workers with index >= spec.replicas, highest first; returns how many."""
    replicas = step.spec.replicas
    surplus = sorted((w for w in active if w.index >= replicas), key=lambda w: -w.index)
    for pod in surplus:
        step.deletes.append((pod.name, "ScaledDown"))
    if surplus:
        step.events.append(
            EventSpec(
                "Normal",
                "ScalingDown",
                f"Scaling down to {replicas} workers: deleting "
                + ", ".join(p.name for p in surplus)
                + " (graceful: SIGTERM, then the pod's grace period)",
            )
        )
    return len(surplus)


def _create_missing_workers(
    step: _Pass, workers: Sequence[WorkerPod], active: Sequence[WorkerPod], surplus: int
) -> None:
    """Rule 5: create missing indices, unless the old pod of that name is still going away or
    the index is in its failure backoff (then ask for a pass when it may be created)."""
    replicas = step.spec.replicas
    backoff_until = None
    if step.last_failure is not None and step.restarts > 0:
        backoff = dt.timedelta(seconds=compute_backoff_seconds(step.restarts))
        backoff_until = step.last_failure + backoff
    deleting = step.deleting
    live = {w.index for w in active if w.name not in deleting}
    name_in_use = {w.index for w in workers}  # incl. terminating and just-deleted pods
    for index in range(replicas):
        if index in live:
            continue
        if index in name_in_use:
            step.wait(1.0)  # the previous pod of this name is still going away
        elif backoff_until is not None and step.now < backoff_until:
            step.wait((backoff_until - step.now).total_seconds())
        else:
            step.creates.append(index)
    if step.creates:
        step.events.append(
            EventSpec(
                "Normal",
                "ScalingUp" if len(active) - surplus < replicas else "Replacing",
                f"Creating workers {', '.join(str(i) for i in step.creates)} "
                f"toward {replicas} replicas",
            )
        )


def _decide_phase(spec: api.TrainingJobSpec, planned: int, ready: int, settling: bool) -> str:
    """Running when every wanted worker is ready and nothing moves; Pending with none ready."""
    if planned == spec.replicas and ready == spec.replicas and not settling:
        return api.Phase.RUNNING.value
    if ready == 0:
        return api.Phase.PENDING.value
    return api.Phase.SCALING.value


def _running_conditions(
    spec: api.TrainingJobSpec,
    prev_conditions: Sequence[Mapping[str, Any]],
    live: Sequence[WorkerPod],
    ready: int,
    now: dt.datetime,
    generation: int | None,
) -> list[api.Condition]:
    """Ready (minReplicas ready), Schedulable (the scheduler's message) and Degraded=False."""
    unschedulable = [w for w in live if w.unschedulable]
    return [
        build_condition(
            prev_conditions,
            "Ready",
            "True" if ready >= spec.min_replicas else "False",
            "MinReplicasReady" if ready >= spec.min_replicas else "WaitingForWorkers",
            f"{ready} of {spec.replicas} workers ready (minReplicas {spec.min_replicas})",
            now,
            generation,
        ),
        build_condition(
            prev_conditions,
            "Schedulable",
            "False" if unschedulable else "True",
            "Unschedulable" if unschedulable else "AllScheduled",
            (
                f"{len(unschedulable)} worker(s) cannot be scheduled: {unschedulable[0].message}"
                if unschedulable
                else "Every worker pod has been scheduled or is being scheduled"
            ),
            now,
            generation,
        ),
        build_condition(prev_conditions, "Degraded", "False", "SpecValid", "", now, generation),
    ]


def _status_patch(
    job_name: str,
    generation: int | None,
    phase: str,
    count: int,
    ready: int,
    pending: int,
    restarts: int,
    last_failure: dt.datetime | None,
    conditions: list[api.Condition],
) -> dict[str, Any]:
    """The merge patch of every status field the reconcile loop owns (None deletes)."""
    return api.TrainingJobStatus(
        phase=api.Phase(phase),
        replicas=count,
        ready_replicas=ready,
        pending_replicas=pending,
        selector=build_selector_string(build_worker_selector(job_name)),
        restarts=restarts,
        last_failure_time=format_time(last_failure) if last_failure else None,
        observed_generation=generation,
        conditions=conditions,
    ).to_merge_patch()


def _finish_plan(
    spec: api.TrainingJobSpec,
    job_name: str,
    generation: int | None,
    phase: str,
    restarts: int,
    last_failure: dt.datetime | None,
    prev_conditions: list[dict[str, Any]],
    workers: Sequence[WorkerPod],
    deletes: list[tuple[str, str]],
    events: list[EventSpec],
    rendezvous_pod_exists: bool,
    now: dt.datetime,
) -> ReconcilePlan:
    deleting = {name for name, _ in deletes}
    remaining = [w for w in workers if w.active and w.name not in deleting]
    ready = sum(1 for w in remaining if w.ready)
    pending = sum(1 for w in remaining if w.phase != "Running")
    succeeded = phase == api.Phase.SUCCEEDED.value
    conditions = [
        build_condition(
            prev_conditions,
            "Ready",
            "False",
            "JobSucceeded" if succeeded else "JobFailed",
            "Training finished" if succeeded else f"Gave up after {restarts} worker failures",
            now,
            generation,
        ),
    ]
    if not succeeded:
        conditions.append(
            build_condition(
                prev_conditions,
                "Degraded",
                "True",
                "TooManyRestarts",
                f"{restarts} worker failures exceed maxRestarts={spec.max_restarts}",
                now,
                generation,
            )
        )
    return ReconcilePlan(
        delete_rendezvous_pod=rendezvous_pod_exists,
        delete_workers=tuple(deletes),
        status=_status_patch(
            job_name,
            generation,
            phase,
            len(remaining),
            ready,
            pending,
            restarts,
            last_failure,
            merge_conditions(prev_conditions, conditions),
        ),
        events=tuple(events),
    )


def build_invalid_spec_status(
    status: Mapping[str, Any], message: str, generation: int | None, now: dt.datetime
) -> dict[str, Any]:
    """Status merge patch for a spec the models reject: Degraded=True, reason InvalidSpec."""
    prev = list(status.get("conditions") or [])
    degraded = build_condition(prev, "Degraded", "True", "InvalidSpec", message, now, generation)
    return api.TrainingJobStatus(
        observed_generation=generation, conditions=merge_conditions(prev, [degraded])
    ).to_merge_patch()


def describe_validation_errors(errors: Iterable[Mapping[str, Any]], prefix: str = "spec") -> str:
    """One line per pydantic error, naming the field by its CRD path (camelCase) and the value.

    ``errors`` is ``ValidationError.errors()``.
    """
    lines = []
    for err in errors:
        loc = ".".join(str(part) for part in err.get("loc", ()) if part != "__root__")
        path = f"{prefix}.{loc}" if loc else prefix
        msg = str(err.get("msg", "invalid"))
        msg = msg.removeprefix("Value error, ")
        if "input" in err and loc and err.get("type") not in ("missing",):
            value = err["input"]
            if not isinstance(value, dict | list):
                msg = f"{msg} (got {value!r})"
        lines.append(f"{path}: {msg}")
    return "; ".join(lines)
