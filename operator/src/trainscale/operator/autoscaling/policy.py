"""The autoscaling decision: how many workers a training job should have, and why.

Why this module exists: the decision is the product, so it must be testable without a
cluster, a Prometheus or a clock. :func:`recommend` is a pure function of the job's spec,
the observations the operator gathered, and the time it is told; the kopf timer that calls
it does all the I/O (reading Prometheus, patching ``spec.replicas``, emitting Events).

The model
---------
Synchronous data parallelism with a fixed per-worker batch (weak scaling, what an elastic
DDP job does when workers join) makes every worker take the same step time ``t(n)``: its own
compute, which does not depend on ``n``, plus the gradient synchronisation, which grows with
``n`` (Optimus, EuroSys'18; Pollux, OSDI'21). We model the step time per sample of one worker
as

    tau(n) = a * (1 + beta * (n - 1) + gamma * (n - 1)**2),        beta, gamma >= 0

so that job throughput is ``X(n) = n / tau(n)`` and scaling efficiency (throughput per
replica relative to the best throughput per replica, which is at ``n = 1`` because ``tau``
never decreases) is ``E(n) = 1 / (1 + beta (n-1) + gamma (n-1)**2)``.

* ``gamma = beta = 0`` is linear scaling; ``gamma = 0`` is Amdahl's law (a ring all-reduce
  whose latency term grows linearly), where throughput saturates at ``1 / (a beta)``;
  ``gamma > 0`` is a communication-bound job whose throughput peaks and then falls, the
  shape that makes "more GPUs" actively harmful.
* The model is linear in its parameters, so it is fitted exactly by non-negative least
  squares on a handful of points (one per replica count seen), in pure Python, every
  decision. No numpy: the operator image does not ship it.
* Why not ``a + b log n + c n``? The log term describes tree all-reduce latency but cannot
  produce a throughput peak unless ``c`` does, and with the few distinct replica counts a
  job visits, three shapes are not identifiable; the quadratic family covers linear, Amdahl
  and peaked curves with one parameter more than Amdahl, and the trust region below keeps a
  misspecified fit from jumping far.

Placement: the same workers cost more to synchronise across nodes than inside one, so
the step time has a separate inter-node term (as Pollux's model separates local and node
sync), ``tau(n, N) = a (1 + beta (n-1) + delta [N > 1] + gamma (n-1)**2)``; points are
keyed by (count, nodes), one multi-node point identifies ``delta`` for every multi-node
count, and until one is measured, counts past the node boundary carry a prior doubt.

GPU utilisation ties the same curve down. A GPU is busy for the compute part ``g`` of each
step, so ``U(n) = g / tau(n)``: with throughput exported, ``g = U * tau`` at any count; with
only GPU metrics, ``1 / U(n)`` *is* ``tau(n)`` in units of ``g`` and throughput is known up
to a constant (``X ~ n * U``), which is all the objectives need; with both, every sample
measures ``tau`` twice (``n / X`` and ``g / U``) and the two are averaged. ``a = g +
overhead``; while only one count is measured we put a weak prior on overhead being zero,
which lets one count ``n0 > 1`` plus its utilisation identify ``beta`` (``1 - U(n0)`` is
read as synchronisation, a conservative reading); from two counts on the data identify the
overhead and the prior is dropped (it would bias every efficiency low by the real input
pipeline share). (Caveat, also in docs: dcgm-exporter's engine-active ratio counts NCCL
kernels as busy, so on NVLink jobs utilisation overstates the compute share; exporting
trainer throughput makes the fit exact.)

The one-replica reference. Every efficiency is relative to ``a``, one replica's step,
which a job that never ran at one replica knows only by extrapolating the fit, and on real
curves that errs high: a ring all-reduce's bandwidth term ``2 (n-1) / n`` makes
synchronisation concave in the count, which the quadratic family bends into its intercept
(benchmark weak-8: 0.99 read at 8 where 0.905 is true, so 9-16 looked above a 0.7 floor).
Where the trainer exports its sync share (communication seconds over step seconds), the
part of each step that does not synchronise, ``n / X * (1 - sync_fraction)``, is measured at
every count, and one replica's step is no longer than it (it only grows with the count:
all-reduce contending with the backward pass, smaller per-GPU batches). Fitted as a line in
the count and extrapolated to one replica, it caps ``a`` when it lies more than one
standard error below the fit's (:class:`_Estimates`; a measured one replica is the
reference itself). Throughput and utilization predictions do not change, except at one
replica, which runs at the capped reference (efficiency 1 by definition). A trainer that
under-reads its sync (overlap hidden in compute) misses most where the job synchronises
most, across nodes, which steepens the line and can put its extrapolation too low; one
replica's step is at least its GPU compute (``U * n / X``, fitted and extrapolated the same
way), so the cap never goes below that.

Uncertainty. The Amdahl (``gamma = 0``) and the quadratic fit are averaged with weights
``exp(-(chi2 + penalty) / 2)`` and their covariances (inflated by the reduced chi-square)
plus spread give standard errors of every prediction. Decisions use :class:`_Estimates`:
at a measured count the inverse-variance blend of measurement and model, between measured
counts the model scaled by the neighbours' measured/model ratios, so a curve outside the
family (a step, ``log n``) never overrides what was measured.

The decision
------------
:func:`recommend` runs :data:`STEPS`, small pure functions over one
:class:`DecisionContext`; the first that returns a recommendation decides (its name is
``Recommendation.step``; docs/autoscaling.md uses the same names):

1. hard limits: bounds, unschedulable pods, a cluster ceiling, a budget overrun; at once.
2. metrics freshness: no fresh observation -> hold (``metrics_stale``), or back toward a
   count the job was forced off as far as the cap now allows (:func:`_blind`); restart cost.
3. settling: wait for ``MIN_SETTLED_SAMPLES`` settled samples at the current count, taken
   once it has run as long as the recent rescales took to settle (a warm-up ending in a
   step reads steady until the step).
4. fit: the placement-aware model, corrected by the measured counts (:class:`_Estimates`).
5. objective: ``efficiency``, ``budget`` or ``utilization`` within the trust region (2x,
   up to the limit when that is within 4x, 4x with curvature, of the largest measured
   count; up to the limit for budget, which has no floor) and the cluster's
   capacity. A floor is a floor: the current count keeps it only while it lies within
   ``CONFIDENCE_Z`` standard errors of its estimate (no fixed band holds a count known to
   break it).
6. exploration: with one measured count, a neighbouring count identifies the curve (the
   next node filled across a boundary; the full node when the objective stopped part-way
   into it and the full node may keep the floor, :func:`_node_to_fill`, or when only one
   replica was measured).
7. pending pods: never ask for more while pods are Pending.
8. restart payback: a move must pay back its restart within the horizon: the time the job
   has left where its trainer says (:func:`compute_time_left`), else as long as the job has
   run so far, at least ``DEFAULT_HORIZON_SECONDS`` (:func:`compute_payback_horizon`).
9. confidence: no creep (``JUMP_SETTLED_SAMPLES`` first; large moves inside the floor's
   ``HYSTERESIS`` band at one standard error; small moves and returns to counts left
   downwards only when confidently better, and as their own samples read them); measurements
   beat the model (an unmeasured count that may be better is probed, :func:`_probe`;
   leaving several nodes for a count near the floor, the full-node count in between first,
   :func:`_leaving_probe`); forced moves are not choices (the count left by force is
   returned to when the cap lifts, not past it, :func:`_forced_return`).
10. stabilization: as the HorizontalPodAutoscaler, per direction.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import pairwise

from trainscale.operator.api import Objective, TrainingJobSpec, is_allowed, nearest_allowed
from trainscale.operator.autoscaling.placement import compute_packed_nodes

DEFAULT_RESTART_COST_SECONDS = 60.0
"""Seconds of training one rescale is assumed to lose before any restart has been seen."""

DEFAULT_HORIZON_SECONDS = 1800.0
"""A rescale must pay back its restart cost within this many seconds of better throughput,
at least (:func:`compute_payback_horizon`: longer for a job that has run longer)."""

MIN_SETTLED_SAMPLES = 3
"""Settled observations needed at the current count before a non-forced decision."""

MIN_POINT_SAMPLES = 2
"""Settled observations needed before a replica count is used as a point of the fit."""

RECOVERED_FRACTION = 0.8
"""A sample at >= this fraction of its count's steady level counts as recovered/settled."""

HYSTERESIS = 0.05
"""Relative tolerance below a floor for where a large move may land (and for probes)."""

TIE_TOLERANCE = 0.005
"""Predicted throughputs within this relative margin tie; the smaller count wins."""

JUMP_SETTLED_SAMPLES = 6
"""Settled observations needed at the current count before a large move away from it."""

FINE_MOVE_FRACTION = 0.25
"""Moves within this fraction of the current count (at least one) need confident estimates."""

CONFIDENCE_Z = 1.0
"""Standard errors a small move's estimates must clear (floors, restart payback)."""

FAR_BELOW_FLOOR = 0.5
"""A count whose estimate is below this fraction of its floor (efficiency, utilization
target), and ``FAR_BELOW_Z`` standard errors under it, is left without waiting for the
scale-down stabilization window: no noise explains a reading at half the floor."""

FAR_BELOW_Z = 2.0
"""Standard errors under its floor a count must be to be left at once (``FAR_BELOW_FLOOR``)."""

CLIFF_SYNC_SHARE = 0.5
"""A count far below its floor is past a cliff, and left at once, only where the trainer's
sync share says synchronisation accounts for at least this share of its step beyond the
least non-synchronising step measured elsewhere (or where it exports no sync share): a
count slow for another reason (a warm-up after its restart) waits out the window. A cliff
at a fifth of its floor whose trainer sees 80 % of its sync reads 0.81 here; a count at its
floor training at half speed after a restart, 0.19."""

PROBE_MIN_GAIN = 1.1
"""An unmeasured count within a small move is probed when it promises this throughput gain."""

BUDGET_PEAK_GAIN = 1.03
"""Under a budget, the count where a purely quadratic synchronisation through the two
measured counts peaks is probed when it promises this throughput gain (see
:func:`_budget_peak`)."""

STRONG_GAIN = 1.5
"""A move up gaining this much at its lower bound needs no more than ``MIN_SETTLED_SAMPLES``."""

REACH_TRUST = 4
"""When the job's limit (``maxReplicas``, or the replicas the budget pays for) lies within
this multiple of the largest measured count, a linear fit is trusted up to it. Going
straight there saves the last rescale, where stopping at 2x would only shorten the next
step (measured: a 16-GPU job starting at 4 reaches 16 in one rescale instead of two). A
floor is still checked: a large move lands inside the floor's band (step "confidence").
Under the budget objective, which has no floor, the fit is trusted up to the limit however
far it is (see :func:`decide_objective`)."""

PROBE_SETTLED_SAMPLES = 4 * JUMP_SETTLED_SAMPLES
"""Probes happen early in a stay: after this many settled samples at the current count, a
neighbour's estimate that drifted near the floor is noise, and probing it would be a late
flap (as exploration, never after a long stay)."""

AWAIT_WORLD_SECONDS = 120.0
"""Longest wait for the workers' world to change after the worker count did: a pod replaced
after a crash can rejoin a world of the same size (no change to see), and then what is
measured is that size anyway. The autoscale daemon measures nothing while it waits, nor for
``settleSeconds`` after: a rescale's observations have a gap up to that long plus the
interval by design (:func:`_ramp_seconds`)."""

LEAVING_PROBE_BAND = 0.1
"""A multi-node count missing its floor by less than this share has the full-node count
below it probed before the job leaves for a count two or more nodes smaller
(:func:`_leaving_probe`); by more, it is past a cliff."""

_OVERHEAD_PRIOR_SCALE = 0.1  # prior overhead ~ N(0, (10 % of compute)^2)
_CURVATURE_CHI2 = 4.0  # model-averaging penalty per fitted parameter
_INTER_NODE_PRIOR_SCALE = 0.5  # unmeasured inter-node sync ~ N(0, (50 % of a step)^2)
_MIN_RELATIVE_NOISE = 0.01
_NOISE_PRIOR = 0.03
_NOISE_PRIOR_SAMPLES = 6
_MAX_POINT_SAMPLES = 30
RESTART_SAMPLES_KEPT = 5


class LimitedBy(enum.StrEnum):
    """Why the recommendation is not what the objective alone would ask for."""

    BOUND = "bound"
    """minReplicas/maxReplicas."""
    BUDGET = "budget"
    """maxCostPerHour."""
    UNSCHEDULABLE = "unschedulable"
    """Pods the cluster could not place."""
    CEILING = "ceiling"
    """The cap cluster arbitration set for this job."""


class ModelSource(enum.StrEnum):
    """Which metric the speedup curve was fitted from."""

    THROUGHPUT = "throughput"
    GPU_UTILIZATION = "gpuUtilization"


class RestartCostSource(enum.StrEnum):
    """Where the restart cost used by a decision came from."""

    SPEC = "spec"
    LEARNED = "learned"
    MEASURED = "measured"
    REMEMBERED = "remembered"
    DEFAULT = "default"


def _check_finite(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


@dataclass(frozen=True)
class Observation:
    """What the operator saw of a job at one moment.

    Attributes:
        timestamp: When, in seconds (any epoch, the same as ``now``).
        replicas: Workers actually running at that moment (not the desired count).
        gpu_utilization: Mean GPU busy fraction over the job's GPUs, 0..1; None if unknown.
        samples_per_second: Job-wide training throughput; None if the job exports none.
        nodes: How many nodes the running workers spanned; None if unknown (read as the
            packed placement).
        sync_fraction: Share of the workers' step time spent blocked on gradient
            synchronisation, 0 <= x < 1 (the trainer's communication seconds over its
            step seconds); None if the job exports none. The non-synchronising part of
            the step it gives caps the one-replica efficiency reference (:class:`_Estimates`).
        remaining_samples: Training samples the job has left until its configured end (the
            trainer's epochs or step limit); None if the job does not say. Divided by
            ``samples_per_second`` it is how long the job has left, the horizon a move's
            restart must pay back in (:func:`compute_time_left`).
    """

    timestamp: float
    replicas: int
    gpu_utilization: float | None = None
    samples_per_second: float | None = None
    nodes: int | None = None
    sync_fraction: float | None = None
    remaining_samples: float | None = None

    def __post_init__(self) -> None:
        _check_finite("Observation.timestamp", self.timestamp)
        _check_count("Observation.replicas", self.replicas)
        if self.gpu_utilization is not None:
            _check_finite("Observation.gpu_utilization", self.gpu_utilization)
            if not 0.0 <= self.gpu_utilization <= 1.0:
                raise ValueError(
                    f"Observation.gpu_utilization must be within [0, 1], got {self.gpu_utilization!r}"
                )
        if self.nodes is not None:
            _check_count("Observation.nodes", self.nodes)
        if self.sync_fraction is not None:
            _check_finite("Observation.sync_fraction", self.sync_fraction)
            if not 0.0 <= self.sync_fraction < 1.0:
                raise ValueError(
                    f"Observation.sync_fraction must be within [0, 1), got {self.sync_fraction!r}"
                )
        if self.samples_per_second is not None:
            _check_finite("Observation.samples_per_second", self.samples_per_second)
            if self.samples_per_second < 0:
                raise ValueError(
                    f"Observation.samples_per_second must be >= 0, got {self.samples_per_second!r}"
                )
        if self.remaining_samples is not None:
            _check_finite("Observation.remaining_samples", self.remaining_samples)
            if self.remaining_samples < 0:
                raise ValueError(
                    f"Observation.remaining_samples must be >= 0, got {self.remaining_samples!r}"
                )


@dataclass(frozen=True)
class SpeedupModel:
    """The fitted curve ``tau(n, N) = a (1 + beta (n-1) + delta [N>1] + gamma (n-1)^2)``.

    Attributes:
        seconds_per_sample: ``a``: one worker's time per sample at one replica; in units of
            the GPU compute time per sample when ``source`` is GPU utilization.
        sync_per_replica: ``beta``: synchronisation added per extra replica, relative to ``a``.
        sync_quadratic: ``gamma``: quadratic (communication-bound) term, relative to ``a``.
        compute_fraction: Predicted GPU utilization at one replica (``g / a``); None when the
            job exports no GPU utilization.
        source: The metric the curve was fitted from.
        counts: The replica counts with measured points.
        level: 0 = only the scale is known (optimistic), 1 = linear sync fitted,
            2 = curvature fitted too.
        covariance: Covariance of ``(a, a * beta, a * delta, a * gamma)`` (the step time
            at one replica and the absolute synchronisation terms), inflated when the
            points scatter more than their noise; None when not computed.
        relative_noise: Relative noise of one settled sample, pooled over counts.
        sync_inter_node: ``delta``: synchronisation added once the job spans more than
            one node, relative to ``a`` (inter-node all-reduce).
        workers_per_node: Most workers one node holds, when known (placements of counts
            not measured are the packed ones).
    """

    seconds_per_sample: float
    sync_per_replica: float
    sync_quadratic: float
    compute_fraction: float | None
    source: ModelSource
    counts: tuple[int, ...]
    level: int
    covariance: tuple[tuple[float, ...], ...] | None = None
    relative_noise: float = _MIN_RELATIVE_NOISE
    sync_inter_node: float = 0.0
    workers_per_node: int | None = None

    def nodes(self, replicas: int, nodes: int | None = None) -> int:
        """The node span a prediction is for: ``nodes``, else the packed placement's."""
        return nodes if nodes is not None else compute_packed_nodes(replicas, self.workers_per_node)

    def relative_step_time(self, replicas: int, nodes: int | None = None) -> float:
        """``tau(n, N) / a``: 1 at one replica, growing with synchronisation."""
        k = replicas - 1
        inter = self.sync_inter_node if self.nodes(replicas, nodes) > 1 else 0.0
        return 1.0 + self.sync_per_replica * k + self.sync_quadratic * k * k + inter

    def efficiency(self, replicas: int, nodes: int | None = None) -> float:
        """Predicted scaling efficiency at ``replicas`` (1 = linear)."""
        return 1.0 / self.relative_step_time(replicas, nodes)

    def throughput(self, replicas: int, nodes: int | None = None) -> float:
        """Predicted job throughput: samples/s when fitted from throughput, relative otherwise."""
        return replicas / (self.seconds_per_sample * self.relative_step_time(replicas, nodes))

    def gpu_utilization(self, replicas: int, nodes: int | None = None) -> float | None:
        """Predicted mean GPU utilization at ``replicas``; None without GPU metrics."""
        if self.compute_fraction is None:
            return None
        return self.compute_fraction / self.relative_step_time(replicas, nodes)

    def as_status(self) -> dict[str, float]:
        """The parameters as ``status.autoscaling.model`` shows them (camelCase keys)."""
        out = {
            "syncPerReplica": round(self.sync_per_replica, 6),
            "syncQuadratic": round(self.sync_quadratic, 8),
            "syncInterNode": round(self.sync_inter_node, 6),
            "fitLevel": float(self.level),
            "countsMeasured": float(len(self.counts)),
        }
        if self.source is ModelSource.THROUGHPUT:
            out["samplesPerSecondPerReplica"] = round(1.0 / self.seconds_per_sample, 6)
        if self.compute_fraction is not None:
            out["computeFraction"] = round(self.compute_fraction, 6)
        if self.workers_per_node is not None:
            out["workersPerNode"] = float(self.workers_per_node)  # told, or inferred
        return out


@dataclass(frozen=True)
class Recommendation:
    """What :func:`recommend` decided.

    Attributes:
        replicas: What ``spec.replicas`` should be now; always within the spec's bounds.
        target: The raw target before stabilization; the caller records ``(now, target)``
            and passes the records back as ``recent_targets`` next time.
        current_replicas: The count the decision started from.
        reason: Why, in a short readable sentence, led by the step that decided
            (``"confidence: ..."``).
        limited_by: Bound, budget or unschedulable pods, when they shaped the answer.
        metrics_stale: True when the decision held because metrics were missing or old.
        exploring: True when the target is a neighbouring count tried to learn the curve.
        probing: True when the target is an unmeasured count probed by the confidence
            step (the caller remembers it as ``probed``: probes do not chain).
        forced: True when a hard limit moved the job, bypassing stabilization.
        model: The fitted speedup curve, if there were enough observations.
        restart_cost_seconds: Restart cost used by the decision.
        restart_cost_source: Where that cost came from.
        learned_restart_cost_seconds: Median cost of restarts seen in the observations (for
            the caller to remember), None if none was seen.
        efficiency: Predicted scaling efficiency at ``current_replicas``.
        gpu_utilization: Predicted GPU utilization at ``current_replicas``.
        throughput: Predicted throughput at ``current_replicas`` (samples/s when the model
            comes from throughput, relative otherwise).
        cost_per_hour: ``replicas * gpus_per_replica * costPerGpuHour``.
        step: The step of the decision pipeline that decided (one of :data:`STEPS`).
        forgotten: Observations forgotten before this decision because the count the job
            runs at measured a changed curve (set by :class:`~.autoscaler.JobAutoscaler`;
            0: nothing was).
        time_left_seconds: How long the job has left at its throughput, where its trainer
            says how many samples it has left (:func:`compute_time_left`); None where not.
    """

    replicas: int
    target: int
    current_replicas: int
    reason: str
    limited_by: LimitedBy | None = None
    metrics_stale: bool = False
    exploring: bool = False
    probing: bool = False
    forced: bool = False
    model: SpeedupModel | None = None
    restart_cost_seconds: float = DEFAULT_RESTART_COST_SECONDS
    restart_cost_source: RestartCostSource = RestartCostSource.DEFAULT
    learned_restart_cost_seconds: float | None = None
    efficiency: float | None = None
    gpu_utilization: float | None = None
    throughput: float | None = None
    cost_per_hour: float = 0.0
    step: str = ""
    forgotten: int = 0
    time_left_seconds: float | None = None

    @property
    def direction(self) -> str:
        """``"up"``, ``"down"`` or ``"hold"`` relative to ``current_replicas``."""
        if self.replicas > self.current_replicas:
            return "up"
        if self.replicas < self.current_replicas:
            return "down"
        return "hold"


# --------------------------------------------------------------------------------------------
# Observations -> settled points


_Key = tuple[int, int]
"""(replica count, nodes spanned): where a measured point sits."""


def _span(o: Observation, workers_per_node: int | None) -> int:
    """Nodes an observation's workers spanned (the packed placement when not observed)."""
    return o.nodes if o.nodes else compute_packed_nodes(o.replicas, workers_per_node)


@dataclass(frozen=True)
class _Analysis:
    """Observations digested for one decision."""

    mode: ModelSource | None
    points: dict[_Key, list[float]]  # (replica count, nodes) -> settled tau values
    # settled samples' GPU-busy time per sample, ``U * n / X``: estimates of g, the
    # compute time per sample, per (count, nodes)
    busy: dict[_Key, list[float]]
    latest_time: float | None  # newest observation carrying the mode's metric
    latest_replicas: int | None  # replicas of the newest observation
    latest_settled: int  # settled samples in the newest segment
    latest_dipped: bool  # the newest sample is below its count's steady level
    restart_costs: list[float]
    settled: dict[_Key, list[Observation]] = field(default_factory=dict)  # samples fitted
    # settled samples' non-synchronising time per sample, ``n / X * (1 - sync_fraction)``
    unsynced: dict[_Key, list[float]] = field(default_factory=dict)
    # ... and their synchronising time per sample, ``n / X * sync_fraction``
    synced: dict[_Key, list[float]] = field(default_factory=dict)

    @property
    def compute(self) -> list[float]:
        """Every settled estimate of g, whatever its count."""
        return [g for values in self.busy.values() for g in values]


def _median(values: Sequence[float]) -> float:
    s = sorted(values)
    m = len(s) // 2
    return s[m] if len(s) % 2 else 0.5 * (s[m - 1] + s[m])


def _metric(o: Observation, mode: ModelSource) -> float | None:
    return o.samples_per_second if mode is ModelSource.THROUGHPUT else o.gpu_utilization


def _segments(
    observations: Sequence[Observation], split_at: float | None, workers_per_node: int | None
) -> list[list[Observation]]:
    """Runs of consecutive observations at the same count and span (split at ``split_at``)."""
    out: list[list[Observation]] = []
    key: tuple[int, int, bool] | None = None
    for o in observations:
        k = (
            o.replicas,
            _span(o, workers_per_node),
            split_at is not None and o.timestamp >= split_at,
        )
        if k != key:
            out.append([])
            key = k
        out[-1].append(o)
    return out


def _analyse(
    observations: Sequence[Observation],
    split_at: float | None,
    max_gap: float,
    workers_per_node: int | None = None,
    *,
    settled_run: int | None = MIN_SETTLED_SAMPLES,
    quiet: float = 0.0,
) -> _Analysis:
    """Find the settled samples of each replica count and the cost of each observed restart.

    A segment's steady level is the median of the last third of its positive samples; its
    leading samples up to the last one below ``RECOVERED_FRACTION`` of that level before
    ``settled_run`` samples in a row reach it (in the first half; None: up to the last one
    in the first half, as the curve-change detector reads a stay) are the restart ramp, its
    trailing samples below it a dip in progress, and any other sample below it a dip (a
    checkpoint write stalls training for a window or two: the samples settled before it
    stay settled). None of them is fitted. A restart's cost is the throughput deficit, in
    seconds at the new steady rate, from the last good sample of one count to the first
    settled sample of the next, counted only when the samples in between are dense (no gap
    above ``max_gap``): compacted or interrupted histories teach nothing about restarts.
    ``quiet``: how much longer than ``max_gap`` the caller measures nothing after a rescale
    (the daemon's wait for the new world and ``settleSeconds``); a rescale's ramp is learned
    across that gap (:func:`_ramp_seconds`).
    """
    obs = sorted(observations, key=lambda o: o.timestamp)
    mode: ModelSource | None = None
    if any(o.samples_per_second is not None for o in obs):
        mode = ModelSource.THROUGHPUT
    elif any(o.gpu_utilization is not None for o in obs):
        mode = ModelSource.GPU_UTILIZATION
    if mode is None:
        return _Analysis(None, {}, {}, None, obs[-1].replicas if obs else None, 0, False, [])

    points: dict[_Key, list[float]] = {}
    pairs: dict[_Key, list[tuple[float, float | None]]] = {}
    unsynced: dict[_Key, list[float]] = {}
    synced: dict[_Key, list[float]] = {}
    busy: dict[_Key, list[float]] = {}
    latest_time: float | None = None
    for o in obs:
        if _metric(o, mode) is not None:
            latest_time = o.timestamp

    good_flags: list[bool] = []  # per observation in time order: settled sample?
    settled_by_key: dict[_Key, list[Observation]] = {}
    levels: list[float | None] = []  # per observation: its segment's steady level
    segments = _segments(obs, split_at, workers_per_node)
    latest_settled = 0
    latest_dipped = False
    ramps: list[float] = []  # seconds from each rescale to its count's first settled sample
    for si, seg in enumerate(segments):
        values = [_metric(o, mode) for o in seg]
        positive = [v for v in values if v is not None and v > 0]
        n = seg[0].replicas
        key = (n, _span(seg[0], workers_per_node))
        if not positive or n == 0:
            good_flags.extend([False] * len(seg))
            levels.extend([None] * len(seg))
            continue
        tail = positive[len(positive) - max(1, len(positive) // 3) :]
        level = _median(tail)
        threshold = RECOVERED_FRACTION * level
        start = 0
        half = (len(seg) + 1) // 2
        run = 0
        for i in range(half):
            v = values[i]
            if v is None or v < threshold:
                start, run = i + 1, 0
            else:
                run += 1
                if settled_run is not None and run >= settled_run:
                    break  # settled: a later dip (a checkpoint stall) is a dip, not the ramp
        end = len(seg)
        while end > start and (values[end - 1] is None or values[end - 1] < threshold):  # type: ignore[operator]
            end -= 1
        # A sample below the threshold inside a segment is a dip (a worker restarting
        # without a count change, a scrape gap): not a settled sample either.
        flags = [
            start <= i < end and (v := values[i]) is not None and v >= threshold
            for i in range(len(seg))
        ]
        good_flags.extend(flags)
        levels.extend([level] * len(seg))
        ramp = _ramp_seconds(segments, si, flags, workers_per_node, max_gap, quiet)
        if ramp is not None:
            ramps.append(ramp)
        settled = [seg[i] for i in range(len(seg)) if flags[i]]
        settled_by_key.setdefault(key, []).extend(settled)
        for o in settled:
            v = _metric(o, mode)
            assert v is not None
            u = o.gpu_utilization if o.gpu_utilization and o.gpu_utilization > 0 else None
            if mode is ModelSource.THROUGHPUT:
                tau = o.replicas / v
                if u is not None:
                    busy.setdefault(key, []).append(u * tau)
                if o.sync_fraction is not None:
                    unsynced.setdefault(key, []).append(tau * (1.0 - o.sync_fraction))
                    synced.setdefault(key, []).append(tau * o.sync_fraction)
            else:
                tau, u = 1.0 / v, None
            pairs.setdefault(key, []).append((tau, u))
        if si == len(segments) - 1:
            # A count is measured once it has run as long as the last rescales took to settle
            # (its own among them, which never holds back a settled sample of its own): a
            # warm-up that ends in a step reads steady until the step.
            wait = max(ramps[-RESTART_SAMPLES_KEPT:], default=0.0)
            latest_settled = sum(1 for o in settled if o.timestamp - seg[0].timestamp >= wait)
            last = next((v for v in reversed(values) if v is not None), None)
            latest_dipped = last is not None and last < threshold

    # With both metrics, each settled sample measures the step time twice: n / X, and
    # g / U with g the compute time per sample. Their geometric mean halves the variance
    # when the two are measured independently (and costs nothing when they are not); a
    # pair that disagrees by more than the settling threshold keeps the throughput alone.
    compute = [g for values in busy.values() for g in values]
    g = _median(compute) if compute else None
    for key, measured in pairs.items():
        for tau_x, u in measured:
            tau = tau_x
            if g is not None and u is not None:
                other = g / u
                if RECOVERED_FRACTION <= other / tau_x <= 1 / RECOVERED_FRACTION:
                    tau = math.sqrt(tau_x * other)
            points.setdefault(key, []).append(tau)

    restart_costs = _restart_costs(obs, good_flags, levels, mode, max_gap)
    return _Analysis(
        mode,
        points,
        busy,
        latest_time,
        obs[-1].replicas,
        latest_settled,
        latest_dipped,
        restart_costs,
        settled_by_key,
        unsynced,
        synced,
    )


def _ramp_seconds(
    segments: Sequence[Sequence[Observation]],
    si: int,
    flags: Sequence[bool],
    workers_per_node: int | None,
    max_gap: float,
    quiet: float = 0.0,
) -> float | None:
    """Seconds from a rescale's first sample to the first settled sample of segment ``si``
    (None: no rescale before it, none settled, or a gap on the way: over ``max_gap`` inside
    the segment, over ``max_gap + quiet`` across the rescale, where the caller measures
    nothing by design)."""
    seg = segments[si]
    if si == 0 or not any(flags):
        return None
    before = segments[si - 1][-1]
    if (before.replicas, _span(before, workers_per_node)) == (
        seg[0].replicas,
        _span(seg[0], workers_per_node),
    ):
        return None  # one stay split at the last scale time: no rescale
    first = flags.index(True)
    if seg[0].timestamp - before.timestamp > max_gap + quiet:
        return None
    times = [o.timestamp for o in seg[: first + 1]]
    if any(b - a > max_gap for a, b in pairwise(times)):
        return None
    return seg[first].timestamp - seg[0].timestamp


def _restart_costs(
    obs: Sequence[Observation],
    good: Sequence[bool],
    levels: Sequence[float | None],
    mode: ModelSource,
    max_gap: float,
) -> list[float]:
    costs: list[float] = []
    last_good: int | None = None
    for i, o in enumerate(obs):
        if not good[i]:
            continue
        if last_good is not None and obs[last_good].replicas != o.replicas:
            level = levels[i]
            dense = all(
                obs[k].timestamp - obs[k - 1].timestamp <= max_gap
                for k in range(last_good + 1, i + 1)
            )
            if dense and level:
                lost = 0.0
                for k in range(last_good + 1, i + 1):
                    v = _metric(obs[k], mode)
                    ref = (
                        levels[k]
                        if obs[k].replicas in (o.replicas, obs[last_good].replicas)
                        else None
                    )
                    share = 0.0 if v is None or not ref else min(v / ref, 1.0)
                    lost += (1.0 - share) * (obs[k].timestamp - obs[k - 1].timestamp)
                costs.append(lost)
        last_good = i
    return costs


# --------------------------------------------------------------------------------------------
# Fitting


_Rows = Sequence[tuple[tuple[float, ...], float, float]]
_Matrix = tuple[tuple[float, ...], ...]


def _solve(rows: _Rows, support: Sequence[int]) -> tuple[list[float], list[list[float]]] | None:
    """Weighted least squares on the columns in ``support``: (solution, inverse normal matrix).

    With weights ``1 / variance`` the inverse of the normal matrix is the covariance of the
    solution. None when the columns are (numerically) dependent.
    """
    k = len(support)
    m = [[0.0] * (2 * k + 1) for _ in range(k)]
    for x, y, w in rows:
        for i, ci in enumerate(support):
            for j, cj in enumerate(support):
                m[i][j] += w * x[ci] * x[cj]
            m[i][k] += w * x[ci] * y
    for i in range(k):
        m[i][k + 1 + i] = 1.0
    scale = max((abs(m[i][i]) for i in range(k)), default=0.0)
    if scale == 0.0:
        return None
    for col in range(k):
        pivot = max(range(col, k), key=lambda r: abs(m[r][col]))
        if abs(m[pivot][col]) <= 1e-12 * scale:
            return None
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(k):
            if r != col:
                f = m[r][col] / m[col][col]
                for c in range(col, 2 * k + 1):
                    m[r][c] -= f * m[col][c]
    solution = [m[i][k] / m[i][i] for i in range(k)]
    inverse = [[m[i][k + 1 + j] / m[i][i] for j in range(k)] for i in range(k)]
    return solution, inverse


def _fit_nonnegative(
    rows: _Rows, allowed: Sequence[bool]
) -> tuple[tuple[float, ...], float, _Matrix] | None:
    """Non-negative weighted least squares, exact: (parameters, weighted residual, covariance).

    With three parameters there are eight supports; the NNLS optimum is the unconstrained
    least-squares solution on its own support, so trying all of them finds it. The
    covariance is that of the unconstrained fit on all allowed columns where it exists
    (else of the optimum's support).
    """
    k = len(allowed)
    best: tuple[float, list[float], list[list[float]]] | None = None
    for mask in range(1 << k):
        support = [j for j in range(k) if mask >> j & 1]
        if any(not allowed[j] for j in support):
            continue
        p = [0.0] * k
        cov = [[0.0] * k for _ in range(k)]
        if support:
            solved = _solve(rows, support)
            if solved is None or any(v < 0 for v in solved[0]):
                continue
            for i, (j, v) in enumerate(zip(support, solved[0], strict=True)):
                p[j] = v
                for i2, j2 in enumerate(support):
                    cov[j][j2] = solved[1][i][i2]
        residual = sum(
            w * (y - sum(xi * pi for xi, pi in zip(x, p, strict=True))) ** 2 for x, y, w in rows
        )
        if best is None or residual < best[0] * (1 - 1e-12) - 1e-300:
            best = (residual, p, cov)
    if best is None:
        return None
    # A parameter held at its bound is not known exactly: the data merely put it on the
    # wrong side of zero. The covariance of the unconstrained fit on every allowed
    # column says how little the data pins it (when those columns are identifiable).
    cov = best[2]
    full = [j for j in range(k) if allowed[j]]
    solved = _solve(rows, full) if full else None
    if solved is not None:
        cov = [[0.0] * k for _ in range(k)]
        for i, j in enumerate(full):
            for i2, j2 in enumerate(full):
                cov[j][j2] = solved[1][i][i2]
    return tuple(best[1]), best[0], tuple(tuple(r) for r in cov)


def _relative_noise(analysis_points: dict[_Key, list[float]]) -> float:
    """Relative noise of one settled sample, pooled over counts (robust: MAD), floored at 1 %."""
    deviations = [
        abs(t / _median(v) - 1.0)
        for (n, _), v in analysis_points.items()
        if n > 0 and len(v) >= MIN_POINT_SAMPLES
        for t in v
    ]
    # A few samples' scatter says little about the noise (three can agree by chance), so
    # the estimate starts from a prior worth _NOISE_PRIOR_SAMPLES samples; a larger
    # measured scatter is believed at once.
    measured = 1.4826 * _median(deviations) if deviations else _NOISE_PRIOR
    n = len(deviations)
    pooled = math.sqrt(
        (_NOISE_PRIOR_SAMPLES * _NOISE_PRIOR**2 + n * measured**2) / (_NOISE_PRIOR_SAMPLES + n)
    )
    return max(_MIN_RELATIVE_NOISE, pooled, measured)


_MAX_NOISE_LAG = 10  # scrapes: a rate() window of 5 min read every 30 s
_MAX_NOISE_INFLATION = float(_MAX_NOISE_LAG)


def _noise_inflation(runs: Iterable[Sequence[float]]) -> float:
    """How many times more a median of settled samples varies than if they were independent.

    Why: scrapes are not independent. A ``rate()`` over a window longer than the scrape
    interval reads the same steps in neighbouring scrapes (a 60 s window every 30 s:
    neighbours correlate 0.5), and a node's load or a data loader's pace drifts for minutes.
    Counted as independent, such samples make every standard error too small, and a
    decision checked every interval then fires on noise (measured: a job whose 10 % noise
    arose in the training "found" its curve changed, forgot it and rescaled 9 times).

    ``runs`` are sequences of consecutive samples at one level each (a stay at one count);
    the autocorrelation of their log deviations from each run's median, pooled over the
    runs, is summed over lags while it stays positive (a few samples' estimates of it are low:
    each run's own median takes some of it): ``1 + 2 * sum(rho_l)``, between 1 and
    ``_MAX_NOISE_INFLATION``.
    """
    deviations = []
    for run in runs:
        values = [v for v in run if v > 0]
        if len(values) >= 3:
            mid = _median(values)
            deviations.append([math.log(v / mid) for v in values])
    variance = math.fsum(d * d for dev in deviations for d in dev)
    total = sum(len(dev) for dev in deviations)
    if variance <= 0.0 or total < 2 * _MAX_NOISE_LAG:
        return 1.0
    inflation = 1.0
    for lag in range(1, _MAX_NOISE_LAG + 1):
        pairs = math.fsum(
            dev[i] * dev[i + lag] for dev in deviations for i in range(len(dev) - lag)
        )
        rho = pairs / variance
        if rho <= 0.0:
            break
        inflation += 2.0 * rho
    return min(inflation, _MAX_NOISE_INFLATION)


def _point_variance(tau: float, samples: int, noise: float) -> float:
    """Variance of the median of ``samples`` settled samples (about (pi / 2) sigma^2 / k)."""
    return 1.5708 * (noise * tau) ** 2 / min(samples, _MAX_POINT_SAMPLES)


def _features(replicas: int, nodes: int) -> tuple[float, float, float, float]:
    """The fit's columns at (count, nodes): overhead, per-worker sync, inter-node, quadratic."""
    k = float(replicas - 1)
    return (1.0, k, 1.0 if nodes > 1 else 0.0, k * k)


def _average_fits(
    fits: Sequence[tuple[float, Sequence[float], Sequence[Sequence[float]]]], width: int
) -> tuple[list[float], list[list[float]]]:
    """Average fits ``(log weight, parameters, covariance)`` by ``exp(log weight)``: the
    weighted parameters, and the weighted covariances plus the parameters' spread."""
    top = max(f[0] for f in fits)
    weights = [math.exp(f[0] - top) for f in fits]
    total = sum(weights)
    weights = [w / total for w in weights]
    mean = [sum(w * f[1][i] for w, f in zip(weights, fits, strict=True)) for i in range(width)]
    averaged = [
        [
            math.fsum(
                w * (f[2][i][j] + (f[1][i] - mean[i]) * (f[1][j] - mean[j]))
                for w, f in zip(weights, fits, strict=True)
            )
            for j in range(width)
        ]
        for i in range(width)
    ]
    return mean, averaged


@dataclass(frozen=True)
class _Line:
    """A time per sample measured at several counts, as ``c0 + c1 (n - 1)``, ``c1 >= 0``."""

    c0: float
    c1: float
    cov: tuple[tuple[float, ...], ...]  # of (c0, c1)


def _fit_line(samples: Mapping[_Key, Sequence[float]]) -> _Line | None:
    """The time per sample that does not synchronise, as a line in the count.

    Why a line: with a fixed per-GPU batch (weak scaling) it is flat; with a fixed global
    batch (strong scaling) each worker's batch shrinks as ``1 / n`` and a step's fixed cost
    is spread over fewer samples, so per sample it grows linearly in ``n`` (Pollux models a
    step's compute as affine in the local batch for the same reason). Flat and sloped are
    averaged by ``exp(-(chi-square + penalty) / 2)``, as the step-time fit is, and their
    spread joins the covariance. None when no count has ``MIN_POINT_SAMPLES`` samples.
    """
    kept = {k: list(v) for k, v in samples.items() if k[0] > 0 and len(v) >= MIN_POINT_SAMPLES}
    if not kept:
        return None
    noise = _relative_noise(kept)
    rows = []
    for (n, _), v in kept.items():
        c = _median(v)
        rows.append(((1.0, float(n - 1)), c, 1.0 / _point_variance(c, len(v), noise)))
    sloped = len({n for n, _ in kept}) >= 2
    fits: list[tuple[float, tuple[float, ...], _Matrix]] = []
    for allowed in [(True, False)] + ([(True, True)] if sloped else []):
        fit = _fit_nonnegative(rows, allowed)
        if fit is not None:
            params, residual, cov = fit
            fits.append((-0.5 * (residual + _CURVATURE_CHI2 * sum(allowed)), params, cov))
    if not fits:
        return None
    mean, averaged = _average_fits(fits, 2)
    return _Line(mean[0], mean[1], tuple(tuple(r) for r in averaged)) if mean[0] > 0 else None


def fit_speedup_model(
    analysis_points: dict[_Key, list[float]],
    compute: Sequence[float],
    mode: ModelSource,
    workers_per_node: int | None = None,
) -> SpeedupModel | None:
    """Fit :class:`SpeedupModel` to settled step times per (count, nodes) (module docstring).

    Args:
        analysis_points: (replica count, nodes spanned) -> settled per-worker time per
            sample (``n / X``, or ``1 / U`` when fitted from GPU utilization).
        compute: Estimates of the GPU compute time per sample (``U * n / X``); ignored for
            GPU-utilization fits, where it is 1 by definition.
        mode: Which metric the points come from.
        workers_per_node: Most workers a node holds, if known (for the model's packed
            predictions; the fit itself uses the measured spans).

    Returns:
        The model, or None when no count has ``MIN_POINT_SAMPLES`` settled samples.
    """
    medians = {
        key: _median(v)
        for key, v in analysis_points.items()
        if key[0] > 0 and len(v) >= MIN_POINT_SAMPLES
    }
    if not medians:
        return None
    # The compute time per sample anchors the curve; it is the unit of GPU-utilization fits.
    base: float | None = 1.0 if mode is ModelSource.GPU_UTILIZATION else None
    if mode is ModelSource.THROUGHPUT and compute:
        base = _median(compute)
    counts = tuple(sorted({n for n, _ in medians}))
    noise = _relative_noise(analysis_points)
    rows: list[tuple[tuple[float, ...], float, float]] = []
    for (n, nodes), tau in medians.items():
        variance = _point_variance(tau, len(analysis_points[(n, nodes)]), noise)
        rows.append((_features(n, nodes), tau - (base or 0.0), 1.0 / variance))
    if base is not None and len(medians) == 1:
        # Prior, needed only while one point is measured (two unknowns, one equation): the
        # input pipeline and framework overhead is small next to compute. With two counts
        # the data identifies the overhead by extrapolation, and the prior would bias the
        # efficiency of every count low by the real overhead (5 % is common).
        rows.append(((1.0, 0.0, 0.0, 0.0), 0.0, 1.0 / (_OVERHEAD_PRIOR_SCALE * base) ** 2))
    # The inter-node term is fitted once a multi-node point is measured: one point across
    # two nodes informs every multi-node count (Pollux, OSDI'21, section 3.2, fits local
    # and node sync separately for the same reason). It costs one point of information.
    inter = any(nodes > 1 for _, nodes in medians) and any(nodes <= 1 for _, nodes in medians)
    info = len(medians) + (1 if base is not None and counts[-1] > 1 else 0) - int(inter)
    level = 0 if info <= 1 else 1 if info == 2 else 2
    fits: list[tuple[float, tuple[float, ...], list[list[float]]]] = []  # (weight, p, cov)
    # The quadratic needs three measured counts; with two, its exact fits are many and
    # say nothing the Amdahl fit does not.
    curved = level == 2 and len(counts) >= 3 + (1 if inter else 0)
    candidates = [(True, level >= 1, inter, False)] + (
        [(True, True, inter, True)] if curved else []
    )
    for allowed in candidates:
        fit = _fit_nonnegative(rows, allowed)
        if fit is None:
            continue
        params, residual, cov = fit
        # Scale the covariance by the reduced chi-square when the points scatter more
        # than their noise says (a curve outside the model family): the model then admits
        # it knows less, and measured counts weigh more than its predictions.
        free = sum(1 for i in range(len(allowed)) if cov[i][i] > 0)
        dof = len(rows) - free
        inflation = max(1.0, residual / dof) if dof > 0 else 1.0
        penalty = _CURVATURE_CHI2 * sum(allowed)
        fits.append(
            (-0.5 * (residual + penalty), params, [[v * inflation for v in r] for r in cov])
        )
    if not fits:
        return None
    # Curvature only as far as the data asks for it: the Amdahl and the quadratic fit are
    # averaged with weights exp(-(chi-square + penalty) / 2), so the curve (and above all
    # its extrapolation to one replica, which every efficiency depends on) moves smoothly
    # as evidence for curvature accumulates instead of jumping when a test flips; the
    # spread between the two joins the covariance.
    mean, averaged = _average_fits(fits, len(candidates[0]))
    p0, b, d, c = mean
    a = p0 + (base or 0.0)
    if a <= 0 or not math.isfinite(a):
        return None
    return SpeedupModel(
        seconds_per_sample=a,
        sync_per_replica=b / a,
        sync_quadratic=c / a,
        compute_fraction=None if base is None else min(1.0, base / a),
        source=mode,
        counts=counts,
        level=level,
        covariance=tuple(tuple(r) for r in averaged),
        relative_noise=noise,
        sync_inter_node=d / a,
        workers_per_node=workers_per_node,
    )


def compact_observations(
    observations: Iterable[Observation],
    now: float,
    *,
    keep_seconds: float = 3600.0,
    per_count: int = 20,
) -> list[Observation]:
    """Bound a job's observation history without forgetting the curve it has measured.

    A plain time window forgets the replica counts the job left long ago, and the model
    would then re-explore them. This keeps every observation of the last ``keep_seconds``
    and, of older ones, the newest ``per_count`` of each replica count at each node span
    (the model is per placement: one span of a count must not push out another, as a
    restored memory's would at once); the result is at most
    ``keep_seconds / interval + per_count * (count, span) pairs`` long, in time order.
    Restart costs are never learned across the gaps this leaves (see :func:`recommend`).

    Raises:
        ValueError: on a negative ``keep_seconds`` or ``per_count``.
    """
    _check_finite("now", now)
    _check_finite("keep_seconds", keep_seconds)
    if keep_seconds < 0:
        raise ValueError(f"keep_seconds must be >= 0, got {keep_seconds!r}")
    _check_count("per_count", per_count)
    ordered = sorted(observations, key=lambda o: o.timestamp)
    recent = [o for o in ordered if o.timestamp >= now - keep_seconds]
    kept: dict[tuple[int, int | None], list[Observation]] = {}
    for o in reversed(ordered):
        if o.timestamp < now - keep_seconds:
            bucket = kept.setdefault((o.replicas, o.nodes), [])
            if len(bucket) < per_count:
                bucket.append(o)
    old = [o for bucket in kept.values() for o in bucket]
    return sorted(old, key=lambda o: o.timestamp) + recent


# --------------------------------------------------------------------------------------------
# The curve as decisions see it


class _Estimates:
    """The fitted curve corrected by what was measured, with standard errors.

    Why not the model alone: a job whose curve is outside the model family (a step when
    the job spills onto a second switch tier, tree all-reduce's ``log n``) is fitted badly
    somewhere, and a decision must never prefer the model over a count it has measured for
    a long time. At a measured count the step time is the inverse-variance blend of the
    measurement and the model (whose variance is inflated when the points scatter more
    than their noise, and by its own miss at that count: a newly measured count past a
    step the model cannot describe is read from its samples); between measured counts
    the model is scaled by the blend/model ratio interpolated from its neighbours, beyond
    them by the nearest one's.

    Efficiency is relative to one replica's step, which the fit extrapolates when one
    replica was never measured, and the extrapolation errs high on real curves (a ring
    all-reduce's bandwidth term makes synchronisation concave in the count). Where the
    trainer exports its sync share, one replica's step is at most the part of the measured
    steps that does not synchronise, ``tau * (1 - sync_fraction)`` (that part only grows
    with the count: contention, smaller per-GPU batches): fitted as a line in the count
    (:func:`_fit_line`) and extrapolated to one replica, it caps the reference when it lies
    more than one standard error below the fit's (``reference_capped``), but never below
    one replica's GPU compute, ``U * tau`` extrapolated alike (``busy``): one replica's step
    is at least that, and a share under-read across nodes would otherwise steepen the line.
    """

    def __init__(
        self,
        model: SpeedupModel,
        points: dict[_Key, list[float]],
        top: int,
        unsynced: Mapping[_Key, Sequence[float]] | None = None,
        busy: Mapping[_Key, Sequence[float]] | None = None,
        synced: Mapping[_Key, Sequence[float]] | None = None,
    ) -> None:
        self.model = model
        a = model.seconds_per_sample
        coef = (a, model.sync_per_replica * a, model.sync_inter_node * a, model.sync_quadratic * a)
        cov = model.covariance or ((0.0,) * 4,) * 4
        self._a = a
        self._var_a = cov[0][0]
        self._g = None if model.compute_fraction is None else model.compute_fraction * a
        # Decisions are about counts, at the placement the job gets for them (packed):
        # points measured at another span inform the fit only.
        packed = {n: model.nodes(n) for n in range(1, max(top, *(k[0] for k in points), 1) + 2)}
        # GPU-utilization fits measure 1/U, the step time in units of compute time.
        measured = {
            n: (_median(v), _point_variance(_median(v), len(v), model.relative_noise))
            for (n, nodes), v in points.items()
            if n > 0 and len(v) >= MIN_POINT_SAMPLES and nodes == packed[n]
        }
        # the parts of each measured count's step that do not and do synchronise (per sample)
        self._unsynced, self._synced = (
            {
                n: _median(v)
                for (n, nodes), v in (parts or {}).items()
                if len(v) >= MIN_POINT_SAMPLES and nodes == packed.get(n)
            }
            for parts in (unsynced, synced)
        )
        # Until a multi-node count is measured, the inter-node term is unknown: counts that
        # spill onto another node carry that doubt (a cliff may sit at the node boundary).
        unknown_inter = model.workers_per_node is not None and not any(
            nodes > 1 for (_, nodes), v in points.items() if len(v) >= MIN_POINT_SAMPLES
        )
        self._tau: dict[int, float] = {}
        self._var: dict[int, float] = {}
        self._cov_a: dict[int, float] = {}
        ratios: dict[int, float] = {}
        model_tau: dict[int, float] = {}
        model_var: dict[int, float] = {}
        model_cov: dict[int, float] = {}
        for n, nodes in packed.items():
            x = _features(n, nodes)
            model_tau[n] = sum(xi * ci for xi, ci in zip(x, coef, strict=True))
            model_var[n] = max(
                0.0, sum(x[i] * cov[i][j] * x[j] for i in range(4) for j in range(4))
            )
            if unknown_inter and nodes > 1:
                model_var[n] += (_INTER_NODE_PRIOR_SCALE * a) ** 2
            model_cov[n] = sum(cov[0][j] * x[j] for j in range(4))
        self._measured_rel = {n: math.sqrt(v) / t for n, (t, v) in measured.items()}
        self._measured = dict(measured)
        for n, (tau_e, var_e) in measured.items():
            tau_m, var_m = model_tau[n], model_var[n]
            # The model's miss at a measured count beyond the measurement's own noise is
            # a doubt about the model there (its form, not its parameters): a curve it
            # cannot describe is then read from the measurement.
            var_m += max(0.0, (tau_m - tau_e) ** 2 - var_e)
            if var_m <= 0.0 or tau_e < tau_m:
                # A measured count that outperforms the fit is believed as measured.
                tau_b, var_b, weight = tau_e, var_e, 0.0
            else:
                var_b = 1.0 / (1.0 / var_m + 1.0 / var_e)
                weight = var_b / var_m
                tau_b = var_b * (tau_m / var_m + tau_e / var_e)
            self._tau[n], self._var[n], self._cov_a[n] = tau_b, var_b, weight * model_cov[n]
            ratios[n] = tau_b / tau_m
        known = sorted(ratios)
        for n, tau_n in model_tau.items():
            if n in self._tau:
                continue
            # Corrections carry over only within the same side of the node boundary.
            side = [m for m in known if (packed[m] > 1) == (packed[n] > 1)]
            below = [m for m in side if m < n]
            above = [m for m in side if m > n]
            gap = 0.0  # how much the neighbours' corrections disagree, in step time
            if below and above:
                lo_n, hi_n = below[-1], above[0]
                f = (n - lo_n) / (hi_n - lo_n)
                r = ratios[lo_n] * (1 - f) + ratios[hi_n] * f
                # Interpolating a correction is a guess about the curve between two
                # measured counts (a step could sit anywhere in it): as uncertain as the
                # two corrections are different, most in the middle.
                gap = 2.0 * min(f, 1.0 - f) * abs(ratios[hi_n] - ratios[lo_n]) * tau_n
            elif below or above:
                r = ratios[below[-1] if below else above[0]]
            else:
                r = 1.0
            self._tau[n] = tau_n * r
            self._var[n] = model_var[n] * r * r + gap * gap
            self._cov_a[n] = model_cov[n] * r
        if 1 in measured:
            self._a, self._var_a = self._tau[1], self._var[1]
        # The one-replica step is at most the non-synchronising part of the measured steps,
        # extrapolated to one replica; noise alone must not lower the reference, so the cap
        # counts from one standard error above it. One replica measured is the reference.
        self.reference_capped = False
        # how much higher than its estimate the reference may be: the sync-share line
        # bounds it above where it does not cap it (None: the estimate's own error)
        self._var_a_up: float | None = None
        line = _fit_line(unsynced) if unsynced else None
        if line is not None and model.source is ModelSource.THROUGHPUT and 1 not in measured:
            sd = math.sqrt(max(0.0, line.cov[0][0]))
            cap = line.c0 + sd
            # ... and at least one replica's GPU compute: a trainer that under-reads its
            # sync (overlap hidden in compute) inflates the non-synchronising time most
            # where it synchronises most (across nodes), which steepens the line and would
            # put its extrapolation below what the GPUs alone take.
            compute = _fit_line(busy) if busy else None
            if compute is not None:
                sd_g = math.sqrt(max(0.0, compute.cov[0][0]))
                if compute.c0 + sd_g > cap:
                    cap, sd = compute.c0 + sd_g, sd_g
            if cap < self._a:
                self._a, self._var_a, self.reference_capped = cap, sd * sd, True
                self._cov_a = {n: 0.0 for n in self._cov_a}
                # The reference is one replica's step: one replica runs at it (efficiency
                # 1 by definition, never "even minReplicas 1 predicted 0.68").
                self._tau[1], self._var[1] = cap, sd * sd
            else:
                self._var_a_up = min(self._var_a, (cap - self._a) ** 2 + sd * sd)

    def _step(self, replicas: int) -> float:
        return self._tau.get(replicas) or self.model.seconds_per_sample * (
            self.model.relative_step_time(replicas)
        )

    def slow_apart_from_sync(self, replicas: int) -> bool:
        """Whether this count is slow for something other than communication (where the
        trainer exports its sync share): of its step's excess over the least
        non-synchronising step measured at another count, synchronisation accounts for
        less than ``CLIFF_SYNC_SHARE``. No cliff explains that: a warm-up after its restart
        (a recompile, autotuning, a cold data cache), a straggler. A reading at half its
        floor is then not left at once (:func:`_far_below`): the window waits it out, and
        once the count runs at speed its slow start is the restart ramp (:func:`_analyse`)."""
        mine, sync = self._unsynced.get(replicas), self._synced.get(replicas)
        others = [v for n, v in self._unsynced.items() if n != replicas]
        if mine is None or sync is None or not others:
            return False
        excess = mine + sync - min(others)
        return excess > 0 and sync < CLIFF_SYNC_SHARE * excess

    def floor_doubt(self, replicas: int) -> float:
        """Relative error to judge a measured count's own floor by: never below what its
        measurement alone says (the model was fitted from that same measurement, so the
        blend of the two counts it twice)."""
        return max(self.relative_error(replicas), self._measured_rel.get(replicas, 0.0))

    def relative_error(self, replicas: int) -> float:
        """Relative standard error of the step time (so of throughput and utilization)."""
        var = self._var.get(replicas, 0.0)
        return math.sqrt(var) / self._step(replicas)

    def efficiency(self, replicas: int) -> float:
        """Scaling efficiency: throughput per replica relative to one replica."""
        return self._a / self._step(replicas)

    def efficiency_error(self, replicas: int, *, upward: bool = False) -> float:
        """Standard error of :meth:`efficiency` (delta method, with the a/tau covariance).

        ``upward``: of how much HIGHER it may be. The one-replica reference is at most the
        sync-share line extrapolated to one replica (plus its standard error): where that
        bound lies above the fit's reference it does not cap it, and the reference's error
        upward is then at most the distance to it, however loose the fit.
        """
        tau = self._step(replicas)
        var_a = self._var_a if not upward or self._var_a_up is None else self._var_a_up
        rel = (
            var_a / self._a**2
            + self._var.get(replicas, 0.0) / tau**2
            - 2.0 * self._cov_a.get(replicas, 0.0) / (self._a * tau)
        )
        return self.efficiency(replicas) * math.sqrt(max(0.0, rel))

    def measured_floor(self, replicas: int, objective: Objective) -> tuple[float, float] | None:
        """The floor metric at a measured count read from its own samples alone, as
        ``(value, standard error)`` (the blend leans on the fit where the samples read worse
        than it); None where the count was not measured, or has no such metric."""
        if replicas not in self._measured:
            return None
        tau, var = self._measured[replicas]
        if objective is Objective.EFFICIENCY:
            value = self._a / tau
            return value, value * math.sqrt(self._var_a / self._a**2 + var / tau**2)
        if objective is Objective.UTILIZATION and self._g is not None:
            value = min(1.0, self._g / tau)
            return value, value * math.sqrt(var) / tau
        return None

    def throughput(self, replicas: int) -> float:
        """Job throughput (samples/s with throughput metrics, relative otherwise)."""
        return replicas / self._step(replicas)

    def gpu_utilization(self, replicas: int) -> float | None:
        """Mean GPU utilization; None without GPU metrics."""
        return None if self._g is None else min(1.0, self._g / self._step(replicas))


# --------------------------------------------------------------------------------------------
# The decision


def compute_cost_per_hour(spec: TrainingJobSpec, replicas: int) -> float:
    """``replicas * gpus_per_replica * costPerGpuHour``."""
    return replicas * spec.gpus_per_replica * spec.autoscaling.cost_per_gpu_hour


def compute_payback_horizon(running_seconds: float) -> float:
    """How long a move's gain has to pay back its restart: as long as the job has run so
    far, and at least :data:`DEFAULT_HORIZON_SECONDS`.

    The policy cannot know when a job ends, but how long it has run says something: job
    durations are heavy-tailed (the Philly trace of Microsoft's GPU clusters, Jeon et al.,
    USENIX ATC'19), and under such a distribution a job that has run for ``T`` is about as
    likely as not to run for another ``T`` (Harchol-Balter and Downey, "Exploiting process
    lifetime distributions for dynamic load balancing", ACM TOCS 1997, migrate a process
    once its age pays the migration). A fixed 30 minutes made a job that had trained for
    hours hold a count 15 % slower because a 265 s restart would not pay within 30 minutes
    (utilization strong-8 on the benchmark's 250 s-restart seed: held 5 for 3.8 h where 6
    is best). The floor of 30 minutes keeps a young job from paying restarts for gains it
    may not live to collect. Not capped: a job that has run for days is likely to run for
    more, and the confidence step still asks each move for its gain one standard error
    down."""
    return max(DEFAULT_HORIZON_SECONDS, running_seconds)


TIME_LEFT_THROUGHPUT_SAMPLES = 5
"""Newest observations at the count the job runs whose throughput (median) divides the
samples it has left into the time it has left (one scrape inside a restart's ramp reads
a fraction of the rate)."""


def choose_payback_horizon(time_left: float | None, horizon_seconds: float) -> tuple[float, str]:
    """The horizon a move's restart must pay back in, and how the reason names it: the time
    the job has left where its trainer says (``time_left``, :func:`compute_time_left`; at
    least a second), else ``horizon_seconds`` (the caller's :func:`compute_payback_horizon`)."""
    if time_left is not None:
        return max(time_left, 1.0), " (the time the job has left)"
    note = " (as long as the job has run)" if horizon_seconds > DEFAULT_HORIZON_SECONDS else ""
    return horizon_seconds, note


def compute_time_left(observations: Sequence[Observation], now: float) -> float | None:
    """Seconds the job has left, where its trainer says how many samples it has left.

    The newest observation that carries ``remaining_samples``, over the median throughput of
    the newest :data:`TIME_LEFT_THROUGHPUT_SAMPLES` observations at its count that measured
    one, less the time since; None when no observation says, or none at that count measured
    a throughput (a job without throughput metrics, or one that has not trained yet).

    Where the job says, this replaces the guess from its age: a job about to finish pays no
    restart for a gain it will not collect, and a young job with hours of work left does
    not wait for its age to grow before it takes a gain worth a restart.
    """
    told = [o for o in observations if o.remaining_samples is not None]
    if not told:
        return None
    newest = max(told, key=lambda o: o.timestamp)
    rates = sorted(
        (o for o in observations if o.replicas == newest.replicas and o.samples_per_second),
        key=lambda o: o.timestamp,
    )[-TIME_LEFT_THROUGHPUT_SAMPLES:]
    if not rates:
        return None
    rate = _median([o.samples_per_second or 0.0 for o in rates])
    assert newest.remaining_samples is not None
    return max(0.0, newest.remaining_samples / rate - max(0.0, now - newest.timestamp))


def _budget_replicas(spec: TrainingJobSpec) -> int | None:
    """Most replicas the budget pays for (None when there is no budget or GPUs are free)."""
    auto = spec.autoscaling
    unit = spec.gpus_per_replica * auto.cost_per_gpu_hour
    if auto.objective is not Objective.BUDGET or auto.max_cost_per_hour is None or unit <= 0:
        return None
    return math.floor(auto.max_cost_per_hour / unit + 1e-9)


@dataclass(frozen=True)
class _Choice:
    target: int
    reason: str
    limited_by: LimitedBy | None
    feasible_current: bool
    far_below_floor: bool = False  # the current count breaks its floor beyond any noise


def _best_throughput(model: _Estimates, candidates: Iterable[int]) -> int | None:
    best: int | None = None
    for n in candidates:
        if best is None or model.throughput(n) > model.throughput(best) * (1 + TIE_TOLERANCE):
            best = n
    return best


def _fills_its_nodes(model: SpeedupModel, n: int) -> bool:
    """Whether ``n`` packed spans one node or fills every node it spans."""
    size = model.workers_per_node
    return size is None or size <= 0 or model.nodes(n) == 1 or n % size == 0


def _allowed_counts(spec: TrainingJobSpec, counts: Iterable[int], current: int) -> list[int]:
    """The counts ``spec.allowedReplicas`` allows, and the current one (holding is not a
    choice)."""
    return [n for n in counts if n == current or is_allowed(spec, n)]


def _placeable(model: SpeedupModel, counts: Iterable[int], current: int, lo: int) -> list[int]:
    """The counts the objective may choose: on several nodes, only those filling them.

    A count that leaves a node partly filled puts a few workers behind the inter-node
    link of every step, the worst case for the all-reduce; the model (one inter-node term)
    cannot see it, so such counts are not chosen (the current count and ``minReplicas``
    stay allowed: holding is not a choice, and the bound may force it).
    """
    return [n for n in counts if n in (current, lo) or _fills_its_nodes(model, n)]


def _choose(
    spec: TrainingJobSpec,
    model: _Estimates,
    current: int,
    lo: int,
    hi: int,
    ceiling: int,
    settled: int = 0,
) -> _Choice:
    """Apply the objective over ``[lo, ceiling]`` (``ceiling`` <= ``hi``: trust, capacity).

    A floor is a floor: the count the job runs keeps its floor only while it is not known
    to break it, that is while the floor lies within ``CONFIDENCE_Z`` standard errors of
    its estimate. No fixed band: hysteresis delays a move off a count that may break the
    floor, it never holds one the estimates say does. Until the count has
    ``2 * JUMP_SETTLED_SAMPLES`` settled samples (and while the curve rests on one count)
    the error includes the doubt about the reference throughput; once measured that long,
    half of it, or its own samples' error if larger. The reference (one replica, rarely
    measured) is a doubt that measuring the count does not shrink, so this half still
    holds a count whose estimate is within ``CONFIDENCE_Z`` half-errors under the floor for
    as long as the reference stays that uncertain (at zero noise, amdahl 0.11 stays at 5,
    efficiency 0.69 under a 0.70 floor). Dropping it entirely leaves the same count of
    benchmark cases meeting the goal but fails the amdahl 0.0996 regression example
    (docs/autoscaling.md).
    """
    auto = spec.autoscaling
    # One count reads all idle time as synchronisation (a low reading): not yet known.
    patient = settled < 2 * JUMP_SETTLED_SAMPLES or len(model.model.counts) < 2

    def doubt(error: float) -> float:
        return CONFIDENCE_Z * error

    candidates = _allowed_counts(
        spec, _placeable(model.model, range(lo, ceiling + 1), current, lo), current
    )
    if auto.objective is Objective.EFFICIENCY:
        floor = auto.min_efficiency

        own = model.efficiency(current) * model.floor_doubt(current)
        e_up = model.efficiency_error(current, upward=True)
        e_doubt = max(e_up * (1.0 if patient else 0.5), own)
        cur_ok = model.efficiency(current) + doubt(e_doubt) >= floor

        def ok_e(n: int) -> bool:
            if n == current:
                return cur_ok
            return model.efficiency(n) >= floor

        feasible = [n for n in candidates if ok_e(n)]
        e_cur = model.efficiency(current)
        rel = ">=" if e_cur >= floor else "<"
        head = f"efficiency {e_cur:.2f} at {current} {rel} floor {floor:.2f}"
        if e_cur < floor and cur_ok:
            head += _within_doubt(doubt(e_doubt))
        if not feasible:
            return _Choice(
                lo,
                f"{head}; even minReplicas {lo} predicted {model.efficiency(lo):.2f}",
                LimitedBy.BOUND,
                False,
            )
        target = _best_throughput(model, feasible)
        assert target is not None
        nxt = target + 1
        if target == hi and model.efficiency(hi + 1) >= floor:
            tail, limited = (
                f"{target} predicted {model.efficiency(target):.2f}; maxReplicas {hi}",
                LimitedBy.BOUND,
            )
        elif target != current:
            tail, limited = f"{target} predicted {model.efficiency(target):.2f}", None
        else:
            tail, limited = f"{nxt} predicted {model.efficiency(nxt):.2f}", None
        far = _far_below(model, current, model.efficiency(current), e_doubt, floor)
        return _Choice(target, f"{head}; {tail}", limited, ok_e(current), far)

    if auto.objective is Objective.BUDGET:
        assert auto.max_cost_per_hour is not None
        cap = _budget_replicas(spec)
        top = ceiling if cap is None else min(ceiling, cap)
        feasible = _allowed_counts(spec, range(lo, top + 1), current)
        if not feasible:
            return _Choice(
                lo,
                f"budget {auto.max_cost_per_hour:.2f}/h pays for {cap} replicas < minReplicas {lo}",
                LimitedBy.BUDGET,
                False,
            )
        target = _best_throughput(model, feasible)
        assert target is not None
        limited = None
        if (
            cap is not None
            and target == cap
            and cap < hi
            and model.throughput(cap + 1) > model.throughput(cap) * (1 + TIE_TOLERANCE)
        ):
            limited = LimitedBy.BUDGET
        elif target == hi and model.throughput(hi + 1) > model.throughput(hi) * (1 + TIE_TOLERANCE):
            limited = LimitedBy.BOUND
        cost = compute_cost_per_hour(spec, target)
        reason = (
            f"{target} replicas cost {cost:.2f}/h <= budget {auto.max_cost_per_hour:.2f}/h; "
            f"predicted throughput x{model.throughput(target) / model.throughput(current):.2f} of {current}"
        )
        if limited is None and target < hi and (cap is None or target < cap):
            reason += f"; {target + 1} predicted no faster"
        return _Choice(target, reason, limited, cap is None or current <= cap)

    # utilization
    goal = auto.target_gpu_utilization

    def util(n: int) -> float:
        u = model.gpu_utilization(n)
        return 0.0 if u is None else u

    u_doubt = util(current) * model.floor_doubt(current)
    cur_ok = util(current) + doubt(u_doubt) >= goal

    def ok_u(n: int) -> bool:
        if n == current:
            return cur_ok
        return util(n) >= goal

    feasible = [n for n in candidates if ok_u(n)]
    u_cur = util(current)
    head = f"GPU utilization {u_cur:.2f} at {current} {'>=' if u_cur >= goal else '<'} target {goal:.2f}"
    if u_cur < goal and cur_ok:
        head += _within_doubt(doubt(u_doubt))
    if not feasible:
        return _Choice(
            lo, f"{head}; even minReplicas {lo} predicted {util(lo):.2f}", LimitedBy.BOUND, False
        )
    target = max(feasible)
    limited = LimitedBy.BOUND if target == hi and util(hi + 1) >= goal else None
    if target != current:
        tail = f"{target} predicted {util(target):.2f}"
    else:
        tail = f"{target + 1} predicted {util(target + 1):.2f}"
    far = _far_below(model, current, util(current), u_doubt, goal)
    return _Choice(target, f"{head}; {tail}", limited, ok_u(current), far)


def _within_doubt(doubt: float) -> str:
    """Why a count that reads under its floor is held: the reading is within its doubt.

    Without it the reason would say "under the floor; holding", which reads as the policy
    ignoring the user's floor (the doubt is about the one-replica reference or the count's
    own samples; it shrinks as the count is measured, see :func:`_choose`).
    """
    return f", within its doubt (+- {doubt:.3f}): not known to break it"


def _far_below(est: _Estimates, current: int, value: float, error: float, floor: float) -> bool:
    """Whether the current count's estimate ``value`` breaks its floor beyond any noise,
    past a cliff (leave it at once): not where it is slow for something other than its
    synchronisation (:meth:`_Estimates.slow_apart_from_sync`)."""
    return (
        value < floor * FAR_BELOW_FLOOR
        and value + FAR_BELOW_Z * error < floor
        and not est.slow_apart_from_sync(current)
    )


def _counts_left_downwards(observations: Sequence[Observation]) -> set[int]:
    """Replica counts the job ran and then left for fewer replicas."""
    left: set[int] = set()
    previous: int | None = None
    for o in sorted(observations, key=lambda o: o.timestamp):
        if previous is not None and 0 < o.replicas < previous:
            left.add(previous)
        previous = o.replicas if o.replicas > 0 else previous
    return left


def compute_fine_span(current: int) -> int:
    """Largest move from ``current`` that counts as small: it needs confident estimates."""
    return max(1, math.ceil(FINE_MOVE_FRACTION * current))


def _confident(
    spec: TrainingJobSpec,
    est: _Estimates,
    current: int,
    to: int,
    horizon: float,
    restart: float,
    *,
    strict: bool = False,
) -> bool:
    """Whether a move ``current -> to`` stays right at ``CONFIDENCE_Z`` standard errors.

    Upward, a floor (efficiency, utilization) must hold at the lower confidence bound;
    either way, the throughput gain at its lower bound must pay the restart (per replica
    downward), and downward the smaller count must be no slower at its lower bound.
    Unless ``strict``, a floor that holds only at the point estimate is enough when the
    gain is large next to the doubt about it. ``strict`` (back to a count the job chose to
    leave): the floor must also hold one standard error down as that count's own samples
    read it, where it was measured. The estimate there blends those samples with a fit made
    from the same samples, which counts them twice and shrinks the error (as for the count
    the job runs, :meth:`_Estimates.floor_doubt`); with it a job returned to the count it
    had left under its floor (overlap-strong-8 under a 0.8 target: 8 left at 0.75 for 6,
    back on "0.81 +- 0.01", held for hours at a true 0.790; its own samples read
    0.81 +- 0.014).
    """
    auto = spec.autoscaling
    z = CONFIDENCE_Z
    ratio = est.throughput(to) / est.throughput(current)
    rel = math.hypot(est.relative_error(to), est.relative_error(current))
    low = ratio * max(0.0, 1.0 - z * rel)
    if to > current:
        floor: float | None = None
        if auto.objective is Objective.EFFICIENCY:
            floor, value, error = auto.min_efficiency, est.efficiency(to), est.efficiency_error(to)
        elif auto.objective is Objective.UTILIZATION:
            u = est.gpu_utilization(to)
            if u is None:
                return False
            floor, value = auto.target_gpu_utilization, u
            error = u * est.relative_error(to)
        # The floor holds at the lower bound, or the gain is large next to the doubt about
        # the floor: a small gain is not worth the risk of having to come back.
        if (
            floor is not None
            and value - z * error < floor
            and (strict or value < floor or ratio - 1.0 < 3.0 * z * error / value)
        ):
            return False
        own = est.measured_floor(to, auto.objective) if strict else None
        if floor is not None and own is not None and own[0] - z * own[1] < floor:
            return False
        gain = low
    else:
        if auto.objective is not Objective.UTILIZATION and low < 1.0 - TIE_TOLERANCE:
            return False
        gain = low * current / to
    return gain * (horizon - restart) >= horizon


def _synchronising_counts(model: SpeedupModel) -> int:
    """How many measured counts show synchronisation: every count but one replica, which
    pins the reference step and says nothing of how synchronisation grows."""
    return sum(1 for n in model.counts if n > 1)


def _strong_gain(est: _Estimates, current: int, to: int) -> bool:
    """Whether moving up to ``to`` gains ``STRONG_GAIN`` even one standard error down:
    every minute spent confirming it then costs more than the confirmation is worth."""
    if to <= current:
        return False
    ratio = est.throughput(to) / est.throughput(current)
    rel = math.hypot(est.relative_error(to), est.relative_error(current))
    return ratio * (1.0 - CONFIDENCE_Z * rel) >= STRONG_GAIN


def _floor_reading(
    spec: TrainingJobSpec, est: _Estimates, n: int
) -> tuple[float, float, float] | None:
    """The floor metric at ``n`` as ``(estimate, standard error, floor)``: efficiency, or
    GPU utilization; None under the budget objective or without GPU metrics."""
    auto = spec.autoscaling
    if auto.objective is Objective.EFFICIENCY:
        return est.efficiency(n), est.efficiency_error(n), auto.min_efficiency
    u = est.gpu_utilization(n)
    if auto.objective is Objective.UTILIZATION and u is not None:
        return u, u * est.relative_error(n), auto.target_gpu_utilization
    return None


def _keeps_floor(
    spec: TrainingJobSpec, est: _Estimates, n: int, *, errors: float, band: float = 0.0
) -> bool:
    """Whether the floor metric at ``n``, moved ``errors`` standard errors (down when
    negative), is at least the floor lowered by ``band``; always under the budget
    objective, never without the metric."""
    if spec.autoscaling.objective is Objective.BUDGET:
        return True
    reading = _floor_reading(spec, est, n)
    if reading is None:
        return False
    value, error, floor = reading
    return value + errors * error >= floor * (1 - band)


def _inside_band(spec: TrainingJobSpec, est: _Estimates, n: int) -> bool:
    """Whether ``n`` keeps the floor within ``HYSTERESIS`` at ``CONFIDENCE_Z`` errors down."""
    return _keeps_floor(spec, est, n, errors=-CONFIDENCE_Z, band=HYSTERESIS)


def _within_floor_doubt(spec: TrainingJobSpec, est: _Estimates, n: int) -> bool:
    """Whether ``n`` may keep the floor: within ``CONFIDENCE_Z`` standard errors of it."""
    return _keeps_floor(spec, est, n, errors=CONFIDENCE_Z)


def _floor_margin(spec: TrainingJobSpec, est: _Estimates, n: int) -> float:
    """How far the objective's floor metric at ``n`` is above its floor (negative: below)."""
    auto = spec.autoscaling
    if auto.objective is Objective.EFFICIENCY:
        return est.efficiency(n) - auto.min_efficiency
    u = est.gpu_utilization(n)
    return -1.0 if u is None else u - auto.target_gpu_utilization


def _uncertainty(spec: TrainingJobSpec, est: _Estimates, n: int, *, own: bool = False) -> str:
    """The estimate a confidence test looked at, as ``value +- error``; with ``own``, and
    what ``n``'s own samples read where it was measured."""
    objective = spec.autoscaling.objective
    reading = est.measured_floor(n, objective) if own else None
    tail = "" if reading is None else f", its own samples {reading[0]:.2f} +- {reading[1]:.2f}"
    if objective is Objective.EFFICIENCY:
        return f"efficiency {est.efficiency(n):.2f} +- {est.efficiency_error(n):.2f}{tail}"
    u = est.gpu_utilization(n)
    if objective is Objective.UTILIZATION and u is not None:
        return f"GPU utilization {u:.2f} +- {u * est.relative_error(n):.2f}{tail}"
    return f"throughput +- {100 * est.relative_error(n):.0f} %"


def _probe_candidates(model: SpeedupModel, current: int, ceiling: int) -> list[int]:
    """The counts a probe may measure: within a small move above ``current``; past a
    node boundary, the first count that fills its nodes instead.

    A count that spills a few workers onto another node is the worst placement for the
    all-reduce (the few remote workers pace every step), so measuring it says little
    about the counts that fill their nodes, where measured curves recover. One
    measurement across full nodes identifies the inter-node term for every multi-node
    count (the model's), so that is the one worth a restart.
    """
    top = min(ceiling, current + compute_fine_span(current))
    near = [n for n in range(current + 1, top + 1) if _fills_its_nodes(model, n)]
    size = model.workers_per_node
    if size is None or size <= 0:
        return near
    inside = [n for n in near if model.nodes(n) == model.nodes(current)]
    full = size * (model.nodes(current) + 1)  # the next node boundary, its nodes filled
    spanned = any(model.nodes(c) > 1 for c in model.counts)  # the inter-node term is known
    if spanned or full > ceiling:
        return near
    return [*inside, full]


def _probe(
    spec: TrainingJobSpec,
    est: _Estimates,
    current: int,
    ceiling: int,
    left: set[int],
    horizon: float,
    restart: float,
) -> int | None:
    """The unmeasured count worth measuring once: measurements beat the model.

    A count within a small move above ``current`` (past a node boundary: the first that
    fills its nodes, :func:`_probe_candidates`) that was never measured, whose floor is
    not known to fail (it holds one standard error up) and whose point estimate promises
    ``PROBE_MIN_GAIN`` more throughput (paying the restart), is measured rather than ruled
    out by a fit that has never seen it. Never below a count the job chose to leave
    downwards that still looks near its floor (going back up there is a reversal, and
    needs confidence), never for the budget objective (its limit is exact).
    """
    auto = spec.autoscaling
    if auto.objective is Objective.BUDGET:
        return None
    measured = set(est.model.counts)
    if any(c > current and _floor_margin(spec, est, c) >= -HYSTERESIS for c in left):
        return None  # it left a count near its floor above: going back is a reversal
    best: int | None = None
    for n in _probe_candidates(est.model, current, ceiling):
        if n in measured or not is_allowed(spec, n):
            continue
        # The floor may hold (one standard error up) and the estimate is near it.
        estimate = _floor_reading(spec, est, n)
        if estimate is None:
            return None
        value, error, floor = estimate
        ok = value + CONFIDENCE_Z * error >= floor and value >= floor * (1 - HYSTERESIS)
        gain = est.throughput(n) / est.throughput(current)
        pays = gain >= PROBE_MIN_GAIN and gain * (horizon - restart) >= horizon
        if ok and pays and (best is None or est.throughput(n) > est.throughput(best)):
            best = n
    return best


def _leaving_probe(
    spec: TrainingJobSpec,
    est: _Estimates,
    current: int,
    target: int,
    probed: Collection[int],
    band: float = LEAVING_PROBE_BAND,
) -> int | None:
    """The count between ``target`` and ``current`` to measure before leaving ``current``.

    With one count measured inside a node and one across several, the fit is exactly
    determined: it puts the whole multi-node drop into the inter-node term and predicts
    every multi-node count alike, with an error that says nothing of its own form (bert on
    4-GPU nodes: 4 and 16 measured, 0.640 +- 0.003 predicted at 12, truly 0.744). So when
    the job leaves the one multi-node count it measured, missing its floor by little
    (``LEAVING_PROBE_BAND``, one standard error up), for a count two or more nodes
    smaller, the largest count filling its nodes in between, never measured, is measured
    first when it promises ``PROBE_MIN_GAIN`` over that target.

    Leaving it for the node below, with no full-node count in between, the count one
    below is measured first on the same terms: measured curves disagree with the one
    inter-node term at counts that fill their last node partly, and for a job light on
    communication that count scales like its neighbours (Pollux's cifar10 strong scaling
    on 4-GPU nodes: 7 workers keep 0.90 GPU utilization where 8 fall to 0.77).

    Never for the budget objective (its limit is exact), never from a count far below the
    floor (a cliff), never twice, never from a count reached by a probe (probes do not
    chain: a probe across a node boundary that found the far side short is left for the
    count the job came from). ``band``: how far below its floor the count may read
    (``LEAVING_PROBE_BAND``; :func:`_standing_probe` widens it).
    """
    auto, model = spec.autoscaling, est.model
    size = model.workers_per_node
    if (
        auto.objective is Objective.BUDGET
        or size is None
        or size <= 0
        or target >= current
        or model.nodes(current) <= 1  # only a multi-node count is left this way
        or current in probed  # probes do not chain
        # a second multi-node count measured: the fit has seen the shape across nodes
        or sum(1 for c in model.counts if model.nodes(c) > 1) != 1
    ):
        return None
    estimate = _floor_reading(spec, est, current)
    if estimate is None:
        return None
    value, error, floor = estimate
    if value + CONFIDENCE_Z * error < floor * (1 - band):
        return None

    def worth(n: int) -> bool:
        return (
            n not in model.counts
            and n not in probed
            and n >= spec.min_replicas
            and is_allowed(spec, n)
            and est.throughput(n) >= PROBE_MIN_GAIN * est.throughput(target)
        )

    for n in range(current - 1, target, -1):
        if _fills_its_nodes(model, n) and model.nodes(n) > model.nodes(target) and worth(n):
            return n
    # No full-node count in between worth it: the count one below, its last node partly
    # filled.
    n = current - 1
    return n if n > target and model.nodes(n) == model.nodes(current) and worth(n) else None


def _standing_probe(ctx: DecisionContext) -> int | None:
    """A leaving probe proposed earlier in this scale-down window stands.

    The window waits out noise before a move; the probe's band check is one more noisy
    reading, and a count reading near the edge of ``LEAVING_PROBE_BAND`` flips it from one
    decision to the next. Taking whichever side the window's last reading fell on lost the
    probe at the last moment (``pollux-bert-strong-384`` under efficiency, 10 % noise: 12
    proposed for 4 of the 5 minutes at 16 reading 0.59-0.66 against a 0.63 edge, left for 4
    instead, where the fit from 4 and 16 never lets it see 12 again: 0.48 of hindsight). So
    the probe the job would take now, read with the band widened to the cliff's
    (``FAR_BELOW_FLOOR``), stands if the window proposed it since the job's last move.
    """
    window = float(ctx.spec.autoscaling.scale_down_stabilization_seconds)
    moved = ctx.last_scale_time if ctx.last_scale_time is not None else -math.inf
    since = max(ctx.now - window, moved)
    proposed = {n for t, n in ctx.recent_targets if since < t <= ctx.now}
    assert ctx.est is not None
    probe = _leaving_probe(
        ctx.spec, ctx.est, ctx.current, ctx.target, ctx.probed, band=1.0 - FAR_BELOW_FLOOR
    )
    return probe if probe in proposed else None


def _stabilize(
    target: int,
    current: int,
    now: float,
    window: float,
    recent: Sequence[tuple[float, int]],
    max_gap: float,
) -> tuple[int, float]:
    """HPA-style stabilization: returns (replicas to apply, seconds the direction has held).

    Up: applied only once every raw target in the last ``window`` seconds was above
    ``current``, to the smallest of them; down likewise with the largest. A gap in the
    records longer than ``max_gap`` breaks continuity (the caller was not deciding).
    """
    up = target > current
    since = now
    previous = now
    values = [target]
    for t, n in sorted((r for r in recent if r[0] <= now), reverse=True):
        if previous - t > max_gap or not (n > current if up else n < current):
            break
        since = previous = t
        if t >= now - window:
            values.append(n)
    held = now - since
    if held + 1e-9 < window:
        return current, held
    return (min(values) if up else max(values)), held


# --------------------------------------------------------------------------------------------
# The decision, as a pipeline of named steps over one context


@dataclass
class DecisionContext:
    """What the steps of one decision share: the inputs, then what earlier steps found.

    Each step reads it, may refine the proposal (``target``, ``reason``, ``limited``,
    ``exploring``), and either returns a :class:`Recommendation` (the decision is made)
    or None (the next step runs).
    """

    spec: TrainingJobSpec
    observations: Sequence[Observation]
    current: int
    now: float
    pending: int = 0
    unschedulable: int = 0
    last_scale_time: float | None = None
    remembered_restart_cost: float | None = None
    measured_restart_cost: float | None = None
    recent_targets: Sequence[tuple[float, int]] = ()
    max_schedulable: int | None = None
    horizon: float = DEFAULT_HORIZON_SECONDS
    horizon_note: str = ""
    stale_after: float | None = None
    forced_from: frozenset[int] = frozenset()
    workers_per_node: int | None = None
    cap: int | None = None
    left_downwards: frozenset[int] = frozenset()
    probed: frozenset[int] = frozenset()
    # found by the steps
    analysis: _Analysis | None = None
    restart: float = DEFAULT_RESTART_COST_SECONDS
    common: dict[str, object] = field(default_factory=dict)
    model: SpeedupModel | None = None
    est: _Estimates | None = None
    ceiling: int = 0  # top of the counts considered (trust region, capacity, cap)
    target: int = 0
    reason: str = ""
    limited: LimitedBy | None = None
    exploring: bool = False
    probing: bool = False
    feasible_current: bool = False
    far_below_floor: bool = False
    returning: bool = False
    unsettled: str | None = None  # the settling hold a forced return skipped (decide_settling)

    def __post_init__(self) -> None:
        interval = float(self.spec.autoscaling.interval_seconds)
        self.stale_after = self.stale_after or max(3.0 * interval, 15.0)
        self.max_gap = max(3.0 * interval, self.stale_after)
        self.lo, self.hi = self.spec.min_replicas, self.spec.max_replicas
        self.target = self.current

    def done(self, replicas: int, target: int, reason: str, **kw: object) -> Recommendation:
        """The decision; ``replicas`` is always within the spec's bounds and allowed
        (``spec.allowedReplicas``): a count that is not goes to the nearest allowed one in
        the direction of the move (down when capped), else the job holds."""
        if replicas != self.current and not is_allowed(self.spec, replicas):
            snapped = self._allowed(replicas)
            reason += f" ({replicas} is not an allowed size: " + (
                f"{snapped})" if snapped != self.current else f"holding at {snapped})"
            )
            replicas = snapped
        assert self.lo <= replicas <= self.hi, (replicas, self.lo, self.hi)
        return Recommendation(
            replicas=replicas,
            target=target,
            current_replicas=self.current,
            reason=reason,
            cost_per_hour=compute_cost_per_hour(self.spec, replicas),
            **kw,  # type: ignore[arg-type]
        )

    @property
    def reach(self) -> int:
        """The most workers a move up may ask for: ``maxReplicas``, the cluster ceiling and
        the most that ran."""
        return min(b for b in (self.hi, self.cap, self.max_schedulable) if b is not None)

    def _allowed(self, replicas: int) -> int:
        """The allowed count for a move to ``replicas``: up past it for a move up unless it
        lies beyond :attr:`reach` (then the allowed one below, or a hold), down for a move
        down."""
        down = nearest_allowed(self.spec, replicas, "down")
        if replicas < self.current:
            return down
        up = nearest_allowed(self.spec, replicas, "up")
        return up if up <= self.reach else max(down, self.current)

    def hold(self, reason: str, **kw: object) -> Recommendation:
        """Stay at the current count, with what is known so far."""
        return self.done(self.current, self.current, reason, **{**self.common, **kw})

    def hold_proposal(self, tail: str) -> Recommendation:
        """Stay, saying what the objective proposed and why it does not happen."""
        return self.hold(f"{self.reason}; {tail}", limited_by=self.limited)

    def left(self) -> set[int]:
        """Counts the job chose to leave downwards (not those it was forced off)."""
        seen = _counts_left_downwards(self.observations) | self.left_downwards
        return set(seen - self.forced_from)

    @property
    def voluntary(self) -> bool:
        """A move away from a count that satisfies the objective, chosen by the policy."""
        return (
            self.target != self.current
            and self.feasible_current
            and not self.exploring
            and not self.returning
        )

    def probe(self) -> int | None:
        """An unmeasured count worth measuring now (see :func:`_probe`), if any."""
        assert self.est is not None and self.model is not None and self.analysis is not None
        if (
            not self.feasible_current
            or _floor_margin(self.spec, self.est, self.current) < 0.0  # floors fall with n
            or self.exploring
            or self.pending
            # probes do not chain: from a count reached by a probe, the next one up is a
            # creep along the floor on estimates no better than the last probe's
            or self.current in self.probed
            or len(self.model.counts) <= 1
            or not 2 * JUMP_SETTLED_SAMPLES <= self.analysis.latest_settled <= PROBE_SETTLED_SAMPLES
        ):
            return None
        return _probe(
            self.spec, self.est, self.current, self.ceiling, self.left(), self.horizon, self.restart
        )

    def take_probe(self, probe: int, why: str = "") -> None:
        assert self.est is not None
        self.target, self.exploring, self.probing = probe, True, True
        self.reason += (
            f"; {why}probing {probe} ({_uncertainty(self.spec, self.est, probe)}, unmeasured)"
        )


Step = Callable[[DecisionContext], "Recommendation | None"]


def decide_hard_limits(ctx: DecisionContext) -> Recommendation | None:
    """Bounds, unschedulable pods, a cluster ceiling, a budget overrun: applied at once."""
    lo, hi, current = ctx.lo, ctx.hi, ctx.current
    if current < lo or current > hi:
        to = min(max(current, lo), hi)
        side = f"minReplicas {lo}" if current < lo else f"maxReplicas {hi}"
        return ctx.done(to, to, f"replicas {current} outside bounds; moving to {side}",
                        limited_by=LimitedBy.BOUND, forced=True)  # fmt: skip
    if ctx.unschedulable:
        ran = current - ctx.unschedulable
        to = max(lo, ran)
        verb = f"capping at the {ran} that ran" if to == ran else f"capping at minReplicas {lo}"
        return ctx.done(to, to, f"{ctx.unschedulable} of {current} pods unschedulable; {verb}",
                        limited_by=LimitedBy.UNSCHEDULABLE, forced=to != current)  # fmt: skip
    if ctx.cap is not None and current > max(lo, ctx.cap):
        to = max(lo, ctx.cap)
        return ctx.done(to, to, f"cluster ceiling {ctx.cap} < {current} replicas; moving to {to}",
                        limited_by=LimitedBy.CEILING, forced=True)  # fmt: skip
    budget_cap = _budget_replicas(ctx.spec)
    if budget_cap is not None and current > budget_cap:
        to = max(lo, budget_cap)
        budget = ctx.spec.autoscaling.max_cost_per_hour
        assert budget is not None
        cost = compute_cost_per_hour(ctx.spec, current)
        return ctx.done(to, to, f"cost {cost:.2f}/h at {current} > budget {budget:.2f}/h; {budget_cap} fits",
                        limited_by=LimitedBy.BUDGET, forced=True)  # fmt: skip
    return None


def decide_metrics_freshness(ctx: DecisionContext) -> Recommendation | None:
    """Digest the observations and the restart cost; hold without fresh metrics."""
    auto = ctx.spec.autoscaling
    analysis = ctx.analysis = _analyse(
        ctx.observations,
        ctx.last_scale_time,
        ctx.max_gap,
        ctx.workers_per_node,
        quiet=auto.settle_seconds + AWAIT_WORLD_SECONDS,
    )
    costs = analysis.restart_costs[-RESTART_SAMPLES_KEPT:]
    learned = _median(costs) if costs else None
    if auto.restart_cost_seconds is not None:
        ctx.restart, source = auto.restart_cost_seconds, RestartCostSource.SPEC
    elif (measured := ctx.measured_restart_cost) is not None and (
        learned is None or measured > learned
    ):
        ctx.restart, source = measured, RestartCostSource.MEASURED
    elif learned is not None:
        ctx.restart, source = learned, RestartCostSource.LEARNED
    elif ctx.remembered_restart_cost is not None:
        ctx.restart, source = ctx.remembered_restart_cost, RestartCostSource.REMEMBERED
    else:
        ctx.restart, source = DEFAULT_RESTART_COST_SECONDS, RestartCostSource.DEFAULT
    ctx.common = {
        "restart_cost_seconds": ctx.restart,
        "restart_cost_source": source,
        "learned_restart_cost_seconds": learned,
    }
    if analysis.latest_time is None:
        return _blind(ctx, "no metrics yet")
    age = ctx.now - analysis.latest_time
    assert ctx.stale_after is not None
    if age > ctx.stale_after:
        return _blind(
            ctx, f"no fresh metrics for {age:.0f} s (stale after {ctx.stale_after:.0f} s)"
        )
    if auto.objective is Objective.UTILIZATION and not any(
        o.gpu_utilization is not None for o in ctx.observations
    ):
        return ctx.hold(
            "utilization objective needs GPU utilization metrics; none seen; holding",
            metrics_stale=True,
        )
    return None


def _blind(ctx: DecisionContext, why: str) -> Recommendation:
    """Without fresh metrics: hold, or go back toward the largest count the job was forced
    off as far as the cap now lets it (within reach and its budget, no pods pending).
    Forced moves are not choices, and without measurements the job has nothing to choose
    with: a job whose metrics never arrived, shrunk by a cluster ceiling, otherwise stayed
    shrunk after the ceiling rose again."""
    budget = _budget_replicas(ctx.spec)
    to = min(b for b in (max(ctx.forced_from, default=0), ctx.reach, budget) if b is not None)
    if to > ctx.current and not ctx.pending:
        return ctx.done(to, to, f"{why}; returning to {to} (left by force)",
                        **{**ctx.common, "metrics_stale": True})  # fmt: skip
    return ctx.hold(f"{why}; holding at {ctx.current}", metrics_stale=True)


def _fit(ctx: DecisionContext) -> None:
    """The model and estimates, once (settling's holds report them too)."""
    analysis = ctx.analysis
    if ctx.model is not None or analysis is None or analysis.mode is None:
        return
    ctx.model = fit_speedup_model(
        analysis.points, analysis.compute, analysis.mode, ctx.workers_per_node
    )
    if ctx.model is not None:
        ctx.est = est = _Estimates(
            ctx.model, analysis.points, ctx.hi, analysis.unsynced, analysis.busy, analysis.synced
        )
        ctx.common.update(
            model=ctx.model,
            efficiency=est.efficiency(ctx.current),
            gpu_utilization=est.gpu_utilization(ctx.current),
            throughput=est.throughput(ctx.current),
        )


def decide_settling(ctx: DecisionContext) -> Recommendation | None:
    """Hold until the current count runs and has ``MIN_SETTLED_SAMPLES`` settled samples.

    Only samples taken once the count has run as long as the slowest of the last
    ``RESTART_SAMPLES_KEPT`` rescales took to reach its first settled sample count: a slow
    start that ends in a step (a ``torch.compile`` recompile, cuDNN autotuning, a cold data
    cache) reads as a steady level until the step, and a count judged on it looked half as
    fast as it is (``--warmup 180:0.5``: a budget job left 8 for 24 on such readings, 0.711).

    Unless the job may go back to a count it was forced off (as far as a cap now allows):
    that return needs nothing measured here, so the later steps run, and this step's hold
    stands if the return does not happen (the confidence step, and ``recommend`` for the
    holds of the steps in between). Under
    caps that come and go, a job that had moved within a cap (12 on 8-GPU nodes is 8 + 4:
    8 is faster) waited for its new count to settle after the cap lifted, minutes of a
    250 s restart plus three samples, before going back.
    """
    assert ctx.analysis is not None
    _fit(ctx)
    analysis, current = ctx.analysis, ctx.current
    unsettled: str | None = None
    if analysis.latest_replicas != current:
        more = " and pods pending" if ctx.pending else ""
        unsettled = (
            f"waiting for {current} replicas to run (metrics show {analysis.latest_replicas}){more}"
        )
    elif analysis.latest_dipped:
        unsettled = f"throughput below its steady level at {current} (restarting?); holding"
    elif analysis.latest_settled < MIN_SETTLED_SAMPLES:
        unsettled = (
            f"measuring {current} replicas ({analysis.latest_settled}/"
            f"{MIN_SETTLED_SAMPLES} settled samples); holding"
        )
    if unsettled is None:
        return None
    if ctx.model is not None and any(c > current for c in ctx.forced_from):
        ctx.unsettled = unsettled
        return None
    return ctx.hold(unsettled)


def decide_fit(ctx: DecisionContext) -> Recommendation | None:
    """Fit the speedup model (see :func:`fit_speedup_model`); hold when it cannot be."""
    _fit(ctx)
    if ctx.model is None or ctx.est is None:
        return ctx.hold(f"not enough settled samples to fit a model; holding at {ctx.current}")
    return None


def decide_objective(ctx: DecisionContext) -> Recommendation | None:
    """The objective's count within the trust region, the cluster's capacity and cap."""
    model, est = ctx.model, ctx.est
    assert model is not None and est is not None
    measured_hi = model.counts[-1]
    trust = ctx.current + 1 if model.level == 0 else (2 if model.level == 1 else 4) * measured_hi
    # Up to the job's limit when that is near: the last rescale saved. Without a floor at
    # stake (budget) however far it is: a count that turns out slower than predicted costs
    # a move back, never a broken floor, and under restarts of minutes each intermediate
    # step costs more than that risk (it stopped at 3x: from 4 to a 24-GPU budget,
    # 4 -> 12 -> 24 paid two restarts on nine curves, and strong-8 went 4 -> 12 -> 24 -> 8).
    budget = ctx.spec.autoscaling.objective is Objective.BUDGET
    if model.level >= 1:
        cap = _budget_replicas(ctx.spec)
        limit = ctx.hi if cap is None else min(ctx.hi, cap)
        if budget or (model.level == 1 and limit <= REACH_TRUST * measured_hi):
            trust = max(trust, limit)
    ctx.ceiling = min(ctx.hi, max(trust, ctx.current))
    capacity: LimitedBy | None = None
    if ctx.max_schedulable is not None and ctx.max_schedulable < ctx.ceiling:
        ctx.ceiling = max(ctx.lo, min(ctx.ceiling, max(ctx.max_schedulable, ctx.current)))
        capacity = LimitedBy.UNSCHEDULABLE
    if ctx.cap is not None and ctx.cap < ctx.ceiling:
        ctx.ceiling = max(ctx.lo, ctx.cap, ctx.current)
        capacity = LimitedBy.CEILING
    assert ctx.analysis is not None
    settled = ctx.analysis.latest_settled
    choice = _choose(ctx.spec, est, ctx.current, ctx.lo, ctx.hi, ctx.ceiling, settled)
    ctx.target, ctx.reason, ctx.limited = choice.target, choice.reason, choice.limited_by
    ctx.feasible_current = choice.feasible_current
    ctx.far_below_floor = choice.far_below_floor
    if capacity is not None and ctx.target == ctx.ceiling and ctx.target < ctx.hi:
        ctx.limited = capacity
        ctx.reason += (
            f"; cluster ceiling {ctx.cap}"
            if capacity is LimitedBy.CEILING
            else f"; cluster ran at most {ctx.max_schedulable}"
        )
    elif (
        capacity is None and ctx.target == ctx.ceiling and ctx.ceiling < ctx.hi and model.level > 0
    ):
        ctx.reason += f"; trust region ends at {ctx.ceiling} (measured up to {measured_hi})"
    return None


def decide_exploration(ctx: DecisionContext) -> Recommendation | None:
    """With one measured count, try a neighbouring one, or the node filled: that identifies
    the curve. From one replica (only the scale known), the full node. Whatever was
    measured, while every count spans several nodes and the efficiency floor at the
    current one is in doubt, a count nearer one node first (:func:`_reference_node`);
    under a budget, where a quadratic synchronisation would peak below the count held
    (:func:`_budget_peak`)."""
    model, est, auto = ctx.model, ctx.est, ctx.spec.autoscaling
    assert model is not None and est is not None and ctx.analysis is not None
    current = ctx.current
    peak = _budget_peak(ctx)
    if peak is not None:
        ctx.target, ctx.exploring, ctx.probing = peak[0], True, True
        ctx.reason += (
            f"; probing {peak[0]} (unmeasured: a synchronisation growing with the square of the "
            f"count through the counts measured would peak there, x{peak[1]:.2f})"
        )
        return None
    node = _reference_node(ctx)
    if node is not None and node <= ctx.target:
        ctx.target, ctx.exploring = node, True
        ctx.reason += (
            f"; measuring {node} first: every count measured spans several nodes, so the "
            f"floor at {current} ({_uncertainty(ctx.spec, est, current)}) rests on a "
            "one-replica reference never measured"
        )
        return None
    if len(model.counts) != 1:
        return None
    full = _node_to_fill(ctx)
    if full is not None:
        ctx.target = full
        ctx.reason += f"; filling the node: {full} ({_uncertainty(ctx.spec, est, full)})"
    if (
        ctx.target == current + 1
        and model.nodes(ctx.target) > model.nodes(current)
        and current > ctx.lo
        and auto.objective is not Objective.BUDGET
    ):
        # The count above spills onto another node: the worst placement, which would
        # pin the inter-node term for every multi-node count. The count below identifies
        # the curve inside the node; a full node is probed later.
        ctx.target, ctx.exploring = current - 1, True
        ctx.reason += f"; exploring {ctx.target} (curve not identified from one count; "
        ctx.reason += f"{current + 1} would spill onto another node)"
    elif model.level == 0 and ctx.target != current:
        # One replica measured, no synchronisation seen: the full node is the experiment,
        # not the count above, as it shows the most synchronisation a node can (from 1 on
        # 4-GPU nodes, 1 -> 2 -> 4 -> 8 -> 16 pays four restarts where 1 -> 4 -> 16 pays
        # two; benchmark --start 1: 15 of 57 cases meet the goal instead of 5). From a
        # larger count with throughput only, the count above stays the experiment (not
        # measured otherwise).
        full = _first_node_full(ctx, ctx.reach) if current == 1 else None
        if full is not None:
            ctx.target = full
        ctx.exploring = True
        ctx.reason += f"; exploring {ctx.target} (curve not identified from one count)"
    elif (
        model.level == 0
        and ctx.target == current
        and current > ctx.lo
        and auto.objective is Objective.EFFICIENCY
        and model.source is ModelSource.THROUGHPUT
    ):
        ctx.target, ctx.exploring = current - 1, True
        ctx.reason += f"; exploring {ctx.target} to measure efficiency"
    elif (
        ctx.target == current
        and current < ctx.ceiling
        and auto.objective is not Objective.BUDGET
        and _floor_margin(ctx.spec, est, current) >= 0.0
        and ctx.analysis.latest_settled <= 2 * JUMP_SETTLED_SAMPLES
    ):
        # One count and GPU utilization fit a curve only under the prior that all idle
        # time is synchronisation, which reads the input pipeline's share as sync and
        # may stop the job one count short. The count above is the cheapest experiment,
        # tried early (never after a long stay, when noise alone would trigger it).
        # When it would spill onto another node, the experiment is the next node filled:
        # the count below says nothing about the far side of the boundary, where measured
        # curves either fall off a cliff (left at once, ``FAR_BELOW_FLOOR``) or keep
        # scaling (a job parked at one node for good would lose most of its throughput).
        spills = model.nodes(current + 1) > model.nodes(current) and current > ctx.lo
        full = _next_full_node(ctx) if spills else None
        if full is not None:
            ctx.target = full
        else:
            ctx.target = current - 1 if spills else current + 1
        ctx.exploring = True
        ctx.reason += f"; exploring {ctx.target} (curve not identified from one count)"
    return None


def _quadratic_through(ctx: DecisionContext) -> tuple[int, float, float] | None:
    """``(m, a, g)``: the step ``a + g (n - 1)^2`` through the current count and the largest
    measured below it (``m``); None without one, or when the step does not grow."""
    model, est = ctx.model, ctx.est
    assert model is not None and est is not None
    below = [c for c in model.counts if c < ctx.current]
    if not below or ctx.current not in model.counts:
        return None
    m, n = max(below), ctx.current
    tau_m, tau_n = est._step(m), est._step(n)
    g = (tau_n - tau_m) / ((n - 1) ** 2 - (m - 1) ** 2)
    return None if g <= 0 else (m, tau_m - g * (m - 1) ** 2, g)


def _budget_peak(ctx: DecisionContext) -> tuple[int, float] | None:
    """Under a budget, the count to measure before holding the count the budget pays for.

    Why: two measured counts fit a linear and a quadratic synchronisation alike, and the
    linear one never peaks, so a budget job goes to the count the budget pays for and
    holds it (comm-peak: 4 -> 24, where 18 is 4 % faster). Assuming the shape would be
    wrong on real trainers (the exposed all-reduce of an overlapping DDP job looks convex
    however linear the communication), so it is measured: when a synchronisation growing
    with the square of the count, through the current count and the largest measured below
    it, peaks in between with ``BUDGET_PEAK_GAIN`` or more, that count is probed once (the
    count and its gain over the current one are returned). If it is slower, the job goes
    back. Only early in a stay at the largest measured count,
    never from a count reached by a probe.
    """
    model, analysis, spec = ctx.model, ctx.analysis, ctx.spec
    assert model is not None and analysis is not None
    if (
        spec.autoscaling.objective is not Objective.BUDGET
        or ctx.target != ctx.current
        or ctx.current != max(model.counts)
        or ctx.current in ctx.probed
        or ctx.pending
        or not JUMP_SETTLED_SAMPLES <= analysis.latest_settled <= PROBE_SETTLED_SAMPLES
    ):
        return None
    fit = _quadratic_through(ctx)
    if fit is None:
        return None
    m, a, g = fit
    n = ctx.current
    gains = {
        k: (k / (a + g * (k - 1) ** 2)) / (n / (a + g * (n - 1) ** 2))
        for k in range(m + 1, n)
        if k not in model.counts and k not in ctx.probed and is_allowed(spec, k)
    }
    if not gains:
        return None
    best = max(gains, key=lambda k: gains[k])
    return (best, gains[best]) if gains[best] >= BUDGET_PEAK_GAIN else None


def _reference_node(ctx: DecisionContext) -> int | None:
    """The count to measure before trusting an efficiency floor read on several nodes.

    Why: efficiency is relative to one replica's step. With every measured count spanning
    several nodes, that reference is an extrapolation across the node boundary, and
    a count's floor rests on it: started at 16 on 4-GPU nodes, cifar10 strong scaling
    (Pollux's data) read 0.71 at 16 for a true 0.57, recover-4 read 0.66 "within its
    doubt", and both held 16 for 4 h under a 0.70 floor; the doubt never shrinks, as
    nothing below is ever measured. So while the current count's floor is in doubt (not
    kept at ``CONFIDENCE_Z`` errors down): from one count, the full-node count one node
    smaller (a second multi-node count draws the non-synchronising line, and is often
    the best: bert strong scaling's 12); from two or more, one node, which pins the
    reference. Only under the efficiency objective (utilization has its own gauge), only
    to an allowed count within ``minReplicas``; the caller takes it when the objective
    would not go that far down itself. Start 16: 40 -> 41 of 57 cases meet the goal and
    broken floors 7 -> 5 (``benchmarks/policy.py --start 16``); the start-4 table is
    unchanged, as its first count fills one node.
    """
    model, est, spec = ctx.model, ctx.est, ctx.spec
    assert model is not None and est is not None
    size = model.workers_per_node
    if (
        spec.autoscaling.objective is not Objective.EFFICIENCY
        or size is None
        or size <= 0
        or model.nodes(ctx.current) <= 1
        or any(model.nodes(c) <= 1 for c in model.counts)
        or _keeps_floor(spec, est, ctx.current, errors=-CONFIDENCE_Z)
    ):
        return None
    if len(model.counts) > 1:
        return size if ctx.lo <= size and is_allowed(spec, size) else None
    n = size * (model.nodes(ctx.current) - 1)
    while n >= ctx.lo and (n >= ctx.current or not is_allowed(spec, n)):
        n -= size
    return n if n >= ctx.lo and n > 0 else None


def _node_to_fill(ctx: DecisionContext) -> int | None:
    """The full first node, when the objective chose part of it and the full node may
    keep the floor (within ``CONFIDENCE_Z`` standard errors of it).

    Why: from one count the fit reads all idle time as synchronisation growing linearly
    with the count, while a ring all-reduce's grows ever slower (``2 (n-1) / n``), so it
    stops the job short of the node it is on (weak-8 under a 0.8 utilization target: 6
    chosen at 4, the full node 8 truly at 0.86), and the next experiment would then start
    from a partial node. Measuring the full node settles it: kept if it keeps the floor,
    left for the count the new fit chooses if not. Not for the budget objective, which
    has no floor to doubt (and whose cap may lie inside the node).
    """
    assert ctx.est is not None
    full = _first_node_full(ctx, ctx.ceiling)
    if full is None or ctx.spec.autoscaling.objective is Objective.BUDGET:
        return None
    return full if _within_floor_doubt(ctx.spec, ctx.est, full) else None


def _first_node_full(ctx: DecisionContext, limit: int) -> int | None:
    """The first node's full count, when it lies above the proposal (which stopped part-way
    into that node), within ``limit`` and allowed."""
    assert ctx.model is not None
    size = ctx.model.workers_per_node
    if size is None or not ctx.current < ctx.target < size <= limit:
        return None
    return size if is_allowed(ctx.spec, size) else None


def _next_full_node(ctx: DecisionContext) -> int | None:
    """The count that fills one more node than the current, if the job and cluster allow it."""
    model = ctx.model
    assert model is not None
    size = model.workers_per_node
    if size is None or size <= 0:
        return None
    full = size * (model.nodes(ctx.current) + 1)
    return full if full <= ctx.reach else None


def decide_pending_pods(ctx: DecisionContext) -> Recommendation | None:
    """Never ask for more while worker pods are pending."""
    if ctx.target > ctx.current and ctx.pending:
        return ctx.hold_proposal(
            f"{ctx.pending} pods pending, not asking for more than {ctx.current}"
        )
    return None


def decide_restart_payback(ctx: DecisionContext) -> Recommendation | None:
    """A move from a feasible count must pay back its restart within the horizon.

    In samples when it adds replicas, in samples per replica when it removes some (the
    objective only moves down from a feasible count when that is no slower).
    """
    est, current, target = ctx.est, ctx.current, ctx.target
    assert est is not None
    if target == current or not ctx.feasible_current or ctx.exploring:
        return None
    gain = est.throughput(target) / est.throughput(current)
    if target < current:
        gain *= current / target
    if gain * (ctx.horizon - ctx.restart) < ctx.horizon:
        per = "" if target > current else " per replica"
        return ctx.hold_proposal(
            f"gain x{gain:.2f}{per} does not pay a {ctx.restart:.0f} s restart "
            f"within {ctx.horizon / 60:.0f} min{ctx.horizon_note}; holding"
        )
    return None


def _forced_return(ctx: DecisionContext) -> int | None:
    """Where a job goes back to once a cap lifts: the largest count it was forced off above
    the current one and within reach, when the objective's target lies past it (past it a
    move is a choice that needs its evidence, and a fit made doubtful by what the forced
    count measured must not keep the job from where it was: recover-4 forced from 12 to 6,
    a 4 + 2 placement the model cannot describe, held 6 for hours), or short of it while
    its own samples may keep the floor (a count a probe found, such as a partial node,
    which the objective never chooses: Pollux's cifar10 strong scaling went back to 4, not
    to the 7 it held). None: the objective's target stands."""
    est, spec = ctx.est, ctx.spec
    assert est is not None
    budget = _budget_replicas(spec)

    def wanted(c: int) -> bool:
        if c < ctx.target:
            return True
        return (
            c > ctx.target
            and est.measured_floor(c, spec.autoscaling.objective) is not None
            and _within_floor_doubt(spec, est, c)
        )

    back = [
        c
        for c in ctx.forced_from
        if ctx.current < c <= ctx.reach and (budget is None or c <= budget) and wanted(c)
    ]
    return max(back, default=None)


def decide_confidence(ctx: DecisionContext) -> Recommendation | None:
    """No creeping: a chosen move from a count that satisfies the objective needs evidence.

    Each newly measured count shifts the fit a little; without this the job would creep one
    replica at a time along a floor or a flat peak, paying a restart per step for gains
    within the noise. Forced moves are not choices: back to a count the job was pushed off
    (pods it could not place, a ceiling) it returns as soon as the cap lifts. Measurements
    beat the model: where a move is not confident, an unmeasured count that may be better
    is probed rather than ruled out, and a job leaving several nodes from a count near its
    floor measures the full-node count in between first.
    """
    est, model, analysis = ctx.est, ctx.model, ctx.analysis
    assert est is not None and model is not None and analysis is not None
    spec, current = ctx.spec, ctx.current
    back = _forced_return(ctx)
    if back is not None:
        ctx.target = back
    ctx.returning = ctx.target > current and any(c >= ctx.target for c in ctx.forced_from)
    if ctx.unsettled is not None and not ctx.returning:
        return ctx.hold(ctx.unsettled)  # the settling step's hold (see ``recommend``)
    if ctx.returning:
        ctx.reason += f"; returning to {ctx.target} (left by force)"
    if not ctx.feasible_current and ctx.target < current and not ctx.exploring:
        between = _leaving_probe(spec, est, current, ctx.target, ctx.probed)
        if between is None:
            between = _standing_probe(ctx)
        if between is not None:
            ctx.target, ctx.exploring, ctx.probing = between, True, True
            ctx.reason += (
                f"; probing {between} first ({_uncertainty(spec, est, between)}, unmeasured: "
                "the fit is exactly determined across nodes)"
            )
            return None
    if (
        ctx.voluntary
        and analysis.latest_settled < JUMP_SETTLED_SAMPLES
        and not _strong_gain(est, current, ctx.target)
    ):
        # A move lands where the estimates say, and the count the job leaves pins the
        # curve for the rest of the run: measure it a little longer first.
        return ctx.hold_proposal(
            f"measuring {current} replicas before a move to {ctx.target} "
            f"({analysis.latest_settled}/{JUMP_SETTLED_SAMPLES} settled samples); holding"
        )
    span = compute_fine_span(current)
    if (
        ctx.voluntary
        and ctx.target > current
        and _synchronising_counts(model) > 1
        and ctx.target - current > span
        and not _inside_band(spec, est, ctx.target)
    ):
        # A large move may follow the point estimate, but must land inside the floor's
        # tolerance band even if the estimate is a standard error too kind. Not while the
        # synchronisation rests on one count (one replica measured besides it shows none):
        # the large move is then the experiment, as from a single count.
        safe = max(
            (
                m
                for m in range(current + 1, ctx.target)
                if _inside_band(spec, est, m) and _fills_its_nodes(model, m)
            ),
            default=current,
        )
        too_uncertain = f"{ctx.target} too uncertain ({_uncertainty(spec, est, ctx.target)})"
        if safe - current > span:
            ctx.reason += f"; {too_uncertain}, {safe} is not"
            ctx.target = safe
        else:
            probe = ctx.probe()
            if probe is None:
                return ctx.hold_proposal(f"{too_uncertain} and no large move is safe; holding")
            ctx.take_probe(probe, f"{too_uncertain}; ")
    # All or nothing: stepping part of the way is exactly the creep this prevents. Going
    # back up to (or past) a count the job left downwards needs the same confidence,
    # however far: it was left on evidence, and returning on less would flap.
    left = [c for c in ctx.left() if c <= ctx.target]
    if (
        ctx.voluntary
        and len(model.counts) > 1
        and (abs(ctx.target - current) <= span or (ctx.target > current and left))
        and not _confident(
            spec, est, current, ctx.target, ctx.horizon, ctx.restart, strict=bool(left)
        )
    ):
        probe = ctx.probe()
        if probe is None:
            return ctx.hold_proposal(
                f"{ctx.target} not confidently better than {current} "
                f"({_uncertainty(spec, est, ctx.target, own=bool(left))}); holding"
            )
        ctx.take_probe(probe)
    elif ctx.target == current:
        probe = ctx.probe()
        if probe is not None:
            ctx.take_probe(probe)
    return None


def decide_stabilization(ctx: DecisionContext) -> Recommendation:
    """HPA-style: a move is applied once the raw target has held for the window."""
    auto, current, target = ctx.spec.autoscaling, ctx.current, ctx.target
    kw: dict[str, object] = {
        **ctx.common,
        "limited_by": ctx.limited,
        "exploring": ctx.exploring,
        "probing": ctx.probing,
    }
    if target == current:
        return ctx.done(current, target, f"{ctx.reason}; holding at {current}", **kw)
    up = target > current
    window = float(
        auto.scale_up_stabilization_seconds if up else auto.scale_down_stabilization_seconds
    )
    applied, held = _stabilize(target, current, ctx.now, window, ctx.recent_targets, ctx.max_gap)
    if not up and applied != current and not ctx.feasible_current:
        # Leaving a count that breaks the floor: the latest target (the most measured) is
        # where it goes; an earlier, larger one of the window may break the floor too.
        applied = target
    if not up and applied == current and ctx.far_below_floor:
        # The window waits out noise; a reading at half the floor is not noise (a probe
        # across a node boundary that found a cliff): leave it now.
        return ctx.done(
            target,
            target,
            f"{ctx.reason}; scaling down to {target} at once (far below the floor, no "
            "stabilization wait)",
            **kw,
        )
    word = "up" if up else "down"
    if applied == current:
        return ctx.done(
            current,
            target,
            f"{ctx.reason}; scale-{word} to {target} waits for stabilization "
            f"({held:.0f}/{window:.0f} s)",
            **kw,
        )
    return ctx.done(applied, target, f"{ctx.reason}; scaling {word} to {applied}", **kw)


STEPS: tuple[tuple[str, Step], ...] = (
    ("hard limits", decide_hard_limits),
    ("metrics freshness", decide_metrics_freshness),
    ("settling", decide_settling),
    ("fit", decide_fit),
    ("objective", decide_objective),
    ("exploration", decide_exploration),
    ("pending pods", decide_pending_pods),
    ("restart payback", decide_restart_payback),
    ("confidence", decide_confidence),
    ("stabilization", decide_stabilization),
)
"""The decision, in order: the first step that returns a recommendation decides."""


def _check_arguments(
    current_replicas: int,
    pending_replicas: int,
    unschedulable_replicas: int,
    now: float,
    horizon_seconds: float,
    last_scale_time: float | None,
    restart_cost_seconds: float | None,
    max_schedulable_replicas: int | None,
    ceiling: int | None,
    stale_after_seconds: float | None,
    measured_restart_cost_seconds: float | None,
) -> None:
    """Raise ValueError, naming the argument, on inputs to :func:`recommend` that make no sense."""
    _check_count("current_replicas", current_replicas)
    _check_count("pending_replicas", pending_replicas)
    _check_count("unschedulable_replicas", unschedulable_replicas)
    _check_finite("now", now)
    _check_finite("horizon_seconds", horizon_seconds)
    if horizon_seconds <= 0:
        raise ValueError(f"horizon_seconds must be > 0, got {horizon_seconds!r}")
    if unschedulable_replicas > pending_replicas:
        raise ValueError(
            f"unschedulable_replicas ({unschedulable_replicas}) must be <= "
            f"pending_replicas ({pending_replicas})"
        )
    if pending_replicas > current_replicas:
        raise ValueError(
            f"pending_replicas ({pending_replicas}) must be <= current_replicas ({current_replicas})"
        )
    if last_scale_time is not None:
        _check_finite("last_scale_time", last_scale_time)
    for name, cost in (
        ("restart_cost_seconds", restart_cost_seconds),
        ("measured_restart_cost_seconds", measured_restart_cost_seconds),
    ):
        if cost is not None:
            _check_finite(name, cost)
            if cost < 0:
                raise ValueError(f"{name} must be >= 0, got {cost!r}")
    if max_schedulable_replicas is not None:
        _check_count("max_schedulable_replicas", max_schedulable_replicas)
    if ceiling is not None:
        _check_count("ceiling", ceiling)
    if stale_after_seconds is not None:
        _check_finite("stale_after_seconds", stale_after_seconds)
        if stale_after_seconds <= 0:
            raise ValueError(f"stale_after_seconds must be > 0, got {stale_after_seconds!r}")


def recommend(
    spec: TrainingJobSpec,
    observations: Sequence[Observation],
    current_replicas: int,
    now: float,
    *,
    pending_replicas: int = 0,
    unschedulable_replicas: int = 0,
    last_scale_time: float | None = None,
    restart_cost_seconds: float | None = None,
    measured_restart_cost_seconds: float | None = None,
    recent_targets: Sequence[tuple[float, int]] = (),
    max_schedulable_replicas: int | None = None,
    horizon_seconds: float = DEFAULT_HORIZON_SECONDS,
    stale_after_seconds: float | None = None,
    forced_from: Collection[int] = (),
    workers_per_node: int | None = None,
    ceiling: int | None = None,
    left_downwards: Collection[int] = (),
    probed: Collection[int] = (),
) -> Recommendation:
    """Decide how many workers the job should have now (see the module docstring).

    Args:
        spec: The job's spec; its ``autoscaling`` block, bounds, and GPUs per replica.
        observations: Recent observations of this job, any order (the caller bounds them).
        current_replicas: ``spec.replicas`` as it is now.
        now: The current time, same epoch as the observations.
        pending_replicas: Worker pods created but not running yet; while any are, the
            policy never asks for more.
        unschedulable_replicas: Of those, pods the scheduler rejected; the job is capped at
            ``current_replicas - unschedulable_replicas`` at once.
        last_scale_time: When ``spec.replicas`` last changed; observations before it are
            never taken as settled samples of the count after it.
        restart_cost_seconds: A restart cost the caller remembers from earlier decisions
            (``spec.autoscaling.restartCostSeconds``, costs learned from the
            observations and costs the trainer measured take precedence).
        measured_restart_cost_seconds: The job's recent restarts as the trainer measured
            them (:class:`~.autoscaler.RestartReading`: training paused, plus steps trained
            again), typically their median. With a cost learned from the observations too,
            the larger is used: the trainer's is exactly the pause, and a restart costs at
            least that (the throughput missed across a rescale, read through rate()
            windows, read 0.2-0.8 s on the real loop where the trainer paused 1-3 s), while
            the observations' also counts a slow start after the restart, which the
            trainer's phases end before.
        recent_targets: ``(time, Recommendation.target)`` of earlier calls, for stabilization.
        max_schedulable_replicas: Most workers the cluster recently managed to run; the
            policy asks for no more (``limited_by`` unschedulable).
        horizon_seconds: A rescale must pay back its restart cost within this horizon
            (:class:`~.autoscaler.JobAutoscaler` passes :func:`compute_payback_horizon`),
            unless the observations say how long the job has left
            (:func:`compute_time_left`): then within that.
        stale_after_seconds: Hold when the newest usable observation is older than this;
            default ``max(3 * intervalSeconds, 15)``.
        forced_from: Counts the job was pushed off (unschedulable pods, a ceiling): not
            "left downwards", so the job returns to them as soon as the cap lifts.
        workers_per_node: Most workers one node holds (GPUs per node over GPUs per
            replica), when known: counts above it span more nodes and pay the inter-node
            term; observations without ``nodes`` are read as packed.
        ceiling: Cluster arbitration's cap on this job (None: no cap): above it the job
            moves down at once (``limited_by`` ceiling, forced), and it never asks for more.
        left_downwards: Counts the job chose to leave for fewer replicas, remembered by the
            caller beyond the observations it keeps.
        probed: Counts the job moved to on a probe (``Recommendation.probing``): no probe
            is made from them.

    Returns:
        The :class:`Recommendation`; ``replicas`` is always within the spec's bounds.

    Raises:
        ValueError: on arguments that make no sense (negative counts, non-finite times,
            more pending pods than replicas), naming the argument.
    """
    _check_arguments(
        current_replicas, pending_replicas, unschedulable_replicas, now, horizon_seconds,
        last_scale_time, restart_cost_seconds, max_schedulable_replicas, ceiling,
        stale_after_seconds, measured_restart_cost_seconds,
    )  # fmt: skip
    left = compute_time_left(observations, now)
    horizon, note = choose_payback_horizon(left, horizon_seconds)
    ctx = DecisionContext(
        spec=spec,
        observations=observations,
        current=current_replicas,
        now=now,
        pending=pending_replicas,
        unschedulable=unschedulable_replicas,
        last_scale_time=last_scale_time,
        remembered_restart_cost=restart_cost_seconds,
        measured_restart_cost=measured_restart_cost_seconds,
        recent_targets=recent_targets,
        max_schedulable=max_schedulable_replicas,
        horizon=horizon,
        horizon_note=note,
        stale_after=stale_after_seconds,
        forced_from=frozenset(forced_from),
        workers_per_node=workers_per_node,
        cap=ceiling,
        left_downwards=frozenset(left_downwards),
        probed=frozenset(probed),
    )
    for name, step in STEPS:
        rec = step(ctx)
        if rec is None:
            continue
        if ctx.unsettled is not None and rec.replicas == ctx.current:
            # skipped for a forced return that did not happen: settling holds, as it would have
            return replace(ctx.hold(ctx.unsettled), step="settling", time_left_seconds=left,
                           reason=f"settling: {ctx.unsettled}")  # fmt: skip
        return replace(rec, step=name, reason=f"{name}: {rec.reason}", time_left_seconds=left)
    raise AssertionError("stabilization always decides")  # pragma: no cover
