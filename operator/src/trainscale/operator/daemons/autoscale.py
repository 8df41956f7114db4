"""The autoscale daemon: one loop per TrainingJob that observes Prometheus and the job's
pods, asks the job's :class:`~trainscale.operator.autoscaling.JobAutoscaler` for a worker
count and writes it.

Why this module exists: the autoscaler is pure; something must feed it observations at the
job's ``intervalSeconds`` and write ``spec.replicas`` and ``status.autoscaling`` (with the
autoscaler's memory, so a restarted operator resumes from it) under the job's status lock.
That is all this module does. A job that does not autoscale (the default) costs nothing: the
loop reads kopf's live copy of the job and sleeps until the job changes.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import datetime as dt
import enum
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import kopf
import pydantic

from trainscale.operator import api
from trainscale.operator.adapters import k8s, prometheus
from trainscale.operator.adapters.prometheus_access import PrometheusAccess
from trainscale.operator.api.reporting import format_time, is_noop_merge_patch
from trainscale.operator.autoscaling import AutoscalerMemory, JobAutoscaler, cluster, policy
from trainscale.operator.autoscaling import status as autoscale
from trainscale.operator.autoscaling.node_filters import NodeBound
from trainscale.operator.autoscaling.observed_placement import build_placement, node_of_pod
from trainscale.operator.autoscaling.policy import AWAIT_WORLD_SECONDS
from trainscale.operator.controller import reconcile
from trainscale.operator.controller.builders import JobRef
from trainscale.operator.daemons.cluster import ClusterArbitration, arbitration_of, job_key
from trainscale.operator.daemons.common import (
    ADMITTED,
    IDLE_RESYNC_SECONDS,
    LOOP_CANCEL_TIMEOUT_SECONDS,
    LOOP_STOP_TIMEOUT_SECONDS,
    NODES,
    RESYNC_SECONDS,
    WAKEUPS,
    WORKER_PODS,
    get_metrics,
    log,
    max_workers_per_node,
    post_event,
    sleep_or_wake,
)
from trainscale.operator.daemons.common import utcnow as _utcnow
from trainscale.operator.daemons.options import options_of
from trainscale.operator.observability.metric_names import AUTOSCALE_LOOP


@dataclasses.dataclass
class JobLoop:
    """One job's loop state: its autoscaler (restored from ``status.autoscaling.memory`` on
    the first pass) and how long the running worker count has held (for settling)."""

    autoscaler: JobAutoscaler | None = None
    running: int = 0  # workers running at the last pass ...
    running_since: float = 0.0  # ... and since when that count (and world) has held
    restart_cost_seconds: float = 0.0  # what a resize costs the job (offered to arbitration)
    time_left_seconds: float | None = None  # where its trainer says (offered to arbitration)
    time_left_at: float = 0.0  # when that was decided (time.monotonic(), arbitration's clock)
    world: float | None = None  # the world size the workers reported last ...
    awaiting_world: bool = False  # ... and whether the running count changed since it did

    def observe_workers(self, running: int, world: float | None, now: float) -> None:
        """Follow the running worker count and the world size the workers report.

        A pod runs before its worker trains: a resized job keeps training at its old size
        (then restarts) through the new worker's process start and rendezvous, so counting
        pods alone would measure the old size's throughput as the new one's. When the
        workers report their world size, a change of the running count therefore starts the
        settling clock only once that world changes too (or ``AWAIT_WORLD_SECONDS`` later);
        without the gauge, at once. A world size no longer reported keeps the last one."""
        if running != self.running:
            self.running, self.running_since = running, now
            self.awaiting_world = self.world is not None
        if world is not None and world != self.world:
            self.world, self.running_since, self.awaiting_world = world, now, False

    def settling_since(self) -> float:
        """When the workers began to train at the current size, as far as settling counts:
        while a new world is awaited, ``AWAIT_WORLD_SECONDS`` after the count changed."""
        return self.running_since + (AWAIT_WORLD_SECONDS if self.awaiting_world else 0.0)

    def settled_seconds(self, now: float) -> float:
        """How long the workers have trained at the current size (0 while awaiting it)."""
        if self.awaiting_world:
            return max(0.0, now - self.settling_since())
        return now - self.running_since


def settling_reason(loop: JobLoop, spec: api.TrainingJobSpec) -> str:
    """Why a pass holds while the workers settle, in words that stay the same from pass to
    pass until the workers or their world change (a status write that would change nothing
    is not made, and wakes nothing)."""
    measured_from = dt.datetime.fromtimestamp(
        loop.settling_since() + spec.autoscaling.settle_seconds, dt.UTC
    )
    return (
        f"settling: {loop.running} workers running"
        f"{'' if loop.world is None else f', training in a world of {loop.world:g}'}; "
        f"{'waiting for their new world, ' if loop.awaiting_world else ''}"
        f"measured from {format_time(measured_from)}"
        f"{' at the latest' if loop.awaiting_world else ''} "
        f"(settleSeconds {spec.autoscaling.settle_seconds}); holding at {spec.replicas}"
    )


def restore_autoscaler(spec: api.TrainingJobSpec, status: Mapping[str, Any]) -> JobAutoscaler:
    """The job's autoscaler, resumed from the memory an earlier operator kept in status."""
    return JobAutoscaler(spec, memory=AutoscalerMemory.from_status(status))


async def autoscale_job(
    namespace: str,
    name: str,
    loop: JobLoop,
    prometheus_url: str,
    wall_clock: Callable[[], float] = time.time,
    arbitration: ClusterArbitration | None = None,
    access: PrometheusAccess | None = None,
    live: Mapping[str, Any] | None = None,
) -> float:
    """One autoscaling pass: observe Prometheus and pods, recommend, write. Returns seconds to the next.

    ``access``: the operator's credentials, TLS and headers for ``prometheus_url``.

    ``live``: kopf's live copy of the job (its daemon's ``body``, kept current by the watch).
    The pass then reads the job there, not from the apiserver, and reads it afresh only
    before it writes: a pass that would write nothing (a hold whose status is already there)
    costs the job no request, and the LIST of its pods only after a watch event of them
    (:class:`~trainscale.operator.daemons.common.WorkerPodLists`). Without it, the job is
    read twice.

    With ``arbitration`` (the process's cluster arbitration) the job offers its model to the
    cluster pass, runs it when it is due, and never asks for more than its ceiling; a queued
    job decides nothing (it runs nothing).
    """
    clients = k8s.load_clients()
    metrics = get_metrics()
    # -- observe (outside the lock: Prometheus may be slow) --------------------------------
    if live is not None:
        body: dict[str, Any] | None = copy.deepcopy(dict(live))
    else:
        body = await asyncio.to_thread(k8s.fetch_job, clients, namespace, name)
    if body is None:
        return RESYNC_SECONDS
    try:
        spec = api.TrainingJobSpec.model_validate(body.get("spec") or {})
    except pydantic.ValidationError:
        return RESYNC_SECONDS  # the reconcile loop reports it
    idle = idle_of(spec, (body.get("status") or {}).get("phase"))
    if idle is not None:
        # Paused: no observation, no decision; the autoscaler (and its memory) stays as it
        # is, and it resumes from there when the job does. Off: resumed from status when
        # autoscaling is enabled again.
        if idle is Idle.OFF:
            loop.autoscaler = None
        return min(float(spec.autoscaling.interval_seconds), RESYNC_SECONDS)
    if loop.autoscaler is None:
        loop.autoscaler = restore_autoscaler(spec, body.get("status") or {})
    autoscaler = loop.autoscaler
    autoscaler.update_spec(spec)
    ceiling: int | None = None
    # The arbitration pass refreshes the admitted pod specs, a bounded number a pass; a job
    # it passes over reads its spec as the pass left it (else every job's loop would read
    # its own again as a burst's specs expire together).
    passed = False
    if arbitration is not None and arbitration.enabled and cluster.is_arbitrated(spec, True):
        key = job_key(namespace, name)
        arbitration.register(
            key,
            autoscaler,
            loop.restart_cost_seconds,
            loop.time_left_seconds,
            loop.time_left_at,
        )
        await arbitration.run_if_due(clients, for_key=key)
        share = arbitration.result(key)
        if share is not None and share.status.queued:
            return float(spec.autoscaling.interval_seconds)  # queued: nothing runs
        ceiling = arbitration.ceiling(key)
        passed = arbitration.error is None
    # As last listed, unless the watch told of a change of the job's pods since.
    pods = await asyncio.to_thread(WORKER_PODS.get, clients, namespace, name)
    listed = await NODES.get(clients, time.monotonic())
    nodes = listed.gpu
    job = JobRef(name=name, namespace=namespace, uid=(body.get("metadata") or {}).get("uid", ""))
    pod_spec = await asyncio.to_thread(
        ADMITTED.pod_spec, clients, job, spec, ADMITTED.clock(), stale=passed
    )
    bound = max_workers_per_node(namespace, name, spec, nodes, listed.other, pod_spec=pod_spec)
    # (a bound that moves with the placement, a spread constraint's, tells no node size)
    apart = bound.workers if bound is not None and bound.domains is None else None
    placement = build_placement(
        pods, nodes, pod_spec, gpus_per_worker=spec.gpus_per_replica, max_workers_per_node=apart
    )
    workers = [w for w in map(reconcile.parse_worker_pod, pods) if w is not None and w.active]
    running = sum(1 for w in workers if w.phase == "Running")
    pending = sum(1 for w in workers if w.phase != "Running")
    unschedulable = sum(1 for w in workers if w.unschedulable)
    now = wall_clock()
    observation: policy.Observation | None = None
    errors: tuple[str, ...] = ()
    world: float | None = None
    if running > 0:
        world = (
            await asyncio.to_thread(
                prometheus.fetch_world_size,
                prometheus_url,
                namespace,
                name,
                spec=spec.autoscaling.prometheus,
                access=access,
            )
        ).value
    loop.observe_workers(running, world, now)
    settling = spec.autoscaling.settle_seconds - loop.settled_seconds(now)
    over_ceiling = ceiling is not None and spec.replicas > ceiling
    if running > 0 and settling > 0 and pending == 0 and not over_ceiling:
        # Too new to measure: rate() windows and restarts would mix two sizes. Hold, say so
        # (in words that stay the same from pass to pass: a write that changes nothing is
        # not made).
        patch = autoscale.build_settling_status(settling_reason(loop, spec))
        if not is_noop_merge_patch(body.get("status") or {}, patch):
            async with WAKEUPS.lock(namespace, name):
                await asyncio.to_thread(k8s.patch_job_status, clients, namespace, name, patch)
        return min(float(spec.autoscaling.interval_seconds), settling)
    if running > 0:
        fetched = await asyncio.to_thread(
            prometheus.fetch_observation,
            prometheus_url,
            namespace,
            name,
            replicas=running,
            now=now,
            spec=spec.autoscaling.prometheus,
            access=access,
        )
        asked = list(fetched.results)
        observation, errors = fetched.observation, fetched.errors
        # The trainer's measure of the restart after the last rescale, once (the operator
        # measures nothing across a rescale, so the throughput it missed teaches nothing).
        if (since := autoscaler.restart_reading_since(now)) is not None:
            reading, restart_queries = await asyncio.to_thread(
                prometheus.fetch_restart,
                prometheus_url,
                namespace,
                name,
                since=since,
                spec=spec.autoscaling.prometheus,
                access=access,
            )
            asked.extend(restart_queries)
            taken = reading is not None and autoscaler.take_restart(reading, running=running)
            log.log(
                logging.INFO if taken else logging.DEBUG,
                "%s/%s: the restart after the rescale at %.3f: %s (%d running)%s",
                namespace, name, since, reading, running, ", taken" if taken else "",
            )  # fmt: skip
        for result in asked:
            metrics.prometheus_query_duration.observe(result.latency_seconds)
            if result.error:
                kind = "timeout" if "timed out" in result.error.lower() else "http"
                metrics.prometheus_query_errors.labels(kind).inc()

    room = None
    if unschedulable or autoscaler.waiting:
        own = [node for node in map(node_of_pod, pods) if node is not None]
        room = await _room(clients, nodes, spec.gpus_per_replica, pod_spec, bound, own)

    # -- decide --------------------------------------------------------------------------
    rec = autoscaler.decide(
        [observation] if observation is not None else [],
        current_replicas=spec.replicas,
        now=now,
        placement=placement if placement.replicas else None,
        pending_replicas=pending,
        unschedulable_replicas=unschedulable,
        ceiling=ceiling,
        room=room,
    )
    loop.restart_cost_seconds = rec.restart_cost_seconds
    loop.time_left_seconds, loop.time_left_at = rec.time_left_seconds, time.monotonic()

    # -- apply (under the job's status lock, from a fresh read) --------------------------
    def plan_against(job: Mapping[str, Any]) -> autoscale.AutoscalePlan:
        return autoscale.decide_autoscale(
            spec,
            job.get("status") or {},
            observation,
            errors,
            rec,
            _utcnow(),
            (job.get("metadata") or {}).get("generation"),
            memory=autoscaler.memory().to_dict(),
        )

    async with WAKEUPS.lock(namespace, name):
        plan = None
        if live is not None:
            # Nothing to write as the watch has the job: no read, no write. Only this loop
            # writes what the plan holds but the conditions, and those it keeps as they are.
            seen = copy.deepcopy(dict(live))
            held = plan_against(seen)
            if (
                held.replicas is None
                and (seen.get("spec") or {}).get("replicas") == spec.replicas
                and is_noop_merge_patch(seen.get("status") or {}, held.status)
            ):
                body, plan = seen, held
        if plan is None:
            fresh = await asyncio.to_thread(k8s.fetch_job, clients, namespace, name)
            if fresh is None:
                return RESYNC_SECONDS
            current = api.TrainingJobSpec.model_validate(fresh.get("spec") or {})
            if current.replicas != spec.replicas:
                return 0.5  # someone else moved spec.replicas meanwhile: decide again on it
            body, plan = fresh, plan_against(fresh)
            if plan.replicas is not None:
                await asyncio.to_thread(
                    k8s.patch_job_replicas, clients, namespace, name, plan.replicas
                )
            if plan.replicas is not None or not is_noop_merge_patch(
                fresh.get("status") or {}, plan.status
            ):
                await asyncio.to_thread(k8s.patch_job_status, clients, namespace, name, plan.status)
    if plan.event is not None:
        post_event(body, plan.event)
        log.info("TrainingJob %s/%s: %s", namespace, name, plan.event.message)
    else:
        log.debug("TrainingJob %s/%s: hold at %d: %s", namespace, name, spec.replicas, rec.reason)
    metrics.scaling_decisions.labels(plan.direction, plan.reason_class).inc()
    metrics.job_cost_per_hour.labels(namespace, name).set(plan.status["autoscaling"]["costPerHour"])
    return float(spec.autoscaling.interval_seconds)


async def _room(
    clients: k8s.KubernetesClients,
    nodes: list[dict[str, Any]],
    gpus_per_worker: int,
    pod_spec: Mapping[str, Any],
    bound: NodeBound | None = None,
    own_nodes: Sequence[str] = (),
) -> int | None:
    """Workers the cluster has free GPUs for on the nodes the template lets them run on
    (within the job's ``bound`` on workers per node, its workers on ``own_nodes`` counted), read
    only while the job has unschedulable pods or waits after them (one cluster-wide LIST of
    bound pods); None when not known (no GPU nodes listed, or no permission to list pods in
    every namespace)."""
    if not nodes or gpus_per_worker <= 0:
        return None
    try:
        pods = await asyncio.to_thread(k8s.fetch_bound_pods, clients)
    except k8s.KubernetesError as exc:
        if exc.status != 403:
            raise
        return None
    return cluster.compute_room(
        nodes,
        pods,
        gpus_per_worker,
        pod_spec,
        max_workers_per_node=bound.workers if bound is not None else None,
        spread_domains=bound.domains if bound is not None else None,
        own_nodes=own_nodes,
    )


class Idle(enum.Enum):
    """Why the autoscale loop has nothing to do for a job, read from the job itself."""

    PAUSED = "paused"  # suspended, or an invalid spec: the autoscaler keeps its state
    OFF = "off"  # autoscaling disabled, or the job finished: the autoscaler is dropped


def idle_state(body: Mapping[str, Any]) -> Idle | None:
    """Whether the job autoscales now (None) or why not, from the job as kopf last saw it.

    The loop decides this from kopf's live copy of the job (kept up to date by the watch),
    so a job that does not autoscale costs no API request; the pass re-reads the job anyway.
    """
    try:
        spec = api.TrainingJobSpec.model_validate(body.get("spec") or {})
    except pydantic.ValidationError:
        return Idle.PAUSED  # the reconcile loop reports it
    return idle_of(spec, (body.get("status") or {}).get("phase"))


def idle_of(spec: api.TrainingJobSpec, phase: str | None) -> Idle | None:
    """Whether a job with this valid spec and phase autoscales now (None) or why not."""
    if spec.suspend:
        return Idle.PAUSED
    if not spec.autoscaling.enabled or phase in (api.Phase.SUCCEEDED, api.Phase.FAILED):
        return Idle.OFF
    return None


@kopf.daemon(
    api.GROUP,
    api.VERSION,
    api.PLURAL,
    cancellation_backoff=LOOP_STOP_TIMEOUT_SECONDS,
    cancellation_timeout=LOOP_CANCEL_TIMEOUT_SECONDS,
)
async def trainingjob_autoscale_loop(
    name: str,
    namespace: str | None,
    body: kopf.Body,
    logger: kopf.Logger,
    memo: kopf.Memo,
    stopped: kopf.DaemonStopped,
    **_: Any,
) -> None:
    """The job's autoscaler: every intervalSeconds while autoscaling.enabled, until kopf
    stops it (a pass in flight ends first). While the job does not autoscale (``body``, kopf's
    live copy of the job, says so) it sleeps until the job changes, without API requests."""
    assert namespace is not None  # TrainingJob is a namespaced kind
    loop = JobLoop()
    changed = WAKEUPS.get(namespace, name, AUTOSCALE_LOOP)
    with get_metrics().job_loop(AUTOSCALE_LOOP):
        while not stopped:
            changed.clear()
            idle = idle_state(body)
            if idle is not None:
                if idle is Idle.OFF:
                    loop.autoscaler = None  # resumed from status when enabled again
                await sleep_or_wake(stopped, IDLE_RESYNC_SECONDS, changed)
                continue
            try:
                options = options_of(memo)
                delay = await autoscale_job(
                    namespace,
                    name,
                    loop,
                    options.prometheus_url,
                    arbitration=arbitration_of(memo),
                    access=options.prometheus_access,
                    live=body,
                )
            except Exception as exc:  # a bad pass must not kill the loop
                logger.exception("autoscaling of %s/%s failed: %s", namespace, name, exc)
                delay = RESYNC_SECONDS
            await sleep_or_wake(stopped, delay)
