"""kopf handlers: the thin layer between Kubernetes events and the pure decisions.

Why this module exists: kopf calls these functions; each one only parses, observes, calls a
pure ``decide_*`` function and applies its result through :mod:`trainscale.operator.k8s`.

Design: one async kopf **daemon per TrainingJob** runs the job's reconcile loop, so passes
for one job never run concurrently (a failed pod is counted once) and nothing is lost when
events arrive during a pass. Watch events on the job or on its pods only *wake* that loop;
a resync timer bounds the delay when an event is missed. Every pass is level triggered: it
reads the job and its pods afresh, so a restarted operator converges from whatever exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, cast

import kopf
import pydantic

from trainscale.operator import api, autoscale, builders, k8s, policy, prometheus, reconcile
from trainscale.operator.metrics import OperatorMetrics

RESYNC_SECONDS = 10.0

log = logging.getLogger(__name__)

_metrics: OperatorMetrics | None = None


def get_metrics() -> OperatorMetrics:
    """The process-wide operator metrics (created on first use)."""
    global _metrics  # noqa: PLW0603 - one registry per process
    if _metrics is None:
        _metrics = OperatorMetrics()
    return _metrics


class Wakeups:
    """Per job: an asyncio.Event that wakes its reconcile loop, and the lock that serialises
    every read-status-then-patch-status section of the job's two loops."""

    def __init__(self) -> None:
        self._events: dict[tuple[str, str], asyncio.Event] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    def lock(self, namespace: str, name: str) -> asyncio.Lock:
        """The job's status lock (created on first use)."""
        return self._locks.setdefault((namespace, name), asyncio.Lock())

    def get(self, namespace: str, name: str) -> asyncio.Event:
        """The wake-up event of a job (created on first use)."""
        return self._events.setdefault((namespace, name), asyncio.Event())

    def wake(self, namespace: str, name: str) -> None:
        """Ask the job's loop to run a pass now."""
        self.get(namespace, name).set()

    def forget(self, namespace: str, name: str) -> None:
        """Drop a deleted job's event."""
        self._events.pop((namespace, name), None)
        self._locks.pop((namespace, name), None)


WAKEUPS = Wakeups()


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@kopf.on.startup()
def trainscale_startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Operator-wide kopf settings."""
    # Only our explicit events (create/delete/scale/fail) reach `kubectl describe`,
    # not every log line of kopf's.
    settings.posting.level = logging.WARNING
    # kopf holds this finalizer while a job's daemon runs, so the loop stops before the job
    # is gone; the children are garbage-collected through their owner references.
    settings.persistence.finalizer = "trainscale.dev/finalizer"
    # Re-establish watches regularly so a silently dropped connection cannot stall us.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    from trainscale.operator.main import OPTIONS

    settings.peering.lifetime = OPTIONS.peering_lifetime
    get_metrics()


@kopf.on.startup()
async def trainscale_ensure_peering(
    settings: kopf.OperatorSettings, logger: kopf.Logger, **_: Any
) -> None:
    """With --peering, make sure kopf's peering object exists, or replicas would not coordinate."""
    if settings.peering.standalone or not settings.peering.name:
        return
    from trainscale.operator.main import OPTIONS

    clients = k8s.load_clients()
    scopes: list[str | None] = [None] if settings.peering.clusterwide else list(OPTIONS.namespaces)
    for namespace in scopes:
        if namespace is not None and any(c in namespace for c in "*?[!"):
            logger.warning(
                "Peering in namespaces matching %r: create KopfPeering %r there yourself.",
                namespace,
                settings.peering.name,
            )
            continue
        created = await asyncio.to_thread(
            k8s.apply_peering, clients, settings.peering.name, namespace
        )
        where = f"namespace {namespace}" if namespace else "cluster-wide"
        logger.info(
            "Peering %r %s: %s.", settings.peering.name, where, "created" if created else "exists"
        )


@kopf.on.login()
def trainscale_login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod, the service account; elsewhere $KUBECONFIG (read now) or ~/.kube/config."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


def post_event(body: Mapping[str, Any], event: reconcile.EventSpec) -> None:
    """Post a Kubernetes Event on the job (through kopf's event queue)."""
    kopf.event(cast(kopf.Body, body), type=event.type, reason=event.reason, message=event.message)


async def reconcile_job(
    namespace: str, name: str, now: Callable[[], dt.datetime] = _utcnow
) -> float:
    """One reconcile pass for one job: observe, decide, apply. Returns seconds to the next pass."""
    async with WAKEUPS.lock(namespace, name):
        return await _reconcile_job(namespace, name, now)


async def _reconcile_job(namespace: str, name: str, now: Callable[[], dt.datetime]) -> float:
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
            return RESYNC_SECONDS * 6
        job = builders.JobRef(name=name, namespace=namespace, uid=meta["uid"])
        pods = await asyncio.to_thread(k8s.fetch_worker_pods, clients, namespace, name)
        workers = [w for w in map(reconcile.parse_worker_pod, pods) if w is not None]
        rdzv = builders.rendezvous_name(name)
        rdzv_pod = await asyncio.to_thread(k8s.fetch_object_exists, clients, "Pod", namespace, rdzv)
        rdzv_svc = await asyncio.to_thread(
            k8s.fetch_object_exists, clients, "Service", namespace, rdzv
        )

        # -- decide -------------------------------------------------------------------------
        plan = reconcile.decide_reconcile(
            spec, name, generation, status, workers, rdzv_pod, rdzv_svc, now()
        )

        # -- apply --------------------------------------------------------------------------
        if plan.create_rendezvous_service:
            obj = builders.build_rendezvous_service(job, spec)
            if await asyncio.to_thread(k8s.apply_create, clients, obj):
                post_event(
                    body,
                    reconcile.EventSpec("Normal", "CreatedRendezvous", f"Created Service {rdzv}"),
                )
        if plan.create_rendezvous_pod:
            obj = builders.build_rendezvous_pod(job, spec)
            if await asyncio.to_thread(k8s.apply_create, clients, obj):
                post_event(
                    body, reconcile.EventSpec("Normal", "CreatedRendezvous", f"Created Pod {rdzv}")
                )
        if plan.delete_rendezvous_pod:
            await asyncio.to_thread(k8s.apply_delete_pod, clients, namespace, rdzv)
        for pod_name, reason in plan.delete_workers:
            if await asyncio.to_thread(k8s.apply_delete_pod, clients, namespace, pod_name):
                post_event(
                    body,
                    reconcile.EventSpec("Normal", "DeletedWorker", f"Deleted {pod_name}: {reason}"),
                )
        for index in plan.create_workers:
            obj = builders.build_worker_pod(job, spec, index)
            if await asyncio.to_thread(k8s.apply_create, clients, obj):
                post_event(
                    body,
                    reconcile.EventSpec(
                        "Normal",
                        "CreatedWorker",
                        f"Created {obj['metadata']['name']} (index {index})",
                    ),
                )
        for event in plan.events:
            post_event(body, event)
        await asyncio.to_thread(k8s.patch_job_status, clients, namespace, name, plan.status)
        metrics.observe_job(
            namespace, name, plan.status["phase"], plan.status["replicas"], spec.replicas
        )
        metrics.reconcile_total.labels("ok").inc()
        if plan.requeue_after is not None:
            return max(0.2, min(plan.requeue_after, RESYNC_SECONDS))
        return RESYNC_SECONDS
    except Exception:
        metrics.reconcile_total.labels("error").inc()
        raise
    finally:
        metrics.reconcile_duration.observe(time.monotonic() - started)


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
    post_event(body, reconcile.EventSpec("Warning", "InvalidSpec", message))
    log.warning(
        "TrainingJob %s/%s has an invalid spec: %s", meta["namespace"], meta["name"], message
    )


@kopf.daemon(api.GROUP, api.VERSION, api.PLURAL, cancellation_timeout=2.0)
async def trainingjob_reconcile_loop(
    name: str, namespace: str | None, logger: kopf.Logger, **_: Any
) -> None:
    """The job's serialized reconcile loop: a pass now, then whenever woken or resynced."""
    assert namespace is not None  # TrainingJob is a namespaced kind
    wake = WAKEUPS.get(namespace, name)
    while True:
        wake.clear()
        try:
            delay = await reconcile_job(namespace, name)
        except Exception as exc:  # an API hiccup must not kill the loop
            logger.exception("reconcile of %s/%s failed: %s", namespace, name, exc)
            delay = 2.0
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=delay)


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
def trainingjob_event(type: str, name: str, namespace: str | None, **_: Any) -> None:
    """Any change of a job wakes its loop; a deleted job is forgotten."""
    if namespace is None:
        return
    if type == "DELETED":
        WAKEUPS.forget(namespace, name)
        get_metrics().forget_job(namespace, name)
        return
    WAKEUPS.wake(namespace, name)


@kopf.on.event("", "v1", "pods", labels={builders.LABEL_MANAGED_BY: builders.MANAGED_BY})
def trainingjob_pod_event(labels: Mapping[str, str], namespace: str | None, **_: Any) -> None:
    """A change of one of our pods wakes its job's loop."""
    job_name = k8s.job_name_of_pod(labels)
    if job_name and namespace:
        WAKEUPS.wake(namespace, job_name)


# -- autoscaling ------------------------------------------------------------------------------


@dataclasses.dataclass
class AutoscalerMemory:
    """What the autoscaler remembers of one job between passes (lost on operator restart,
    after which it re-learns from fresh observations)."""

    observations: list[policy.Observation] = dataclasses.field(default_factory=list)
    recent_targets: list[tuple[float, int]] = dataclasses.field(default_factory=list)
    restart_cost_seconds: float | None = None
    last_scale_time: float | None = None
    running: int = 0  # workers running at the last pass ...
    running_since: float = 0.0  # ... and since when that count has held


def _prometheus_url() -> str:
    from trainscale.operator.main import OPTIONS

    return OPTIONS.prometheus_url


async def autoscale_job(
    namespace: str, name: str, memory: AutoscalerMemory, wall_clock: Callable[[], float] = time.time
) -> float:
    """One autoscaling pass: observe Prometheus and pods, recommend, write. Returns seconds to the next."""
    clients = k8s.load_clients()
    metrics = get_metrics()
    # -- observe (outside the lock: Prometheus may be slow) --------------------------------
    body = await asyncio.to_thread(k8s.fetch_job, clients, namespace, name)
    if body is None:
        return RESYNC_SECONDS
    try:
        spec = api.TrainingJobSpec.model_validate(body.get("spec") or {})
    except pydantic.ValidationError:
        return RESYNC_SECONDS  # the reconcile loop reports it
    phase = (body.get("status") or {}).get("phase")
    if not spec.autoscaling.enabled or phase in (api.Phase.SUCCEEDED, api.Phase.FAILED):
        memory.recent_targets.clear()
        return min(float(spec.autoscaling.interval_seconds), RESYNC_SECONDS)
    pods = await asyncio.to_thread(k8s.fetch_worker_pods, clients, namespace, name)
    workers = [w for w in map(reconcile.parse_worker_pod, pods) if w is not None and w.active]
    running = sum(1 for w in workers if w.phase == "Running")
    pending = sum(1 for w in workers if w.phase != "Running")
    unschedulable = sum(1 for w in workers if w.unschedulable)
    now = wall_clock()
    observation: policy.Observation | None = None
    errors: tuple[str, ...] = ()
    if running != memory.running:
        memory.running, memory.running_since = running, now
    settling = spec.autoscaling.settle_seconds - (now - memory.running_since)
    if running > 0 and settling > 0 and pending == 0:
        # Too new to measure: rate() windows and restarts would mix two sizes. Hold, say so.
        reason = (
            f"settling: {running} workers running for {now - memory.running_since:.0f} s of "
            f"settleSeconds {spec.autoscaling.settle_seconds}; holding at {spec.replicas}"
        )
        async with WAKEUPS.lock(namespace, name):
            patch = {"autoscaling": {"reason": reason}}
            await asyncio.to_thread(k8s.patch_job_status, clients, namespace, name, patch)
        return min(float(spec.autoscaling.interval_seconds), settling)
    if running > 0:
        fetched = await asyncio.to_thread(
            prometheus.fetch_observation,
            _prometheus_url(),
            namespace,
            name,
            replicas=running,
            now=now,
            spec=spec.autoscaling.prometheus,
        )
        for result in (fetched.gpu_utilization, fetched.throughput):
            metrics.prometheus_query_duration.observe(result.latency_seconds)
            if result.error:
                kind = "timeout" if "timed out" in result.error.lower() else "http"
                metrics.prometheus_query_errors.labels(kind).inc()
        observation, errors = fetched.observation, fetched.errors
        memory.observations = policy.compact_observations([*memory.observations, observation], now)

    # -- decide --------------------------------------------------------------------------
    rec = policy.recommend(
        spec,
        memory.observations,
        current_replicas=spec.replicas,
        now=now,
        pending_replicas=pending,
        unschedulable_replicas=unschedulable,
        last_scale_time=memory.last_scale_time,
        restart_cost_seconds=memory.restart_cost_seconds,
        recent_targets=memory.recent_targets,
    )
    memory.recent_targets = [(t, n) for t, n in memory.recent_targets if t >= now - 86400]
    memory.recent_targets.append((now, rec.target))
    if rec.learned_restart_cost_seconds is not None:
        memory.restart_cost_seconds = rec.learned_restart_cost_seconds

    # -- apply (under the job's status lock, from a fresh read) --------------------------
    async with WAKEUPS.lock(namespace, name):
        body = await asyncio.to_thread(k8s.fetch_job, clients, namespace, name)
        if body is None:
            return RESYNC_SECONDS
        current = api.TrainingJobSpec.model_validate(body.get("spec") or {})
        if current.replicas != spec.replicas:
            return 0.5  # someone else moved spec.replicas meanwhile: decide again on it
        plan = autoscale.decide_autoscale(
            spec,
            body.get("status") or {},
            observation,
            errors,
            rec,
            _utcnow(),
            (body.get("metadata") or {}).get("generation"),
        )
        if plan.replicas is not None:
            await asyncio.to_thread(k8s.patch_job_replicas, clients, namespace, name, plan.replicas)
            memory.last_scale_time = now
        await asyncio.to_thread(k8s.patch_job_status, clients, namespace, name, plan.status)
    if plan.event is not None:
        post_event(body, plan.event)
        log.info("TrainingJob %s/%s: %s", namespace, name, plan.event.message)
    else:
        log.debug("TrainingJob %s/%s: hold at %d: %s", namespace, name, spec.replicas, rec.reason)
    metrics.scaling_decisions.labels(plan.direction, plan.reason_class).inc()
    metrics.job_cost_per_hour.labels(namespace, name).set(plan.status["autoscaling"]["costPerHour"])
    return float(spec.autoscaling.interval_seconds)


@kopf.daemon(api.GROUP, api.VERSION, api.PLURAL, cancellation_timeout=2.0)
async def trainingjob_autoscale_loop(
    name: str, namespace: str | None, logger: kopf.Logger, **_: Any
) -> None:
    """The job's autoscaler: every intervalSeconds while autoscaling.enabled."""
    assert namespace is not None  # TrainingJob is a namespaced kind
    memory = AutoscalerMemory()
    while True:
        try:
            delay = await autoscale_job(namespace, name, memory)
        except Exception as exc:  # a bad pass must not kill the loop
            logger.exception("autoscaling of %s/%s failed: %s", namespace, name, exc)
            delay = RESYNC_SECONDS
        await asyncio.sleep(delay)
