"""The reconcile daemon: one serialized, level-triggered loop per TrainingJob.

Why this module exists: kopf calls these functions; each one only parses, observes, calls a
pure ``decide_*`` function and applies its result through :mod:`trainscale.operator.adapters.k8s`.

Design: one async kopf **daemon per TrainingJob** runs the job's reconcile loop, so passes
for one job never run concurrently (a failed pod is counted once) and nothing is lost when
events arrive during a pass. Watch events on the job, its pods or its rendezvous Service
only *wake* that loop. Every pass is level triggered: it reads the job and its pods afresh,
so a restarted operator converges from whatever exists. A pass that acted looks again after
``RESYNC_SECONDS`` (the events of its own writes usually wake it sooner); a pass that found
nothing to do and nothing pending sleeps ``IDLE_RESYNC_SECONDS`` unless woken, so an idle job
costs no API request: every change reaches the operator as a watch event anyway
(:func:`next_pass_delay`). Passes go through :data:`~trainscale.operator.daemons.passes.PASSES`:
at most ``API_CONCURRENCY`` at once, a new job's first pass ahead of every other waiting pass.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import kopf
import pydantic

from trainscale.operator import api
from trainscale.operator.adapters import k8s
from trainscale.operator.api.reporting import EventSpec, is_noop_merge_patch
from trainscale.operator.autoscaling import cluster
from trainscale.operator.controller import builders, reconcile
from trainscale.operator.daemons.cluster import arbitration_active, arbitration_of, job_key
from trainscale.operator.daemons.common import (
    ADMITTED,
    IDLE_RESYNC_SECONDS,
    LOOP_CANCEL_TIMEOUT_SECONDS,
    LOOP_STOP_TIMEOUT_SECONDS,
    RELISTS,
    RESYNC_SECONDS,
    WAKEUPS,
    WORKER_PODS,
    get_metrics,
    log,
    post_event,
    sleep_or_wake,
)
from trainscale.operator.daemons.common import utcnow as _utcnow
from trainscale.operator.daemons.memory import MEMORY_RELEASE
from trainscale.operator.daemons.passes import PASSES
from trainscale.operator.observability.condition_metric import get_job_condition_metric
from trainscale.operator.observability.metric_names import AUTOSCALE_LOOP, RECONCILE_LOOP


async def reconcile_job(
    namespace: str,
    name: str,
    now: Callable[[], dt.datetime] = _utcnow,
    *,
    arbitration: bool = True,
    stopping: Callable[[], bool] = lambda: False,
) -> float:
    """One reconcile pass for one job: observe, decide, apply. Returns seconds to the next pass.

    ``arbitration``: the operator divides GPUs between jobs (an arbitrated job then waits
    for its admission before it creates pods). ``stopping``: whether kopf has asked the loop
    to stop (the job is being deleted): the pass then writes nothing more, so it never moves
    the job under kopf's finalizer removal.
    """
    async with WAKEUPS.lock(namespace, name):
        return await _reconcile_job(namespace, name, now, arbitration, stopping)


async def _reconcile_job(
    namespace: str,
    name: str,
    now: Callable[[], dt.datetime],
    arbitration: bool,
    stopping: Callable[[], bool],
) -> float:
    clients = k8s.load_clients()
    started = time.monotonic()
    metrics = get_metrics()
    try:
        # -- observe ------------------------------------------------------------------------
        body = await asyncio.to_thread(k8s.fetch_job, clients, namespace, name)
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            return RESYNC_SECONDS
        meta = body["metadata"]
        status = body.get("status") or {}
        generation = meta.get("generation")
        try:
            builders.validate_job_name(name)
            spec = api.TrainingJobSpec.model_validate(body.get("spec") or {})
        except (pydantic.ValidationError, builders.InvalidJobError) as exc:
            await _report_invalid_spec(clients, body, exc, generation, now())
            metrics.reconcile_total.labels("invalid").inc()
            return IDLE_RESYNC_SECONDS  # until the spec changes (an event wakes the loop)
        job = builders.JobRef(name=name, namespace=namespace, uid=meta["uid"])
        # Listed afresh (it creates and deletes by what it finds), and kept for the job's
        # autoscale pass until the watch tells of a change.
        pods = await asyncio.to_thread(WORKER_PODS.fetch, clients, namespace, name)
        workers = [w for w in map(reconcile.parse_worker_pod, pods) if w is not None]
        rdzv = builders.rendezvous_name(name)
        rdzv_pod = await asyncio.to_thread(k8s.fetch_object_exists, clients, "Pod", namespace, rdzv)
        rdzv_svc = await asyncio.to_thread(
            k8s.fetch_object_exists, clients, "Service", namespace, rdzv
        )

        # -- decide -------------------------------------------------------------------------
        queued = cluster.decide_queued(spec, status, arbitration)
        ceiling = cluster.decide_ceiling(spec, status, arbitration)
        plan = reconcile.decide_reconcile(
            spec, name, generation, status, workers, rdzv_pod, rdzv_svc, now(),
            queued=queued, ceiling=ceiling,
        )  # fmt: skip

        # -- apply --------------------------------------------------------------------------
        if stopping():
            return RESYNC_SECONDS
        failures = await _apply_plan(clients, body, job, spec, plan)
        plan = reconcile.build_create_outcome(plan, status, failures, generation, now())
        # A warning when the refusal is new (the pass posts its Warning event); a retry refused
        # for the same reason is an info line, so the log does not repeat itself at each retry.
        new_refusal = any(e.reason in ("FailedCreate", "InvalidSpec") for e in plan.events)
        for failure in failures:
            log.log(
                logging.WARNING if new_refusal else logging.INFO,
                "TrainingJob %s/%s: the apiserver refused %s %s (HTTP %s %s): %s",
                namespace, name, failure.kind, failure.name, failure.code, failure.reason,
                failure.message,
            )  # fmt: skip
        for event in plan.events:
            post_event(body, event)
        patched = not is_noop_merge_patch(status, plan.status)
        if not stopping() and patched:
            await asyncio.to_thread(k8s.patch_job_status, clients, namespace, name, plan.status)
        metrics.observe_job(
            namespace,
            name,
            plan.status["phase"],
            plan.status["replicas"],
            spec.replicas,
            off_plan=reconcile.count_workers_off_plan(workers),
        )
        get_job_condition_metric().observe(namespace, name, plan.status.get("conditions") or [])
        metrics.reconcile_total.labels("ok").inc()
        return next_pass_delay(plan, refused=bool(failures), patched=patched)
    except Exception:
        metrics.reconcile_total.labels("error").inc()
        raise
    finally:
        metrics.reconcile_duration.observe(time.monotonic() - started)


def next_pass_delay(plan: reconcile.ReconcilePlan, *, refused: bool, patched: bool) -> float:
    """Seconds until the loop's next pass, unless a watch event wakes it first.

    A backoff in flight: when it ends (at most ``RESYNC_SECONDS``). A pass that acted (it
    created or deleted something, was refused a creation, posted an event or patched the
    status): ``RESYNC_SECONDS``, to look at what its writes did. A quiet pass (nothing to do,
    nothing pending in time): ``IDLE_RESYNC_SECONDS``; what would give the next pass work is
    a change of the job, its pods or its Service, and each wakes the loop.
    """
    if plan.requeue_after is not None:
        return max(0.2, min(plan.requeue_after, RESYNC_SECONDS))
    acted = (
        plan.create_rendezvous_service
        or plan.create_rendezvous_pod
        or plan.delete_rendezvous_pod
        or bool(plan.delete_workers)
        or bool(plan.create_workers)
        or bool(plan.events)
        or plan.creation_held
        or refused
        or patched
    )
    return RESYNC_SECONDS if acted else IDLE_RESYNC_SECONDS


async def _apply_plan(
    clients: k8s.KubernetesClients,
    body: Mapping[str, Any],
    job: builders.JobRef,
    spec: api.TrainingJobSpec,
    plan: reconcile.ReconcilePlan,
) -> list[reconcile.CreateFailure]:
    """Create and delete what the plan says; returns the creations the apiserver refused."""
    namespace, rdzv = job.namespace, builders.rendezvous_name(job.name)
    failures: list[reconcile.CreateFailure] = []
    if plan.create_rendezvous_service:
        obj = builders.build_rendezvous_service(job, spec)
        if await _create(clients, obj, failures):
            post_event(
                body,
                EventSpec("Normal", "CreatedRendezvous", f"Created Service {rdzv}"),
            )
    if plan.create_rendezvous_pod:
        obj = builders.build_rendezvous_pod(job, spec)
        if await _create(clients, obj, failures):
            post_event(body, EventSpec("Normal", "CreatedRendezvous", f"Created Pod {rdzv}"))
    if plan.delete_rendezvous_pod:
        await asyncio.to_thread(k8s.apply_delete_pod, clients, namespace, rdzv)
    for pod_name, reason in plan.delete_workers:
        if await asyncio.to_thread(k8s.apply_delete_pod, clients, namespace, pod_name):
            post_event(
                body,
                EventSpec("Normal", "DeletedWorker", f"Deleted {pod_name}: {reason}"),
            )
    planned = dict(plan.planned_nodes)
    for index in plan.create_workers:
        obj = builders.build_worker_pod(job, spec, index, planned_node=planned.get(index))
        if await _create(clients, obj, failures):
            post_event(
                body,
                EventSpec(
                    "Normal",
                    "CreatedWorker",
                    f"Created {obj['metadata']['name']} (index {index})",
                ),
            )
    return failures


async def _create(
    clients: k8s.KubernetesClients,
    obj: Mapping[str, Any],
    failures: list[reconcile.CreateFailure],
) -> bool:
    """Create ``obj``; a refusal is recorded in ``failures`` (an input of the status), not raised.

    Returns whether it was created (False: it already existed, or it was refused).
    """
    try:
        return await asyncio.to_thread(k8s.apply_create, clients, obj)
    except k8s.KubernetesError as exc:
        meta = obj["metadata"]
        failures.append(
            reconcile.CreateFailure(obj["kind"], meta["name"], exc.status, exc.reason, exc.message)
        )
        return False


async def _report_invalid_spec(
    clients: k8s.KubernetesClients,
    body: Mapping[str, Any],
    exc: Exception,
    generation: int | None,
    now: dt.datetime,
) -> None:
    """Degraded/InvalidSpec condition + a Warning event naming the field; never raises."""
    if isinstance(exc, pydantic.ValidationError):
        message = reconcile.describe_validation_errors(exc.errors())
    else:
        message = str(exc)
    status = body.get("status") or {}
    already = any(
        c.get("type") == "Degraded"
        and c.get("reason") == "InvalidSpec"
        and c.get("message") == message
        and c.get("observedGeneration") == generation
        for c in status.get("conditions") or []
    )
    if already:
        return
    meta = body["metadata"]
    patch = reconcile.build_invalid_spec_status(status, message, generation, now)
    await asyncio.to_thread(k8s.patch_job_status, clients, meta["namespace"], meta["name"], patch)
    post_event(body, EventSpec("Warning", "InvalidSpec", message))
    log.warning(
        "TrainingJob %s/%s has an invalid spec: %s", meta["namespace"], meta["name"], message
    )


@kopf.daemon(
    api.GROUP,
    api.VERSION,
    api.PLURAL,
    cancellation_backoff=LOOP_STOP_TIMEOUT_SECONDS,
    cancellation_timeout=LOOP_CANCEL_TIMEOUT_SECONDS,
)
async def trainingjob_reconcile_loop(
    name: str,
    namespace: str | None,
    logger: kopf.Logger,
    memo: kopf.Memo,
    stopped: kopf.DaemonStopped,
    **_: Any,
) -> None:
    """The job's serialized reconcile loop: a pass now, then whenever woken or resynced,
    until kopf stops it (the job deleted, the operator stopping): a pass in flight ends
    first, so the loop never writes the job after it returned."""
    assert namespace is not None  # TrainingJob is a namespaced kind
    wake = WAKEUPS.get(namespace, name)
    first = True
    with get_metrics().job_loop(RECONCILE_LOOP):
        while not stopped:
            try:
                # At most API_CONCURRENCY passes at once, a new job's first pass first.
                async with PASSES.slot(first=first, unless=stopped) as admitted:
                    if not admitted:
                        break  # stopped while waiting for a place
                    # Cleared once the pass has its place, not before it waits for one: the
                    # pass reads the job and its pods afresh, so it answers the wakes that
                    # came while it waited (a burst's pod events) without a pass each after.
                    wake.clear()
                    first = False
                    delay = await reconcile_job(
                        namespace, name, arbitration=arbitration_active(memo),
                        stopping=stopped.is_set,
                    )  # fmt: skip
            except Exception as exc:  # an API hiccup must not kill the loop
                logger.exception("reconcile of %s/%s failed: %s", namespace, name, exc)
                delay = 2.0
            await sleep_or_wake(stopped, delay, wake)


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
async def trainingjob_event(
    type: str, name: str, namespace: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    """A change of a job wakes its autoscale loop, and its reconcile loop unless only the
    autoscaler's status changed; a deleted job is forgotten; a job listed, added or deleted
    lets the freed memory go back to the OS once the job count settles. A job *listed*
    (``type`` None: the watch of the jobs started again, as after a control-plane restart,
    and the watches of their pods may have lost events too) gets a reconcile pass and a
    fresh pod listing: where every pod and Service of the operator's namespaces went while
    the watches were down, the pods' new listing is empty, so kopf delivers nothing there
    that could wake a job (:class:`~trainscale.operator.daemons.common.WatchRelists`).
    (Async: it only touches the loops' memory, which must happen on the event loop, not in
    kopf's threads.)"""
    if namespace is None:
        return
    if type == "MODIFIED":
        MEMORY_RELEASE.busy()
    else:
        MEMORY_RELEASE.jobs_changed()
    if type == "DELETED":
        WAKEUPS.forget(namespace, name)
        ADMITTED.forget(namespace, name)
        WORKER_PODS.forget(namespace, name)
        get_metrics().forget_job(namespace, name)
        get_job_condition_metric().forget(namespace, name)
        arbitration = arbitration_of(memo)
        if arbitration is not None:
            arbitration.forget(job_key(namespace, name))
        return
    WAKEUPS.wake_on_change(namespace, name, reconcile.reconcile_inputs(body))
    if type is None:
        WORKER_PODS.changed(namespace, name)
        WAKEUPS.wake(namespace, name)
    WAKEUPS.wake(namespace, name, AUTOSCALE_LOOP)


@kopf.on.event("", "v1", "pods", labels={builders.LABEL_MANAGED_BY: builders.MANAGED_BY})
@kopf.on.event("", "v1", "services", labels={builders.LABEL_MANAGED_BY: builders.MANAGED_BY})
async def trainingjob_child_event(
    labels: Mapping[str, str], namespace: str | None, type: str | None = "MODIFIED", **_: Any
) -> None:
    """A change of one of a job's pods or of its rendezvous Service (deleted by hand, say)
    wakes the job's reconcile loop, makes the job's next autoscale pass list its pods again
    (:class:`~trainscale.operator.daemons.common.WorkerPodLists`), and puts off a pending
    memory release. The first object of a new listing (``type`` None: the watch started
    again, and may have lost events) does so for every job
    (:class:`~trainscale.operator.daemons.common.WatchRelists`)."""
    MEMORY_RELEASE.busy()
    if type is None and RELISTS.seen():
        WORKER_PODS.relisted()
        woken = WAKEUPS.wake_all()
        get_metrics().watch_relists.inc()
        log.info(
            "The watch of the operator's pods and Services listed them again (it may have "
            "missed events): a reconcile pass for each of %d jobs",
            woken,
        )
    job_name = k8s.job_name_of(labels)
    if job_name and namespace:
        WORKER_PODS.changed(namespace, job_name)
        WAKEUPS.wake(namespace, job_name)
