"""Cluster arbitration: how many workers each managed job may run, when they share GPUs.

Why this module exists: each ``TrainingJob`` autoscales as if it were alone, so on a shared
cluster the first jobs grow to their efficiency floor and the later ones wait. Only a
cluster-wide view can divide the GPUs by what each job would *gain* from them. This module is
that view, as one pure function: :func:`allocate` takes every job's demand (its fitted
throughput per worker count, bounds, constraints, priority, age, current size and restart
cost) and the free GPUs per node, and returns a worker count (a *ceiling* for the job's own
autoscaler; 0 means queued), a node packing (``status.arbitration.preferredNodes``: the
operator gives each new worker its planned node as a preferred affinity,
:mod:`trainscale.operator.api.planned_nodes`) and a reason in words. No clock, no I/O: the
caller passes ``now`` and the numbers, so every rule is a table test.

The decision is a pipeline of named steps, each a small function tested alone:

1. ``subtract_pinned`` — jobs that opted out of arbitration keep their fixed size; their GPUs
   are taken off the nodes they run on (or packed first when the caller does not know where).
2. ``compute_allowed_counts`` — each job's candidate counts: ``minReplicas`` .. ``maxReplicas``
   and its allowed sizes, without the counts its budget forbids (max GPUs, max cost per hour)
   or whose predicted efficiency is below its floor (``minEfficiency``, when the throughput
   at those counts is known). ``minReplicas`` is always a candidate: the user's bound wins.
3. ``admit_minimums`` — no starvation: every admitted job holds its ``minReplicas`` before any
   job grows. Running jobs keep their minimum first (in priority, then age order); a job is
   never shrunk below its minimum to admit another — a running job only loses its minimum
   when the cluster itself shrank, or to preemption. Then waiting jobs are admitted
   strictly first-in-first-out by priority, then age, while their minimum fits; the first one
   that does not fit blocks the ones behind it (no backfilling past it, so a large job is not
   starved by a stream of small ones). A job whose minimum exceeds the whole cluster cannot
   block the queue and is skipped. Preemption, as the scheduler's: a waiting job that does
   not fit and whose PriorityClass preempts (``JobDemand.preempts``) queues running jobs of
   lower priority, the fewest that make room (the lowest priority, then the newest, then a
   reprieve for each one not needed); the victims stop whole (their workers checkpoint) and
   wait in the queue, told who took their place.
4. ``restore_running`` — the decision starts from the current allocation: admitted running
   jobs return to the size they run at (the largest candidate at or below it) before any job
   grows, each worker to the node it runs on, in replica-index order. An arrival admitted in
   step 3 takes free GPUs first, then only as many as its minimum needs, where that costs
   the running jobs the least: the lowest priority first, then the least utility lost (a
   job whose worker ``i`` lost its GPU keeps workers ``0 .. i-1``), so from the jobs it
   hurts least.
5. ``grow_by_marginal_gain`` — the GPUs left over go, one grant at a time, to the job whose
   utility rises the most per GPU, priority tier by tier: a higher-priority job takes all it
   usefully can before a lower-priority one grows above its minimum.
6. ``rebalance`` — GPUs move from one admitted job to another only when the move pays: the
   recipient's utility gain must exceed what its same-priority donors lose, both valued with
   the restart charge and the resize margin below (so a move pays two restarts, with a
   margin). A higher-priority job may shrink lower ones to their minimum, never below,
   whatever they lose; a job never gives GPUs to a lower-priority one. What the moves leave
   free (a donor's GPUs on nodes the recipient may not use, CPU or memory a donor freed
   beside GPUs that no worker could use without it) is then handed out as in step 5, after
   step 7.
7. ``preempt_for_growth`` — a job whose PriorityClass preempts grows into lower-priority
   jobs' minimums too, as its pods would preempt theirs: tier by priority, one grant at a
   time to the best gain per GPU (within its floor, bounds and budget, net of its restart),
   queuing the fewest lower-priority jobs that make room, chosen as in step 3. Without it,
   on a cluster full of minimums an urgent job stayed at its own while the scheduler's
   preemption (or fixed sizes) would have given it its size. With three priorities or
   more, the lowest gives way first, as the scheduler's victims do: in step 6 such a job
   takes GPUs only from the lowest priority below it, in step 7 it stops jobs of that
   priority (of others beside them only when they alone cannot make room), and steps 6 and
   7 repeat once they are gone, the next priority up shrunk to its minimum before any of its
   jobs stops (a middle priority was shrunk in step 6, and the bottom one then stopped as
   well, its GPUs left idle).
8. ``consolidate`` — a job that spans several nodes though one could hold all its workers,
   and whose size changes in this decision (its workers restart anyway; or it starts), is
   planned on that one node: the operator moves its workers elsewhere there as it resizes
   it (reconcile rule 11), for no restart it would not pay anyway. Only jobs that list
   their throughput across nodes (``JobDemand.throughput_across_nodes``): the arbiter knows
   what spreading costs them. What it frees elsewhere is handed out as in step 5.
9. The reasons: ``queued: needs 4 GPUs, 2 free``, ``limited to 6 GPUs by cluster arbitration
   (3 jobs waiting)``, or why a job got all it wanted. A job granted all that the nodes it
   may use hold of its workers is told that they limit it, not the jobs beside it:
   ``limited to 4 GPUs: the CPU and memory its workers request leave room for 4 of the 8 it
   wants on the nodes it may use`` (or: ``have GPUs for 4``).

The objective, and why. A job's *speedup* at ``n`` workers is its predicted throughput at
``n`` over its throughput at ``minReplicas`` (its guaranteed share, so every admitted job
starts at 1). The arbiter maximises the generalized mean of the speedups with power
``p = -1`` (Pollux, OSDI'21, uses the same family; its default is ``p = -1``), i.e. it
minimises ``sum(1 / speedup)``. With ``p = 1`` this would be plain cluster goodput, which
gives everything to the best-scaling job; ``p -> -inf`` is max-min fairness, which wastes GPUs
on jobs that barely scale. ``p = -1`` sits between: a GPU goes where it shortens a job's
completion the most in relative terms (``1/speedup`` is the job's time to finish relative to
running at its minimum), which is exactly the sum of completion times when remaining work
is equal — the quantity the cluster benchmark measures. Sia (SOSP'23) solves a similar goal
with an integer program over heterogeneous GPU types; we have one GPU type per pool and need
a decision in well under a second for hundreds of jobs in pure Python, so greedy marginal
gain it is (exact for concave utilities; with cliffs, each step also looks ahead to any larger
candidate count and takes the best gain per GPU, so a job can jump over a node-boundary dip).

Restarts are charged: changing a running job's size restarts its workers, losing
``restartCostSeconds`` of progress. Over the horizon ``restart_horizon_seconds`` (or the
time the job has left, where its trainer says and it is shorter) that is a fraction
``restart / horizon`` of its throughput, so every count other than the current one
is valued at ``speedup * (1 - restart / horizon) / (1 + resize_margin)``: a change must beat
staying put by more than the work it throws away, and by a margin besides (hysteresis: no
restart for a small gain, and no flapping between two sizes whose predicted values are
close, as fitted models' are). Starting a queued job costs the same at any count, so nothing
is charged for it.

Why incremental. Rebuilding every decision from the minimums reshuffled several jobs at each
arrival or departure, each change costing its restart: in the cluster benchmark that churn
cost more than the better division gained. Steps 4 and 6 make every change pay for itself.

Throughput at counts the demand does not list: linear interpolation between listed counts;
below the smallest listed count, per-worker throughput as at that count (a job does not scale
better when smaller than we know); above the largest, flat (no gain is assumed that nobody
predicted). A demand with no throughput at all (nothing measured yet) is treated as flat: the
job runs at its minimum until its autoscaler has a model — conservative, and the arbiter then
never gives GPUs on a guess.

Running workers are not placed: they are where they run (``JobDemand.worker_nodes``, by
replica index), and a job that shrinks loses its highest indexes, wherever they run, because
that is what the operator deletes. So a running job at ``c`` workers holds its first ``c``,
and GPUs it gives up are those of its last workers, not the ones another job would like.
The one exception is step 8's, which moves them all, only as the job resizes.

Node packing: a worker needs ``gpus_per_worker`` GPUs on one node, and the CPU and memory its
template requests there (``JobDemand.cpu_millis_per_worker``): every step places workers
against what each node has left of all three (``Capacity``), so the workers planned on a node,
of every job together, fit its CPU and memory as well as its GPUs; a worker running where the
node has less CPU left than its job's workers ask keeps running (the node's CPU is raised to
theirs: nothing new goes there). An arrival admitted in step 3 leaves the CPU and memory of
the running workers it does not displace, as it leaves their GPUs. New workers are placed first
on the nodes where the job already has workers (keeping it together), then where it runs now,
then best fit: the node with the fewest free GPUs that still holds all the workers being
placed, by its GPUs, CPU and memory (so whole nodes stay free for multi-GPU workers and for
growth), else the node with the most free GPUs (the fewest nodes). The throughput model is
the packed one (fewest nodes), which is what this placement approximates; the packing is a
preference the caller may pass on as node affinity, while the per-node capacity it respects
is a hard limit: a job's count is limited by what fits.

Spread over nodes. On a busy cluster the free GPUs are scattered, and a job that grows past
the room on its node, or starts where the GPUs are, spans several: its all-reduce then
crosses the network, and its throughput drops off the cliff its model measures
(``JobDemand.throughput_across_nodes``, from ``predict_throughput(n, nodes=2)``). A job
that lists it is valued there: in step 5 a step past the room left on its one node (or any
step, when it spans several already) counts its throughput across nodes, checked again
when the grant comes up, since other grants take that room; in step 6 a move is made only
if the recipient still gains, valued where its workers land; an arrival that takes running
jobs' GPUs in step 3 takes them on the node where it has its first worker when it can, not
one here and one there at a slightly lower cost, but never a higher priority's there. In
the cluster benchmark with throughput that follows placement (``--placed``) jobs spread
over nodes lost 8-13 % of their throughput, and this is worth 3-12 % of the average
completion time; step 8 besides moves a spread job's workers onto one node when it resizes
anyway.

Node pools: a job whose template restricts its workers to some nodes (``JobDemand.nodes``:
a node selector, required node affinity, taints it does not tolerate) is placed, counted
and given room only there; a running job returns to its size on the nodes it runs on (its
workers are not moved to make room); GPUs move to a job only from donors holding some on a
node it may use, and a donor whose last workers run elsewhere shrinks past them first (its
loss counted in full, so the move is made only if it still pays); a queued job blocks only
the jobs behind it that may use one of its nodes.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import heapq
import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "Allocation",
    "ArbiterSettings",
    "Capacity",
    "JobAllocation",
    "JobDemand",
    "admit_minimums",
    "allocate",
    "compute_allowed_counts",
    "compute_bounded_room",
    "consolidate",
    "grow_by_marginal_gain",
    "predicted_throughput",
    "rebalance",
    "restore_running",
    "subtract_pinned",
]


@dataclass(frozen=True)
class JobDemand:
    """One managed job, as the arbiter sees it.

    Attributes:
        key: ``namespace/name`` of the TrainingJob; the allocation is keyed by it.
        throughput: predicted samples/s (any unit, the same for all counts of this job) at a
            worker count, assuming packed placement; filled by the caller from
            ``JobAutoscaler.predict_throughput``. Counts not listed are interpolated (see the
            module docstring); an empty mapping means nothing is known yet.
        gpus_per_worker: ``nvidia.com/gpu`` each worker requests (all on one node).
        min_replicas: the job's ``minReplicas``: held before any job grows; never shrunk below.
        max_replicas: the job's ``maxReplicas``.
        allowed_sizes: the only worker counts the job may run at (e.g. powers of two), or
            ``None`` for every count in the bounds.
        min_efficiency: efficiency floor (throughput per worker relative to one worker; see
            :func:`compute_allowed_counts`); counts predicted below it are never granted.
        max_gpus: budget as a GPU count, or ``None``.
        max_cost_per_hour: budget as cost per hour, with ``cost_per_gpu_hour``; or ``None``.
        cost_per_gpu_hour: the price of one GPU-hour, for ``max_cost_per_hour``.
        priority: the worker pods' PriorityClass value; higher first.
        created: creation time, seconds in the same epoch as ``now``; older first.
        current_replicas: workers running now (0 when not running).
        worker_nodes: the node of each running worker, by replica index; may be empty. The
            operator deletes the highest indexes first when a job shrinks, so a running job
            at a smaller size keeps the first of these workers where they run, and a job
            that shrinks frees the GPUs of the last (:attr:`current_nodes` counts them).
        restart_cost_seconds: progress lost when the job's size changes.
        time_left_seconds: how long the job has left to train, where its trainer says
            (its autoscaler's :func:`~.policy.compute_time_left`); None: not known. A resize's
            restart is then charged over at most this: a job about to finish is not resized
            for a gain it will not live to collect, nor shrunk while another source of GPUs
            costs less.
        pinned: opted out of arbitration: it keeps ``current_replicas`` (its fixed size) and
            its GPUs are simply subtracted from the nodes.
        nodes: the nodes its workers may run on (its template's node selector, required
            node affinity and tolerations, :mod:`~trainscale.operator.autoscaling.
            node_filters`, plus the nodes it runs on now), or ``None`` for every node. Its
            workers are placed, counted and given room only there.
        cpu_millis_per_worker: the CPU one worker requests, in millicores (0: none); with
            ``memory_bytes_per_worker``, placed against each node's CPU and memory left
            (:class:`Capacity`) together with its GPUs, so the workers the arbiter places
            on a node, of every job, fit there (:mod:`~trainscale.operator.api.quantities`).
        memory_bytes_per_worker: the memory one worker requests, in bytes (0: none).
        preempts: a waiting job whose minimum does not fit may queue running jobs of lower
            priority to start, and an admitted one to grow (its PriorityClass's
            ``preemptionPolicy``: ``PreemptLowerPriority``, the Kubernetes default; false for
            ``Never``).
        throughput_across_nodes: predicted samples/s at a worker count when its workers span
            more than one node (the inter-node all-reduce; ``JobAutoscaler.
            predict_throughput(n, nodes=2)``), for the counts whose packed placement is one
            node; empty: not known, every placement valued as packed. A job that grows
            past the room on its one node is valued so (:func:`_best_step`).
        max_workers_per_node: how many of its workers one node may run (its template's
            required pod anti-affinity to its own workers: 1; a topology spread constraint:
            its ``maxSkew``); None: no bound. Its workers are placed, and its room counted,
            within it.
        per_node_rule: the rule that bound comes from, as its reasons name it (e.g. "its
            required podAntiAffinity").
        spread_domains: the nodes a topology spread constraint counts, where the bound
            moves with the placement: a node may then run ``max_workers_per_node`` more of
            its workers than the one of these holding the fewest (the scheduler's
            ``maxSkew``); None: the bound is fixed.
    """

    key: str
    throughput: Mapping[int, float] = field(default_factory=dict)
    gpus_per_worker: int = 1
    min_replicas: int = 1
    max_replicas: int = 1
    allowed_sizes: tuple[int, ...] | None = None
    min_efficiency: float | None = None
    max_gpus: int | None = None
    max_cost_per_hour: float | None = None
    cost_per_gpu_hour: float = 0.0
    priority: int = 0
    created: float = 0.0
    current_replicas: int = 0
    worker_nodes: tuple[str, ...] = ()
    restart_cost_seconds: float = 0.0
    time_left_seconds: float | None = None
    pinned: bool = False
    nodes: frozenset[str] | None = None
    cpu_millis_per_worker: int = 0
    memory_bytes_per_worker: int = 0
    preempts: bool = False
    throughput_across_nodes: Mapping[int, float] = field(default_factory=dict)
    max_workers_per_node: int | None = None
    per_node_rule: str = ""
    spread_domains: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if self.gpus_per_worker < 1:
            raise ValueError(f"{self.key}: gpus_per_worker must be >= 1")
        if self.max_workers_per_node is not None and self.max_workers_per_node < 1:
            raise ValueError(f"{self.key}: max_workers_per_node must be >= 1")
        if self.spread_domains is not None and (
            self.max_workers_per_node is None or not self.spread_domains
        ):
            raise ValueError(f"{self.key}: spread_domains needs max_workers_per_node and nodes")
        if self.cpu_millis_per_worker < 0 or self.memory_bytes_per_worker < 0:
            raise ValueError(f"{self.key}: a worker's CPU and memory requests must be >= 0")
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError(f"{self.key}: need 0 <= min_replicas <= max_replicas")
        if self.time_left_seconds is not None and not self.time_left_seconds >= 0:
            raise ValueError(f"{self.key}: time_left_seconds must be >= 0")

    @functools.cached_property
    def asks_cpu_or_memory(self) -> bool:
        """Whether its workers request CPU or memory (else GPUs alone place them)."""
        return bool(self.cpu_millis_per_worker or self.memory_bytes_per_worker)

    @functools.cached_property
    def current_nodes(self) -> dict[str, int]:
        """Where the running workers are: node name -> workers."""
        return dict(collections.Counter(self.worker_nodes))


@dataclass(frozen=True)
class Capacity:
    """GPUs trainscale may use, per node: allocatable ``nvidia.com/gpu`` minus what pods not
    managed by trainscale request (the caller subtracts those; the arbiter never touches
    them). Pinned jobs are *not* subtracted by the caller: :func:`allocate` does it.

    ``free_cpu_millis`` and ``free_memory_bytes``: the CPU and memory left on a node by the
    pods the arbiter does not place (the caller subtracts pinned jobs' running workers
    there too); a node not listed: not known, so it limits nothing. Every worker the
    arbiter places takes its requests (:attr:`JobDemand.cpu_millis_per_worker`) there."""

    free_gpus: Mapping[str, int]
    free_cpu_millis: Mapping[str, int] = field(default_factory=dict)
    free_memory_bytes: Mapping[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(max(0, g) for g in self.free_gpus.values())


@dataclass(frozen=True)
class ArbiterSettings:
    """Tunables of the objective (module docstring)."""

    fairness_power: float = -1.0  # p of the generalized mean of speedups; < 1 is fairer
    restart_horizon_seconds: float = 600.0  # a restart's cost is spread over this horizon
    # hysteresis: a running job is resized only when its speedup, net of the restart, beats
    # staying put by more than this fraction (no restart for a small gain)
    resize_margin: float = 0.1
    # a preempting job queues lower-priority jobs to grow too (step 7), not only to start
    preempt_to_grow: bool = True


@dataclass(frozen=True)
class JobAllocation:
    """The arbiter's answer for one job.

    Attributes:
        key: the job's ``namespace/name``.
        replicas: worker count the job may run at most (its autoscaler's ceiling); 0 = queued.
        placement: preferred packing, node name -> workers, largest first.
        wanted: the count the job would take on an empty cluster (its largest useful
            candidate count: bounds, budget and efficiency floor applied).
        queued: the job waits for GPUs (``replicas == 0``) and should create no pods.
        pinned: the job opted out; ``replicas`` is its fixed size.
        reason: why, in words, for events and status.
        preempted_by: the key of the higher-priority job this one was stopped (or kept
            from starting) for, in this decision; None when it was not.
    """

    key: str
    replicas: int
    placement: tuple[tuple[str, int], ...]
    wanted: int
    queued: bool
    pinned: bool
    reason: str
    preempted_by: str | None = None

    @property
    def workers_per_node(self) -> tuple[int, ...]:
        """Workers on each node used, sorted descending (as ``Placement.workers_per_node``)."""
        return tuple(sorted((w for _, w in self.placement), reverse=True))

    @property
    def limited(self) -> bool:
        """Arbitration gave less than the job wanted."""
        return not self.pinned and self.replicas < self.wanted


@dataclass(frozen=True)
class Allocation:
    """The arbiter's answer for the whole cluster."""

    jobs: Mapping[str, JobAllocation]
    free_gpus: int  # GPUs left unallocated after the decision
    waiting: int  # jobs queued

    def __getitem__(self, key: str) -> JobAllocation:
        return self.jobs[key]


# ---------------------------------------------------------------------------- throughput


def predicted_throughput(demand: JobDemand, replicas: int) -> float:
    """Throughput of ``demand`` at ``replicas`` from its listed counts (module docstring):
    interpolated between listed counts, per-worker as at the smallest below it, flat above
    the largest; 0 for 0 workers or when nothing is listed."""
    if replicas <= 0 or not demand.throughput:
        return 0.0
    known = demand.throughput
    if replicas in known:
        return max(0.0, known[replicas])
    counts = sorted(known)
    if replicas < counts[0]:
        return max(0.0, known[counts[0]] * replicas / counts[0])
    if replicas > counts[-1]:
        return max(0.0, known[counts[-1]])
    upper = next(c for c in counts if c > replicas)
    lower = max(c for c in counts if c < replicas)
    frac = (replicas - lower) / (upper - lower)
    return max(0.0, known[lower] + frac * (known[upper] - known[lower]))


def _across_throughput(demand: JobDemand, replicas: int) -> float:
    """Throughput of ``demand`` at ``replicas`` spanning several nodes: its listed figure
    (:attr:`JobDemand.throughput_across_nodes`), else as packed."""
    known = demand.throughput_across_nodes.get(replicas)
    if known is None:
        return predicted_throughput(demand, replicas)
    return max(0.0, min(known, predicted_throughput(demand, replicas)))


def _efficiency(demand: JobDemand, replicas: int) -> float | None:
    """Throughput per worker relative to one worker, or None when nothing is known."""
    if not demand.throughput:
        return None
    single = predicted_throughput(demand, 1)
    if single <= 0:
        return None
    return predicted_throughput(demand, replicas) / (replicas * single)


# ---------------------------------------------------------------------------- the steps


def subtract_pinned(
    demands: Sequence[JobDemand], capacity: Capacity
) -> tuple[dict[str, int], dict[str, tuple[tuple[str, int], ...]]]:
    """Step 1: take pinned jobs' GPUs off the nodes. Returns the free GPUs per node left for
    arbitration (never negative) and each pinned job's placement (where it runs, when the
    caller says so; else packed onto the nodes with the most free GPUs)."""
    free = _Free(
        {node: max(0, gpus) for node, gpus in capacity.free_gpus.items()},
        capacity.free_cpu_millis,
        capacity.free_memory_bytes,
    )
    placements: dict[str, tuple[tuple[str, int], ...]] = {}
    for demand in demands:
        if not demand.pinned:
            continue
        if demand.current_nodes:
            for node, workers in demand.current_nodes.items():
                if node in free:
                    free[node] = max(0, free[node] - workers * demand.gpus_per_worker)
            placements[demand.key] = _sorted_placement(demand.current_nodes)
        else:
            placed = _place(demand, demand.current_replicas, {}, free)
            placements[demand.key] = _sorted_placement(placed)
    return free, placements


def compute_allowed_counts(demand: JobDemand) -> tuple[int, ...]:
    """Step 2: the counts the arbiter may grant a job, ascending; never empty.

    ``minReplicas`` always, then every count up to ``maxReplicas`` that is an allowed size,
    within the budget (``max_gpus``, ``max_cost_per_hour`` at ``cost_per_gpu_hour``) and
    whose predicted efficiency, when known, is at least ``min_efficiency``. Efficiency is
    throughput per worker over throughput of one worker (extrapolated per-worker from the
    smallest known count when one worker was never measured)."""
    allowed: list[int] = [demand.min_replicas]
    sizes = set(demand.allowed_sizes) if demand.allowed_sizes is not None else None
    for n in range(demand.min_replicas + 1, demand.max_replicas + 1):
        if sizes is not None and n not in sizes:
            continue
        gpus = n * demand.gpus_per_worker
        if demand.max_gpus is not None and gpus > demand.max_gpus:
            break
        if (
            demand.max_cost_per_hour is not None
            and gpus * demand.cost_per_gpu_hour > demand.max_cost_per_hour + 1e-9
        ):
            break
        if demand.min_efficiency is not None:
            eff = _efficiency(demand, n)
            if eff is not None and eff < demand.min_efficiency:
                continue
        allowed.append(n)
    return tuple(allowed)


def _order_key(demand: JobDemand) -> tuple[int, float, str]:
    return (-demand.priority, demand.created, demand.key)


def admit_minimums(
    demands: Sequence[JobDemand],
    free: dict[str, int],
    value: Callable[[JobDemand, int], float] | None = None,
    preempted: dict[str, str] | None = None,
) -> tuple[dict[str, dict[str, int]], list[JobDemand]]:
    """Step 3: place every admitted job's minimum; return placements and the queued jobs.

    Mutates ``free``. Running jobs first (priority, then age): their first workers where they
    run, then what their minimums need besides. Then waiting ones strictly FIFO by priority
    then age, on free GPUs first, then on those of running jobs' workers above their
    minimums whose loss costs the least (:class:`_Claims`; ``value``: a running job's
    utility when it keeps a count, as step 4 values it; without it, GPUs lost count): the
    first waiting job whose
    minimum does not fit blocks those
    behind it, unless its minimum would not fit on all the GPUs there are, each worker on
    one node (it could never start). On a cluster of node pools (:attr:`JobDemand.nodes`) a
    waiting job blocks only the jobs behind it that may use one of its nodes, and "all the
    GPUs there are" are those on the nodes it may use.

    Preemption: a waiting job whose minimum does not fit and that preempts
    (:attr:`JobDemand.preempts`) queues running jobs of lower priority until it fits
    (:func:`_preempt`: the lowest priority first, then the newest; none when even all of
    them would not make room); each victim → its preemptor is recorded in ``preempted``."""
    placed: dict[str, dict[str, int]] = {}
    queued: list[JobDemand] = []
    running = sorted((d for d in demands if d.current_replicas > 0), key=_order_key)
    waiting = sorted((d for d in demands if d.current_replicas <= 0), key=_order_key)
    ever = free.copy()
    for demand in running:  # first the workers they run, where they run them
        back = min(demand.min_replicas, len(demand.worker_nodes))
        if not back:
            placed[demand.key] = {}
        elif sum(_place(demand, back, {}, free, dry_run=True).values()) == back:
            placed[demand.key] = _place(demand, back, {}, free)
    claims = _Claims(running, placed, free, value)
    for demand in running:  # then what their minimums need besides
        kept = placed.get(demand.key)
        rest = demand.min_replicas - (sum(kept.values()) if kept is not None else 0)
        # without ``kept`` the cluster changed under its workers: it is placed anew
        in_order = kept is not None
        where = _place(demand, rest, kept or {}, free, dry_run=True, in_order=in_order)
        if sum(where.values()) < demand.min_replicas:
            if kept is not None:
                _unplace(demand, sum(kept.values()), kept, free)
                del placed[demand.key]
                claims.drop(demand.key)
            queued.append(demand)
            continue
        placed[demand.key] = _place(
            demand, rest, kept or {}, free, in_order=in_order, claims=claims
        )
    blocked: set[str] = set()  # the nodes of the waiting jobs that block the queue
    for demand in waiting:
        where = _place(demand, demand.min_replicas, {}, free, dry_run=True)
        fits = sum(where.values()) >= demand.min_replicas
        mine = {n for n in ever if _may_use(demand, n)}
        fits = fits or (
            not mine & blocked
            and _queue_victims(demand, running, placed, free, claims, queued, preempted)
        )
        if not fits or mine & blocked:
            queued.append(demand)
            if _whole_workers(ever, demand) >= demand.min_replicas:
                blocked |= mine
            continue
        placed[demand.key] = _place(demand, demand.min_replicas, {}, free, claims=claims)
    return placed, queued


def _queue_victims(
    demand: JobDemand,
    running: Sequence[JobDemand],
    placed: dict[str, dict[str, int]],
    free: dict[str, int],
    claims: _Claims,
    queued: list[JobDemand],
    preempted: dict[str, str] | None,
) -> bool:
    """Queue the running jobs a preempting ``demand`` needs gone (:func:`_preempt`): their
    workers leave (their claims too), they join ``queued``, and ``preempted`` records who
    took their place. Whether ``demand``'s minimum fits now."""
    if not demand.preempts:
        return False
    victims = _preempt(demand, running, placed, free)
    _stop(victims, demand, placed, free, queued, preempted)
    for victim in victims:
        claims.drop(victim.key)
    return bool(victims)


def _without(
    jobs: Iterable[JobDemand], placed: Mapping[str, Mapping[str, int]], free: dict[str, int]
) -> dict[str, int]:
    """A copy of ``free`` with every worker of ``jobs`` gone (their GPUs, CPU and memory
    back), for trying what fits were they stopped."""
    trial = free.copy()
    for job in jobs:
        _unplace(job, _count(placed, job), placed[job.key], trial)
    return trial


def _stop(
    victims: Sequence[JobDemand],
    by: JobDemand,
    placed: dict[str, dict[str, int]],
    free: dict[str, int],
    queued: list[JobDemand],
    preempted: dict[str, str] | None,
) -> None:
    """The ``victims`` are preempted by ``by``: their workers leave (``free`` gets their
    GPUs, CPU and memory back), they join ``queued``, and ``preempted`` records who took
    their place."""
    for victim in victims:
        _unplace(victim, _count(placed, victim), placed[victim.key], free)
        del placed[victim.key]
        queued.append(victim)
        if preempted is not None:
            preempted[victim.key] = by.key


def _preempt(
    demand: JobDemand,
    running: Sequence[JobDemand],
    placed: Mapping[str, Mapping[str, int]],
    free: dict[str, int],
    *,
    workers: int | None = None,
    where: Mapping[str, int] | None = None,
) -> list[JobDemand]:
    """The running jobs ``demand`` queues to fit its minimum (or ``workers`` more beside
    ``where``, to grow), as the scheduler chooses victims: of lower priority only, holding
    workers on a node it may use; the lowest priority first, then the newest; then each
    victim, the most senior first, is spared if the workers still fit without its (a
    reprieve). Empty when even all of them would not make room (none is queued for
    nothing)."""
    more = demand.min_replicas if workers is None else workers
    already = where or {}
    candidates = sorted(
        (
            d
            for d in running
            if d.key in placed
            and d.priority < demand.priority
            and any(w > 0 and _may_use(demand, n) for n, w in placed[d.key].items())
        ),
        key=lambda d: (d.priority, -d.created, d.key),
    )

    def fits_without(victims: Sequence[JobDemand]) -> bool:
        trial = _without(victims, placed, free)
        placement = _place(demand, more, already, trial, dry_run=True)
        return sum(placement.values()) >= more + sum(already.values())

    victims: list[JobDemand] = []
    for candidate in candidates:
        victims.append(candidate)
        if fits_without(victims):
            break
    else:
        return []
    for victim in sorted(victims, key=lambda d: (-d.priority, d.created, d.key)):
        spared = [v for v in victims if v is not victim]
        if fits_without(spared):
            victims = spared
    return victims


class _Claims:
    """The GPUs that running jobs' workers above their minimums hold, while step 3 admits
    waiting jobs. A running job keeps its workers in index order (the operator deletes the
    highest indexes when it shrinks), so taking the GPU of its worker ``i`` costs it every
    worker from ``i`` up, and frees their GPUs elsewhere too. An arrival takes free GPUs
    first, then those whose loss costs the lowest priority the least: the least utility
    (``value``, a job's utility at the count it keeps), else the fewest GPUs. That is what
    step 4 did when any GPU of a pool would do: higher tiers returned to their sizes first,
    and within a tier the jobs that lose the least missed the GPUs."""

    def __init__(
        self,
        running: Sequence[JobDemand],
        placed: Mapping[str, Mapping[str, int]],
        free: Mapping[str, int],
        value: Callable[[JobDemand, int], float] | None = None,
    ) -> None:
        self.value = value
        self.demand = {d.key: d for d in running}
        self.on: dict[str, list[tuple[str, int, _Need]]] = {}  # node -> (job, index, need)
        self.limit: dict[str, int] = {}  # job -> the index its workers may return up to
        self.held: dict[str, _Need] = {}  # node -> GPUs, CPU and memory claimed there
        self.nodes_of: dict[str, set[str]] = {}  # job -> the nodes of its claims
        for demand in running:
            if demand.key not in placed:
                continue
            kept = _kept_prefix(demand, placed[demand.key])[0]
            back, _ = _returning(demand, placed[demand.key], free)
            self.limit[demand.key] = kept + len(back)
            need = _need(demand)
            for offset, node in enumerate(back):
                if node in free:
                    self.on.setdefault(node, []).append((demand.key, kept + offset, need))
                    self.held[node] = _plus(self.held.get(node, _NOTHING), need)
                    self.nodes_of.setdefault(demand.key, set()).add(node)

    @property
    def empty(self) -> bool:
        """Nothing is claimed: every free GPU, CPU and byte is free."""
        return not any(h[0] for h in self.held.values())

    def fits(self, node: str, spare: Mapping[str, int], demand: JobDemand) -> bool:
        """Whether one worker of ``demand``, which fits on ``node`` by what is left there
        (a candidate of :func:`_place`), still fits beside the claims there."""
        held = self.held.get(node)
        return held is None or not _short(_left(spare, node), held, _need(demand))

    def _breaks(
        self, node: str, spare: Mapping[str, int], demand: JobDemand
    ) -> list[tuple[int, float, str, int]]:
        """The claims to break so one worker of ``demand`` fits on ``node`` (its GPUs, CPU
        and memory), cheapest first, as (priority, loss, job, index); ``spare``: what the
        nodes have not yet placed on."""
        left, need = _left(spare, node), _need(demand)
        held = self.held.get(node, _NOTHING)
        if not _short(left, held, need):
            return []
        mine = self.on.get(node, [])
        limit = {k: self.limit[k] for k, _, _ in mine}
        breaks: list[tuple[int, float, str, int]] = []
        while _short(left, held, need):
            valid = [
                (self.demand[k].priority, self._loss(k, i, limit[k], g[0]), k, i)
                for k, i, g in mine
                if i < limit[k]
            ]
            if not valid:
                break
            cheapest = min(valid)
            _, _, key, index = cheapest
            for k, i, g in mine:
                if k == key and index <= i < limit[k]:
                    held = _minus(held, g)
            limit[key] = index
            breaks.append(cheapest)
        return breaks

    def _loss(self, key: str, index: int, limit: int, gpus: float) -> float:
        """What job ``key`` loses when it keeps ``index`` workers, not ``limit``."""
        if self.value is None:
            return float((limit - index) * gpus)
        demand = self.demand[key]
        before, after = self.value(demand, limit), self.value(demand, index)
        return 0.0 if before == after else before - after

    def cost(self, node: str, spare: Mapping[str, int], demand: JobDemand) -> tuple[float, float]:
        """What placing one worker of ``demand`` on ``node`` costs running jobs: the highest
        priority that loses workers (-inf: none does), and what they lose (``spare``: what
        the nodes have not yet placed on)."""
        breaks = self._breaks(node, spare, demand)
        return (max((b[0] for b in breaks), default=-math.inf), sum(b[1] for b in breaks))

    def _cut(self, key: str, index: int) -> None:
        """Job ``key``'s workers from ``index`` up cannot return: their GPUs are free."""
        for node in self.nodes_of.get(key, ()):
            for k, i, g in self.on[node]:
                if k == key and index <= i < self.limit[key]:
                    self.held[node] = _minus(self.held[node], g)
        self.limit[key] = index

    def drop(self, key: str) -> None:
        """The job holds nothing (it lost its minimum): none of its GPUs is claimed."""
        self._cut(key, -1)

    def take(self, node: str, spare: Mapping[str, int], demand: JobDemand) -> None:
        """Place one worker of ``demand`` on ``node`` (``spare``: what the nodes have not yet
        placed on), breaking the claims in its way."""
        for _, _, key, index in self._breaks(node, spare, demand):
            self._cut(key, index)


def _utility(
    demand: JobDemand, replicas: int, settings: ArbiterSettings, *, across: bool = False
) -> float:
    """The job's term of the objective at ``replicas`` (restart charged); ``across``: its
    workers spanning several nodes (:func:`_across_throughput`)."""
    base = predicted_throughput(demand, max(1, demand.min_replicas))
    at = _across_throughput(demand, replicas) if across else predicted_throughput(demand, replicas)
    speedup = at / base if base > 0 else 1.0
    if demand.current_replicas > 0 and replicas != demand.current_replicas:
        horizon = settings.restart_horizon_seconds
        if demand.time_left_seconds is not None:  # it ends sooner: its restart weighs more
            horizon = min(horizon, max(1.0, demand.time_left_seconds))
        speedup *= max(0.0, 1.0 - demand.restart_cost_seconds / horizon)
        speedup /= 1.0 + settings.resize_margin
    p = settings.fairness_power
    if speedup <= 0:
        return float("-inf") if p <= 0 else 0.0
    if p == 0:
        return math.log(speedup)
    return float(speedup**p / p)


def _utilities(
    demand: JobDemand, allowed: Sequence[int], settings: ArbiterSettings
) -> dict[int, float]:
    """The job's utility at each allowed count, computed once per decision."""
    return {n: _utility(demand, n, settings) for n in allowed}


def _across_utilities(
    demands: Iterable[JobDemand], allowed: Mapping[str, Sequence[int]], settings: ArbiterSettings
) -> dict[str, dict[int, float]]:
    """The utility at each allowed count spanning several nodes, of the jobs that list
    throughput there (:attr:`JobDemand.throughput_across_nodes`)."""
    return {
        d.key: {
            n: _utility(d, n, settings, across=True)
            for n in allowed[d.key]
            if n in d.throughput_across_nodes
        }
        for d in demands
        if d.throughput_across_nodes
    }


def _single_room(
    demand: JobDemand, where: Mapping[str, int], free: Mapping[str, int]
) -> int | None:
    """How many more of ``demand``'s workers keep it on one node, placed as :func:`_place`
    places them (its own node first): the room on the node it holds, on the roomiest node
    it may use while it holds none; -1 when it already spans several; None when its
    throughput across nodes is not known (no difference made)."""
    if not demand.throughput_across_nodes:
        return None
    used = _nodes_used(where)
    if len(used) > 1:
        return -1
    cap = _cap_at(demand, where)
    if used:
        room = _fits(free, used[0], demand) if used[0] in free else 0
        return room if cap is None else min(room, max(0, cap - where[used[0]]))
    room = max((_fits(free, n, demand) for n in free if _may_use(demand, n)), default=0)
    return room if cap is None else min(room, cap)


def _spread_value(
    utilities: Mapping[int, float],
    across: Mapping[int, float],
    count: int,
    where: Mapping[str, int],
) -> float:
    """The utility at ``count`` workers placed ``where``: across nodes when they span
    several and the job lists that count (:func:`_across_utilities`)."""
    if len(_nodes_used(where)) > 1:
        return across.get(count, utilities[count])
    return utilities[count]


def _nodes_used(where: Mapping[str, int]) -> list[str]:
    """The nodes a placement has workers on."""
    return [n for n, w in where.items() if w > 0]


Utilities = Mapping[str, Mapping[int, float]]
"""Each job's utility per allowed count, as :func:`allocate` computes them once per
decision and hands them to its steps."""


def _step_utilities(
    demands: Iterable[JobDemand],
    allowed: Mapping[str, Sequence[int]],
    settings: ArbiterSettings,
    utilities: Utilities | None,
) -> dict[str, dict[int, float]]:
    """Each job's utility at the counts a step allows it (ascending): read from the
    decision's ``utilities`` (a step may allow fewer counts), else computed."""
    out: dict[str, dict[int, float]] = {}
    for demand in demands:
        counts = allowed[demand.key]
        known = utilities.get(demand.key) if utilities is not None else None
        if known is None:
            out[demand.key] = _utilities(demand, counts, settings)
        else:
            out[demand.key] = {n: known[n] for n in counts}
    return out


def _kept_value(
    utilities: Mapping[str, Mapping[int, float]], demand: JobDemand, count: int
) -> float:
    """The utility of running job ``demand`` when it may keep ``count`` workers: at the
    size step 4 returns it to (its largest candidate at or below ``count``, never above the
    size it runs at)."""
    values = utilities[demand.key]
    keep = max(
        (n for n in values if n <= min(count, max(demand.current_replicas, demand.min_replicas))),
        default=demand.min_replicas,
    )
    return values[keep]


def _best_step(
    demand: JobDemand,
    utilities: Mapping[int, float],
    at: int,
    slots: int,
    across: Mapping[int, float] | None = None,
    single_room: int | None = None,
) -> tuple[float, int] | None:
    """The larger allowed count with the best utility gain per GPU that fits in ``slots``
    more workers; None when no positive gain remains. ``utilities`` is ascending by count.
    ``across``: the utilities spanning several nodes, valued for the counts past
    ``single_room`` more workers (:func:`_single_room`; -1: it spans several already)."""
    spread = across or {}
    room = slots if across is None or single_room is None else single_room
    here = spread.get(at, utilities[at]) if room < 0 else utilities[at]
    best: tuple[float, int] | None = None
    for n, packed in utilities.items():
        if n <= at:
            continue
        if n - at > slots:
            break
        value = spread.get(n, packed) if n - at > room else packed
        gain = (value - here) / ((n - at) * demand.gpus_per_worker)
        if gain > 1e-12 and (best is None or gain > best[0] + 1e-12):
            best = (gain, n)
    return best


def grow_by_marginal_gain(
    demands: Sequence[JobDemand],
    allowed: Mapping[str, Sequence[int]],
    placed: dict[str, dict[str, int]],
    free: dict[str, int],
    settings: ArbiterSettings,
    decision: Utilities | None = None,
) -> None:
    """Step 5: hand out the free GPUs, tier by priority, to the best gain per GPU.

    Mutates ``placed`` and ``free``. Within a tier, a heap holds each job's best next step
    (:func:`_best_step`); the best is granted if its workers still fit, else the job's step
    is recomputed for what fits now. ``decision``: the utilities :func:`allocate` computed
    (else computed here)."""
    utilities = _step_utilities(
        (d for d in demands if d.key in placed), allowed, settings, decision
    )
    across = _across_utilities((d for d in demands if d.key in placed), allowed, settings)

    def best(demand: JobDemand, at: int) -> tuple[float, int] | None:
        where = placed[demand.key]
        return _best_step(
            demand,
            utilities[demand.key],
            at,
            _slots(free, demand, where),
            across.get(demand.key),
            _single_room(demand, where, free),
        )

    tiers: dict[int, list[JobDemand]] = {}
    for demand in demands:
        if demand.key in placed:
            tiers.setdefault(demand.priority, []).append(demand)
    for priority in sorted(tiers, reverse=True):
        _hand_out(tiers[priority], best, placed, free, lazy=set(across))


def _hand_out(
    tier: Sequence[JobDemand],
    best: Callable[[JobDemand, int], tuple[float, int] | None],
    placed: dict[str, dict[str, int]],
    free: dict[str, int],
    lazy: set[str],
) -> None:
    """Step 5 for one priority's jobs: grant each its ``best`` step, the best gain per GPU
    first. A job in ``lazy`` (its value depends on the room left on its node, which the
    grants before may have taken) has its step checked again when it comes up, and goes
    back in the heap when it changed."""
    heap: list[tuple[float, tuple[int, float, str], int, JobDemand]] = []
    for demand in tier:
        step = best(demand, _count(placed, demand))
        if step is not None:
            heapq.heappush(heap, (-step[0], _order_key(demand), step[1], demand))
    while heap:
        neg_gain, order, target, demand = heapq.heappop(heap)
        at = _count(placed, demand)
        if demand.key in lazy:
            fresh = best(demand, at)
            if fresh is None:
                continue
            if (fresh[1], -fresh[0]) != (target, neg_gain):
                heapq.heappush(heap, (-fresh[0], order, fresh[1], demand))
                continue
        if target - at <= _slots(free, demand, placed[demand.key]):
            placed[demand.key] = _place(demand, target - at, placed[demand.key], free)
            if _count(placed, demand) == at:
                continue  # nothing placed after all (never, while _slots counts as _place
                # places): offering the same step again would never end
            at = _count(placed, demand)
        step = best(demand, at)
        if step is not None:
            heapq.heappush(heap, (-step[0], order, step[1], demand))


def restore_running(
    demands: Sequence[JobDemand],
    allowed: Mapping[str, Sequence[int]],
    placed: dict[str, dict[str, int]],
    free: dict[str, int],
    settings: ArbiterSettings,
    decision: Utilities | None = None,
) -> None:
    """Step 4: admitted running jobs grow back toward the size they run at, before any job
    grows further: the decision starts from the current allocation.

    Mutates ``placed`` and ``free``. Each running job may return to its kept size (its
    current count, or the largest candidate below it), never above, each worker on the node
    it runs on, in replica-index order: a worker whose GPUs an admission of step 3 took
    stops the job there (:class:`_Claims` chose those GPUs to cost the least). It is
    :func:`grow_by_marginal_gain` over those counts only: tier by priority (a higher-priority
    job keeps its size before a lower one); the current size is valued without the restart
    charge, any other with it, so a job is put back whole when it can be."""
    running = [_where_it_runs(d) for d in demands if d.key in placed and d.current_replicas > 0]
    kept = {
        d.key: tuple(n for n in allowed[d.key] if n <= max(d.current_replicas, d.min_replicas))
        for d in running
    }
    grow_by_marginal_gain(running, kept, placed, free, settings, decision)


def _where_it_runs(demand: JobDemand) -> JobDemand:
    """``demand`` restricted to the nodes it runs on, when they are known: a job returning
    to its size keeps its workers where they are (they are not moved to make room; on a
    cluster of node pools a job that may run anywhere would otherwise take back its size on
    a pool that only another job may use)."""
    if not demand.current_nodes:
        return demand
    return dataclasses.replace(demand, nodes=frozenset(demand.current_nodes))


def preempt_for_growth(
    demands: Sequence[JobDemand],
    allowed: Mapping[str, Sequence[int]],
    placed: dict[str, dict[str, int]],
    free: dict[str, int],
    settings: ArbiterSettings,
    decision: Utilities | None = None,
    preempted: dict[str, str] | None = None,
) -> list[JobDemand]:
    """Step 7: a job whose PriorityClass preempts grows into the GPUs of lower-priority
    jobs, as its pods would preempt theirs: the steps before only shrank those to their
    minimum, so on a cluster full of minimums an urgent job would otherwise stay at its own
    (a scheduler's preemption would give it more, and fixed sizes their requested size).

    Mutates ``placed`` and ``free``; returns the jobs it queued (``preempted`` records who
    took their place). Tier by priority, highest first, among admitted jobs that preempt
    (:attr:`JobDemand.preempts`), one grant at a time to the best gain per GPU
    (:func:`_best_step`, within the free GPUs and those of lower-priority jobs on the nodes
    it may use): a step beyond the free GPUs queues the fewest lower-priority jobs that
    make room, chosen as for a minimum (:func:`_preempt`: the lowest priority, then the
    newest; a reprieve for each not needed); their other GPUs are handed out after (step
    5's hand-out). Only counts the job may run at (its efficiency floor, budget, bounds)
    and only a gain net of its own restart: never a stop for nothing. Nothing happens on a
    cluster of one priority, nor with ``settings.preempt_to_grow`` off (the operator's
    ``--arbitration-preemption start``: preemption only to start a job)."""
    if not settings.preempt_to_grow:
        return []
    utilities = _step_utilities(
        (d for d in demands if d.key in placed), allowed, settings, decision
    )
    queued: list[JobDemand] = []
    for priority in sorted({d.priority for d in demands}, reverse=True):
        tier = [d for d in demands if d.key in placed and d.priority == priority and d.preempts]
        queued += _grow_into_lower(tier, demands, utilities, placed, free, settings, preempted)
    return queued


def _grow_into_lower(
    tier: Sequence[JobDemand],
    demands: Sequence[JobDemand],
    utilities: Mapping[str, Mapping[int, float]],
    placed: dict[str, dict[str, int]],
    free: dict[str, int],
    settings: ArbiterSettings,
    preempted: dict[str, str] | None,
) -> list[JobDemand]:
    """:func:`preempt_for_growth` for one priority's preempting jobs (``tier``)."""
    queued: list[JobDemand] = []
    heap: list[tuple[float, tuple[int, float, str], int, JobDemand]] = []
    # the lowest priority each may preempt, as the pass starts (:func:`_bottom`); once its
    # jobs are gone, the next one up gives way in the next round of steps 6 and 7, its
    # surplus taken first (step 6), not stopped whole here
    bottom = {d.key: _bottom(d, demands, placed, settings) for d in tier}

    def lower(demand: JobDemand) -> list[JobDemand]:
        """The admitted jobs ``demand`` may preempt (fewer once it stopped some)."""
        return [d for d in demands if d.key in placed and d.priority < demand.priority]

    def push(demand: JobDemand) -> None:
        below = lower(demand)
        if not below:
            return
        # how many more workers would fit were the lower-priority jobs gone
        reach = _slots(_without(below, placed, free), demand, placed[demand.key])
        step = _best_step(demand, utilities[demand.key], _count(placed, demand), reach)
        if step is not None:
            heapq.heappush(heap, (-step[0], _order_key(demand), step[1], demand))

    for demand in tier:
        push(demand)
    while heap:
        _, _, target, demand = heapq.heappop(heap)
        more = target - _count(placed, demand)
        if more > _slots(free, demand, placed[demand.key]):
            lowest = [d for d in lower(demand) if d.priority == bottom[demand.key]]
            victims = _preempt(demand, lowest, placed, free, workers=more,
                               where=placed[demand.key])  # fmt: skip
            if not victims and lowest:  # the lowest alone cannot make room: with jobs above
                victims = _preempt(demand, lower(demand), placed, free, workers=more,
                                   where=placed[demand.key])  # fmt: skip
            if not victims:
                continue  # no room to be made for it (its workers' CPU or packing)
            _stop(victims, demand, placed, free, queued, preempted)
        placed[demand.key] = _place(demand, more, placed[demand.key], free)
        push(demand)
    return queued


def consolidate(
    demands: Sequence[JobDemand],
    placed: dict[str, dict[str, int]],
    free: dict[str, int],
) -> None:
    """Step 8: plan on one node each job that spans several though one node could hold all
    its workers, when its size changes in this decision (or it starts): its workers restart
    then anyway, so the ones elsewhere can move for nothing more (the operator deletes and
    recreates them on their planned node as it resizes the job, reconcile rule 11). Only a
    job that lists its throughput across nodes for that count (the caller lists the counts
    one node holds). The node: one it may use where the free GPUs, CPU and memory with its
    own workers' hold them all; the one with most of its workers, then the best fit. Its
    running workers elsewhere keep their GPUs in ``free`` (its autoscaler may stay below
    the new size, and then nothing moves: what they hold is granted to no one else); the
    new workers this decision planned elsewhere give theirs back. Mutates ``placed`` and
    ``free``."""
    for demand in sorted(demands, key=_order_key):
        where = placed.get(demand.key)
        if not where or not demand.throughput_across_nodes:
            continue
        count = sum(where.values())
        if len(_nodes_used(where)) < 2 or count == demand.current_replicas:
            continue
        if count not in demand.throughput_across_nodes:
            continue
        if (cap := _cap_at(demand, {})) is not None and count > cap:
            continue  # no node may run them all
        # its running workers hold their GPUs until the operator moves them (the job may
        # not resize after all, its autoscaler below the ceiling): only the new ones leave
        _, added = _kept_prefix(demand, where)
        running = {n: where[n] - added.get(n, 0) for n in where}
        trial = free.copy()
        for node, workers in added.items():
            if node in trial:
                _give(trial, node, demand, workers)
        holds = [
            n
            for n in trial
            if _may_use(demand, n) and _fits(trial, n, demand) >= count - running.get(n, 0)
        ]
        if not holds:
            continue
        node = min(holds, key=lambda n: (-where.get(n, 0), trial[n], n))
        _take(trial, node, demand, count - running.get(node, 0))
        placed[demand.key] = {node: count}
        _assign(free, trial)


def _down_step(
    demand: JobDemand, utilities: Mapping[int, float], at: int
) -> tuple[float, int] | None:
    """The smaller allowed count with the least utility loss per GPU freed; None at the
    minimum. ``utilities`` is ascending by count and starts at the minimum."""
    here = utilities[at]
    best: tuple[float, int] | None = None
    for n, value in utilities.items():
        if n >= at:
            break
        loss = (here - value) / ((at - n) * demand.gpus_per_worker)
        if best is None or loss < best[0] - 1e-12:
            best = (loss, n)
    return best


def rebalance(
    demands: Sequence[JobDemand],
    allowed: Mapping[str, Sequence[int]],
    placed: dict[str, dict[str, int]],
    free: dict[str, int],
    settings: ArbiterSettings,
    decision: Utilities | None = None,
) -> None:
    """Step 6: move GPUs from one admitted job to another when the move pays.

    Mutates ``placed`` and ``free``. Repeatedly, the job with the best gain per GPU
    (:func:`_best_step`, any size) takes the GPUs it needs beyond the free ones from donors
    above their minimum that hold GPUs on a node it may use: lower-priority donors first (a
    higher-priority job may shrink lower ones to their minimum, never below, whatever they
    lose), then same-priority donors by the least loss per GPU (:func:`_down_step`); a donor
    loses its highest replica indexes, wherever they run (:func:`_unplace`). A move
    is made only if the recipient's utility gain exceeds what its same-priority donors lose;
    both sides are valued with the restart charge and the resize margin, so GPUs move only
    for a gain that pays two restarts with a margin. A donor never has a higher priority than its recipient. Stops when no move pays
    (each move raises the objective, so it ends; bounded by the GPU count besides, and a move
    that failed is not tried again within the decision, which keeps it fast).

    A recipient that step 7 lets preempt (:attr:`JobDemand.preempts`, with
    ``settings.preempt_to_grow``) takes no GPUs from a lower-priority donor while a job of
    still lower priority holds workers on a node it may use: as the scheduler's
    preemption, the lowest priority gives way first, stopped by step 7 if need be, before a
    job above it loses anything (with three priorities, the middle one was shrunk here and
    then the bottom one stopped as well); :func:`allocate` then repeats steps 6 and 7, the
    stopped jobs gone."""
    jobs = sorted((d for d in demands if d.key in placed), key=_order_key)
    utilities = _step_utilities(jobs, allowed, settings, decision)
    across = _across_utilities(jobs, allowed, settings)
    ups: dict[str, tuple[float, int] | None] = {}
    downs: dict[str, tuple[float, int] | None] = {}
    stale = {d.key for d in jobs}
    failed: set[tuple[str, int]] = set()  # moves not tried again (bounds the work)
    for _ in range(sum(free.values()) + sum(_count(placed, d) * d.gpus_per_worker for d in jobs)):
        _refresh_steps(jobs, utilities, placed, free, stale, ups, downs)
        # the cheapest donor per priority, to skip recipients no donor could pay for
        cheapest: dict[int, float] = {}
        for demand in jobs:
            if (down := downs[demand.key]) is not None:
                cheapest[demand.priority] = min(cheapest.get(demand.priority, math.inf), down[0])
        candidates = sorted(
            (-up[0], _order_key(d), up[1], d) for d in jobs if (up := ups[d.key]) is not None
        )
        for neg_gain, _, target, recipient in candidates:
            below = any(p < recipient.priority for p in cheapest)
            if (recipient.key, target) in failed or (
                not below and cheapest.get(recipient.priority, math.inf) >= -neg_gain
            ):
                continue  # tried, or not even the cheapest same-priority GPU is worth it
            bottom = _bottom(recipient, jobs, placed, settings)
            stale = _move(recipient, target, jobs, utilities, downs, placed, free, bottom,
                          across.get(recipient.key))  # fmt: skip
            if stale:
                break
            failed.add((recipient.key, target))
        else:
            return


def _bottom(
    recipient: JobDemand,
    jobs: Sequence[JobDemand],
    placed: Mapping[str, Mapping[str, int]],
    settings: ArbiterSettings,
) -> int | None:
    """The lowest priority of the admitted jobs ``recipient`` may preempt to grow (holding
    workers on a node it may use), when it may (step 7): only they give it GPUs in step 6
    (:func:`rebalance`), or are stopped for it in step 7 (:func:`preempt_for_growth`), until
    they are gone. None when it may not, or none is there."""
    if not (recipient.preempts and settings.preempt_to_grow):
        return None
    return min(
        (
            d.priority
            for d in jobs
            if d.priority < recipient.priority
            and d.key in placed
            and any(w > 0 and _may_use(recipient, n) for n, w in placed[d.key].items())
        ),
        default=None,
    )


def _layered(
    demands: Sequence[JobDemand], placed: Mapping[str, Mapping[str, int]], settings: ArbiterSettings
) -> bool:
    """Whether an admitted job that may preempt to grow has admitted jobs of two or more
    lower priorities: steps 6 and 7 then give it the lowest first, a round each
    (:func:`allocate`)."""
    if not settings.preempt_to_grow:
        return False
    admitted = [d for d in demands if d.key in placed]
    return any(
        len({d.priority for d in admitted if d.priority < job.priority}) > 1
        for job in admitted
        if job.preempts
    )


def _refresh_steps(
    jobs: Sequence[JobDemand],
    utilities: Mapping[str, Mapping[int, float]],
    placed: Mapping[str, Mapping[str, int]],
    free: Mapping[str, int],
    stale: set[str],
    ups: dict[str, tuple[float, int] | None],
    downs: dict[str, tuple[float, int] | None],
) -> None:
    """Each job's best step up (within the GPUs it could get: free ones and the surplus
    above their minimum of jobs of its priority or lower) and down, recomputed for the jobs
    that changed (``stale``) or whose cached step up is out of reach now."""
    surplus: dict[int, int] = {}
    for demand in jobs:
        above = (_count(placed, demand) - demand.min_replicas) * demand.gpus_per_worker
        surplus[demand.priority] = surplus.get(demand.priority, 0) + above
    spare = sum(free.values())
    for demand in jobs:
        at = _count(placed, demand)
        own = (at - demand.min_replicas) * demand.gpus_per_worker
        reach = spare - own + sum(g for p, g in surplus.items() if p <= demand.priority)
        slots = max(0, reach // demand.gpus_per_worker)
        cached = ups.get(demand.key)
        if demand.key in stale or demand.key not in ups or (cached and cached[1] - at > slots):
            ups[demand.key] = _best_step(demand, utilities[demand.key], at, slots)
            downs[demand.key] = _down_step(demand, utilities[demand.key], at)


def _count(placed: Mapping[str, Mapping[str, int]], demand: JobDemand) -> int:
    return sum(placed[demand.key].values())


def _move(
    recipient: JobDemand,
    target: int,
    jobs: Sequence[JobDemand],
    utilities: Mapping[str, Mapping[int, float]],
    downs: Mapping[str, tuple[float, int] | None],
    placed: dict[str, dict[str, int]],
    free: dict[str, int],
    bottom: int | None = None,
    across: Mapping[int, float] | None = None,
) -> set[str]:
    """Try to grow ``recipient`` to ``target`` by shrinking donors (:func:`rebalance`);
    commit only when the workers fit and the gain beats the loss. ``downs``: each job's
    :func:`_down_step` as ``placed`` stands; ``bottom``: the only lower priority that may
    give (:func:`_bottom`); ``across``: the recipient's utilities spanning several nodes
    (:func:`_across_utilities`), where its gain is valued once its workers are placed.
    Returns the keys of the jobs changed (empty when nothing was)."""
    at = _count(placed, recipient)
    gain = utilities[recipient.key][target] - utilities[recipient.key][at]
    trial_free = free.copy()
    trial: dict[str, dict[str, int]] = {}

    def offer(donor: JobDemand) -> None:
        where = trial.get(donor.key, placed[donor.key])
        down = _down_step(donor, utilities[donor.key], sum(where.values()))
        if down is not None:
            heapq.heappush(heap, (donor.priority, down[0], _order_key(donor), down[1], donor))

    heap = _first_donors(recipient, jobs, downs, placed, free, bottom)
    loss = 0.0
    while _slots(trial_free, recipient, placed[recipient.key]) < target - at:
        if not heap:
            return set()
        _, _, _, to, donor = heapq.heappop(heap)
        where = trial.get(donor.key, placed[donor.key])
        here = sum(where.values())
        if donor.priority == recipient.priority:
            loss += utilities[donor.key][here] - utilities[donor.key][to]
            if loss >= gain:
                return set()
        trial[donor.key] = _unplace(donor, here - to, where, trial_free, keep_off=recipient)
        offer(donor)
    trial[recipient.key] = _place(recipient, target - at, placed[recipient.key], trial_free)
    if sum(trial[recipient.key].values()) != target:
        return set()
    if across:  # valued where its workers land: spread over nodes, a gain may vanish
        values = utilities[recipient.key]
        before = _spread_value(values, across, at, placed[recipient.key])
        after = _spread_value(values, across, target, trial[recipient.key])
        if after - before <= max(loss, 0.0) + 1e-12:
            return set()
    placed.update(trial)
    _assign(free, trial_free)
    return set(trial)


_Donor = tuple[int, float, tuple[int, float, str], int, JobDemand]


def _first_donors(
    recipient: JobDemand,
    jobs: Sequence[JobDemand],
    downs: Mapping[str, tuple[float, int] | None],
    placed: Mapping[str, Mapping[str, int]],
    free: Mapping[str, int],
    bottom: int | None = None,
) -> list[_Donor]:
    """The heap of :func:`_move`'s donors, by their first step down (``downs``, for
    ``placed``): the jobs of the recipient's priority or lower (of its priority or
    ``bottom``, when given) that hold GPUs on a node it may use and would have CPU and
    memory for one more worker on once theirs left (``free``: what the nodes have left),
    cheapest first within a priority, lower priorities before."""

    light = not recipient.asks_cpu_or_memory

    def usable(node: str, donor: JobDemand, workers: int) -> bool:
        if not _may_use(recipient, node):
            return False
        return light or _room_after(free, node, recipient, donor, workers)

    heap = [
        (donor.priority, down[0], _order_key(donor), down[1], donor)
        for donor in jobs
        if (down := downs[donor.key]) is not None
        and donor.key != recipient.key
        and donor.priority <= recipient.priority
        and (bottom is None or donor.priority in (bottom, recipient.priority))
        and any(w > 0 and usable(n, donor, w) for n, w in placed[donor.key].items())
    ]
    heapq.heapify(heap)
    return heap


# ---------------------------------------------------------------------------- placement


def _may_use(demand: JobDemand, node: str) -> bool:
    """Whether ``demand``'s workers may run on ``node`` (:attr:`JobDemand.nodes`)."""
    return demand.nodes is None or node in demand.nodes


class _Free(dict[str, int]):
    """What the nodes have left while the steps place workers: free GPUs per node (the
    mapping), and the CPU (millicores) and memory (bytes) left on the nodes where they are
    known (:class:`Capacity`). A worker placed takes all three and gives them back when it
    leaves (:func:`_take`, :func:`_give`; :func:`_fits` counts what fits), so the workers of
    every job on a node fit its CPU and memory together. A step called with a plain mapping
    of GPUs counts GPUs alone."""

    __slots__ = ("cpu", "memory")

    def __init__(
        self,
        gpus: Mapping[str, int],
        cpu: Mapping[str, int] | None = None,
        memory: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__(gpus)
        self.cpu = dict(cpu or {})
        self.memory = dict(memory or {})

    def copy(self) -> _Free:
        return _Free(self, self.cpu, self.memory)


_Need = tuple[float, float, float]  # GPUs, CPU millicores, memory bytes
_NOTHING: _Need = (0.0, 0.0, 0.0)


def _need(demand: JobDemand) -> _Need:
    """What one worker of ``demand`` takes of a node."""
    return (demand.gpus_per_worker, demand.cpu_millis_per_worker, demand.memory_bytes_per_worker)


def _plus(a: _Need, b: _Need) -> _Need:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2])


def _minus(a: _Need, b: _Need) -> _Need:
    return (a[0] - b[0], a[1] - b[1], a[2] - b[2])


def _left(free: Mapping[str, int], node: str) -> _Need:
    """What ``node`` has left; CPU and memory unbounded where not known."""
    if not isinstance(free, _Free):
        return (free[node], math.inf, math.inf)
    return (free[node], free.cpu.get(node, math.inf), free.memory.get(node, math.inf))


def _short(left: _Need, held: _Need, need: _Need) -> bool:
    """Whether ``need`` does not fit in ``left`` beside ``held`` (a resource not needed
    never is short, even where running workers overcommit it)."""
    return any(n > 0 and have - h < n for have, h, n in zip(left, held, need, strict=True))


def _take(free: dict[str, int], node: str, demand: JobDemand, workers: int = 1) -> None:
    """``workers`` of ``demand`` take their GPUs, CPU and memory on ``node``."""
    free[node] -= workers * demand.gpus_per_worker
    if isinstance(free, _Free):
        if demand.cpu_millis_per_worker and node in free.cpu:
            free.cpu[node] -= workers * demand.cpu_millis_per_worker
        if demand.memory_bytes_per_worker and node in free.memory:
            free.memory[node] -= workers * demand.memory_bytes_per_worker


def _give(free: dict[str, int], node: str, demand: JobDemand, workers: int = 1) -> None:
    """``workers`` of ``demand`` leave ``node``: its GPUs, CPU and memory are free again."""
    _take(free, node, demand, -workers)


def _assign(free: dict[str, int], other: Mapping[str, int]) -> None:
    """Make ``free`` what ``other`` says (a trial committed)."""
    free.clear()
    free.update(other)
    if isinstance(free, _Free) and isinstance(other, _Free):
        free.cpu, free.memory = dict(other.cpu), dict(other.memory)


def _hold_running(free: dict[str, int], demands: Iterable[JobDemand]) -> None:
    """Raise each node's CPU and memory to what the running workers there request, where
    they ask more than it has left (allocatable shrank, or another pod was bound beside
    them): they run there, so they hold it, and no new worker is placed in the gap."""
    if not isinstance(free, _Free):
        return
    cpu: dict[str, int] = collections.Counter()
    memory: dict[str, int] = collections.Counter()
    for demand in demands:
        for node in demand.worker_nodes:
            cpu[node] += demand.cpu_millis_per_worker
            memory[node] += demand.memory_bytes_per_worker
    for left, running in ((free.cpu, cpu), (free.memory, memory)):
        for node, asked in running.items():
            if node in left and asked > left[node]:
                left[node] = asked


def _fits(free: Mapping[str, int], node: str, demand: JobDemand, less: int = 0) -> int:
    """How many more workers of ``demand`` fit on ``node``, by its GPUs, CPU and memory,
    once ``less`` more of them were placed there (never below zero)."""
    need = demand.gpus_per_worker
    fit = (free[node] - less * need) // need
    if fit <= 0:
        return 0
    if type(free) is _Free:  # (the hottest path of a decision: no loops, no helpers)
        if per := demand.cpu_millis_per_worker:
            left = free.cpu.get(node)
            if left is not None:
                fit = min(fit, left // per - less)
        if per := demand.memory_bytes_per_worker:
            left = free.memory.get(node)
            if left is not None:
                fit = min(fit, left // per - less)
    return max(0, fit)


def _room_after(
    free: Mapping[str, int], node: str, demand: JobDemand, leaving: JobDemand, workers: int
) -> bool:
    """Whether ``node``'s CPU and memory would hold one more worker of ``demand`` once
    ``workers`` of ``leaving`` left it (GPUs not counted: the caller frees those)."""
    if not isinstance(free, _Free) or not demand.asks_cpu_or_memory:
        return True
    for left, per, back in (
        (free.cpu, demand.cpu_millis_per_worker, leaving.cpu_millis_per_worker),
        (free.memory, demand.memory_bytes_per_worker, leaving.memory_bytes_per_worker),
    ):
        if per and node in left and left[node] + workers * back < per:
            return False
    return True


_Preference = tuple[int, int, int, int, str]  # the sort key of a node for a new worker


def _kept_prefix(demand: JobDemand, where: Mapping[str, int]) -> tuple[int, dict[str, int]]:
    """How many of ``demand``'s running workers ``where`` keeps in index order (its workers
    ``0 .. k-1`` where they run, :attr:`JobDemand.worker_nodes`), and the rest of ``where``:
    the workers this decision added, which take the next indexes."""
    left = dict(where)
    kept = 0
    for node in demand.worker_nodes:
        if left.get(node, 0) <= 0:
            break
        left[node] -= 1
        kept += 1
    return kept, {n: w for n, w in left.items() if w > 0}


def _returning(
    demand: JobDemand, where: Mapping[str, int], free: Mapping[str, int]
) -> tuple[list[str], bool]:
    """The nodes of the running workers ``demand`` may take back beyond ``where``, in index
    order, and whether one was stopped by a full node (then the job can keep no worker
    above it: its next index runs there, and the operator never leaves a gap). A worker
    on a node outside ``free`` (cordoned, gone) keeps running there, off the books."""
    if not demand.worker_nodes:
        return [], False
    kept, added = _kept_prefix(demand, where)
    if added:
        return [], False  # placed anew (its own nodes could not hold its minimum)
    used: dict[str, int] = {}
    nodes: list[str] = []
    for node in demand.worker_nodes[kept:]:
        if node in free:
            if _fits(free, node, demand, used.get(node, 0)) < 1:
                return nodes, True
            used[node] = used.get(node, 0) + 1
        nodes.append(node)
    return nodes, False


def _slots(free: Mapping[str, int], demand: JobDemand, where: Mapping[str, int]) -> int:
    """How many more workers of ``demand`` fit, placed as :func:`_place` would: its
    running workers back where they run, in index order, then new ones on the nodes it may
    use."""
    need = demand.gpus_per_worker
    back, stopped = _returning(demand, where, free)
    if stopped:
        return len(back)
    returning = collections.Counter(back)
    if demand.max_workers_per_node is not None:  # so many to a node, at most
        return len(back) + _capped_slots(free, demand, where, returning)
    if isinstance(free, _Free) and demand.asks_cpu_or_memory:  # CPU and memory too
        allowed, new = demand.nodes, 0
        for node, gpus in free.items():  # (the hottest loop of a decision)
            if gpus >= need and (allowed is None or node in allowed):
                new += _fits(free, node, demand, returning[node])
        return len(back) + new
    if demand.nodes is None:
        new = sum(g // need for g in free.values())
    else:
        new = sum(g // need for n, g in free.items() if n in demand.nodes)
    for node, workers in returning.items():
        if node in free and _may_use(demand, node):  # the GPUs its returning workers take
            new += (free[node] - workers * need) // need - free[node] // need
    return len(back) + new


def _capped_slots(
    free: Mapping[str, int],
    demand: JobDemand,
    where: Mapping[str, int],
    returning: Mapping[str, int],
) -> int:
    """:func:`_slots`' new workers for a job with a bound on its workers per node: what
    each node holds beyond the ones placed and returning there, within the bound."""
    on = collections.Counter(where)
    on.update(returning)
    fits = {
        node: _fits(free, node, demand, returning.get(node, 0))
        for node in free
        if _may_use(demand, node)
    }
    return _bounded_room(demand, on, fits)


def _cap_at(demand: JobDemand, where: Mapping[str, int]) -> int | None:
    """Most of ``demand``'s workers one node may run with its workers at ``where``: its
    fixed bound, or, under a spread constraint, that many more than the node it counts
    holding the fewest; None: no bound."""
    cap = demand.max_workers_per_node
    if cap is None or demand.spread_domains is None:
        return cap
    return cap + min(where.get(d, 0) for d in demand.spread_domains)


def _bounded_room(demand: JobDemand, on: Mapping[str, int], fits: Mapping[str, int]) -> int:
    """:func:`compute_bounded_room` with ``demand``'s bound."""
    return compute_bounded_room(demand.max_workers_per_node, demand.spread_domains, on, fits)


def compute_bounded_room(
    cap: int | None,
    domains: Collection[str] | None,
    on: Mapping[str, int],
    fits: Mapping[str, int],
) -> int:
    """How many more of a job's workers the nodes hold (``fits``: per node it may use, how
    many its free resources hold), its workers now at ``on``, within its bound on workers
    per node (``cap``; None: no bound). Under a spread constraint (``domains``: the nodes
    it counts) the nodes are filled evenly: the fewest any of them can end with (its
    workers there and what fits) sets the level, and no node goes past that level plus
    ``cap``, the constraint's ``maxSkew``."""
    if cap is None:
        return sum(fits.values())
    if domains is not None:
        cap += min(on.get(d, 0) + fits.get(d, 0) for d in domains)
    return sum(min(f, max(0, cap - on.get(n, 0))) for n, f in fits.items())


def _whole_workers(free: Mapping[str, int], demand: JobDemand) -> int:
    """How many of ``demand``'s workers the free GPUs on the nodes it may use hold, each
    worker's GPUs on one node, within what each node's CPU and memory hold of them and
    the job's own bound on workers per node."""
    fits = {n: _fits(free, n, demand) for n in free if _may_use(demand, n)}
    return _bounded_room(demand, {}, fits)


def _place(
    demand: JobDemand,
    workers: int,
    already: Mapping[str, int],
    free: dict[str, int],
    *,
    dry_run: bool = False,
    in_order: bool = True,
    claims: _Claims | None = None,
) -> dict[str, int]:
    """Place ``workers`` more workers of ``demand``; return its whole placement.

    A running job first takes back the workers it runs, in index order, on their nodes
    (:func:`_returning`; not when ``in_order`` is false), then new workers go node by node
    as :func:`_node_preference` orders them, first where they cost running jobs the least
    (``claims``, while step 3 admits jobs). Mutates ``free`` unless ``dry_run``; places
    fewer when they do not fit."""
    need = demand.gpus_per_worker
    where = dict(already)
    spare = free if not dry_run else free.copy()
    if claims is not None and claims.empty:
        claims = None  # nothing claimed: everything free is free
    if in_order:
        back, stopped = _returning(demand, where, spare)
        for node in back[:workers]:
            where[node] = where.get(node, 0) + 1
            if node in spare:
                _take(spare, node, demand)
        workers -= len(back[:workers])
        if stopped:
            return where
    allowed = demand.nodes
    simple = not isinstance(spare, _Free) or not demand.asks_cpu_or_memory
    for left in range(workers, 0, -1):
        cap = _cap_at(demand, where)
        candidates = [
            n
            for n, g in spare.items()
            if g >= need
            and (allowed is None or n in allowed)
            and (simple or _fits(spare, n, demand) > 0)
            and (cap is None or where.get(n, 0) < cap)
        ]
        if not candidates:
            break
        node = _next_node(demand, candidates, where, spare, left, claims)
        if claims is not None and not dry_run:
            claims.take(node, spare, demand)
        where[node] = where.get(node, 0) + 1
        _take(spare, node, demand)
    return where


def _next_node(
    demand: JobDemand,
    candidates: list[str],
    where: Mapping[str, int],
    spare: Mapping[str, int],
    left: int,
    claims: _Claims | None,
) -> str:
    """The node for ``demand``'s next new worker among ``candidates`` (:func:`_place`)."""
    if claims is not None:
        if demand.throughput_across_nodes:  # spread, it would lose: its own node first,
            most = max((where.get(n, 0) for n in candidates), default=0)
            mine = [n for n in candidates if most > 0 and where.get(n, 0) == most]
            # where that takes nothing from a job of a higher priority
            mine = [n for n in mine if claims.cost(n, spare, demand)[0] <= demand.priority]
            candidates = mine or candidates
        unclaimed = [n for n in candidates if claims.fits(n, spare, demand)]
        if not unclaimed:  # every candidate costs a running job workers: the least first
            return min(
                candidates,
                key=lambda n: (
                    claims.cost(n, spare, demand),
                    _node_preference(demand, n, where, spare, left),
                ),
            )
        candidates = unclaimed
    return min(candidates, key=lambda n: _node_preference(demand, n, where, spare, left))


def _unplace(
    demand: JobDemand,
    workers: int,
    where: Mapping[str, int],
    free: dict[str, int],
    *,
    keep_off: JobDemand | None = None,
) -> dict[str, int]:
    """Remove ``workers`` of ``demand`` from ``where``; return what remains. Mutates
    ``free``. The workers this decision added leave first (from the nodes where the job has
    the fewest, so it stays packed; when they leave for ``keep_off``, first the nodes that
    job may use and has CPU and memory on), then its running workers, the highest index
    first: the operator deletes
    those when a job shrinks, wherever they run."""
    remaining = dict(where)
    kept, added = _kept_prefix(demand, where)

    def order(node: str) -> tuple[bool, int, str]:
        away = keep_off is not None and (
            not _may_use(keep_off, node) or not _room_after(free, node, keep_off, demand, 1)
        )
        return (away, remaining[node], node)

    for _ in range(workers):
        if added:
            node = min(added, key=order)
            added[node] -= 1
            if not added[node]:
                del added[node]
        else:
            kept -= 1
            node = demand.worker_nodes[kept]
        remaining[node] -= 1
        if node in free:
            _give(free, node, demand)
    return {n: w for n, w in remaining.items() if w > 0}


def _node_preference(
    demand: JobDemand, node: str, where: Mapping[str, int], spare: Mapping[str, int], left: int
) -> _Preference:
    """Sort key of a node for the next worker (smallest first): where the job already has
    workers, then where it runs now, then a node that holds all ``left`` workers (best fit:
    the fewest free GPUs), else the node with the most free GPUs (fewest nodes); by name."""
    cap = _cap_at(demand, where)
    holds_all = (
        spare[node] >= left * demand.gpus_per_worker
        and (not demand.asks_cpu_or_memory or _fits(spare, node, demand) >= left)
        and (cap is None or where.get(node, 0) + left <= cap)
    )
    fit = spare[node] if holds_all else -spare[node]
    return (-where.get(node, 0), -demand.current_nodes.get(node, 0), int(not holds_all), fit, node)


def _sorted_placement(where: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
    return tuple(sorted(((n, w) for n, w in where.items() if w > 0), key=lambda x: (-x[1], x[0])))


# ---------------------------------------------------------------------------- reasons


def _gpus(n: int) -> str:
    return f"{n} GPU" if n == 1 else f"{n} GPUs"


def _jobs(n: int) -> str:
    return f"{n} job" if n == 1 else f"{n} jobs"


def _reason(
    demand: JobDemand,
    replicas: int,
    wanted: int,
    waiting: int,
    unreserved: Mapping[str, int],
    sharing: int,
    alone: Mapping[str, int],
    ending: bool = False,
) -> str:
    """``unreserved``: per node, what admitted jobs' minimums do not hold (running jobs
    above their minimum give GPUs back to admit a queued job, so those count as free to it);
    the nodes the job may use count. A queued job whose GPUs are free in total but split
    across nodes, where none of its workers fits, is told so: "8 free" alone reads as a
    bug. ``alone``: what the nodes have for arbitrated jobs at all; a job granted all of it
    that it can use is told that its nodes, not the jobs beside it, limit it."""
    gpus = replicas * demand.gpus_per_worker
    if replicas == 0:
        per = demand.gpus_per_worker
        need = demand.min_replicas * per
        mine = [g for n, g in unreserved.items() if _may_use(demand, n)]
        total = sum(mine)
        reason = f"queued: needs {_gpus(need)}, {total} free"
        whole = sum(g // per for g in mine)
        held = _whole_workers(unreserved, demand)
        capped = _bounded_room(
            demand, {}, {n: g // per for n, g in unreserved.items() if _may_use(demand, n)}
        )
        if capped < demand.min_replicas <= whole:
            reason += (
                f", but {_per_node_bound(demand)}: {capped} of its {demand.min_replicas} fit "
                f"on the nodes with {_gpus(per)} free"
            )
        elif total >= need and whole < demand.min_replicas:
            reason += (
                f", but each worker needs {_gpus(per)} on one node: {whole} of its "
                f"{demand.min_replicas} fit (most free on one node: {max(mine, default=0)})"
            )
        elif whole >= demand.min_replicas > held:
            reason += (
                f", but the CPU and memory its workers request leave room for {held} of its "
                f"{demand.min_replicas} on the nodes with free GPUs"
            )
        return reason
    if replicas < wanted:
        room = _whole_workers(alone, demand)
        if replicas >= room:
            return _limited_by_nodes(demand, gpus, wanted, room, alone)
        crowd = f"{_jobs(waiting)} waiting" if waiting else f"shared by {_jobs(sharing)}"
        return f"limited to {_gpus(gpus)} by cluster arbitration ({crowd})"
    if wanted == demand.max_replicas:
        return f"granted {_gpus(gpus)}: its maxReplicas"
    if ending and replicas == demand.current_replicas:
        left = demand.time_left_seconds
        assert left is not None
        took = f"{left:.0f} s" if left < 120 else f"{left / 60:.0f} min"
        return (
            f"granted {_gpus(gpus)}: its size now (the {took} it has left do not pay a "
            f"{demand.restart_cost_seconds:.0f} s restart)"
        )
    return f"granted {_gpus(gpus)}: all it can use (efficiency floor, budget or model)"


def _per_node_bound(demand: JobDemand) -> str:
    """A job's bound on workers per node in words, with the rule it comes from: "its
    workers may not share a node (its required podAntiAffinity)"."""
    cap = demand.max_workers_per_node
    if demand.spread_domains is not None:
        share = f"a node may run at most {cap} more of its workers than another"
    elif cap == 1:
        share = "its workers may not share a node"
    else:
        share = f"at most {cap} of its workers may share a node"
    return f"{share} ({demand.per_node_rule or 'its template'})"


def _limited_by_nodes(
    demand: JobDemand, gpus: int, wanted: int, room: int, alone: Mapping[str, int]
) -> str:
    """:func:`_reason` for a job granted all the room its nodes have: what bounds that
    room (its own bound on workers per node, CPU and memory, or the GPUs)."""
    by_gpus = sum(g // demand.gpus_per_worker for n, g in alone.items() if _may_use(demand, n))
    if demand.max_workers_per_node is not None and by_gpus > room:
        return (
            f"limited to {_gpus(gpus)}: {_per_node_bound(demand)}, and the nodes it may use "
            f"hold {room} of the {wanted} it wants"
        )
    if by_gpus > room:
        return (
            f"limited to {_gpus(gpus)}: the CPU and memory its workers request leave "
            f"room for {room} of the {wanted} it wants on the nodes it may use"
        )
    return (
        f"limited to {_gpus(gpus)}: the nodes it may use have GPUs for {room} of the "
        f"{wanted} workers it wants"
    )


def _wanted(demand: JobDemand, allowed: Sequence[int], utilities: Mapping[int, float]) -> int:
    """What the job takes on an empty cluster: its best-utility count, smallest on ties,
    through the same steps as the arbiter (so ``limited`` is about sharing only)."""
    at = allowed[0]
    while True:
        step = _best_step(demand, utilities, at, 1 << 30)
        if step is None:
            return at
        at = step[1]


def _ending(
    demand: JobDemand, allowed: Sequence[int], wanted: int, settings: ArbiterSettings
) -> bool:
    """Whether the time the job has left is why it wants no other size than ``wanted``:
    with the usual horizon it would want another (a reason then says so)."""
    if demand.time_left_seconds is None or demand.current_replicas == 0:
        return False
    if demand.time_left_seconds >= settings.restart_horizon_seconds:
        return False
    untold = dataclasses.replace(demand, time_left_seconds=None)
    return _wanted(untold, allowed, _utilities(untold, allowed, settings)) != wanted


# ---------------------------------------------------------------------------- allocate


def allocate(
    demands: Iterable[JobDemand],
    capacity: Capacity,
    *,
    now: float,
    settings: ArbiterSettings | None = None,
) -> Allocation:
    """Divide the cluster's GPUs between the managed jobs (module docstring).

    Args:
        demands: every managed job, pinned ones included; keys must be unique.
        capacity: GPUs per node available to trainscale.
        now: the clock, seconds in the same epoch as ``JobDemand.created``; the queue's
            order uses ages, which are ``now - created``.
        settings: the objective's tunables; defaults when None.

    Returns:
        An :class:`Allocation` with one :class:`JobAllocation` per demand.

    Raises:
        ValueError: on duplicate keys.
    """
    settings = settings or ArbiterSettings()
    jobs = list(demands)
    keys = [d.key for d in jobs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate job keys in demands")
    del now  # ages order the queue; created stamps already order them the same way
    free, pinned_places = subtract_pinned(jobs, capacity)
    arbitrated = [d for d in jobs if not d.pinned]
    _hold_running(free, arbitrated)
    alone = free.copy()  # what the nodes have for the arbitrated jobs at all
    allowed = {d.key: compute_allowed_counts(d) for d in arbitrated}
    utilities = {d.key: _utilities(d, allowed[d.key], settings) for d in arbitrated}
    preempted: dict[str, str] = {}
    placed, queued = admit_minimums(
        arbitrated, free, functools.partial(_kept_value, utilities), preempted
    )
    unreserved = free.copy()  # what the admitted jobs' minimums leave
    restore_running(arbitrated, allowed, placed, free, settings, utilities)
    grow_by_marginal_gain(arbitrated, allowed, placed, free, settings, utilities)
    grown_into: list[JobDemand] = []
    for _ in range(len({d.priority for d in arbitrated})):  # steps 6 and 7, tier by tier
        layered = _layered(arbitrated, placed, settings)
        rebalance(arbitrated, allowed, placed, free, settings, utilities)
        stopped = preempt_for_growth(
            arbitrated, allowed, placed, free, settings, utilities, preempted
        )
        grown_into += stopped
        if not (layered and stopped):
            break  # the lowest priority below a preemptor was its only one, or none went
    queued += grown_into
    consolidate(arbitrated, placed, free)
    # what the moves left free (a donor's GPUs the recipient could not use, CPU it freed
    # beside idle GPUs, a preempted job's GPUs the preemptor did not need) is handed out
    # as in step 5
    grow_by_marginal_gain(arbitrated, allowed, placed, free, settings, utilities)

    free_gpus = sum(free.values())
    waiting = len(queued)
    grown = {d.key for d in grown_into}  # their reason counts what is free after all steps
    result: dict[str, JobAllocation] = {}
    for demand in jobs:
        if demand.pinned:
            result[demand.key] = JobAllocation(
                key=demand.key,
                replicas=demand.current_replicas,
                placement=pinned_places[demand.key],
                wanted=demand.current_replicas,
                queued=False,
                pinned=True,
                reason=f"pinned at {demand.current_replicas} workers (opted out of arbitration)",
            )
            continue
        where = placed.get(demand.key, {})
        replicas = sum(where.values())
        wanted = _wanted(demand, allowed[demand.key], utilities[demand.key])
        ending = _ending(demand, allowed[demand.key], wanted, settings)
        result[demand.key] = JobAllocation(
            key=demand.key,
            replicas=replicas,
            placement=_sorted_placement(where),
            wanted=wanted,
            queued=replicas == 0 and demand.min_replicas > 0,
            pinned=False,
            reason=_preempted_by(demand, preempted, jobs)
            + _reason(
                demand,
                replicas,
                wanted,
                waiting,
                free if demand.key in grown else unreserved,
                len(placed),
                alone,
                ending,
            ),
            preempted_by=preempted.get(demand.key),
        )
    return Allocation(jobs=result, free_gpus=free_gpus, waiting=waiting)


PREEMPTED_BY = "preempted by "
"""How a preempted job's reason starts (``JobAllocation.preempted_by``, and
``status.arbitration.preemptedBy``, name the preemptor for programs)."""


def _preempted_by(
    demand: JobDemand, preempted: Mapping[str, str], jobs: Sequence[JobDemand]
) -> str:
    """The head of a preempted job's reason: who took its place, and why it may."""
    key = preempted.get(demand.key)
    if key is None:
        return ""
    by = next(d for d in jobs if d.key == key)
    return f"{PREEMPTED_BY}{key} (priority {by.priority} over {demand.priority}); "
