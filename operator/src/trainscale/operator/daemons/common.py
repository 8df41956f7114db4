"""State and helpers every daemon shares: per-job wake-ups and status locks, the process's
operator metrics, Event posting, the wall clock.

Why this module exists: a job has two loops (reconcile and autoscale) that must never write
its status at the same time, and watch events must be able to wake a job's reconcile loop.
Both needs are per job and per process, so they live in one place below both loops; so does
what both the cluster pass and the autoscale loop read of a template (a bound on workers
per node, and the pod spec admission makes of it).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import math
import random
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import kopf

from trainscale.operator import api
from trainscale.operator.adapters import k8s
from trainscale.operator.api.reporting import EventSpec
from trainscale.operator.autoscaling.cluster import trim_scheduling_spec
from trainscale.operator.autoscaling.node_filters import (
    NodeBound,
    compute_max_workers_per_node,
    template_pod_spec,
)
from trainscale.operator.controller.builders import JobRef, build_worker_labels, build_worker_pod
from trainscale.operator.observability.metric_names import AUTOSCALE_LOOP, RECONCILE_LOOP
from trainscale.operator.observability.metrics import OperatorMetrics

log = logging.getLogger(__name__)

RESYNC_SECONDS = 10.0
"""How soon a loop looks at its job again after a pass that acted (or found an API error)."""

# How long a loop whose last pass found nothing to do sleeps unless woken. Every change of a
# job, of its pods or of its rendezvous Service reaches the operator as a watch event that
# wakes the job's loops at once, and a watch that lists its objects again (its events may
# have been lost meanwhile) wakes every job (:class:`WatchRelists`), so this only bounds what
# nothing foreseen could hide: an idle job costs no API request in between. It was 300 s:
# 4 requests a job every 5 minutes, 13.3 a second at 1,000 jobs, for events none had lost.
IDLE_RESYNC_SECONDS = 1800.0

_metrics: OperatorMetrics | None = None


def get_metrics() -> OperatorMetrics:
    """The process-wide operator metrics (created on first use)."""
    global _metrics  # noqa: PLW0603 - one registry per process
    if _metrics is None:
        _metrics = OperatorMetrics()
        _metrics.track_state("wakeups", WAKEUPS.jobs)
        _metrics.track_state("worker_pod_lists", WORKER_PODS.jobs)
    return _metrics


class Wakeups:
    """Per job and loop: an asyncio.Event that wakes the loop (the reconcile loop on a change
    of the job it reads or of the job's pods, the autoscale loop on any change of the job);
    per job: the lock that serialises every read-status-then-patch-status section of the
    job's two loops."""

    def __init__(self) -> None:
        self._events: dict[tuple[str, str, str], asyncio.Event] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._inputs: dict[tuple[str, str], str] = {}  # the last reconcile_inputs seen

    def lock(self, namespace: str, name: str) -> asyncio.Lock:
        """The job's status lock (created on first use)."""
        return self._locks.setdefault((namespace, name), asyncio.Lock())

    def get(self, namespace: str, name: str, loop: str = RECONCILE_LOOP) -> asyncio.Event:
        """The wake-up event of one of a job's loops (created on first use)."""
        return self._events.setdefault((namespace, name, loop), asyncio.Event())

    def wake(self, namespace: str, name: str, loop: str = RECONCILE_LOOP) -> None:
        """Ask one of the job's loops (the reconcile loop by default) to run a pass now.

        Only a running loop is woken: one not started yet begins with a pass anyway, and a
        deleted job's late events (its pods going after it) must not bring back the state
        :meth:`forget` dropped, for good, since nothing would forget it again."""
        event = self._events.get((namespace, name, loop))
        if event is not None:
            event.set()

    def wake_on_change(self, namespace: str, name: str, inputs: str) -> None:
        """Wake the job's reconcile loop if ``inputs`` (the job's
        :func:`~trainscale.operator.controller.reconcile.reconcile_inputs`) differs from the
        last the loop was woken with: a write of only the autoscaler's status leaves it."""
        key = (namespace, name)
        if (namespace, name, RECONCILE_LOOP) not in self._events:
            return  # not started (it begins with a pass) or forgotten: remember nothing
        if self._inputs.get(key) != inputs:
            self._inputs[key] = inputs
            self.wake(namespace, name)

    def wake_all(self, loop: str = RECONCILE_LOOP) -> int:
        """Ask one loop of every running job (the reconcile loop by default) to run a pass
        now; returns how many were woken."""
        woken = [event for key, event in self._events.items() if key[2] == loop]
        for event in woken:
            event.set()
        return len(woken)

    def jobs(self) -> int:
        """How many jobs have an event or a lock here."""
        return len({key[:2] for key in self._events} | set(self._locks) | set(self._inputs))

    def forget(self, namespace: str, name: str) -> None:
        """Drop a deleted job's events and lock."""
        for loop in (RECONCILE_LOOP, AUTOSCALE_LOOP):
            self._events.pop((namespace, name, loop), None)
        self._locks.pop((namespace, name), None)
        self._inputs.pop((namespace, name), None)


WAKEUPS = Wakeups()


class WorkerPodLists:
    """Each job's last listing of its worker pods, read again only when the watch says they
    changed (or the listing is ``max_age_seconds`` old).

    Every autoscale pass listed the job's pods: one LIST a job and interval, 33.8 of the 37.2
    requests a second that 1,000 running arbitrated jobs made (a LIST with a label selector,
    which the apiserver answers by filtering every pod of the namespace). The operator
    watches every pod it created (kopf), so a job whose pods did not change needs no new
    listing: a watch event of one of its pods or of its Service (:meth:`changed`) drops the
    job's listing, and the next pass lists again. A listing in flight when such an event
    arrives is used once and not kept. A watch that lists the pods again, after a gap whose
    events it may have lost (a pod deleted meanwhile is in no listing, so nothing tells of
    it), drops every listing (:meth:`relisted`, :class:`WatchRelists`). ``max_age_seconds``
    (as long as an idle loop trusts the watch, :data:`IDLE_RESYNC_SECONDS`) bounds what
    anything else could hide. Each listing ages out a little sooner than that, by a random
    share of it up to ``age_spread``: the listings of a burst of jobs, made together, would
    all be listed again within one interval every ``max_age_seconds``.

    The reconcile pass always lists (:meth:`fetch`: it creates and deletes pods by what it
    finds) and keeps what it found; the autoscale pass reads the kept listing (:meth:`get`).
    Listings are kept trimmed (:func:`~trainscale.operator.controller.reconcile.
    trim_worker_pod`). Thread-safe: the passes list in threads, the events arrive on the
    event loop.
    """

    def __init__(
        self,
        max_age_seconds: float = IDLE_RESYNC_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        age_spread: float = 0.5,
        rng: random.Random | None = None,
    ) -> None:
        self.max_age_seconds = max_age_seconds
        self.clock = clock
        self.age_spread = age_spread
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        # per job: until when its listing holds (monotonic), the pods
        self._lists: dict[tuple[str, str], tuple[float, list[dict[str, Any]]]] = {}
        # per job: a listing in flight, until an event or a forget makes it one to not keep
        self._pending: dict[tuple[str, str], object] = {}

    def get(
        self, clients: k8s.KubernetesClients, namespace: str, name: str
    ) -> list[dict[str, Any]]:
        """The job's worker pods as last listed, if no event came since and the listing
        has not aged out; else listed now (blocking: one request)."""
        key = (namespace, name)
        with self._lock:
            kept = self._lists.get(key)
        if kept is not None and self.clock() < kept[0]:
            return kept[1]
        return self.fetch(clients, namespace, name)

    def fetch(
        self, clients: k8s.KubernetesClients, namespace: str, name: str
    ) -> list[dict[str, Any]]:
        """The job's worker pods, listed now (blocking: one request), and kept unless an
        event of the job's pods arrives meanwhile."""
        key = (namespace, name)
        token = object()
        with self._lock:
            self._pending[key] = token
            share = self._rng.random()
        until = self.clock() + self.max_age_seconds * (1.0 - self.age_spread * share)
        pods: list[dict[str, Any]] | None = None
        try:
            pods = k8s.fetch_worker_pods(clients, namespace, name)
        finally:
            with self._lock:
                if self._pending.get(key) is token:
                    del self._pending[key]
                    if pods is not None:
                        self._lists[key] = (until, pods)
        return pods

    def changed(self, namespace: str, name: str) -> None:
        """One of the job's pods (or its Service) changed: its next pass lists them again.
        A job not kept here stays so (a deleted job's pods go after it)."""
        key = (namespace, name)
        with self._lock:
            self._lists.pop(key, None)
            self._pending.pop(key, None)

    def relisted(self) -> None:
        """The watch listed the pods again, and may have lost events meanwhile: every job's
        next pass lists its pods again (listings in flight are used once, not kept)."""
        with self._lock:
            self._lists.clear()
            self._pending.clear()

    def jobs(self) -> int:
        """How many jobs have a listing here, kept or in flight."""
        with self._lock:
            return len(set(self._lists) | set(self._pending))

    def forget(self, namespace: str, name: str) -> None:
        """Drop a deleted job's listing."""
        self.changed(namespace, name)


WORKER_PODS = WorkerPodLists()


class WatchRelists:
    """Tells when the watch of the operator's pods and Services lists them again.

    kopf watches from the resource version it last saw, so a reconnect loses nothing; but
    when the apiserver no longer has that version (410 Gone, after a long disconnect) or the
    connection fails, kopf lists the objects afresh and watches from there, delivering each
    listed object as an event of type ``None``. Whatever changed in between arrives as that
    listing, except what went: a pod deleted during the gap is in no listing, and a job whose
    every pod and Service went hears of nothing at all. Every job then runs a reconcile pass
    (:meth:`Wakeups.wake_all`) and lists its pods again (:meth:`WorkerPodLists.relisted`),
    as an informer's re-list would compare against its cache; this is what lets an idle job
    sleep :data:`IDLE_RESYNC_SECONDS` without polling for lost events.

    The first listing, at the operator's start, wakes every job too: a job's loop may have
    made its first pass, and gone idle, before a pod went and before the watch began.

    A listing arrives as one event per object: the events of one listing come in a burst,
    and :meth:`seen` says True for the first event after ``quiet_seconds`` without any.
    """

    def __init__(self, quiet_seconds: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.quiet_seconds = quiet_seconds
        self.clock = clock
        self._last: float | None = None

    def seen(self) -> bool:
        """An object came from a listing: whether it begins a new one."""
        now = self.clock()
        new = self._last is None or now - self._last > self.quiet_seconds
        self._last = now
        return new


RELISTS = WatchRelists()


#: Appended to a job's name for the labels of "another job from the same template".
STRANGER_SUFFIX = "another"


class AdmittedPodSpecs:
    """The pod spec each job's workers get once admitted, per job, read by a dry-run create
    of its worker 0 (:func:`~trainscale.operator.adapters.k8s.fetch_admitted_pod`).

    The scheduler filters the pod that admission leaves, and admission may add what the
    template lacks: on GKE a pod requesting ``nvidia.com/gpu`` gets a toleration of the
    ``nvidia.com/gpu=present:NoSchedule`` taint every GPU node carries there
    (``ExtendedResourceToleration``); a namespace may add a node selector, a policy engine
    tolerations, a LimitRange CPU and memory requests. Read from the template alone, such a
    job was excluded from every GPU node and queued for good ("taint nvidia.com/gpu=present:
    NoSchedule excludes 4 nodes") while the scheduler would have run it. Kept while the
    template is unchanged, for at most ``ttl_seconds`` (admission's rules change rarely, and
    a dry run per job and pass would add one request per job each interval). Where the dry
    run is refused, the pod as built stands in (:func:`build_worker_pod`) for
    ``retry_seconds`` only: a refusal may pass (a webhook's outage, a quota freed).

    Held trimmed to what its readers use (:func:`trim_scheduling_spec`). An expired spec of
    an unchanged template stays readable (:meth:`stale`) until it is read again: the
    arbitration pass refreshes a bounded number of them each pass, the longest expired
    first (:func:`compute_refresh_budget`, :func:`choose_refreshes`), so that the specs of a
    burst of jobs, which all expire together, are not all read again at once.
    """

    def __init__(
        self,
        ttl_seconds: float = 600.0,
        retry_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_seconds = ttl_seconds
        self.retry_seconds = retry_seconds
        self.clock = clock  # what the arbitration pass reads ``now`` from
        # per job: the template's fingerprint, until when it holds (monotonic), the spec
        self._found: dict[tuple[str, str], tuple[str, float, Mapping[str, Any]]] = {}

    def pod_spec(
        self,
        clients: k8s.KubernetesClients,
        job: JobRef,
        spec: api.TrainingJobSpec,
        now: float,
        *,
        stale: bool = False,
    ) -> Mapping[str, Any]:
        """The admitted pod spec of ``job``'s workers (blocking: one request when not
        held); ``now``: a monotonic clock, in seconds. ``stale``: an expired spec of the
        same template will do (the arbitration pass refreshes it)."""
        held = self.stale(job, spec) if stale else self.held(job, spec, now)
        if held is not None:
            return held
        return self.refresh(clients, job, spec, now)

    def refresh(
        self, clients: k8s.KubernetesClients, job: JobRef, spec: api.TrainingJobSpec, now: float
    ) -> Mapping[str, Any]:
        """Read the admitted pod spec of ``job``'s workers (one request), and hold it."""
        fingerprint = _fingerprint(spec)
        pod = build_worker_pod(job, spec, 0)
        admitted = (k8s.fetch_admitted_pod(clients, pod) or {}).get("spec")
        found = trim_scheduling_spec(admitted or pod["spec"])
        until = now + (self.ttl_seconds if admitted else self.retry_seconds)
        self._found[(job.namespace, job.name)] = (fingerprint, until, found)
        return found

    def held(self, job: JobRef, spec: api.TrainingJobSpec, now: float) -> Mapping[str, Any] | None:
        """The admitted pod spec held for ``job``'s template at ``now``, or None when
        :meth:`pod_spec` would have to ask the apiserver."""
        entry = self.entry(job, spec)
        return entry[1] if entry is not None and now < entry[0] else None

    def stale(self, job: JobRef, spec: api.TrainingJobSpec) -> Mapping[str, Any] | None:
        """The pod spec held for ``job``'s template, however long ago it expired (None
        where none is held, or it was read for another template)."""
        entry = self.entry(job, spec)
        return None if entry is None else entry[1]

    def entry(
        self, job: JobRef, spec: api.TrainingJobSpec
    ) -> tuple[float, Mapping[str, Any]] | None:
        """Until when (monotonic) the pod spec held for ``job``'s template holds, and the
        spec; None where none is held, or it was read for another template."""
        held = self._found.get((job.namespace, job.name))
        return (held[1], held[2]) if held is not None and held[0] == _fingerprint(spec) else None

    def forget(self, namespace: str, name: str) -> None:
        """Drop a deleted job's pod spec."""
        self._found.pop((namespace, name), None)


REFRESH_MIN_PER_PASS = 8
"""The fewest expired admitted pod specs an arbitration pass reads again (as many as it
reads at once: one round trip)."""

REFRESH_CATCH_UP = 2.0
"""How many times faster than the specs expire a pass's refreshes go through them: the
specs of a burst of jobs, expiring together, are read again within half a TTL, spread over
the passes, and every spec again at most about half a TTL after it expired."""


def compute_refresh_budget(jobs: int, interval_seconds: float, ttl_seconds: float) -> int:
    """How many expired admitted pod specs of unchanged templates one pass of every
    ``interval_seconds`` reads again, with ``jobs`` specs held for ``ttl_seconds`` each:
    :data:`REFRESH_CATCH_UP` times the rate at which they expire, at least
    :data:`REFRESH_MIN_PER_PASS`. A new job's spec, or a changed template's, is read in the
    pass that finds it, outside this budget.

    Why: a burst of 1,000 jobs admitted together has 1,000 specs that expire together, and
    the passes and every job's own loop read them all again within two minutes of expiring,
    every TTL (10 minutes): 8.3 dry-run creates a second through the apiserver's admission
    chain, now 1.7 (docs/operator-scale.md)."""
    if ttl_seconds <= 0 or interval_seconds <= 0:
        return max(REFRESH_MIN_PER_PASS, jobs)
    return max(
        REFRESH_MIN_PER_PASS, math.ceil(REFRESH_CATCH_UP * jobs * interval_seconds / ttl_seconds)
    )


def choose_refreshes(
    expired: Mapping[tuple[str, str], float], budget: int
) -> list[tuple[str, str]]:
    """The jobs whose specs a pass reads again: ``budget`` of the ``expired`` ones (job ->
    when its spec expired), the longest expired first (then by namespace and name)."""
    return sorted(expired, key=lambda job: (expired[job], job))[: max(0, budget)]


ADMITTED = AdmittedPodSpecs()


def _fingerprint(spec: api.TrainingJobSpec) -> str:
    """What an admitted pod spec is held against: the job's pod template."""
    return json.dumps(spec.template, sort_keys=True, default=str)


class NodeListing:
    """The cluster's nodes (:func:`~trainscale.operator.adapters.k8s.fetch_nodes`), listed at
    most once every ``max_age_seconds`` for every job's autoscale pass together.

    Each pass reads the nodes (GPUs per node, labels, taints) for its placement model and
    bounds. Listed per pass, a thousand autoscaled jobs every 30 s made 33 LISTs of every
    node a second, each the whole node list (megabytes on a large cluster) serialised by
    the apiserver and parsed here. Nodes change on the scale of minutes; the arbitration
    pass lists them afresh every interval (:meth:`refresh`) and the loops reuse that.
    Callers at once share one LIST, waiting on an asyncio lock, not in a thread: a
    thread blocked on a lock is one the job loops' API calls cannot use."""

    def __init__(self, max_age_seconds: float = 10.0) -> None:
        self.max_age_seconds = max_age_seconds
        # per cluster (one connection per kubeconfig): when listed (monotonic), the nodes
        self._listed: dict[k8s.KubernetesClients, tuple[float, k8s.ListedNodes]] = {}
        # one lock per event loop (an asyncio.Lock is bound to the loop that first waits on it)
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )

    async def get(self, clients: k8s.KubernetesClients, now: float) -> k8s.ListedNodes:
        """The nodes as listed less than ``max_age_seconds`` before ``now`` (a monotonic
        clock, in seconds), listing them when they are older."""
        async with self._locked():
            held = self._listed.get(clients)
            if held is not None and now - held[0] < self.max_age_seconds:
                return held[1]
            return await self._list(clients, now)

    async def refresh(self, clients: k8s.KubernetesClients, now: float) -> k8s.ListedNodes:
        """The nodes listed now, kept for the next callers."""
        async with self._locked():
            return await self._list(clients, now)

    def _locked(self) -> asyncio.Lock:
        return self._locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())

    async def _list(self, clients: k8s.KubernetesClients, now: float) -> k8s.ListedNodes:
        listed = await asyncio.to_thread(k8s.fetch_nodes, clients)
        self._listed[clients] = (now, listed)
        return listed


NODES = NodeListing()


def max_workers_per_node(
    namespace: str,
    name: str,
    spec: api.TrainingJobSpec,
    nodes: Sequence[Mapping[str, Any]] = (),
    other_nodes: Sequence[Mapping[str, Any]] = (),
    pod_spec: Mapping[str, Any] | None = None,
) -> NodeBound | None:
    """How many of the job's workers one node may run by its template's own rules, and which
    (:func:`~trainscale.operator.autoscaling.node_filters.compute_max_workers_per_node`, on
    the labels its workers 0 and 1 get, and a worker of another job from the same template;
    ``nodes``: the GPU nodes, ``other_nodes`` the rest, which a spread constraint counts
    too; ``pod_spec``: the workers' pod spec as admitted, else the template's); None: no
    bound. The arbiter and the autoscaler both read it, so they count the placement the
    scheduler will make."""
    return compute_max_workers_per_node(
        pod_spec if pod_spec is not None else template_pod_spec(spec.template),
        build_worker_labels(name, spec.template, 0),
        build_worker_labels(name, spec.template, 1),
        namespace,
        stranger_labels=build_worker_labels(f"{name}-{STRANGER_SUFFIX}", spec.template, 0),
        nodes=nodes,
        max_replicas=spec.max_replicas,
        other_nodes=other_nodes,
    )


def utcnow() -> dt.datetime:
    """The wall clock, timezone-aware (UTC)."""
    return dt.datetime.now(dt.UTC)


def post_event(body: Mapping[str, Any], event: EventSpec) -> None:
    """Post a Kubernetes Event on the job (through kopf's event queue)."""
    kopf.event(cast(kopf.Body, body), type=event.type, reason=event.reason, message=event.message)


# How long kopf lets a job's loop finish its pass after the job is deleted (or the operator
# stops) before it cancels it (kopf's cancellation_backoff): a pass is well under this, and a
# pass cut off mid-write (its thread still writes) would change the job under kopf's
# finalizer removal.
LOOP_STOP_TIMEOUT_SECONDS = 5.0
# ... and how long it then waits for the cancelled loop before leaving it orphaned (kopf's
# cancellation_timeout); the loops-stop test checks none is.
LOOP_CANCEL_TIMEOUT_SECONDS = 2.0


async def sleep_or_wake(
    stopped: kopf.DaemonStopped, delay: float, wake: asyncio.Event | None = None
) -> None:
    """Sleep ``delay`` seconds, or less when ``wake`` is set or kopf stops the loop.

    Uses :func:`asyncio.wait`, which never swallows a cancellation (``asyncio.wait_for`` on
    Python 3.11 can, when it arrives in the same tick as the wake-up: CPython gh-86296). Nor
    does the clean-up: the cancelled waiters' own CancelledErrors are gathered as results, so
    a CancelledError raised here is always the caller's (kopf cancelling the loop).
    """
    waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(stopped.wait())]
    if wake is not None:
        waiters.append(asyncio.ensure_future(wake.wait()))
    try:
        await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
