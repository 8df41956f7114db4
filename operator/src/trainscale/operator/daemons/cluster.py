"""Cluster arbitration, run by the operator: one pass over every job at most once an interval.

Why this module exists: the arbiter is pure and needs the whole cluster at once — every node,
every pod that holds GPUs, every TrainingJob and what each job's autoscaler has learned. This
module gathers that in four list calls, runs :func:`~trainscale.operator.autoscaling.cluster.
decide_arbitration`, writes ``status.arbitration`` where it changed (with an Event), and
keeps each job's ceiling in memory for that job's autoscale loop.

Who runs it: the per-job autoscale loops call :meth:`ClusterArbitration.run_if_due`; the first
caller after the interval runs the pass for everyone, under one lock; the others go on with
their last result, and a new job waits for the pass that answers it. So it runs exactly
where the job daemons run: kopf stops every daemon of a paused peer, which makes the active
peer the only one that arbitrates when two operators run, with no second election. The
object lives in kopf's ``memo`` (created at start-up), not in a module global.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import pydantic

from trainscale.operator import api
from trainscale.operator.adapters import k8s
from trainscale.operator.api.reporting import EventSpec
from trainscale.operator.autoscaling import AutoscalerMemory
from trainscale.operator.autoscaling.arbiter import ArbiterSettings
from trainscale.operator.autoscaling.cluster import (
    FINISHED_JOB_PHASES,
    ArbitrationResult,
    ManagedJob,
    build_capacity,
    build_node_free,
    compute_largest_node_gpus,
    compute_worker_nodes,
    decide_arbitration,
    parse_timestamp,
)
from trainscale.operator.controller.builders import JobRef
from trainscale.operator.daemons.common import (
    ADMITTED,
    NODES,
    WAKEUPS,
    choose_refreshes,
    compute_refresh_budget,
    get_metrics,
    max_workers_per_node,
    post_event,
    utcnow,
)

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_SECONDS = 10.0
# API calls a pass makes at once: dry runs of new jobs' worker pods, status writes (a
# quarter of the API threads, ``k8s.API_CONCURRENCY``: the job loops keep the rest).
PASS_CONCURRENCY = 8


class ThroughputPredictor(Protocol):
    """What the pass needs of a job's autoscaler (``JobAutoscaler`` provides it)."""

    def predict_throughput(self, replicas: int, *, nodes: int | None = None) -> float | None: ...


def compute_prior_throughput(spec: api.TrainingJobSpec, asked: int) -> dict[int, float]:
    """What a job is assumed to gain before its autoscaler has measured anything: linear up
    to the size it asked for (``asked``, :func:`compute_asked_replicas`), nothing beyond. So
    a new job gets what it asked for when the GPUs are free, an equal claim when they are
    not, and never more on a guess; its measured curve replaces this as soon as there is
    one."""
    return {n: float(min(n, asked)) for n in range(1, spec.max_replicas + 1)}


def compute_asked_replicas(spec: api.TrainingJobSpec, forced_from: Iterable[int]) -> int:
    """The size a job asked for: ``spec.replicas``, or a larger count its autoscaler was
    forced off (``status.autoscaling.memory.forcedFrom``: a cluster ceiling or
    unschedulable pods pushed it down, and it returns there once that lifts). Its
    autoscaler lowers ``spec.replicas`` to its ceiling, so a prior read from that alone
    wanted no more than it was given: a job without measurements shrunk for another never
    grew back once GPUs freed up, and its reason said it had all it could use."""
    asked = max((spec.replicas, *forced_from))
    return max(spec.min_replicas, min(asked, spec.max_replicas))


def job_key(namespace: str, name: str) -> str:
    """How jobs are keyed in the arbiter: ``namespace/name``."""
    return f"{namespace}/{name}"


@dataclass
class ClusterArbitration:
    """The process's arbitration state: the last results, the registered autoscalers."""

    enabled: bool = True
    interval_seconds: float = DEFAULT_INTERVAL_SECONDS
    namespaces: tuple[str, ...] = ()  # the operator's scope (globs); empty: every namespace
    settings: ArbiterSettings = field(default_factory=ArbiterSettings)  # the arbiter's
    results: dict[str, ArbitrationResult] = field(default_factory=dict)
    predictors: dict[str, ThroughputPredictor] = field(default_factory=dict)
    restart_costs: dict[str, float] = field(default_factory=dict)
    # (seconds, clock() when offered): the job's last decision's time left, aged at use
    times_left: dict[str, tuple[float, float]] = field(default_factory=dict)
    last_run: float = -math.inf
    error: str | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # How a pass posts a job's Event (kopf's event queue; a pass run outside kopf is given
    # another).
    post_event: Callable[[Mapping[str, Any], EventSpec], None] = post_event
    clock: Callable[[], float] = time.monotonic  # what a time left is aged by

    def register(
        self,
        key: str,
        predictor: ThroughputPredictor,
        restart_cost_seconds: float = 0.0,
        time_left_seconds: float | None = None,
        told_at: float | None = None,
    ) -> None:
        """A job's autoscale loop offers its model, what a resize costs it and, where its
        trainer says, the time it has left (called every pass; cheap). The time left is
        as of the job's last decision: a pass uses it less the time since it was offered
        (:meth:`time_left`); ``told_at`` is when that decision was made, on :attr:`clock`
        (default: now)."""
        self.predictors[key] = predictor
        self.restart_costs[key] = restart_cost_seconds
        if time_left_seconds is None:
            self.times_left.pop(key, None)
        else:
            at = self.clock() if told_at is None else told_at
            self.times_left[key] = (time_left_seconds, at)

    def time_left(self, key: str) -> float | None:
        """The time the job has left now: as offered, less the time since (at least 0);
        None where its trainer does not say."""
        told = self.times_left.get(key)
        if told is None:
            return None
        seconds, at = told
        return max(0.0, seconds - (self.clock() - at))

    def jobs(self) -> int:
        """How many jobs this state holds something for."""
        return len(set(self.predictors) | set(self.restart_costs) | set(self.results))

    def forget(self, key: str) -> None:
        """A job is gone: keep nothing of it."""
        self.predictors.pop(key, None)
        self.restart_costs.pop(key, None)
        self.times_left.pop(key, None)
        self.results.pop(key, None)

    def ceiling(self, key: str) -> int | None:
        """The job's ceiling from the last pass; None when it is not arbitrated."""
        result = self.results.get(key)
        return None if result is None else result.ceiling

    def result(self, key: str) -> ArbitrationResult | None:
        """The job's full result from the last pass, if any."""
        return self.results.get(key)

    async def run_if_due(
        self, clients: k8s.KubernetesClients, *, for_key: str | None = None
    ) -> None:
        """Run a pass when the interval has passed since the last one, or when job
        ``for_key`` has no result yet, judged once the lock is held: a burst of new jobs
        waits on the lock together, and the pass the first of them runs answers every job it
        listed. (Each new job's loop used to force a pass of its own, one after another.)
        A job that has a result does not wait for a pass another loop is running: it goes on
        with its last ceiling (a thousand jobs' loops queued behind one pass of 15 s missed
        kopf's stop timeouts when their jobs were deleted, and were orphaned)."""
        if not self.enabled:
            return
        if for_key in self.results and self.lock.locked():
            return
        async with self.lock:
            due = time.monotonic() - self.last_run >= self.interval_seconds
            if not (due or (for_key is not None and for_key not in self.results)):
                return
            began = self.last_run = time.monotonic()
            try:
                await self._run(clients)
            except Exception as exc:  # a failed pass keeps the last results
                if str(exc) != self.error:
                    log.warning("cluster arbitration failed (keeping the last shares): %s", exc)
                self.error = str(exc)
            else:
                if self.error is not None:
                    log.warning("cluster arbitration works again")
                self.error = None
            seconds = time.monotonic() - began
            get_metrics().observe_arbitration_pass(seconds, ok=self.error is None)

    def _throughput(
        self, key: str, spec: api.TrainingJobSpec, forced_from: Iterable[int]
    ) -> dict[int, float]:
        table = self._predicted(key, range(1, spec.max_replicas + 1))
        return table or compute_prior_throughput(spec, compute_asked_replicas(spec, forced_from))

    def _throughput_across(
        self, key: str, spec: api.TrainingJobSpec, node_gpus: int
    ) -> dict[int, float]:
        """The model's throughput at the counts that fit one node of ``node_gpus`` GPUs when
        their workers span two nodes; nothing before the job has a model."""
        if spec.gpus_per_replica <= 0:
            return {}
        fits = min(spec.max_replicas, node_gpus // spec.gpus_per_replica)
        return self._predicted(key, range(2, fits + 1), nodes=2)

    def _predicted(
        self, key: str, counts: Iterable[int], nodes: int | None = None
    ) -> dict[int, float]:
        """The job's model's positive throughput at ``counts`` spanning ``nodes`` (None:
        packed); nothing before its autoscaler has a model."""
        predictor = self.predictors.get(key)
        if predictor is None:
            return {}
        table: dict[int, float] = {}
        for count in counts:
            value = predictor.predict_throughput(count, nodes=nodes)
            if value is not None and value > 0:
                table[count] = value
        return table

    async def _run(self, clients: k8s.KubernetesClients) -> None:
        began = time.monotonic()
        listed, pods, bodies, priorities = await asyncio.gather(
            NODES.refresh(clients, time.monotonic()),
            asyncio.to_thread(k8s.fetch_bound_pods, clients),
            asyncio.to_thread(k8s.fetch_all_jobs, clients),
            asyncio.to_thread(k8s.fetch_priority_classes, clients),
        )
        lists = time.monotonic()
        nodes = listed.gpu
        admitted, dry_runs = await self._admitted_specs(clients, bodies)
        admitting = time.monotonic()
        capacity = build_capacity(nodes, pods)
        running = compute_worker_nodes(pods)
        node_gpus = compute_largest_node_gpus(nodes)
        jobs: list[ManagedJob] = []
        previous: dict[str, api.ArbitrationStatus | None] = {}
        by_key = {_key_of(body): body for body in bodies}
        for body in bodies:
            job = self._managed_job(
                body, running, priorities, nodes, node_gpus, listed.other, admitted
            )
            if job is None:
                continue
            jobs.append(job)
            previous[job.key] = _previous_status(body)
        placed = {job.key for job in jobs if job.arbitrated}  # the workers the arbiter places
        free = build_node_free(nodes, pods, placed=placed)
        # Pure and over data built for this pass alone, so in a thread: the decision for a
        # thousand jobs takes 1.5-2.5 s of Python (benchmarks/arbiter_speed.py), which on the
        # event loop stalled every job's loop, the watches and kopf's stop timeouts with it.
        results = await asyncio.to_thread(
            decide_arbitration,
            jobs, capacity, previous, utcnow(), nodes, free, self.settings, listed.other,
        )  # fmt: skip
        self.results = results
        deciding = time.monotonic()
        metrics = get_metrics()
        changed = []
        for key, result in results.items():
            namespace, name = key.split("/", 1)
            metrics.observe_arbitration(namespace, name, result.ceiling, result.preempted)
            if not _same(previous.get(key), result.status):
                changed.append((by_key[key], result))
        gate = asyncio.Semaphore(PASS_CONCURRENCY)
        await asyncio.gather(*(self._write(clients, gate, body, r) for body, r in changed))
        log.debug(
            "arbitration pass: %d jobs; lists %.2f s, %d dry runs %.2f s, decision %.2f s, "
            "%d status writes %.2f s",
            len(bodies), lists - began, dry_runs, admitting - lists, deciding - admitting,
            len(changed), time.monotonic() - deciding,
        )  # fmt: skip

    async def _write(
        self,
        clients: k8s.KubernetesClients,
        gate: asyncio.Semaphore,
        body: Mapping[str, Any],
        result: ArbitrationResult,
    ) -> None:
        """Write a job's changed ``status.arbitration`` (under the job's status lock, while
        at most ``PASS_CONCURRENCY`` writes run: a job whose reconcile pass holds its lock
        keeps no other job's admission waiting), post its Event, wake its reconcile loop."""
        key = _key_of(body)
        namespace, name = key.split("/", 1)
        async with gate, WAKEUPS.lock(namespace, name):
            patch = result.patch_over(body.get("status") or {})
            await asyncio.to_thread(k8s.patch_job_status, clients, namespace, name, patch)
        if result.event is not None:
            self.post_event(body, result.event)
            log.info("TrainingJob %s: %s", key, result.event.message)
        WAKEUPS.wake(namespace, name)  # admitted, queued or re-capped: reconcile now

    def _managed_job(
        self,
        body: Mapping[str, Any],
        running: Mapping[tuple[str, str], tuple[str, ...]],
        priorities: Mapping[str, tuple[int, bool]],
        nodes: Sequence[Mapping[str, Any]] = (),
        node_gpus: int = 0,
        other_nodes: Sequence[Mapping[str, Any]] = (),
        admitted: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
    ) -> ManagedJob | None:
        meta = body.get("metadata") or {}
        try:
            spec = api.TrainingJobSpec.model_validate(body.get("spec") or {})
        except pydantic.ValidationError:
            return None  # the reconcile loop reports it; it holds no pods
        namespace, name = meta.get("namespace", ""), meta.get("name", "")
        key = job_key(namespace, name)
        priority_class = (spec.template.get("spec") or {}).get("priorityClassName") or ""
        pod_spec = (admitted or {}).get((namespace, name))
        priority, preempts = priorities.get(priority_class, (0, True))
        return ManagedJob(
            key=key,
            spec=spec,
            phase=(body.get("status") or {}).get("phase") or "",
            created=parse_timestamp(meta.get("creationTimestamp")),
            worker_nodes=running.get((namespace, name), ()),
            priority=priority,
            preempts=preempts,
            throughput=self._throughput(key, spec, _forced_from(body)),
            throughput_across_nodes=self._throughput_across(key, spec, node_gpus),
            restart_cost_seconds=self.restart_costs.get(key, 0.0),
            time_left_seconds=self.time_left(key),
            node_bound=max_workers_per_node(
                namespace, name, spec, nodes, other_nodes, pod_spec=pod_spec
            ),
            pod_spec=pod_spec,
            # Jobs outside this operator's namespaces belong to another operator: they hold
            # their GPUs (pinned) and this one never writes them.
            arbitration_enabled=self.in_scope(namespace),
        )

    async def _admitted_specs(
        self, clients: k8s.KubernetesClients, bodies: Sequence[Mapping[str, Any]]
    ) -> tuple[dict[tuple[str, str], Mapping[str, Any]], int]:
        """The admitted pod spec of each job this operator arbitrates and that has not
        finished (:class:`~trainscale.operator.daemons.common.AdmittedPodSpecs`), and how
        many dry runs it took: one per job whose template is new or changed, and a bounded
        number of refreshes of expired ones (:func:`compute_refresh_budget`; the rest are
        read as they were, and refreshed in a later pass), ``PASS_CONCURRENCY`` at a time (a
        burst of 200 new jobs made 200 dry runs one after another, seconds of the pass that
        admits them)."""
        now = ADMITTED.clock()
        found: dict[tuple[str, str], Mapping[str, Any]] = {}
        missing: list[tuple[JobRef, api.TrainingJobSpec]] = []
        expired: dict[tuple[str, str], float] = {}
        stale: dict[tuple[str, str], tuple[JobRef, api.TrainingJobSpec]] = {}
        for body in bodies:
            meta = body.get("metadata") or {}
            namespace, name = meta.get("namespace", ""), meta.get("name", "")
            phase = (body.get("status") or {}).get("phase") or ""
            if not self.in_scope(namespace) or phase in FINISHED_JOB_PHASES:
                continue
            try:
                spec = api.TrainingJobSpec.model_validate(body.get("spec") or {})
            except pydantic.ValidationError:
                continue
            job = JobRef(name=name, namespace=namespace, uid=meta.get("uid", ""))
            entry = ADMITTED.entry(job, spec)
            if entry is None:
                missing.append((job, spec))
                continue
            until, found[(namespace, name)] = entry  # held, or stale until refreshed
            if now >= until:
                expired[(namespace, name)] = until
                stale[(namespace, name)] = (job, spec)
        budget = compute_refresh_budget(
            len(found) + len(missing), self.interval_seconds, ADMITTED.ttl_seconds
        )
        missing += [stale[key] for key in choose_refreshes(expired, budget)]
        gate = asyncio.Semaphore(PASS_CONCURRENCY)

        async def admit(job: JobRef, spec: api.TrainingJobSpec) -> None:
            async with gate:
                found[(job.namespace, job.name)] = await asyncio.to_thread(
                    ADMITTED.refresh, clients, job, spec, now
                )

        await asyncio.gather(*(admit(job, spec) for job, spec in missing))
        return found, len(missing)

    def in_scope(self, namespace: str) -> bool:
        """Whether this operator manages jobs in ``namespace``."""
        return not self.namespaces or any(
            fnmatch.fnmatchcase(namespace, p) for p in self.namespaces
        )


def arbitration_of(memo: Any) -> ClusterArbitration | None:
    """The process's arbitration state from kopf's memo (None where start-up made none)."""
    found = getattr(memo, "arbitration", None)
    return found if isinstance(found, ClusterArbitration) else None


def arbitration_active(memo: Any) -> bool:
    """Whether arbitrated jobs should wait for their admission: arbitration is on and its
    last pass did not fail (a pass that cannot list the cluster, e.g. for want of RBAC, must
    not keep every job waiting; the jobs then autoscale on their own)."""
    found = arbitration_of(memo)
    return found is not None and found.enabled and found.error is None


def _key_of(body: Mapping[str, Any]) -> str:
    meta = body.get("metadata") or {}
    return job_key(meta.get("namespace", ""), meta.get("name", ""))


def _previous_status(body: Mapping[str, Any]) -> api.ArbitrationStatus | None:
    raw = (body.get("status") or {}).get("arbitration")
    if not raw:
        return None
    try:
        return api.ArbitrationStatus.model_validate(raw)
    except pydantic.ValidationError:
        return None


def _forced_from(body: Mapping[str, Any]) -> tuple[int, ...]:
    """The counts the job's autoscaler remembers being forced off (its memory in status, read
    as the autoscaler reads it back)."""
    memory = AutoscalerMemory.from_status(body.get("status") or {})
    return () if memory is None else memory.forced_from


def _same(old: api.ArbitrationStatus | None, new: api.ArbitrationStatus) -> bool:
    """Equal but for the timestamp: then there is nothing to write."""
    if old is None:
        return False
    return old.model_copy(update={"last_update_time": None}) == new.model_copy(
        update={"last_update_time": None}
    )
