"""Workloads on a shared cluster: jobs arriving, sharing GPUs under a policy, finishing.

Why this module exists: whether dividing a cluster's GPUs by what each job would gain
(:func:`trainscale.operator.autoscaling.allocate`) beats fixed sizes and per-job autoscaling is
a question about whole workloads. This is the discrete-time simulator that answers it, shared
by ``trainscale simulate --workload`` (what arbitration would do with *your* jobs, with a plot
of the allocations) and ``benchmarks/cluster.py`` (the issue's goal, over seeds). Pure: no I/O
except :func:`read_trace`, no clock; randomness from explicit seeds.

The simulated job. Throughput at ``n`` workers (one GPU each) is ``rate * n / tau(n)`` with
``tau(n) = 1 + serial * (n - 1) + cliff * [n > gpus_per_node]``: a communication term, and a
cliff when the job crosses a node boundary (intra-node links give way to the network), from
which throughput recovers as more workers are added. Or the throughput is *measured*: a
placement-aware :class:`~trainscale.operator.autoscaling.simulation.Curve` read at every count
packed (:func:`measured_job`; ``trainscale.testbed.pollux_trace`` builds Pollux's published
workloads so, from step times measured on a real cluster), used the same way by every
policy, the baselines' and the arbiter's demand included. Every change of a running job's size
(and its start) costs ``restart`` seconds without progress, in every policy. Time advances in
steps of the decision interval (each policy decides once per step, as the operator does); a
job's progress within a step is continuous, so it finishes mid-step, and its GPUs are free at
the next decision.

The policies (:data:`POLICIES`):

- ``fixed``: each job runs at its requested size, started when that many GPUs are free. The
  queue is scanned in priority, then arrival order and any job that fits starts (as a gang
  scheduler such as Kueue's BestEffortFIFO would; strict FIFO would only make this baseline
  worse).
- ``per-job``: each job autoscales alone, as trainscale does without arbitration: every job
  has its own :class:`~trainscale.operator.autoscaling.JobAutoscaler` (the product's code,
  efficiency objective at the job's floor: 0.7, ``minEfficiency``'s default, or the
  efficiency of the size its user requested when that is lower, since the user accepted
  that size for a fixed run; arbitrated jobs get the same floor). It is fed what Prometheus
  would report each interval (the step's mean throughput, restart gaps included, and GPU
  utilization, each x N(1, 0.05); no decision in the step after a restart, as the daemon
  settles) and its packed placement with the GPUs per node, as the operator reads it where
  it may list nodes (the chart's default). A job starts with what is free up to its
  requested size (at least its minimum; pods that do not fit stay Pending and the job runs
  with those that did); what its autoscaler asks above the free GPUs stays Pending, first
  come first served.
- ``per-job-oracle``: the same, with the autoscaler replaced by a perfect one: it knows the
  true curve and grows straight to the job's efficiency-floor count (the largest count whose
  efficiency meets the floor), never shrinking. A perfect model, not a bound on per-job
  autoscaling: a job that never shrinks holds GPUs that arrivals wait for, and the real
  autoscaler, which leaves counts under its floor, beats it on average in both benchmarks.
- ``hpa``: a utilization threshold like the HorizontalPodAutoscaler: GPU utilization is
  ``0.95 * efficiency(n)``; desired = ``ceil(n * utilization / 0.8)`` outside a 10% tolerance,
  bounded by min/max and by free GPUs (first come first served); starts like ``per-job``.
- ``trainscale``: every step :func:`allocate` is called over the arrived, unfinished jobs with
  their demands; each job runs at the count it gets (its own autoscaler would stay at or below
  that ceiling; modelled as exactly the ceiling, since the arbiter never exceeds the job's
  efficiency-floor count) and waits queued at 0. Restarts are charged as for the others. A
  job of a higher ``priority`` preempts as the operator's does by default (the running jobs
  it queues keep their progress, as from a checkpoint).

Priorities (``Job.priority``: a trace's column, or ``generate(urgent=..., low=...)``,
``benchmarks/cluster.py --urgent --low``). A PriorityClass preempts by default in Kubernetes, and
not only for trainscale: the baselines' pods preempt as the default scheduler's do
(:meth:`_Pods.evict_for`), or a higher priority would wait behind every running job under them
alone and flatter arbitration. A pod of a higher-priority job that finds no GPU evicts a
worker of a lower-priority job on a node it may use (the lowest priority, then the newest
job first; nothing when that would still not make room); a fixed-size job stops whole when
it loses one (a gang: its run fails), an elastic one runs on with the rest while they keep
its minimum; either waits again with its progress and pays a restart. The queue, and each
step's new pods, go in priority order. ``Cluster.preempts`` off is ``preemptionPolicy:
Never`` for every policy: a higher priority only goes first. Generated and Pollux
workloads have one priority unless asked, so no committed table changes with this.

Node pools (``Cluster.pools``, ``Cluster.restricted``; ``benchmarks/cluster.py --pools``):
the nodes split evenly into pools, and a share of the jobs (drawn per job from the seed) may
use one pool only, as a node selector holds it. Every policy then takes free GPUs only on the
nodes a job may use (:class:`FreeGpus`); after each decision the shrinking jobs lose their
highest indexes and new workers are placed node by node as the scheduler's packing would
(the job's own nodes first, then the node with the most free GPUs); a worker that finds no
GPU on its pool stays Pending and the job runs without it (``Result.unplaced`` counts them).
The arbiter is told each job's pool and where its workers run, by index, as the operator
tells it, and trainscale's new workers go first to the node the arbiter planned for them
(``status.arbitration.preferredNodes``, read by
:func:`~trainscale.operator.api.planned_nodes.assign_planned_nodes` as the operator reads it
for each new pod's preferred node), when it has a free GPU (``tell_pools``, ``tell_order``,
``tell_plan``: ablations). On one pool every target fits and the results are those of the
count-only model.

CPU (``Cluster.cpu_per_node``, ``Cluster.cpu_heavy``; ``benchmarks/cluster.py
--cpu-per-node``): each node has that CPU beside its GPUs, most jobs' workers ask half a
GPU's share of it and a share of the jobs' workers half a node's (data loaders), so two of
those fill a node's CPU however many GPUs it has left. Every policy then places a worker only
where its GPU and its CPU request fit, node by node as above, and a worker that fits nowhere
stays Pending. The arbiter is told the nodes' CPU and each job's request, and where workers
run (``tell_cpu``: the ablation, as before it placed every job against one account of the
nodes' CPU). A job's throughput is still its packed curve's wherever its workers land,
unless:

Throughput that follows placement (``Cluster.placed_throughput``; ``benchmarks/cluster.py
--placed``): a job's throughput is that of the nodes its workers span, so the ``tau(n)``
family pays its cliff whenever they span two, not only past a node's GPUs (a measured
curve has packed rows only: unchanged). Without it every policy's jobs ran as if packed
wherever the GPUs they got were, which flattered the policies that spread jobs most:
trainscale's arbiter, whose grants go one worker at a time to many jobs on a fragmented
cluster (on the generated workload's seed 1, its jobs spanned more nodes than their count
needed in 85 % of their running steps, losing 13 % of their throughput, against 35 % and
3 % under fixed sizes; 73 % and 10 % once the arbiter was told their throughput across
nodes, 65 % and 8 % with moves at a resize). Workers are then placed node by node under every
policy (as on several pools), the per-job autoscaler is told where its workers run, and
the arbiter is told each job's throughput across nodes from its fitted model
(:func:`believed_across`; ``tell_across``: the ablation). A trainscale job resized by a
plan that holds its workers on other nodes than they run on moves them there as the
operator does (reconcile rule 11): its workers restart anyway.

Workers that may not share a node (``Cluster.apart``; ``benchmarks/cluster.py --apart``): a
share of the jobs (drawn per job from the seed) keep their workers one per node, as a
required pod anti-affinity to their own workers does; the scheduler then puts no two of
them on one node under every policy (:class:`FreeGpus`), and a worker that finds no node
without one stays Pending. The arbiter is told the bound (``JobDemand.
max_workers_per_node``, and no throughput across nodes for those jobs) and the per-job
autoscaler nodes of one worker, as the operator tells them (``tell_apart``: the ablation,
as before it read the rule).

What the arbiter is told, and why it does not flatter it: a demand's throughput per count
comes from the job's curve with its parameters wrong by a persistent per-job error (see
:func:`fitted`: the serial and cliff terms off by 25%, the rate by 10%, typically) — what a
fitted parametric model gets wrong is its parameters, so its errors are smooth across counts
and last the job's whole life; the arbiter misjudges some jobs throughout. A measured
curve gets the same error on its overhead over linear scaling (:func:`fitted`). Restart costs are
given exactly (the operator learns them from restarts). The ``per-job`` baseline learns its
curve from noisy metrics as the product does; ``per-job-oracle`` knows the true cut-off.

What is modelled rather than the product's code, and why: trainscale's jobs run exactly at
the arbiter's ceiling with throughput models from :func:`fitted` (a persistent error), not
each behind its own ``JobAutoscaler`` whose ``predict_throughput`` feeds the demand — a job
would then sit at its minimum until its autoscaler has a model (the arbiter never gives GPUs
on a guess), which is not yet measured. The curves are this module's own ``tau(n)`` family
with one node-boundary cliff (random serial and cliff terms per job), not
:mod:`trainscale.operator.autoscaling.simulation`'s named curves (those are a handful of fixed
shapes; a workload needs a different curve per job).

Metrics (:class:`Result`): average and p99 JCT (finish - arrival), makespan (last finish -
first arrival), GPU-hours held (including restarts), rescales (size changes of running
jobs), the worst slowdown (JCT over the job's JCT alone on the cluster at its best static
size, start-up included), unfinished jobs at the horizon (starved), and the allocation at
every step (for plots).

Trace CSV (:func:`read_trace`): a header and one row per job with the columns
``arrival_seconds`` (since the start), ``total_samples``, ``curve`` (``serial:cliff``, e.g.
``0.03:0.4``; ``rate`` samples/s per GPU is the optional third field, default 100; or the
path of a measured curve, see below), ``min_replicas``, ``max_replicas``,
``requested_replicas`` (the fixed size), and the optional ``priority`` (PriorityClass value),
``restart_seconds`` (default 60), ``name``, ``pool`` (the node pool its template admits,
``0`` to ``pools - 1`` as :attr:`Cluster.pools` splits the nodes; empty: any node) and
``cpu_per_worker`` (the CPUs each worker requests, where :attr:`Cluster.cpu_per_node` is
modelled; empty: drawn as for a generated job) and ``apart`` (``true`` or ``1``: its workers
may not share a node, ``false`` or ``0``: they may; empty: drawn as for a generated job).

A ``curve`` ending in ``.csv`` is a measured curve in the simulator's format
(``count,nodes,samples_per_second,gpu_utilization``, read by
:func:`~trainscale.operator.autoscaling.simulation.parse_csv_curve`; its node size inferred
from its multi-node rows), resolved relative to the trace file's directory; it must cover
every count from 1 to the row's ``max_replicas`` packed (throughput at each count, efficiency
relative to one worker: :func:`measured_job`). Rows may share a curve file; each file is read
once. :func:`parse_trace` is the pure parser (the curve files' texts given), :func:`read_trace`
reads the files.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import math
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from trainscale.operator.api.models import TrainingJobSpec
from trainscale.operator.api.planned_nodes import assign_planned_nodes, choose_moves
from trainscale.operator.autoscaling.arbiter import ArbiterSettings, Capacity, JobDemand, allocate
from trainscale.operator.autoscaling.autoscaler import JobAutoscaler
from trainscale.operator.autoscaling.placement import Placement
from trainscale.operator.autoscaling.policy import Observation
from trainscale.operator.autoscaling.simulation import Curve, CurveError, parse_csv_curve

MIN_EFFICIENCY = 0.7  # minEfficiency (its default) for per-job and arbitrated jobs
HPA_TARGET = 0.8
HPA_DOWN_WINDOW_STEPS = 5  # the HPA's default 300 s scale-down stabilization, in steps
COMPUTE_FRACTION = 0.95


@dataclass(frozen=True)
class Job:
    """One job of the workload, as the simulator knows it (the truth)."""

    name: str
    arrival: float
    samples: float
    rate: float  # samples/s of one worker
    serial: float
    cliff: float
    min_replicas: int
    max_replicas: int
    requested: int
    priority: int = 0
    restart: float = 60.0
    # a measured curve instead of ``tau(n)``: samples/s at 1, 2, ... workers, packed on the
    # nodes it was measured on (:func:`measured_job`); empty for the parametric family
    measured: tuple[float, ...] = ()
    pool: int | None = None  # the node pool its template admits (a trace's); None: any node
    cpu: float | None = None  # CPUs each worker requests (a trace's); None: drawn per cluster
    apart: bool | None = None  # its workers may not share a node (a trace's); None: drawn
    # a measured curve's throughput at 2, 3, ... workers one per node (what the data measured
    # across nodes; :func:`measured_job`); empty: none measured, read as packed
    measured_across: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.measured and (
            len(self.measured) < self.max_replicas
            or not all(x > 0 and math.isfinite(x) for x in self.measured)
        ):
            raise ValueError(
                f"{self.name}: a measured curve needs a positive throughput at every count up"
                f" to max_replicas {self.max_replicas}, got {len(self.measured)} counts"
            )
        if not all(x > 0 and math.isfinite(x) for x in self.measured_across):
            raise ValueError(f"{self.name}: a throughput across nodes must be positive")

    def throughput(self, n: int, gpus_per_node: int, nodes: int | None = None) -> float:
        """Samples/s at ``n`` workers spanning ``nodes`` nodes (None: packed, one node filled
        before the next). The ``tau(n)`` family pays its cliff whenever the workers span
        more than one node. A measured curve has its packed rows, and for counts one node
        holds its rows one worker per node (:attr:`measured_across`), which it reads for any
        spread placement of that count (2 + 2 as 1 + 1 + 1 + 1: the data measures no
        placement in between; the all-reduce crosses the network either way)."""
        if n <= 0:
            return 0.0
        spans = math.ceil(n / gpus_per_node) if nodes is None else nodes
        if self.measured:
            packed = math.ceil(n / gpus_per_node)
            if spans > packed and 2 <= n <= len(self.measured_across) + 1:
                return self.measured_across[n - 2]
            return self.measured[min(n, len(self.measured)) - 1]
        tau = 1.0 + self.serial * (n - 1) + (self.cliff if spans > 1 else 0.0)
        return self.rate * n / tau

    def efficiency(self, n: int, gpus_per_node: int, nodes: int | None = None) -> float:
        """Throughput per worker relative to one worker alone (spanning ``nodes``, None:
        packed)."""
        return self.throughput(n, gpus_per_node, nodes) / (n * self.throughput(1, gpus_per_node))

    def min_efficiency(self, gpus_per_node: int, apart: bool = False) -> float:
        """The job's efficiency floor: ``MIN_EFFICIENCY``, or lower when the size its user
        asked for is less efficient than that (they accepted that size for a fixed run),
        one worker per node where ``apart`` (its workers may not share a node)."""
        spans = self.requested if apart else None
        return min(MIN_EFFICIENCY, self.efficiency(self.requested, gpus_per_node, spans))

    def floor_count(self, gpus_per_node: int, apart: bool = False) -> int:
        """Largest count within bounds whose efficiency meets the floor (min at least)."""
        floor = self.min_efficiency(gpus_per_node, apart)
        best = self.min_replicas
        for n in range(self.min_replicas, self.max_replicas + 1):
            if self.efficiency(n, gpus_per_node, n if apart else None) >= floor - 1e-9:
                best = n
        return best


def measured_job(
    name: str,
    arrival: float,
    samples: float,
    curve: Curve,
    *,
    min_replicas: int,
    max_replicas: int,
    requested: int,
    priority: int = 0,
    restart: float = 60.0,
) -> Job:
    """A job whose throughput is a measured curve (a :class:`~trainscale.operator.autoscaling.
    simulation.Curve`, placement-aware), read once at every count up to ``max_replicas``,
    packed as the operator asks (one node filled before the next).

    Raises:
        CurveError: the curve has no point at some count up to ``max_replicas``.
    """
    points = tuple(curve.point(n).samples_per_second for n in range(1, max_replicas + 1))
    across: list[float] = []
    for n in range(2, min(max_replicas, curve.gpus_per_node or 1) + 1):
        try:
            across.append(curve.measure(Placement((1,) * n, curve.gpus_per_node))[0])
        except CurveError:
            break  # not measured one per node: read as packed
    bounds = (min_replicas, max_replicas, requested)
    return Job(name, arrival, samples, points[0], 0.0, 0.0, *bounds, priority, restart, points,
               measured_across=tuple(across))  # fmt: skip


# ---------------------------------------------------------------------------- workloads

SIZES = [(1, 0.40), (2, 0.20), (4, 0.20), (8, 0.15), (16, 0.05)]
URGENT_PRIORITY = 1000  # a generated urgent job's PriorityClass value (the others: 0)
LOW_PRIORITY = -100  # a generated low-priority (batch) job's PriorityClass value


def generate(
    seed: int,
    jobs: int,
    hours: float,
    gpus_per_node: int,
    *,
    urgent: float = 0.0,
    low: float = 0.0,
) -> list[Job]:
    """Poisson arrivals over ``hours``; requested sizes mostly small (as in published
    traces); run time at the requested size log-uniform from 6 minutes to 3 hours. A share
    ``urgent`` of the jobs (drawn apart from the rest, so the jobs are the same with or
    without it) has priority :data:`URGENT_PRIORITY`; a share ``low`` of the others (drawn
    apart too) :data:`LOW_PRIORITY`, batch work that gives way to both; the rest 0
    (:func:`draw_priorities`)."""
    rng = random.Random(seed)
    priorities = draw_priorities(seed, jobs, urgent=urgent, low=low)
    out: list[Job] = []
    t = 0.0
    mean_gap = hours * 3600.0 / jobs
    for i in range(jobs):
        t += rng.expovariate(1.0 / mean_gap)
        requested = rng.choices([s for s, _ in SIZES], [w for _, w in SIZES])[0]
        serial = rng.uniform(0.0, 0.06)
        cliff = rng.uniform(0.1, 0.6) if rng.random() < 0.7 else 0.0
        rate = 100.0
        lo = 1 if requested < 8 else requested // 4
        hi = min(64, max(8, requested * 4))
        job = Job(
            name=f"job-{i:03d}",
            arrival=t,
            samples=0.0,
            rate=rate,
            serial=serial,
            cliff=cliff,
            min_replicas=lo,
            max_replicas=hi,
            requested=requested,
            priority=priorities[i],
            restart=rng.uniform(30.0, 90.0),
        )
        seconds = math.exp(rng.uniform(math.log(360.0), math.log(3 * 3600.0)))
        samples = seconds * job.throughput(requested, gpus_per_node)
        out.append(
            Job(**{**job.__dict__, "samples": samples})  # frozen: rebuild with the work
        )
    return out


def draw_priorities(seed: int, count: int, *, urgent: float = 0.0, low: float = 0.0) -> list[int]:
    """The priorities of ``count`` jobs in order: a share ``urgent`` :data:`URGENT_PRIORITY`,
    a share ``low`` of the others :data:`LOW_PRIORITY`, the rest 0, each drawn per job from
    ``seed`` apart from everything else about the jobs (so a workload is the same jobs with
    or without priorities)."""
    urgent_draw = random.Random(f"{seed}/urgent")
    low_draw = random.Random(f"{seed}/low")
    out = []
    for _ in range(count):
        is_urgent, is_low = urgent_draw.random() < urgent, low_draw.random() < low
        out.append(URGENT_PRIORITY if is_urgent else LOW_PRIORITY if is_low else 0)
    return out


def with_priorities(jobs: Sequence[Job], seed: int, *, urgent: float, low: float) -> list[Job]:
    """``jobs`` with priorities drawn as a generated workload's (:func:`draw_priorities`):
    for a workload read from elsewhere, such as Pollux's, which has one priority."""
    drawn = draw_priorities(seed, len(jobs), urgent=urgent, low=low)
    return [dataclasses.replace(job, priority=p) for job, p in zip(jobs, drawn, strict=True)]


class TraceError(ValueError):
    """A trace that cannot be read; the message names the row and column."""


TRACE_COLUMNS = ("arrival_seconds", "total_samples", "curve", "min_replicas", "max_replicas",
                 "requested_replicas")  # fmt: skip


def _field(
    row: Mapping[str, str | None], column: str, line: int, kind: Callable[[str], float]
) -> float:
    text = (row.get(column) or "").strip()
    try:
        value = kind(text)
    except ValueError:
        raise TraceError(f"line {line}: {column} must be a number, got {text!r}") from None
    if value < 0 or not math.isfinite(value):
        raise TraceError(f"line {line}: {column} must be >= 0, got {text!r}")
    return value


CURVE_FILE_SUFFIX = ".csv"


def _bounds(row: Mapping[str, str | None], line: int) -> tuple[int, int, int]:
    """``(min_replicas, max_replicas, requested_replicas)`` of a row, checked."""
    lo = int(_field(row, "min_replicas", line, int))
    hi = int(_field(row, "max_replicas", line, int))
    requested = int(_field(row, "requested_replicas", line, int))
    if not 1 <= lo <= requested <= hi:
        raise TraceError(
            f"line {line}: need 1 <= min_replicas <= requested_replicas <= max_replicas,"
            f" got {lo}, {requested}, {hi}"
        )
    return lo, hi, requested


def _parametric(curve: str, line: int) -> tuple[float, float, float]:
    """``(serial, cliff, rate)`` of a ``serial:cliff[:rate]`` curve field."""
    try:
        parts = [float(p) for p in curve.split(":")]
    except ValueError:
        raise TraceError(
            f"line {line}: curve must be serial:cliff[:rate], got {curve!r} (or the path of a"
            f" curve CSV, ending in {CURVE_FILE_SUFFIX})"
        ) from None
    if not 1 <= len(parts) <= 3 or any(p < 0 or not math.isfinite(p) for p in parts):
        raise TraceError(f"line {line}: curve must be serial:cliff[:rate] >= 0, got {curve!r}")
    return parts[0], parts[1] if len(parts) > 1 else 0.0, parts[2] if len(parts) > 2 else 100.0


def _job_of_row(
    row: Mapping[str, str | None],
    line: int,
    index: int,
    curves: Mapping[str, str],
    pools: int | None,
) -> Job:
    curve = (row.get("curve") or "").strip()
    lo, hi, requested = _bounds(row, line)
    name = (row.get("name") or "").strip() or f"job-{index:03d}"
    arrival = _field(row, "arrival_seconds", line, float)
    samples = _field(row, "total_samples", line, float)
    priority = int(_field(row, "priority", line, int)) if row.get("priority") else 0
    restart = _field(row, "restart_seconds", line, float) if row.get("restart_seconds") else 60.0
    pool = _pool(row, line, pools)
    cpu = _field(row, "cpu_per_worker", line, float) if row.get("cpu_per_worker") else None
    apart = _flag(row, "apart", line)
    if curve.endswith(CURVE_FILE_SUFFIX):
        if curve not in curves:
            raise TraceError(f"line {line}: curve {curve!r}: no such curve file given")
        try:
            measured = parse_csv_curve(curves[curve], name=curve)
            job = measured_job(name, arrival, samples, measured, min_replicas=lo, max_replicas=hi,
                               requested=requested, priority=priority, restart=restart)  # fmt: skip
        except ValueError as err:  # CurveError, or a throughput Job refuses
            raise TraceError(f"line {line}: curve {curve!r}: {err}") from None
        return dataclasses.replace(job, pool=pool, cpu=cpu, apart=apart)
    serial, cliff, rate = _parametric(curve, line)
    return Job(name, arrival, samples, rate, serial, cliff, lo, hi, requested, priority, restart,
               pool=pool, cpu=cpu, apart=apart)  # fmt: skip


_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


def _flag(row: Mapping[str, str | None], column: str, line: int) -> bool | None:
    """A yes/no column of a row: None when empty."""
    text = (row.get(column) or "").strip().lower()
    if not text:
        return None
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise TraceError(f"line {line}: {column} must be true or false, got {row.get(column)!r}")


def _pool(row: Mapping[str, str | None], line: int, pools: int | None) -> int | None:
    """The ``pool`` of a row: None when empty; else a pool of the cluster's ``pools``."""
    if not (row.get("pool") or "").strip():
        return None
    pool = int(_field(row, "pool", line, int))
    if pools is not None and pool >= pools:
        raise TraceError(
            f"line {line}: pool {pool}, but the cluster has {pools} node pool"
            f"{'s' if pools != 1 else ''} (0 to {pools - 1}; --pools)"
        )
    return pool


def curve_files(text: str) -> dict[str, int]:
    """The curve files a trace's rows name (``curve`` ending in ``.csv``), each with the
    first line naming it."""
    files: dict[str, int] = {}
    reader = csv.DictReader(io.StringIO(text))
    for i, row in enumerate(reader):
        curve = (row.get("curve") or "").strip()
        if curve.endswith(CURVE_FILE_SUFFIX):
            files.setdefault(curve, i + 2)
    return files


def parse_trace(
    text: str, *, name: str, curves: Mapping[str, str], pools: int | None = None
) -> list[Job]:
    """The jobs of a trace's CSV ``text`` (module docstring), by arrival; ``curves`` maps
    each curve file a row names (as written in the row) to that file's CSV text; ``pools``:
    the cluster's node pools, which a row's ``pool`` must be one of (unchecked when None).
    Pure.

    Raises:
        TraceError: a missing column, an unreadable value, a bad or missing curve, or an
            empty trace, naming the line and column (and the curve's own line).
    """
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in TRACE_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise TraceError(f"{name}: missing column(s) {', '.join(missing)}")
    jobs = [_job_of_row(row, i + 2, i, curves, pools) for i, row in enumerate(reader)]
    if not jobs:
        raise TraceError(f"{name}: no jobs")
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise TraceError(f"{name}: job names must be unique")
    return sorted(jobs, key=lambda j: j.arrival)


def read_trace(path: str, *, pools: int | None = None) -> list[Job]:
    """The jobs of a trace CSV file and of the curve files its rows name (relative paths
    from the trace's directory), by arrival (:func:`parse_trace`).

    Raises:
        OSError: the trace itself cannot be read.
        TraceError: as :func:`parse_trace`, or a curve file that cannot be read (naming the
            row's line, the curve column and the resolved path).
    """
    text = Path(path).read_text(encoding="utf-8")
    curves: dict[str, str] = {}
    for curve, line in curve_files(text).items():
        where = Path(path).parent / curve
        try:
            curves[curve] = where.read_text(encoding="utf-8")
        except OSError as exc:
            raise TraceError(
                f"line {line}: curve {curve!r}: cannot read {where}: {exc.strerror}"
            ) from None
    return parse_trace(text, name=path, curves=curves, pools=pools)


# ---------------------------------------------------------------------------- simulation


@dataclass
class Running:
    job: Job
    replicas: int = 0
    done: float = 0.0  # samples processed
    restart_left: float = 0.0
    started: bool = False
    rescales: int = 0
    stops: int = 0  # times it stopped before it finished (preempted), to wait again
    finish: float | None = None
    gpu_seconds: float = 0.0
    recent: list[int] = field(default_factory=list)  # hpa: recent recommendations
    autoscaler: JobAutoscaler | None = None  # per-job: the product's own autoscaler
    observed: list[Observation] = field(default_factory=list)  # per-job: since last decide
    last_rate: float = 0.0  # samples/s over the last step (restart pauses included)
    paused_last: bool = False  # the last step included a restart (settling)
    nodes: list[str] = field(default_factory=list)  # each worker's node, by replica index
    allowed: frozenset[str] | None = None  # the nodes its template admits (None: all)
    cpu: int = 0  # millicores each worker requests (:meth:`Cluster.cpu_of`)
    apart: bool = False  # its workers may not share a node (:meth:`Cluster.apart_of`)
    below_floor: float = 0.0  # GPU-seconds held at a true efficiency under its floor

    def may_use(self, node: str) -> bool:
        """Whether the job's workers may run on ``node`` (:attr:`allowed`)."""
        return self.allowed is None or node in self.allowed


@dataclass
class Cluster:
    nodes: int
    gpus_per_node: int
    interval: float
    seed: int
    settings: ArbiterSettings = field(default_factory=ArbiterSettings)
    states: list[Running] = field(default_factory=list)
    pools: int = 1  # node pools: node ``i`` is in pool ``i * pools // nodes``
    restricted: float = 0.0  # share of the jobs whose template admits one pool only
    # what the arbiter is told on several pools (ablations: False as before it read them)
    tell_pools: bool = True  # the nodes each job may use
    tell_order: bool = True  # where each job's workers run, by index
    # trainscale's new workers prefer the node the arbiter planned for them
    tell_plan: bool = True
    plans: dict[str, dict[str, int]] = field(default_factory=dict)  # the last plan, per job
    cpu_per_node: int = 0  # millicores each node has (0: CPU not modelled)
    cpu_heavy: float = 0.0  # share of the jobs whose workers ask half a node's CPU
    tell_cpu: bool = True  # the arbiter is told the nodes' CPU and the workers' requests
    # each job says the samples it has left (our trainer's gauge): its autoscaler and the
    # arbiter charge a restart over the time it has left where that is shorter
    tell_time_left: bool = False
    # what they say is their configured total times this, less what they did (2: each job
    # stops early, at half its configured epochs; 0.5: each runs twice what it says, its
    # epochs raised mid-run); 1: exact
    told_length_factor: float = 1.0
    # the jobs' PriorityClasses preempt (the Kubernetes default, preemptionPolicy
    # PreemptLowerPriority) in every policy; False: Never, a higher priority only goes first
    preempts: bool = True
    # a job's throughput follows the nodes its workers span (the ``tau(n)`` family's cliff
    # once they span two), not its count packed; False: as packed wherever they land
    placed_throughput: bool = False
    # the arbiter is told each job's throughput across nodes (ablation: False, as before)
    tell_across: bool = True
    apart: float = 0.0  # share of the jobs whose workers may not share a node
    tell_apart: bool = True  # the arbiter and autoscaler are told that bound
    spread_jobs: bool = False  # some job's workers may not share a node (set by simulate)

    @property
    def by_node(self) -> bool:
        """Whether workers are placed node by node (several pools, CPU modelled, or
        throughput that follows placement); else every target fits and a count is all there
        is."""
        return self.pools > 1 or self.cpu_per_node > 0 or self.placed_throughput or self.spread_jobs

    def spans(self, s: Running) -> int | None:
        """The nodes ``s``'s workers span, where throughput follows placement
        (:attr:`placed_throughput`); None: read as packed."""
        return len(set(s.nodes)) if self.placed_throughput and s.nodes else None

    def cpu_of(self, job: Job) -> int:
        """The millicores each of ``job``'s workers requests: half a node's CPU for a share
        ``cpu_heavy`` of the jobs (data loaders; which drawn from the seed and its name),
        else half a GPU's share of it; a trace's own figure (:attr:`Job.cpu`) where it gives
        one; 0 when CPU is not modelled."""
        if self.cpu_per_node <= 0:
            return 0
        if job.cpu is not None:
            return round(1000 * job.cpu)
        if random.Random(f"{self.seed}/cpu/{job.name}").random() < self.cpu_heavy:
            return self.cpu_per_node // 2
        return self.cpu_per_node // (2 * self.gpus_per_node)

    def spread_always(self, job: Job) -> bool:
        """Whether ``job`` runs one worker per node (:meth:`apart_of`) where throughput
        follows placement: its floor and its best sizes are those of its workers spread."""
        return self.placed_throughput and self.apart_of(job)

    def apart_of(self, job: Job) -> bool:
        """Whether ``job``'s workers may not share a node (a required pod anti-affinity to
        its own workers): a share ``apart`` of the jobs, drawn from the seed and its name,
        among those asking no more workers than the cluster has nodes (who spreads one per
        node asks for no more)."""
        if job.apart is not None:
            return job.apart
        if self.apart <= 0 or job.requested > self.nodes:
            return False
        return random.Random(f"{self.seed}/apart/{job.name}").random() < self.apart

    @property
    def total(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def node_names(self) -> list[str]:
        return [f"node-{i:02d}" for i in range(self.nodes)]

    def pool_nodes(self, pool: int) -> frozenset[str]:
        """The nodes of pool ``pool``."""
        return frozenset(
            name for i, name in enumerate(self.node_names) if i * self.pools // self.nodes == pool
        )

    def gpus_for(self, job: Job) -> int:
        """The GPUs of the nodes ``job`` may use."""
        admitted = self.admitted(job)
        return self.total if admitted is None else len(admitted) * self.gpus_per_node

    def pool_of(self, job: Job) -> int | None:
        """The pool ``job``'s template holds it to: its own when it names one (a trace's
        ``pool``); else one for a share ``restricted`` of the jobs (which one drawn from the
        seed and its name); None for the rest, and on one pool."""
        if self.pools <= 1:
            return None
        if job.pool is not None:
            return job.pool
        if self.restricted <= 0:
            return None
        rng = random.Random(f"{self.seed}/pool/{job.name}")
        if rng.random() >= self.restricted:
            return None
        return rng.randrange(self.pools)

    def admitted(self, job: Job) -> frozenset[str] | None:
        """The nodes ``job``'s template admits: those of its pool (:meth:`pool_of`), or
        None for every node."""
        pool = self.pool_of(job)
        return None if pool is None else self.pool_nodes(pool)

    def used(self) -> int:
        return sum(s.replicas for s in self.states if s.finish is None)


# A policy sets each active job's replicas for the next step: f(active, cluster, now).
Policy = Callable[[list[Running], Cluster, float], dict[str, int]]


class FreeGpus:
    """The free GPUs while a policy decides, node by node, and the CPU left beside them
    where it is modelled (:attr:`Cluster.cpu_per_node`): a job may take only those on the
    nodes its template admits (:attr:`Running.allowed`), a worker needs its GPU and its CPU
    request on one node, and a job that shrinks frees those of its highest indexes. On one
    pool without CPU this is a plain count."""

    def __init__(self, active: Sequence[Running], cluster: Cluster) -> None:
        self.free = dict.fromkeys(cluster.node_names, cluster.gpus_per_node)
        self.cpu = (
            dict.fromkeys(cluster.node_names, cluster.cpu_per_node)
            if cluster.cpu_per_node > 0
            else None
        )
        for s in active:
            for node in s.nodes:
                self._take(s, node)

    def _take(self, s: Running, node: str, workers: int = 1) -> None:
        """``workers`` of ``s`` take a GPU each, and their CPU, on ``node`` (negative: leave)."""
        self.free[node] -= workers
        if self.cpu is not None:
            self.cpu[node] -= workers * s.cpu

    def holds(self, s: Running, node: str, mine: Sequence[str] | None = None) -> int:
        """Workers of ``s`` that ``node`` has a GPU and the CPU for; at most one, and none
        where one of its workers (``mine``: by default those it runs) is, for a job whose
        workers may not share a node."""
        room = self.free[node]
        if self.cpu is not None and s.cpu > 0:
            room = min(room, self.cpu[node] // s.cpu)
        if s.apart:
            room = 0 if node in (s.nodes if mine is None else mine) else min(room, 1)
        return max(0, room)

    def available(self, s: Running) -> int:
        """Workers of ``s`` the nodes it may use have a GPU and the CPU for."""
        return sum(self.holds(s, n) for n in self.free if s.may_use(n))

    def take(
        self,
        s: Running,
        workers: int,
        placed: list[str] | None = None,
        plan: Mapping[str, int] | None = None,
    ) -> list[str]:
        """Place ``workers`` more workers of ``s`` as the scheduler would: on the node
        ``plan`` holds for each (the arbiter's, as the worker's preferred node) while it has
        a free GPU, else with the packing preference (its own nodes first, then the node
        with the most free GPUs); returns their nodes (fewer when they do not fit), appended
        to ``placed`` when given."""
        mine = placed if placed is not None else list(s.nodes)
        planned = assign_planned_nodes(plan or {}, mine, workers)
        out: list[str] = []
        for preferred in planned:
            candidates = [n for n in self.free if s.may_use(n) and self.holds(s, n, mine) > 0]
            if not candidates:
                break
            if preferred in candidates:
                node = preferred
            else:
                node = min(candidates, key=lambda n: (-mine.count(n), -self.free[n], n))
            self._take(s, node)
            mine.append(node)
            out.append(node)
        return out

    def evict(self, s: Running, index: int) -> None:
        """``s``'s worker ``index`` is preempted: its GPU (and CPU) are free, and the workers
        after it move down one index, as the elastic trainer renumbers them."""
        self._take(s, s.nodes.pop(index), -1)

    def give(self, s: Running, keep: int) -> None:
        """``s`` keeps its first ``keep`` workers: the others' GPUs (and CPU) are free."""
        for node in s.nodes[keep:]:
            self._take(s, node, -1)


def _by_priority(active: Sequence[Running]) -> list[Running]:
    """The jobs as the scheduler's queue orders their pods: the highest priority first, then
    arrival (one priority: arrival order). A baseline's growth goes in this order, so a job
    its pods preempt (:meth:`_Pods.evict_for`) has not grown in the same step."""
    return sorted(active, key=lambda s: -s.job.priority)


def _waiting(active: Sequence[Running]) -> list[Running]:
    """The jobs holding no GPU, in the scheduler's queue order (:func:`_by_priority`)."""
    return [s for s in _by_priority(active) if s.replicas == 0]


@dataclass
class _Pods:
    """A baseline's decision in progress, as the default scheduler binds its pods: each
    job's workers (``out``) and the free GPUs (``free``)."""

    active: Sequence[Running]
    cluster: Cluster
    free: FreeGpus
    out: dict[str, int]

    @classmethod
    def of(cls, active: Sequence[Running], cluster: Cluster) -> _Pods:
        """The decision before any change: every job at its workers, the rest free."""
        return cls(
            active, cluster, FreeGpus(active, cluster), {s.job.name: s.replicas for s in active}
        )

    def evict_for(self, s: Running, workers: int, *, least: int, gang: bool) -> None:
        """The default scheduler's preemption: ``workers`` pods of ``s`` that find no GPU
        evict workers of lower-priority jobs on the nodes ``s`` may use, the lowest priority
        first, then the newest job's, its highest indexes there first, until they fit
        (nothing when ``cluster.preempts`` is off, as ``preemptionPolicy: Never``, and
        nothing when all of them would not make room for ``least``: the job's whole size,
        its minimum, or one more worker; the scheduler evicts only for a pod that then
        fits). A ``gang`` job (fixed sizes: its run fails with any of its pods) stops whole
        and waits to start again; an elastic one runs on with the workers it keeps while
        they hold its minimum, else it stops too. Either keeps its progress (a checkpoint)
        and pays a restart. Mutates ``out``, ``free`` and the victims' ``nodes``."""
        free, out = self.free, self.out
        if not self.cluster.preempts or free.available(s) >= workers:
            return
        victims = sorted(
            (
                v
                for v in self.active
                if v.job.priority < s.job.priority
                and any(s.may_use(node) for node in v.nodes[: out[v.job.name]])
            ),
            key=lambda v: (v.job.priority, -v.job.arrival, v.job.name),
        )
        there = sum(s.may_use(n) for v in victims for n in v.nodes[: out[v.job.name]])
        if free.available(s) + there < least:
            return
        for v in victims:
            if free.available(s) >= workers:
                return
            held = out[v.job.name]
            for i in reversed(range(held)):
                if free.available(s) >= workers:
                    break
                if s.may_use(v.nodes[i]):
                    free.evict(v, i)
                    held -= 1
            if held < out[v.job.name] and (gang or held < v.job.min_replicas):
                for i in reversed(range(held)):
                    free.evict(v, i)
                held = 0
            out[v.job.name] = held

    def grow(self, s: Running, workers: int) -> int:
        """``workers`` more pods of a running job: those that find no GPU preempt
        (:meth:`evict_for`), the rest stay Pending. Returns its new count."""
        self.evict_for(s, workers, least=1, gang=False)
        return self.out[s.job.name] + len(self.free.take(s, workers))


def policy_fixed(active: list[Running], cluster: Cluster, now: float) -> dict[str, int]:
    pods = _Pods.of(active, cluster)
    for s in _waiting(active):
        pods.evict_for(s, s.job.requested, least=s.job.requested, gang=True)
        if s.job.requested <= pods.free.available(s):
            pods.out[s.job.name] = len(pods.free.take(s, s.job.requested))
    return pods.out


def _start_with_what_is_free(active: list[Running], cluster: Cluster) -> _Pods:
    """The waiting jobs start, in the queue's order, with what is free up to their requested
    size (at least their minimum; their pods preempt as the scheduler's)."""
    pods = _Pods.of(active, cluster)
    for s in _waiting(active):
        pods.evict_for(s, s.job.requested, least=s.job.min_replicas, gang=False)
        room = pods.free.available(s)
        if room >= s.job.min_replicas:
            pods.out[s.job.name] = len(pods.free.take(s, min(s.job.requested, room)))
    return pods


def job_spec(job: Job, gpus_per_node: int, apart: bool = False) -> TrainingJobSpec:
    """The TrainingJob a user would write for ``job``: its bounds, its requested size, the
    efficiency objective at the job's floor (``apart``: at its workers one per node),
    decisions every interval."""
    floor = max(0.01, min(1.0, job.min_efficiency(gpus_per_node, apart)))
    return TrainingJobSpec.model_validate(
        {
            "replicas": job.requested,
            "minReplicas": job.min_replicas,
            "maxReplicas": job.max_replicas,
            "template": {
                "spec": {
                    "containers": [
                        {"name": "w", "image": "x", "resources": {"limits": {"nvidia.com/gpu": 1}}}
                    ]
                }
            },
            "autoscaling": {
                "enabled": True,
                "intervalSeconds": 60,
                "objective": "efficiency",
                "minEfficiency": round(floor, 4),
            },
        }
    )


def observe(s: Running, cluster: Cluster, now: float) -> Observation:
    """What Prometheus would report for the job over the last step: throughput as the
    step's mean (restart gaps included) and utilization at the scrape, each x N(1, 0.05)."""
    rng = random.Random(f"{cluster.seed}/{s.job.name}/{now}")
    spans = cluster.spans(s)
    util = COMPUTE_FRACTION * s.job.efficiency(s.replicas, cluster.gpus_per_node, spans)
    return Observation(
        now,
        s.replicas,
        min(1.0, max(0.0, util * rng.gauss(1.0, 0.05))),
        max(0.0, s.last_rate * rng.gauss(1.0, 0.05)),
        nodes=math.ceil(s.replicas / cluster.gpus_per_node) if spans is None else spans,
        remaining_samples=_told_left(s, cluster) if cluster.tell_time_left else None,
    )


def _told_left(s: Running, cluster: Cluster) -> float:
    """The samples the job says it has left: its configured total (its real work times
    ``told_length_factor``) less what it did; never below 0."""
    return max(0.0, s.job.samples * cluster.told_length_factor - s.done)


def placed(s: Running, cluster: Cluster) -> Placement:
    """Where the job's workers run, as the operator reads it from its pods, the node size
    told (the operator may list nodes by default); packed where throughput does not follow
    placement. A job whose workers may not share a node is told nodes of one worker's GPUs
    (:attr:`Cluster.tell_apart`), as the operator tells its autoscaler."""
    size = cluster.gpus_per_node
    if cluster.spans(s) is not None:
        told = 1 if s.apart and cluster.tell_apart else size
        return Placement(tuple(Counter(s.nodes).values()), gpus_per_node=told)
    return Placement.packed(s.replicas, workers_per_node_max=size, gpus_per_node=size)


def policy_per_job(active: list[Running], cluster: Cluster, now: float) -> dict[str, int]:
    """Each job's own :class:`JobAutoscaler` (the product, no arbitration), fed noisy
    observations; what it asks above the free GPUs stays Pending (first come, first served)."""
    pods = _start_with_what_is_free(active, cluster)
    out, free = pods.out, pods.free
    for s in _by_priority(active):
        n = out[s.job.name]
        if s.replicas == 0 or n == 0:
            continue
        if s.autoscaler is None:
            s.autoscaler = JobAutoscaler(
                job_spec(s.job, cluster.gpus_per_node, cluster.spread_always(s.job))
            )
        if s.paused_last:
            continue  # settling after a restart, as the autoscale daemon waits
        rec = s.autoscaler.decide(
            [observe(s, cluster, now)], current_replicas=n, now=now, placement=placed(s, cluster)
        )
        if rec.replicas > n:
            out[s.job.name] = pods.grow(s, rec.replicas - n)
        elif rec.replicas < n:
            free.give(s, rec.replicas)
            out[s.job.name] = rec.replicas
    return out


def policy_per_job_oracle(active: list[Running], cluster: Cluster, now: float) -> dict[str, int]:
    pods = _start_with_what_is_free(active, cluster)
    out = pods.out
    for s in _by_priority(active):  # then arrival order: first come, first served
        n = out[s.job.name]
        if s.replicas == 0 or n == 0:
            continue
        target = s.job.floor_count(cluster.gpus_per_node, cluster.spread_always(s.job))
        if target > n:
            out[s.job.name] = pods.grow(s, target - n)
    return out


def policy_hpa(active: list[Running], cluster: Cluster, now: float) -> dict[str, int]:
    pods = _start_with_what_is_free(active, cluster)
    out, free = pods.out, pods.free
    for s in _by_priority(active):
        n = out[s.job.name]
        if s.replicas == 0 or n == 0:
            continue
        spans = cluster.spans(s) if n == len(s.nodes) else None
        util = COMPUTE_FRACTION * s.job.efficiency(n, cluster.gpus_per_node, spans)
        desired = n
        if abs(util / HPA_TARGET - 1.0) > 0.1:
            desired = math.ceil(n * util / HPA_TARGET)
        desired = max(s.job.min_replicas, min(s.job.max_replicas, desired))
        # the HPA's scale-down stabilization: the highest recommendation of the window
        s.recent = [*s.recent, desired][-HPA_DOWN_WINDOW_STEPS:]
        desired = min(n, max(s.recent)) if desired < n else desired
        if desired > n:
            desired = pods.grow(s, desired - n)
        elif desired < n:
            free.give(s, desired)
        out[s.job.name] = desired
    return out


def fitted(job: Job, seed: int) -> Job:
    """The job as its fitted model believes it to be: each curve parameter wrong by a
    persistent error drawn once per job (serial and cliff x N(1, 0.25) clipped to [0.5, 1.5],
    the rate x N(1, 0.1) clipped to [0.7, 1.3]).

    A measured curve has no parameters; its step time per sample relative to one worker,
    ``tau(n) = n * X(1) / X(n)``, plays their part: its overhead ``tau(n) - 1`` is off by the
    serial term's error at every count (smooth across counts, as a fitted model's errors
    are), and the rate by the rate's."""
    rng = random.Random(f"{seed}/{job.name}")

    def err(sd: float, lo: float, hi: float) -> float:
        return min(hi, max(lo, rng.gauss(1.0, sd)))

    serial, cliff, rate = err(0.25, 0.5, 1.5), err(0.25, 0.5, 1.5), err(0.1, 0.7, 1.3)
    if job.measured:
        one = job.measured[0]

        def believe(curve: Sequence[float], first: int) -> tuple[float, ...]:
            overhead = [n * one / x - 1.0 for n, x in enumerate(curve, start=first)]
            return tuple(
                one * rate * n / max(0.05, 1.0 + o * serial)
                for n, o in enumerate(overhead, start=first)
            )

        believed = believe(job.measured, 1)
        across = believe(job.measured_across, 2)
        return Job(
            **{**job.__dict__, "measured": believed, "rate": believed[0], "measured_across": across}
        )
    return Job(
        **{
            **job.__dict__,
            "serial": job.serial * serial,
            "cliff": job.cliff * cliff,
            "rate": job.rate * rate,
        }
    )


@functools.lru_cache(maxsize=4096)
def believed_throughput(job: Job, seed: int, gpus_per_node: int) -> Mapping[int, float]:
    """The throughput per count the arbiter is told for ``job`` (:func:`fitted`), computed
    once per job (the model's error is persistent)."""
    model = fitted(job, seed)
    return {n: model.throughput(n, gpus_per_node) for n in range(1, job.max_replicas + 1)}


@functools.lru_cache(maxsize=4096)
def believed_apart(job: Job, seed: int, gpus_per_node: int) -> Mapping[int, float]:
    """The throughput per count the arbiter is told for ``job`` when its workers may not
    share a node: each count on as many nodes, from the same fitted model as
    :func:`believed_throughput` (as the operator's autoscaler, told nodes of one worker,
    predicts it)."""
    model = fitted(job, seed)
    return {n: model.throughput(n, gpus_per_node, nodes=n) for n in range(1, job.max_replicas + 1)}


@functools.lru_cache(maxsize=4096)
def believed_across(job: Job, seed: int, gpus_per_node: int) -> Mapping[int, float]:
    """The throughput the arbiter is told for ``job``'s counts that fit one node when its
    workers span two (:attr:`JobDemand.throughput_across_nodes`), from the same fitted model
    as :func:`believed_throughput`."""
    model = fitted(job, seed)
    fits = min(job.max_replicas, gpus_per_node)
    if job.measured:  # the counts measured one per node
        fits = min(fits, len(job.measured_across) + 1)
    return {n: model.throughput(n, gpus_per_node, nodes=2) for n in range(2, fits + 1)}


def _time_left(s: Running, cluster: Cluster) -> float | None:
    """What the arbiter is told of the time the job has left (its samples left over its
    last step's throughput, as the operator offers its autoscaler's), where jobs say."""
    if not cluster.tell_time_left or s.replicas == 0 or s.last_rate <= 0:
        return None
    return _told_left(s, cluster) / s.last_rate


def policy_trainscale(active: list[Running], cluster: Cluster, now: float) -> dict[str, int]:
    cpu = cluster.cpu_per_node > 0 and cluster.tell_cpu
    demands = [
        JobDemand(
            key=s.job.name,
            throughput=(
                believed_apart(s.job, cluster.seed, cluster.gpus_per_node)
                if s.apart and cluster.tell_apart and cluster.placed_throughput
                else believed_throughput(s.job, cluster.seed, cluster.gpus_per_node)
            ),
            min_replicas=s.job.min_replicas,
            max_replicas=s.job.max_replicas,
            min_efficiency=s.job.min_efficiency(
                cluster.gpus_per_node, cluster.spread_always(s.job)
            ),
            priority=s.job.priority,
            preempts=cluster.preempts,
            created=s.job.arrival,
            current_replicas=s.replicas,
            restart_cost_seconds=s.job.restart,
            time_left_seconds=_time_left(s, cluster),
            nodes=s.allowed if cluster.tell_pools else None,
            worker_nodes=tuple(s.nodes) if cluster.by_node and cluster.tell_order else (),
            cpu_millis_per_worker=s.cpu if cpu else 0,
            throughput_across_nodes=(
                believed_across(s.job, cluster.seed, cluster.gpus_per_node)
                if cluster.placed_throughput
                and cluster.tell_across
                and not (s.apart and cluster.tell_apart)
                else {}
            ),
            max_workers_per_node=1 if s.apart and cluster.tell_apart else None,
        )
        for s in active
    ]
    capacity = Capacity(
        dict.fromkeys(cluster.node_names, cluster.gpus_per_node),
        free_cpu_millis=dict.fromkeys(cluster.node_names, cluster.cpu_per_node) if cpu else {},
    )
    allocation = allocate(demands, capacity, now=now, settings=cluster.settings)
    if cluster.by_node and cluster.tell_plan:
        cluster.plans = {key: dict(a.placement) for key, a in allocation.jobs.items()}
    return {key: a.replicas for key, a in allocation.jobs.items()}


POLICIES: dict[str, Policy] = {
    "fixed": policy_fixed,
    "per-job": policy_per_job,
    "per-job-oracle": policy_per_job_oracle,
    "hpa": policy_hpa,
    "trainscale": policy_trainscale,
}


@dataclass(frozen=True)
class Result:
    policy: str
    avg_jct: float
    p99_jct: float
    makespan: float
    gpu_hours: float
    rescales: int
    worst_slowdown: float
    unfinished: int
    decide_seconds: float
    # the allocation after each decision: (time, {job: workers}) for the jobs holding GPUs,
    # and how many arrived jobs were waiting with none
    timeline: tuple[tuple[float, Mapping[str, int], int], ...] = ()
    finishes: tuple[tuple[str, float], ...] = ()  # (job, finish time) of the finished jobs
    # workers the policy granted that found no GPU (or no CPU beside one) on the nodes their
    # job may use (pods left Pending), summed over steps; 0 on one pool without CPU
    unplaced: int = 0
    stops: int = 0  # running jobs stopped before they finished (preempted), summed
    # GPU-hours the jobs held at a true efficiency under their floors (where they ran)
    below_floor_hours: float = 0.0


def _p99(values: Sequence[float]) -> float:
    """The 99th percentile of sorted ``values`` (the nearest rank); inf for none."""
    if not values:
        return math.inf
    return values[min(len(values) - 1, math.ceil(0.99 * len(values)) - 1)]


def _completion(
    finished: Sequence[tuple[Job, float]], cluster: Cluster
) -> tuple[float, float, float]:
    """Average and p99 JCT and the worst slowdown (JCT over the job alone on ``cluster``)
    of ``finished`` jobs, each with its finish time; inf for none."""
    jcts = sorted(end - job.arrival for job, end in finished)
    worst_slowdown = max(
        ((end - job.arrival) / alone_jct(job, cluster) for job, end in finished),
        default=math.inf,
    )
    return (statistics.fmean(jcts) if jcts else math.inf), _p99(jcts), worst_slowdown


@dataclass(frozen=True)
class Tier:
    """The jobs of one priority in a run (:func:`tiers`)."""

    priority: int
    jobs: int
    avg_jct: float
    p99_jct: float
    worst_slowdown: float
    unfinished: int


def tiers(result: Result, jobs: Sequence[Job], cluster: Cluster) -> list[Tier]:
    """``result``'s JCTs split by the jobs' priority, the highest first: how a policy treats
    urgent jobs against the rest (their JCT, and slowdown against the job alone on
    ``cluster``). Metrics as :class:`Result`'s; inf where no job of a tier finished."""
    finish = dict(result.finishes)
    out = []
    for priority in sorted({j.priority for j in jobs}, reverse=True):
        mine = [j for j in jobs if j.priority == priority]
        done = [(j, finish[j.name]) for j in mine if j.name in finish]
        avg, p99_jct, slowdown = _completion(done, cluster)
        out.append(Tier(priority, len(mine), avg, p99_jct, slowdown, len(mine) - len(done)))
    return out


def worst_tier(seeds: Sequence[Tier]) -> Tier:
    """One priority's tier over seeds, metric by metric the worst (as :func:`worst`)."""
    return Tier(
        priority=seeds[0].priority,
        jobs=max(t.jobs for t in seeds),
        avg_jct=max(t.avg_jct for t in seeds),
        p99_jct=max(t.p99_jct for t in seeds),
        worst_slowdown=max(t.worst_slowdown for t in seeds),
        unfinished=max(t.unfinished for t in seeds),
    )


def alone_jct(job: Job, cluster: Cluster) -> float:
    """JCT of the job alone on the cluster at its best static size (start-up included)."""
    apart = cluster.spread_always(job)
    best = max(
        job.throughput(n, cluster.gpus_per_node, n if apart else None)
        for n in range(1, min(job.max_replicas, cluster.gpus_for(job)) + 1)
    )
    return job.restart + job.samples / best


def floor_bound_jct(job: Job, cluster: Cluster) -> float:
    """The shortest JCT any policy that honours the job's efficiency floor can give it: alone
    on the cluster from its arrival, at its fastest count whose efficiency meets the floor
    (its minimum always allowed), one start-up. No wait, no resize, no neighbour."""
    apart = cluster.spread_always(job)
    floor = job.min_efficiency(cluster.gpus_per_node, apart)
    best = max(
        job.throughput(n, cluster.gpus_per_node, n if apart else None)
        for n in range(job.min_replicas, min(job.max_replicas, cluster.gpus_for(job)) + 1)
        if n == job.min_replicas
        or job.efficiency(n, cluster.gpus_per_node, n if apart else None) >= floor - 1e-9
    )
    return job.restart + job.samples / best


def _apply(active: list[Running], targets: Mapping[str, int], cluster: Cluster) -> dict[str, int]:
    """Each job's workers after the policy's targets: the shrinking jobs' highest indexes
    go first, then new workers are placed where they fit, the highest priority's first as
    the scheduler's queue takes pods (on one pool every target fits; on several, a job can
    get fewer than its target, as pods left Pending). Returns the workers each job has."""
    free = FreeGpus(active, cluster)
    for s in active:
        n = targets.get(s.job.name, s.replicas)
        if n < len(s.nodes):
            free.give(s, n)
            del s.nodes[n:]
        if 0 < n != s.replicas and s.nodes:
            _move_off_plan(s, cluster.plans.get(s.job.name), free)
    for s in _by_priority(active):
        n = targets.get(s.job.name, s.replicas)
        if n > len(s.nodes):
            free.take(s, n - len(s.nodes), placed=s.nodes, plan=cluster.plans.get(s.job.name))
    return {s.job.name: len(s.nodes) for s in active}


def _move_off_plan(s: Running, plan: Mapping[str, int] | None, free: FreeGpus) -> None:
    """A job resized: its workers restart anyway, so those on a node where the plan holds
    fewer of its workers than run there leave, as the operator's reconcile rule 11 chooses
    them (:func:`~trainscale.operator.api.planned_nodes.choose_moves`); the placement that
    follows puts them where the plan has room."""
    if not plan:
        return
    for i in reversed(choose_moves(plan, s.nodes, [True] * len(s.nodes))):
        free.evict(s, i)


def _resize(s: Running, n: int) -> None:
    """``s`` runs ``n`` workers from now: a change of a running job's size is a rescale, to
    0 a stop (preempted), and any change to a size above 0 costs its restart."""
    if n == s.replicas:
        return
    if s.replicas > 0 and n > 0:
        s.rescales += 1
    if s.replicas > 0 and n == 0:
        s.stops += 1
    if n > 0:
        s.restart_left = s.job.restart
    s.replicas = n


def _advance(s: Running, now: float, dt: float, cluster: Cluster) -> None:
    """One step of a running job: GPU time held, the restart paused, progress at its
    throughput where its workers run (:meth:`Cluster.spans`); it finishes mid-step when its
    work is done (and frees its GPUs). GPU time held while the job's true efficiency where
    its workers run is under its floor is counted apart (:attr:`Running.below_floor`)."""
    held = s.replicas * dt
    paused = min(dt, s.restart_left)
    s.restart_left -= paused
    spans = cluster.spans(s)
    rate = s.job.throughput(s.replicas, cluster.gpus_per_node, spans)
    left = s.job.samples - s.done
    run = dt - paused
    s.last_rate = rate * run / dt
    s.paused_last = paused > 0
    wasted = (
        s.replicas > 1
        and s.job.efficiency(s.replicas, cluster.gpus_per_node, spans)
        < s.job.min_efficiency(cluster.gpus_per_node, cluster.spread_always(s.job)) - 1e-9
    )
    if rate * run >= left:
        s.finish = now + paused + left / rate
        held -= s.replicas * (dt - paused - left / rate)
        s.replicas = 0
        s.nodes.clear()
    else:
        s.done += rate * run
    s.gpu_seconds += held
    if wasted:
        s.below_floor += held


def simulate(policy: str, jobs: Sequence[Job], cluster: Cluster, horizon: float) -> Result:
    cluster.states = [
        Running(job, allowed=cluster.admitted(job), cpu=cluster.cpu_of(job),
                apart=cluster.apart_of(job))
        for job in jobs
    ]  # fmt: skip
    cluster.spread_jobs = any(s.apart for s in cluster.states)
    cluster.plans = {}
    decide = POLICIES[policy]
    now = 0.0
    dt = cluster.interval
    decide_seconds = 0.0
    timeline: list[tuple[float, Mapping[str, int], int]] = []
    unplaced = 0
    while now < horizon:
        active = [s for s in cluster.states if s.job.arrival <= now and s.finish is None]
        if not active and all(s.finish is not None for s in cluster.states):
            break
        start = time.perf_counter()
        targets = decide(active, cluster, now)
        decide_seconds += time.perf_counter() - start
        placed = _apply(active, targets, cluster)
        unplaced += sum(max(0, targets.get(name, n) - n) for name, n in placed.items())
        held: dict[str, int] = {}
        for s in active:
            _resize(s, placed[s.job.name])
            if s.replicas > 0:
                held[s.job.name] = s.replicas
                _advance(s, now, dt, cluster)
        timeline.append((now, held, len(active) - len(held)))
        now += dt
    finished = [(s.job, s.finish) for s in cluster.states if s.finish is not None]
    unfinished = len(cluster.states) - len(finished)
    avg_jct, p99_jct, worst_slowdown = _completion(finished, cluster)
    return Result(
        policy=policy,
        avg_jct=avg_jct,
        p99_jct=p99_jct,
        makespan=max((end for _, end in finished), default=math.inf) - min(j.arrival for j in jobs),
        gpu_hours=sum(s.gpu_seconds for s in cluster.states) / 3600.0,
        rescales=sum(s.rescales for s in cluster.states),
        worst_slowdown=worst_slowdown,
        unfinished=unfinished,
        decide_seconds=decide_seconds,
        timeline=tuple(timeline),
        finishes=tuple((job.name, end) for job, end in finished),
        unplaced=unplaced,
        stops=sum(s.stops for s in cluster.states),
        below_floor_hours=sum(s.below_floor for s in cluster.states) / 3600.0,
    )


# ---------------------------------------------------------------------------- report


def worst(results: Sequence[Result]) -> Result:
    """The worst case over seeds, metric by metric (higher is worse for each)."""
    return Result(
        policy=results[0].policy,
        avg_jct=max(r.avg_jct for r in results),
        p99_jct=max(r.p99_jct for r in results),
        makespan=max(r.makespan for r in results),
        gpu_hours=max(r.gpu_hours for r in results),
        rescales=max(r.rescales for r in results),
        worst_slowdown=max(r.worst_slowdown for r in results),
        unfinished=max(r.unfinished for r in results),
        decide_seconds=max(r.decide_seconds for r in results),
        unplaced=max(r.unplaced for r in results),
        stops=max(r.stops for r in results),
        below_floor_hours=max(r.below_floor_hours for r in results),
    )


HEADER = ("policy", "avg JCT s", "p99 JCT s", "makespan s", "GPU-h", "rescales",
          "worst slowdown", "unfinished")  # fmt: skip


def row(r: Result) -> tuple[str, ...]:
    """One line of the results table (:data:`HEADER`)."""
    return (
        r.policy,
        f"{r.avg_jct:,.0f}",
        f"{r.p99_jct:,.0f}",
        f"{r.makespan:,.0f}",
        f"{r.gpu_hours:,.1f}",
        str(r.rescales),
        f"{r.worst_slowdown:.1f}",
        str(r.unfinished),
    )


TIER_HEADER = ("policy", "priority", "jobs", "avg JCT s", "p99 JCT s", "worst slowdown",
               "unfinished")  # fmt: skip


def tier_row(policy: str, tier: Tier, jobs: str | None = None) -> tuple[str, ...]:
    """One line of the by-priority table (:data:`TIER_HEADER`); ``jobs`` in place of the
    tier's count (a range over seeds)."""
    return (
        policy,
        str(tier.priority),
        jobs if jobs is not None else str(tier.jobs),
        f"{tier.avg_jct:,.0f}",
        f"{tier.p99_jct:,.0f}",
        f"{tier.worst_slowdown:.1f}",
        str(tier.unfinished),
    )


def render(
    rows: Sequence[tuple[str, ...]], markdown: bool, *, header: tuple[str, ...] = HEADER
) -> str:
    """The results table (or another with its ``header``), aligned text or markdown."""
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=False)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join(fmt.format(*r) for r in [header, *rows])
