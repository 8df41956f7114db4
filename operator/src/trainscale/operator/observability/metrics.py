"""The operator's own Prometheus metrics, defined once.

Why this module exists: the names are part of the product's interface (the Grafana dashboard
and users' alerts read them), so each is declared here once, with its unit in the name, and
the handlers only call the small helpers below. The names themselves live in
:mod:`trainscale.operator.observability.metric_names`, which the dashboard imports without prometheus_client.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

from trainscale.operator.api.models import Phase
from trainscale.operator.observability.container import memory_limit_bytes
from trainscale.operator.observability.metric_names import (
    ARBITRATION_CEILING_NAME,
    ARBITRATION_PASS_DURATION_NAME,
    ARBITRATION_PASSES_NAME,
    DESIRED_REPLICAS_NAME,
    JOB_COST_PER_HOUR_NAME,
    JOB_LABEL,
    JOB_LOOPS_CANCELLED_NAME,
    JOB_LOOPS_NAME,
    JOB_STATE_NAME,
    LOOP_LABEL,
    MANAGED_JOBS_NAME,
    MANAGED_PODS_NAME,
    MEMORY_LIMIT_NAME,
    NAMESPACE_LABEL,
    PREEMPTIONS_NAME,
    PROMETHEUS_QUERY_DURATION_NAME,
    PROMETHEUS_QUERY_ERRORS_NAME,
    RECONCILE_DURATION_NAME,
    RECONCILE_TOTAL_NAME,
    SCALING_DECISIONS_NAME,
    STORE_LABEL,
    WATCH_RELISTS_NAME,
    WORKERS_OFF_PLAN_NAME,
)

_JOB_LABELS = [NAMESPACE_LABEL, JOB_LABEL]
# Reconcile passes: milliseconds when the apiserver answers at once, but minutes under a
# burst on a loaded control plane; a top bucket of 10 s would hide how much over it they were.
RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120,
                     300, 600)  # fmt: skip


class OperatorMetrics:
    """All operator metrics, registered in one registry."""

    def __init__(
        self,
        registry: CollectorRegistry = REGISTRY,
        memory_limit: Callable[[], float] = memory_limit_bytes,
    ) -> None:
        # prometheus_client appends _total to counters itself; give it the stem.
        self.reconcile_total = Counter(
            RECONCILE_TOTAL_NAME.removesuffix("_total"),
            "Reconcile passes of TrainingJobs, by outcome (ok, invalid, error).",
            ["outcome"],
            registry=registry,
        )
        self.reconcile_duration = Histogram(
            RECONCILE_DURATION_NAME,
            "Wall time of one reconcile pass.",
            buckets=RECONCILE_BUCKETS,
            registry=registry,
        )
        self.managed_jobs = Gauge(
            MANAGED_JOBS_NAME,
            "TrainingJobs managed by this operator, by phase.",
            ["phase"],
            registry=registry,
        )
        self.managed_pods = Gauge(
            MANAGED_PODS_NAME,
            "Worker pods of managed TrainingJobs (not terminating).",
            _JOB_LABELS,
            registry=registry,
        )
        self.desired_replicas = Gauge(
            DESIRED_REPLICAS_NAME,
            "spec.replicas of each TrainingJob.",
            _JOB_LABELS,
            registry=registry,
        )
        self.workers_off_plan = Gauge(
            WORKERS_OFF_PLAN_NAME,
            "Bound worker pods of each TrainingJob on another node than cluster arbitration "
            "planned for them (trainscale.dev/planned-node). Above 0 for long: the scheduler "
            "does not follow the preferred node (no NodeAffinity scoring in its profile), or "
            "something arbitration does not read keeps workers off it (pod anti-affinity).",
            _JOB_LABELS,
            registry=registry,
        )
        self.arbitration_ceiling = Gauge(
            ARBITRATION_CEILING_NAME,
            "The workers cluster arbitration grants each arbitrated TrainingJob (its "
            "autoscaler's ceiling; 0 while it waits Queued). Below desired: the job is held "
            "back by the jobs beside it, status.arbitration.reason says how.",
            _JOB_LABELS,
            registry=registry,
        )
        self.preemptions = Counter(
            PREEMPTIONS_NAME.removesuffix("_total"),
            "Times cluster arbitration stopped a running TrainingJob for a job of higher "
            "priority (its Preempted Event names which).",
            _JOB_LABELS,
            registry=registry,
        )
        self.arbitration_passes = Counter(
            ARBITRATION_PASSES_NAME.removesuffix("_total"),
            "Cluster arbitration passes, by outcome (ok; error: the pass failed, the jobs "
            "keep their last shares and new ones are not held for admission, the operator "
            "log says why).",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("ok", "error"):  # both start at 0, so increase() sees the first
            self.arbitration_passes.labels(outcome)
        self.arbitration_pass_duration = Histogram(
            ARBITRATION_PASS_DURATION_NAME,
            "Wall time of one cluster arbitration pass (its list requests, the dry runs of "
            "new jobs' pods, the decision and the status writes).",
            buckets=RECONCILE_BUCKETS,
            registry=registry,
        )
        self.job_cost_per_hour = Gauge(
            JOB_COST_PER_HOUR_NAME,
            "replicas x GPUs per replica x costPerGpuHour of each TrainingJob.",
            _JOB_LABELS,
            registry=registry,
        )
        self.scaling_decisions = Counter(
            SCALING_DECISIONS_NAME.removesuffix("_total"),
            "Autoscaler decisions, by direction (up, down, hold) and reason class.",
            ["direction", "reason"],
            registry=registry,
        )
        self.prometheus_query_errors = Counter(
            PROMETHEUS_QUERY_ERRORS_NAME.removesuffix("_total"),
            "Failed Prometheus queries, by kind (timeout, http, parse, empty).",
            ["kind"],
            registry=registry,
        )
        self.prometheus_query_duration = Histogram(
            PROMETHEUS_QUERY_DURATION_NAME,
            "Latency of Prometheus queries.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.job_loops = Gauge(
            JOB_LOOPS_NAME,
            "Live per-job loops (kopf daemons), by loop (reconcile, autoscale): one of each "
            "per TrainingJob; more is a loop that outlived its job.",
            [LOOP_LABEL],
            registry=registry,
        )
        self.job_loops_cancelled = Counter(
            JOB_LOOPS_CANCELLED_NAME.removesuffix("_total"),
            "Per-job loops that did not stop at kopf's stop flag and were cancelled.",
            [LOOP_LABEL],
            registry=registry,
        )
        self.watch_relists = Counter(
            WATCH_RELISTS_NAME.removesuffix("_total"),
            "Times the watch of the operator's pods and Services listed them: at the "
            "operator's start (when there are any), and afresh after a 410 Gone or a failed "
            "connection, when events may have been lost. Each woke every job's reconcile loop.",
            registry=registry,
        )
        self.job_state = Gauge(
            JOB_STATE_NAME,
            "Jobs this process keeps state for, by in-process store: at most the managed "
            "jobs; more is state a deleted job left behind.",
            [STORE_LABEL],
            registry=registry,
        )
        self.memory_limit = Gauge(
            MEMORY_LIMIT_NAME,
            "The memory limit of the operator's container (its cgroup), read at each "
            "scrape: +Inf without a limit, NaN where no cgroup says. Over it the kernel "
            "kills the operator; compare process_resident_memory_bytes.",
            registry=registry,
        )
        self.memory_limit.set_function(memory_limit)
        self._phases: dict[tuple[str, str], str] = {}
        self.track_state("phases", lambda: len(self._phases))

    def track_state(self, store: str, jobs: Callable[[], int]) -> None:
        """Report ``jobs()`` (how many jobs ``store`` holds something for) at every scrape."""
        self.job_state.labels(store).set_function(jobs)

    @contextlib.contextmanager
    def job_loop(self, loop: str) -> Iterator[None]:
        """Count one live ``loop`` while the block runs (however it ends), and a cancellation
        that ends it."""
        with self.job_loops.labels(loop).track_inprogress():
            try:
                yield
            except asyncio.CancelledError:
                self.job_loops_cancelled.labels(loop).inc()
                raise

    def observe_job(
        self, namespace: str, job: str, phase: str, pods: int, desired: int, off_plan: int = 0
    ) -> None:
        """Record a job's phase, live pods, desired replicas and workers bound off their
        planned node after a reconcile."""
        self._phases[(namespace, job)] = phase
        self._refresh_phases()
        self.managed_pods.labels(namespace, job).set(pods)
        self.desired_replicas.labels(namespace, job).set(desired)
        self.workers_off_plan.labels(namespace, job).set(off_plan)

    def observe_arbitration(
        self, namespace: str, job: str, ceiling: int | None, preempted: bool
    ) -> None:
        """Record an arbitration pass's answer for a job: its ceiling (none: no series, as
        when no GPU is visible and jobs autoscale alone) and a preemption. The preemption
        counter starts at 0 for every arbitrated job, so ``increase()`` sees its first one."""
        if ceiling is None:
            with contextlib.suppress(KeyError):
                self.arbitration_ceiling.remove(namespace, job)
        else:
            self.arbitration_ceiling.labels(namespace, job).set(ceiling)
        counter = self.preemptions.labels(namespace, job)
        if preempted:
            counter.inc()

    def observe_arbitration_pass(self, seconds: float, *, ok: bool) -> None:
        """Record one cluster arbitration pass: how long it took and whether it failed."""
        self.arbitration_passes.labels("ok" if ok else "error").inc()
        self.arbitration_pass_duration.observe(seconds)

    def forget_job(self, namespace: str, job: str) -> None:
        """Drop a deleted job's series."""
        self._phases.pop((namespace, job), None)
        self._refresh_phases()
        gauges = (
            self.managed_pods,
            self.desired_replicas,
            self.job_cost_per_hour,
            self.workers_off_plan,
            self.arbitration_ceiling,
            self.preemptions,
        )
        for gauge in gauges:
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, job)

    def _refresh_phases(self) -> None:
        counts: dict[str, int] = {}
        for phase in self._phases.values():
            counts[phase] = counts.get(phase, 0) + 1
        for phase in Phase:
            self.managed_jobs.labels(phase.value).set(counts.get(phase.value, 0))


def serve_metrics(port: int, address: str) -> None:
    """Serve /metrics of the default registry on ``address:port`` (a daemon thread)."""
    start_http_server(port, addr=address)
