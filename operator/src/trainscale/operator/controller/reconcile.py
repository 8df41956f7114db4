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
   still terminating or the index is in backoff; for a job cluster arbitration admitted,
   none at or above its ceiling (``status.arbitration.ceiling``) that no worker runs above
   already: the autoscaler lowers ``spec.replicas`` to the ceiling in its own pass, and a
   new job's workers past it were created Pending only to be deleted a moment later.
6. The rendezvous Service and pod exist while the job is not finished.
8. When the apiserver refuses to create a worker pod, the rendezvous pod or its Service
   (ResourceQuota, an admission webhook, Pod Security), the refusal is reported by
   :func:`build_create_outcome`: condition ``ReplicaFailure=True`` (reason ``FailedCreate``)
   with the server's message, one ``FailedCreate`` Warning per new message, and nothing is
   created again before an exponential backoff from ``status.lastCreateFailureTime``. A
   refusal of the template itself (HTTP 400/422: an unknown field under strict field
   validation, an invalid pod) is ``Degraded=True/InvalidSpec`` too, and is not retried until
   the spec changes (a new generation). The condition clears when creation works again.
7. A job that cluster arbitration queued (its minReplicas do not fit, or arbitration has not
   admitted it yet) runs nothing: no worker and no rendezvous pod is created, workers that
   exist are deleted gracefully, and the phase is Queued with the arbiter's reason.
9. A suspended job (``spec.suspend``, not finished) runs nothing: its workers are deleted
   gracefully (SIGTERM, then the pod's grace period: the trainer checkpoints), the rendezvous
   pod once no worker pod is left (the Service stays), nothing is created, the phase is
   Suspended with ``Suspended=True`` (reason ``JobSuspended``) and ``Ready=False``, and its
   admission by cluster arbitration is given up (``status.arbitration`` removed: on resume an
   arbitrated job waits for a new one). Suspension wins over queueing. Un-suspended, the
   rules above recreate ``spec.replicas`` workers, which resume from the checkpoint;
   ``Suspended=False`` (reason ``JobResumed``) and a ``Resumed`` event say so.
10. A worker created while cluster arbitration has planned the job's nodes
    (``status.arbitration.preferredNodes``) prefers its planned node
    (:func:`~trainscale.operator.api.planned_nodes.assign_planned_nodes`; not with
    ``placement.packWorkers: false``), so the scheduler puts it where the arbiter counted it.
11. While the job resizes (workers deleted by rule 4, or indices missing up to
    ``spec.replicas``: every worker restarts anyway), a running worker on a node where the
    plan holds fewer of the job's workers than run there is deleted gracefully too, and
    rule 5 recreates it on a node the plan has room on: arbitration consolidates a job that
    spans nodes though one holds it (its step 8), for no restart the job would not pay
    anyway. The lowest indexes keep their slots; a worker created with a planned node it did
    not get (the scheduler put it elsewhere) is not moved again, nor more workers than the
    plan has room for elsewhere; not with ``placement.packWorkers: false``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
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
CREATE_BACKOFF_BASE_SECONDS = 2.0
REPLICA_FAILURE = "ReplicaFailure"


# The object's bookkeeping: it changes with every write and says nothing a pass decides on.
_BOOKKEEPING = ("resourceVersion", "managedFields")


def reconcile_inputs(job: Mapping[str, Any]) -> str:
    """A digest of everything in a job that a reconcile pass may read: a watch event of the
    job whose digest is the last one's changed nothing the pass decides on, and need not
    wake it (the pass reads the job afresh anyway).

    Left out: the object's bookkeeping (``resourceVersion``, ``managedFields``) and what only
    the autoscale loop writes and reads (``api.AUTOSCALER_STATUS_FIELDS`` and the conditions
    ``api.AUTOSCALER_CONDITIONS``). Its passes write them every ``intervalSeconds`` (a new
    throughput, a new observation time), and each write woke a reconcile pass of four
    requests that found nothing to do. Everything else counts, spec and metadata included.
    """
    metadata = {k: v for k, v in (job.get("metadata") or {}).items() if k not in _BOOKKEEPING}
    status = {
        k: v for k, v in (job.get("status") or {}).items() if k not in api.AUTOSCALER_STATUS_FIELDS
    }
    if "conditions" in status:
        status["conditions"] = [
            c for c in status["conditions"] or [] if c.get("type") not in api.AUTOSCALER_CONDITIONS
        ]
    inputs = {"metadata": metadata, "spec": job.get("spec"), "status": status}
    text = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


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
    node: str | None = None  # spec.nodeName once bound
    planned_node: str | None = None  # the node arbitration planned for it, when one was

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
    # (index, node) for the created workers that have a planned node (rule 10)
    planned_nodes: tuple[tuple[int, str], ...] = ()
    status: dict[str, Any] = field(default_factory=dict)  # merge patch of reconcile-owned fields
    events: tuple[EventSpec, ...] = ()
    requeue_after: float | None = None  # seconds until a backoff expires
    creation_held: bool = False  # something is missing but a refused creation's backoff holds it


@dataclass(frozen=True)
class CreateFailure:
    """The apiserver refused to create one of the job's objects (a pass's apply outcome)."""

    kind: str  # Pod or Service
    name: str
    code: int  # HTTP status
    reason: str  # the server's Status reason: Forbidden, Invalid, BadRequest, ...
    message: str  # the server's message (names the quota, webhook or field)

    @property
    def invalid_spec(self) -> bool:
        """The object itself is wrong (retrying the same template cannot help)."""
        return self.code in (400, 422)


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
        node=(pod.get("spec") or {}).get("nodeName") or None,
        planned_node=(meta.get("annotations") or {}).get(api.ANNOTATION_PLANNED_NODE) or None,
    )


WORKER_POD_METADATA_FIELDS = ("name", "deletionTimestamp")
"""What the readers of a job's worker pods take from a pod's metadata (besides some labels
and the planned node annotation): :func:`parse_worker_pod`,
:func:`~trainscale.operator.autoscaling.observed_placement.node_of_pod`, and the listing's
own check of the worker selector."""
WORKER_POD_LABELS = (*build_worker_selector(""), LABEL_REPLICA_INDEX)
"""The labels they read: the worker selector's and the replica index."""
WORKER_POD_STATUS_FIELDS = ("phase", "reason", "message")
"""... and from its status, besides two of its conditions and its containers' exits."""
WORKER_POD_CONDITIONS = ("Ready", "PodScheduled")
"""The pod conditions those readers look at, of which they read :data:`CONDITION_FIELDS`."""
CONDITION_FIELDS = ("type", "status", "reason", "message")


def trim_worker_pod(pod: Mapping[str, Any]) -> dict[str, Any]:
    """A worker pod as its readers see it (:func:`parse_worker_pod`,
    :func:`~trainscale.operator.autoscaling.observed_placement.node_of_pod`): its
    metadata's :data:`WORKER_POD_METADATA_FIELDS`, :data:`WORKER_POD_LABELS` and planned
    node annotation, its spec's ``nodeName``, its status's
    :data:`WORKER_POD_STATUS_FIELDS`, its :data:`WORKER_POD_CONDITIONS` (their
    :data:`CONDITION_FIELDS`), and the name and ``terminated`` state of each container that
    exited.

    The operator keeps each job's last listing of its worker pods between passes
    (:class:`~trainscale.operator.daemons.common.WorkerPodLists`): a running worker as a
    LIST returns it is 21.6-24.7 KiB of Python objects for the examples' jobs (without
    managed fields), trimmed 1.9 KiB (``benchmarks/held_pod_size.py``)."""
    meta = pod.get("metadata") or {}
    out_meta: dict[str, Any] = {k: meta[k] for k in WORKER_POD_METADATA_FIELDS if k in meta}
    labels = meta.get("labels") or {}
    out_meta["labels"] = {k: labels[k] for k in WORKER_POD_LABELS if k in labels}
    planned = (meta.get("annotations") or {}).get(api.ANNOTATION_PLANNED_NODE)
    if planned is not None:
        out_meta["annotations"] = {api.ANNOTATION_PLANNED_NODE: planned}
    out: dict[str, Any] = {"metadata": out_meta}
    node = (pod.get("spec") or {}).get("nodeName")
    out["spec"] = {"nodeName": node} if node is not None else {}
    status = pod.get("status")
    if isinstance(status, Mapping):
        kept: dict[str, Any] = {k: status[k] for k in WORKER_POD_STATUS_FIELDS if k in status}
        conditions = [
            {k: c[k] for k in CONDITION_FIELDS if k in c}
            for c in status.get("conditions") or []
            if isinstance(c, Mapping) and c.get("type") in WORKER_POD_CONDITIONS
        ]
        if conditions:
            kept["conditions"] = conditions
        exited = [
            {"name": cs.get("name"), "state": {"terminated": cs["state"]["terminated"]}}
            for cs in status.get("containerStatuses") or []
            if isinstance(cs, Mapping) and isinstance(cs.get("state"), Mapping)
            and cs["state"].get("terminated")
        ]  # fmt: skip
        if exited:
            kept["containerStatuses"] = exited
        out["status"] = kept
    return out


def compute_backoff_seconds(restarts: int) -> float:
    """Delay before recreating a failed worker: 5 s, 10 s, 20 s, ... capped at 5 minutes."""
    if restarts <= 0:
        return 0.0
    return float(min(BACKOFF_BASE_SECONDS * 2 ** (restarts - 1), BACKOFF_MAX_SECONDS))


def compute_create_backoff_seconds(failures: int) -> float:
    """Delay after the n-th refused creation in a row: 2 s, 4 s, 8 s, ... capped at 5 minutes."""
    if failures <= 0:
        return 0.0
    return float(min(CREATE_BACKOFF_BASE_SECONDS * 2 ** (failures - 1), BACKOFF_MAX_SECONDS))


def _replica_failure(conditions: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    return next((c for c in conditions if c.get("type") == REPLICA_FAILURE), None)


def decide_creation_hold(
    status: Mapping[str, Any], generation: int | None, now: dt.datetime
) -> float | None:
    """Seconds creation must still wait after refused creations (rule 8); None when it may go.

    An ``InvalidSpec`` refusal of this very generation holds until the spec changes (returned
    as the full backoff cap: the edit of the spec wakes the job sooner).
    """
    failure = _replica_failure(status.get("conditions") or [])
    if failure is None or failure.get("status") != "True":
        return None
    if failure.get("reason") == "InvalidSpec" and failure.get("observedGeneration") == generation:
        return BACKOFF_MAX_SECONDS
    last = parse_time(status.get("lastCreateFailureTime"))
    count = int(status.get("createFailures") or 0)
    if last is None or count <= 0:
        return None
    until = last + dt.timedelta(seconds=compute_create_backoff_seconds(count))
    return (until - now).total_seconds() if now < until else None


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
    ceiling: int | None = None,
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
        ceiling: the most workers cluster arbitration grants the job (rule 5); None: no
            ceiling.
    """
    if queued is not None:
        spec = spec.model_copy(update={"replicas": 0})
    elif ceiling is not None and spec.replicas > ceiling:
        above = max((w.index + 1 for w in workers if w.active), default=0)
        spec = spec.model_copy(update={"replicas": max(ceiling, min(spec.replicas, above))})
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
    hold = decide_creation_hold(status, generation, now)

    _replace_failed_workers(step, workers)
    _finish_when_all_succeeded(step, succeeded, active)
    if spec.suspend and not step.finished:
        return _suspend(step, job_name, generation, status, workers, rendezvous_pod_exists)
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
    if not succeeded and hold is None:
        _move_to_planned_nodes(step, status, active, surplus)
        _create_missing_workers(step, workers, active, surplus)
    missing_rendezvous = queued is None and not (
        rendezvous_pod_exists and rendezvous_service_exists
    )
    held = hold is not None and (
        missing_rendezvous or len([w for w in active if w.index < spec.replicas]) < spec.replicas
    )
    if held:
        assert hold is not None
        step.wait(hold)

    live = [w for w in active if w.name not in step.deleting]
    ready = sum(1 for w in live if w.ready and w.phase == "Running")
    settling = bool(step.creates or step.deletes or any(w.terminating for w in workers))
    step.phase = _decide_phase(spec, len(live) + len(step.creates), ready, settling)
    conditions = _running_conditions(spec, prev_conditions, live, ready, now, generation)
    failure = _replica_failure(prev_conditions)
    if held and failure is not None and failure.get("reason") == "InvalidSpec":
        # Keep Degraded=True/InvalidSpec while the refused template is not retried.
        conditions = [c for c in conditions if c.type != "Degraded"]
    if queued is not None:
        step.phase = api.Phase.QUEUED.value
        conditions[0] = build_condition(
            prev_conditions, "Ready", "False", "Queued", queued, now, generation
        )
    conditions.extend(_resumed(step, prev_conditions, generation))
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
        create_failures=status.get("createFailures"),
        last_create_failure_time=status.get("lastCreateFailureTime"),
    )
    if step.phase != previous_phase:
        step.events.append(
            EventSpec("Normal", f"Phase{step.phase}", f"Phase {previous_phase} -> {step.phase}")
        )
    return ReconcilePlan(
        create_rendezvous_service=not rendezvous_service_exists and queued is None and not held,
        create_rendezvous_pod=not rendezvous_pod_exists and queued is None and not held,
        delete_workers=tuple(step.deletes),
        create_workers=tuple(step.creates),
        planned_nodes=_plan_new_workers(spec, status, live, step.creates, queued),
        status=new_status,
        events=tuple(step.events),
        requeue_after=step.requeue,
        creation_held=held,
    )


# The phase, the condition type and the workers' deletion reason of a suspended job.
SUSPENDED = api.Phase.SUSPENDED.value


def _suspend(
    step: _Pass,
    job_name: str,
    generation: int | None,
    status: Mapping[str, Any],
    workers: Sequence[WorkerPod],
    rendezvous_pod_exists: bool,
) -> ReconcilePlan:
    """Rule 9: delete the workers gracefully, then the rendezvous pod; phase Suspended."""
    deleting = step.deleting
    stopping = sorted(
        (w for w in workers if w.active and w.name not in deleting), key=lambda w: -w.index
    )
    step.deletes.extend((pod.name, SUSPENDED) for pod in stopping)
    if stopping:
        step.events.append(
            EventSpec(
                "Normal",
                "Suspending",
                "spec.suspend is true: deleting " + ", ".join(p.name for p in stopping)
                + " (graceful: SIGTERM, the trainer writes a checkpoint)",
            )
        )  # fmt: skip
    if workers:
        step.wait(5.0)  # the rendezvous pod goes once every worker pod is gone
    prev_conditions = list(status.get("conditions") or [])
    message = (
        "spec.suspend is true: no workers run; set it to false to resume from the last checkpoint"
    )
    conditions = [
        build_condition(
            prev_conditions, SUSPENDED, "True", "JobSuspended", message, step.now, generation
        ),
        build_condition(
            prev_conditions, "Ready", "False", SUSPENDED, message, step.now, generation
        ),
    ]
    previous_phase = status.get("phase") or api.Phase.PENDING.value
    if previous_phase != SUSPENDED:
        step.events.append(
            EventSpec("Normal", f"Phase{SUSPENDED}", f"Phase {previous_phase} -> {SUSPENDED}")
        )
    patch = _status_patch(
        job_name, generation, SUSPENDED, 0, 0, 0, step.restarts, step.last_failure,
        merge_conditions(prev_conditions, conditions),
        create_failures=status.get("createFailures"),
        last_create_failure_time=status.get("lastCreateFailureTime"),
    )  # fmt: skip
    return ReconcilePlan(
        delete_rendezvous_pod=rendezvous_pod_exists and not workers,
        delete_workers=tuple(step.deletes),
        status={**patch, "arbitration": None},
        events=tuple(step.events),
        requeue_after=step.requeue,
    )


def _resumed(
    step: _Pass, prev_conditions: Sequence[Mapping[str, Any]], generation: int | None
) -> list[api.Condition]:
    """Rule 9, un-suspended: ``Suspended=False`` and a ``Resumed`` event, once."""
    old = next((c for c in prev_conditions if c.get("type") == SUSPENDED), None)
    if old is None or old.get("status") != "True":
        return []
    step.events.append(
        EventSpec(
            "Normal",
            "Resumed",
            f"spec.suspend is false: recreating {step.spec.replicas} workers, which resume "
            "from the last checkpoint",
        )
    )
    message = "spec.suspend is false: the job runs again"
    return [
        build_condition(
            prev_conditions, SUSPENDED, "False", "JobResumed", message, step.now, generation
        )
    ]


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
    _delete(step, surplus, "ScaledDown", "ScalingDown",
            f"Scaling down to {replicas} workers: deleting " + ", ".join(p.name for p in surplus)
            + " (graceful: SIGTERM, then the pod's grace period)")  # fmt: skip
    return len(surplus)


def _delete(
    step: _Pass, pods: Sequence[WorkerPod], reason: str, event_reason: str, message: str
) -> None:
    """Delete ``pods`` gracefully for ``reason``, with one Normal Event when there are any."""
    for pod in pods:
        step.deletes.append((pod.name, reason))
    if pods:
        step.events.append(EventSpec("Normal", event_reason, message))


def _move_to_planned_nodes(
    step: _Pass, status: Mapping[str, Any], active: Sequence[WorkerPod], surplus: int
) -> None:
    """Rule 11: while the job resizes, delete the running workers the plan has no slot for
    where they run, as many as it has slots for elsewhere; rule 5 recreates them."""
    spec = step.spec
    staying = sorted((w for w in active if w.index < spec.replicas), key=lambda w: w.index)
    resizing = surplus > 0 or len(staying) < spec.replicas
    if not resizing or not spec.placement.pack_workers:
        return
    plan = api.read_plan((status.get("arbitration") or {}).get("preferredNodes"))
    if not plan:
        return
    # a worker bound off the planned node it was created with stays: it is not moved again
    movable = [w.node is not None and w.planned_node in (None, w.node) for w in staying]
    off = api.choose_moves(plan, [w.node or w.planned_node for w in staying], movable)
    moved = [staying[i] for i in off]
    _delete(step, moved, "MovedToPlannedNode", "Consolidating",
            "Moving " + ", ".join(f"{p.name} (on {p.node})" for p in moved)
            + " to the nodes cluster arbitration planned, as the job resizes to"
            f" {spec.replicas} workers (they restart anyway)")  # fmt: skip


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


def _plan_new_workers(
    spec: api.TrainingJobSpec,
    status: Mapping[str, Any],
    live: Sequence[WorkerPod],
    creates: Sequence[int],
    queued: str | None,
) -> tuple[tuple[int, str], ...]:
    """Rule 10: the planned node of each worker created now, from the arbitration plan and
    the workers that stay (bound: their node; Pending: the node planned for them)."""
    if not creates or queued is not None or not spec.placement.pack_workers:
        return ()
    plan = api.read_plan((status.get("arbitration") or {}).get("preferredNodes"))
    if not plan:
        return ()
    existing = [w.node or w.planned_node for w in sorted(live, key=lambda w: w.index)]
    nodes = api.assign_planned_nodes(plan, existing, len(creates))
    return tuple((i, n) for i, n in zip(sorted(creates), nodes, strict=True) if n is not None)


def count_workers_off_plan(workers: Iterable[WorkerPod]) -> int:
    """Live workers bound to another node than the one arbitration planned for them (rule
    10): what the operator's ``workers_off_plan`` gauge shows."""
    return sum(
        1
        for w in workers
        if w.active and w.node is not None and w.planned_node not in (None, w.node)
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
    create_failures: int | None = None,
    last_create_failure_time: str | None = None,
) -> dict[str, Any]:
    """The merge patch of every status field the reconcile loop owns (None deletes)."""
    return api.TrainingJobStatus(
        create_failures=create_failures,
        last_create_failure_time=last_create_failure_time,
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


def build_create_outcome(
    plan: ReconcilePlan,
    status: Mapping[str, Any],
    failures: Sequence[CreateFailure],
    generation: int | None,
    now: dt.datetime,
) -> ReconcilePlan:
    """The plan's status, events and requeue once its creations were tried (rule 8).

    ``failures`` are the creations the apiserver refused in this pass (in the order tried).
    With failures: ``ReplicaFailure=True`` naming the first refused object and the server's
    message (``Degraded=True/InvalidSpec`` too when the template itself was refused), a
    Warning event only when that message is new (not one per retry), the failure counted and
    timed in status and the next pass after the backoff. Without failures, and nothing held
    back, a ``ReplicaFailure=True`` condition clears and the count is dropped. The rest of the
    status (phases, replicas) is the plan's: what exists is always reported.
    """
    prev_conditions = list(status.get("conditions") or [])
    old = _replica_failure(prev_conditions)
    planned = [api.Condition.model_validate(c) for c in plan.status.get("conditions") or []]
    if not failures:
        if plan.creation_held or old is None or old.get("status") != "True":
            return plan
        cleared = build_condition(
            prev_conditions, REPLICA_FAILURE, "False", "Created",
            "The apiserver accepts the job's pods and Service again", now, generation,
        )  # fmt: skip
        return replace(
            plan,
            status={
                **plan.status,
                **api.TrainingJobStatus(
                    conditions=merge_conditions(_dump(planned), [cleared]),
                    create_failures=None,
                    last_create_failure_time=None,
                ).to_merge_patch(),
            },
        )
    first = failures[0]
    invalid = any(f.invalid_spec for f in failures)
    reason = "InvalidSpec" if invalid else "FailedCreate"
    more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
    message = f"Error creating {first.kind} {first.name}: {first.message}{more}"
    updates = [
        build_condition(prev_conditions, REPLICA_FAILURE, "True", reason, message, now, generation)
    ]
    if invalid:
        updates.append(
            build_condition(
                prev_conditions, "Degraded", "True", "InvalidSpec", message, now, generation
            )
        )
    count = int(status.get("createFailures") or 0) + 1
    retrying = old is not None and old.get("status") == "True"
    # A retry that is refused again says nothing new: no "Creating workers" event per retry.
    events = [e for e in plan.events if not (retrying and e.reason in _CREATING_REASONS)]
    if old is None or old.get("status") != "True" or old.get("message") != message:
        events.append(EventSpec("Warning", reason if invalid else "FailedCreate", message))
    backoff = compute_create_backoff_seconds(count)
    return replace(
        plan,
        status={
            **plan.status,
            **api.TrainingJobStatus(
                conditions=merge_conditions(_dump(planned), updates),
                create_failures=count,
                last_create_failure_time=format_time(now),
            ).to_merge_patch(),
        },
        events=tuple(events),
        requeue_after=backoff if plan.requeue_after is None else min(plan.requeue_after, backoff),
    )


_CREATING_REASONS = frozenset({"ScalingUp", "Replacing"})


def _dump(conditions: Sequence[api.Condition]) -> list[dict[str, Any]]:
    return [c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in conditions]
