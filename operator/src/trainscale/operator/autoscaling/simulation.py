"""The one simulated training job: speedup curves, noisy metrics, restarts, and a closed loop.

Why this module exists: whether the autoscaler is any good is a question about whole runs on
curves like the ones real clusters measure, not about single decisions. ``trainscale
simulate`` (shown to users before they enable autoscaling), ``benchmarks/policy.py``, the
policy tests and the test-bed's simulated exporter all need the same job model, so it is
defined once, here, in pure Python (the operator image ships no numpy).

The job
-------
A curve maps a placement (workers, and how they sit on nodes) to job throughput
(samples/s) and mean GPU utilization. Most families are given as the relative step time
per sample of one worker, ``tau = 1 + sync``, with compute normalised to 1, so that
``X = RATE * n / tau`` and ``U = COMPUTE_FRACTION / tau``:

* ``linear``, ``amdahl``, ``comm-peak``, ``log-sync``, ``two-tier``: the five shapes of the
  first benchmark; they ignore placement.
* ``cliff-4``, ``cliff-8``: synchronisation inside a node is cheap, across nodes it costs
  a fixed 60 % of compute plus 4 % per further node, so throughput *drops* at the first
  count that spills onto a second node (5 on 4-GPU nodes, 9 on 8-GPU nodes).
* ``recover-4``, ``recover-8``: the inter-node all-reduce is limited by the NICs of the
  least-filled node (one rail per GPU), so its cost falls as nodes fill: a worker alone
  on the second node is a cliff, full nodes recover (best efficient counts at 12 and 24).
* ``strong-8``: strong scaling, a fixed global batch: per-worker work shrinks as ``1/n``
  while per-step overhead and synchronisation do not, on 8-GPU nodes.
* ``weak-8``: weak scaling with a ring all-reduce whose bandwidth term ``2 (n-1)/n`` is
  cheap over NVLink and 6x dearer across nodes.
* ``overlap-amdahl``, ``overlap-peak``: amdahl and comm-peak's communication with DDP
  overlapping it with the backward pass: a fixed 5 % of a step hides behind the compute,
  so the step (and the EXPOSED sync the trainer measures) grows only past that,
  ``max(0, sync - 0.05)``: a hinge, not a multiple of the communication. Kept apart from
  :data:`CURVE_NAMES` (``OVERLAP_NAMES``; ``benchmarks/policy.py --families overlap``).
* ``overlap-buckets``, ``overlap-recover-8``, ``overlap-strong-8``: amdahl, recover-8 and
  strong-8's communication with DDP's gradient buckets overlapping it: up to 10 % of a
  step hides, but never the last bucket's fifth, ``max(comm - 0.1, 0.2 comm)``, so the
  hidden share depends on the count (four fifths at small counts, less and less past
  them), and on recover-8 it hides inter-node traffic too; on strong-8 a worker's batch,
  so its backward pass, shrinks as ``1/n``, and what hides per sample stays the same.
* A CSV file of measured points (``count,nodes,samples_per_second,gpu_utilization``, and
  optionally ``sync_fraction``), interpolated linearly between given counts on the same
  number of nodes, never beyond.

Each family also knows which part of ``tau`` is synchronisation (all of ``tau - 1`` but
strong scaling's per-step overhead), so the simulated trainer exports its sync share as the
real one does (communication seconds over step seconds).

Workers are placed packed (one node filled before the next), as the operator asks of the
scheduler. Metrics are what Prometheus would report: throughput as a ``rate()`` over a
window (so right after a resize it mixes the old size, the restart gap and the new size),
GPU utilization as the gauge at the scrape, each times ``1 + N(0, noise)``, and a fraction
of scrapes missing altogether. Every rescale stops training for ``restart_seconds``.
Optionally (:class:`Noise`) the noise arises in the training, so overlapping windows share
it, and the trainer stalls for a checkpoint write every so often (a window holding a stall
reads its share less, the gauge inside one reads idle; the score does not count stalls,
which cost every count the same share).

The loop and the score
----------------------
:func:`run_simulation` plays the operator's loop: every ``intervalSeconds`` (skipping the
``settleSeconds`` after the running count changed, as the autoscale daemon does) one
observation goes to a :class:`~trainscale.operator.autoscaling.autoscaler.JobAutoscaler`
(or any :class:`Controller`) and its answer is applied at once. The result carries the
trace, every decision with its reason, and a :class:`Score` against :func:`hindsight`: the
best *static* count knowing the true curve, by samples processed, among the counts that
keep the objective's constraint (efficiency floor, budget, utilization target). A run whose
time-averaged constraint is broken scores zero.
"""

from __future__ import annotations

import abc
import csv
import io
import itertools
import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol, runtime_checkable

from trainscale.operator.api import Objective, TrainingJobSpec, allowed_sizes
from trainscale.operator.autoscaling.autoscaler import JobAutoscaler, RestartReading
from trainscale.operator.autoscaling.placement import Placement
from trainscale.operator.autoscaling.policy import (
    AWAIT_WORLD_SECONDS,
    Observation,
    Recommendation,
    compute_cost_per_hour,
)

RATE = 100.0
"""Samples/s of one worker alone (the curves are relative to it)."""

COMPUTE_FRACTION = 0.95
"""GPU busy fraction of one worker alone (the rest is input pipeline)."""

CSV_COLUMNS = ("count", "nodes", "samples_per_second", "gpu_utilization")
"""The columns a measured curve's CSV file must have (header row first)."""

SYNC_COLUMN = "sync_fraction"
"""An optional column of a curve's CSV file: the share of the step spent blocked on gradient
synchronisation (what the trainer exports); without it the simulated job exports none."""

_EPS = 1e-9


class CurveError(ValueError):
    """A curve that cannot be built or read, or that has no point for a count asked of it."""


# --------------------------------------------------------------------------------------------
# Curves


@dataclass(frozen=True)
class Point:
    """What a job does at one placement: throughput (samples/s) and mean GPU utilization."""

    replicas: int
    nodes: int
    samples_per_second: float
    gpu_utilization: float
    sync_fraction: float | None = None
    """Share of the step spent blocked on gradient synchronisation; None if unknown."""


class Curve(abc.ABC):
    """A job's throughput and GPU utilization as a function of its placement."""

    name: str
    gpus_per_node: int | None  # None: every count fits on one node

    @abc.abstractmethod
    def measure(self, placement: Placement) -> tuple[float, float]:
        """``(samples/s, GPU utilization)`` with the workers placed so.

        Raises:
            CurveError: when the curve has no point there (a CSV curve outside its points).
        """

    def sync_fraction(self, placement: Placement) -> float | None:
        """Share of the step spent blocked on synchronisation there; None if unknown."""
        return None

    def placement(self, replicas: int, gpus_per_replica: int = 1) -> Placement:
        """Where ``replicas`` workers sit: packed, one node filled before the next."""
        per_node = None
        if self.gpus_per_node is not None:
            per_node = max(1, self.gpus_per_node // max(1, gpus_per_replica))
        return Placement.packed(
            replicas, workers_per_node_max=per_node, gpus_per_node=self.gpus_per_node
        )

    def point(self, replicas: int, gpus_per_replica: int = 1) -> Point:
        """Throughput and utilization at ``replicas`` workers, packed."""
        if replicas <= 0:
            return Point(0, 0, 0.0, 0.0)
        where = self.placement(replicas, gpus_per_replica)
        x, u = self.measure(where)
        return Point(replicas, where.nodes, x, u, self.sync_fraction(where))


@dataclass(frozen=True)
class StepTimeCurve(Curve):
    """A curve given as the relative step time per sample of one worker, ``tau >= 1``.

    ``X = RATE * n / tau`` and ``U = COMPUTE_FRACTION / tau``: compute per sample is 1, the
    rest of ``tau`` is synchronisation (weak scaling) or per-step overhead spread over a
    shrinking per-worker batch (strong scaling): ``not_sync`` says which part of ``tau`` is
    not synchronisation (default 1, the compute).
    """

    name: str
    step_time: Callable[[Placement], float]
    gpus_per_node: int | None = None
    rate: float = RATE
    """Samples/s of one worker alone."""
    compute_fraction: float = COMPUTE_FRACTION
    """GPU utilization of one worker alone."""
    not_sync: Callable[[Placement], float] | None = None
    """The part of ``tau`` that is not synchronisation (None: 1)."""

    def measure(self, placement: Placement) -> tuple[float, float]:
        tau = self.step_time(placement)
        return self.rate * placement.replicas / tau, self.compute_fraction / tau

    def sync_fraction(self, placement: Placement) -> float | None:
        tau = self.step_time(placement)
        rest = self.not_sync(placement) if self.not_sync is not None else 1.0
        return min(1.0, max(0.0, 1.0 - rest / tau))


@dataclass(frozen=True)
class FragmentedCurve(Curve):
    """``inner`` on a cluster whose nodes have only ``free_per_node`` GPUs free for the job
    (other pods hold the rest): its workers fill that much of a node before the next, so the
    node boundary comes at ``free_per_node + 1`` workers, not at the node size, while the
    node size the job is told is still the nodes'. The real scheduler's packing preference
    meets such a cluster every day; the model's packed placement does not.

    The inner curve must measure any placement (the synthetic families do; a CSV curve has
    only its packed rows)."""

    inner: Curve
    free_per_node: int

    def __post_init__(self) -> None:
        size = self.inner.gpus_per_node
        if size is None or not fragmentable(self.inner):
            raise CurveError(f"{self.inner.name} has no placement but its packed one")
        if not 1 <= self.free_per_node < size:
            raise CurveError(
                f"GPUs free per node must be within [1, {size}), got {self.free_per_node}"
            )

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.inner.name

    @property
    def gpus_per_node(self) -> int | None:  # type: ignore[override]
        return self.inner.gpus_per_node

    def measure(self, placement: Placement) -> tuple[float, float]:
        return self.inner.measure(placement)

    def sync_fraction(self, placement: Placement) -> float | None:
        return self.inner.sync_fraction(placement)

    def placement(self, replicas: int, gpus_per_replica: int = 1) -> Placement:
        per_node = max(1, self.free_per_node // max(1, gpus_per_replica))
        return Placement.packed(
            replicas, workers_per_node_max=per_node, gpus_per_node=self.gpus_per_node
        )


def fragmentable(curve: Curve) -> bool:
    """Whether ``curve`` can run on partly free nodes (:class:`FragmentedCurve`): it has a
    node size and measures any placement (a CSV curve has only its packed rows)."""
    return curve.gpus_per_node is not None and not isinstance(curve, TableCurve)


def count_curve(name: str, tau: Callable[[int], float]) -> StepTimeCurve:
    """A placement-blind curve from ``tau(n)`` (the policy tests' form)."""
    return StepTimeCurve(name, lambda p: tau(p.replicas))


def _tau_cliff(p: Placement) -> float:
    n, k = p.replicas, p.nodes
    return 1.0 + 0.01 * (n - 1) + (0.6 + 0.04 * (k - 1) if k > 1 else 0.0)


def _tau_recover(p: Placement) -> float:
    n, k = p.replicas, p.nodes
    inter = 0.8 / min(p.workers_per_node) + 0.03 * (k - 1) if k > 1 else 0.0
    return 1.0 + 0.01 * (n - 1) + inter


def _tau_strong(p: Placement) -> float:
    # per step: compute 1 (the global batch on one worker) / n, overhead 0.01, sync; per
    # sample of one worker that is tau = 1 + n * (overhead + sync) in units of compute
    n, k = p.replicas, p.nodes
    sync = 0.004 * (n - 1) + (0.05 + 0.01 * (k - 1) if k > 1 else 0.0)
    return 1.0 + n * (0.01 + sync)


def _not_sync_strong(p: Placement) -> float:
    return 1.0 + 0.01 * p.replicas  # compute and the per-step overhead, per sample


def _tau_weak(p: Placement) -> float:
    n, k = p.replicas, p.nodes
    bandwidth = 0.04 if k <= 1 else 0.25
    return 1.0 + 0.005 * (n - 1) + bandwidth * 2.0 * (n - 1) / n


_HIDDEN = 0.05
"""Share of a step's communication the overlap families hide behind the backward pass."""

_NOT_SYNC: dict[str, Callable[[Placement], float]] = {"strong-8": _not_sync_strong}
"""Families where part of ``tau - 1`` is not synchronisation (the rest: all of it is)."""

_FAMILIES: dict[str, tuple[Callable[[Placement], float], int | None]] = {
    "linear": (lambda p: 1.0, None),
    "amdahl": (lambda p: 1.0 + 0.03 * (p.replicas - 1), None),
    "comm-peak": (lambda p: 1.0 + 0.01 * (p.replicas - 1) + 0.003 * (p.replicas - 1) ** 2, None),
    "log-sync": (lambda p: 1.0 + 0.08 * math.log2(p.replicas), None),
    "two-tier": (lambda p: 1.0 + 0.01 * (p.replicas - 1) + (0.25 if p.replicas > 8 else 0.0), None),
    "cliff-4": (_tau_cliff, 4),
    "cliff-8": (_tau_cliff, 8),
    "recover-4": (_tau_recover, 4),
    "recover-8": (_tau_recover, 8),
    "strong-8": (_tau_strong, 8),
    "weak-8": (_tau_weak, 8),
}


_BUCKET_HIDDEN = 0.1
"""What the bucketed overlap families can hide behind the backward pass (of a step's
compute: per step, the backward pass of a worker's batch; with strong scaling both shrink
as ``1/n``, so per sample it is the same at every count)."""

_LAST_BUCKET = 0.2
"""Share of the communication that never hides: DDP reduces gradients in buckets as the
backward pass fills them, and the last bucket (the first layers' gradients) is ready only
when the backward pass ends (a 100 MB model in 25 MB buckets: a fifth to a quarter)."""


def _overlapped(
    tau: Callable[[Placement], float],
    *,
    hidden: float = _HIDDEN,
    last: float = 0.0,
    rest: Callable[[Placement], float] | None = None,
) -> Callable[[Placement], float]:
    """``tau`` with up to ``hidden`` of its communication hidden behind the backward pass,
    but never its ``last`` share: the exposed part is ``max(comm - hidden, last * comm)``.

    ``rest`` is the part of ``tau`` that is not communication (default 1, the compute).
    With ``last`` 0 it is a hinge (all hides while the communication is small); with
    ``last`` > 0 the hidden share depends on the count: most of it at small counts, where
    the exposed sync is a multiple of the communication, then a fixed amount, where it is
    an offset below it.
    """

    def step(p: Placement) -> float:
        base = 1.0 if rest is None else rest(p)
        comm = max(0.0, tau(p) - base)
        return base + max(comm - hidden, last * comm)

    return step


_FAMILIES["overlap-amdahl"] = (_overlapped(_FAMILIES["amdahl"][0]), None)
_FAMILIES["overlap-peak"] = (_overlapped(_FAMILIES["comm-peak"][0]), None)
_FAMILIES["overlap-buckets"] = (
    _overlapped(_FAMILIES["amdahl"][0], hidden=_BUCKET_HIDDEN, last=_LAST_BUCKET),
    None,
)
_FAMILIES["overlap-recover-8"] = (
    _overlapped(_tau_recover, hidden=_BUCKET_HIDDEN, last=_LAST_BUCKET),
    8,
)
_FAMILIES["overlap-strong-8"] = (
    _overlapped(_tau_strong, hidden=_BUCKET_HIDDEN, last=_LAST_BUCKET, rest=_not_sync_strong),
    8,
)
_NOT_SYNC["overlap-strong-8"] = _not_sync_strong

OVERLAP_NAMES: tuple[str, ...] = (
    "overlap-amdahl",
    "overlap-peak",
    "overlap-buckets",
    "overlap-recover-8",
    "overlap-strong-8",
)
"""Families whose communication partly hides behind the backward pass (an offset, not a
factor, on the exposed sync); kept out of :data:`CURVE_NAMES` so the benchmark's main table
stays comparable across changes."""

CURVE_NAMES: tuple[str, ...] = tuple(n for n in _FAMILIES if n not in OVERLAP_NAMES)
"""The named curve families of the benchmark's main table, in the order it reports them."""


def named_curve(name: str, *, gpus_per_node: int | None = None) -> StepTimeCurve:
    """The named family ``name`` (see the module docstring).

    ``gpus_per_node`` overrides the family's node size (and gives the placement-blind
    families one, which changes nothing in their throughput).

    Raises:
        CurveError: on an unknown name.
    """
    try:
        tau, size = _FAMILIES[name]
    except KeyError:
        raise CurveError(
            f"unknown curve {name!r}: expected one of {', '.join(_FAMILIES)} or a .csv file"
        ) from None
    return StepTimeCurve(
        name,
        tau,
        gpus_per_node if gpus_per_node is not None else size,
        not_sync=_NOT_SYNC.get(name),
    )


@dataclass(frozen=True)
class TableCurve(Curve):
    """Measured points ``(count, nodes) -> (samples/s, GPU utilization)``.

    Between two given counts on the same number of nodes the values are interpolated
    linearly; nothing is extrapolated.
    """

    name: str
    points: Mapping[tuple[int, int], tuple[float, float]]
    gpus_per_node: int | None = None
    sync: Mapping[tuple[int, int], float] | None = None
    """The optional column ``sync_fraction`` (every row has it, or none)."""

    def sync_fraction(self, placement: Placement) -> float | None:
        if not self.sync:
            return None
        n, k = placement.replicas, placement.nodes
        if (n, k) in self.sync:
            return self.sync[(n, k)]
        lo, hi, w = self._neighbours(n, k)
        return self.sync[(lo, k)] + w * (self.sync[(hi, k)] - self.sync[(lo, k)])

    def measure(self, placement: Placement) -> tuple[float, float]:
        n, k = placement.replicas, placement.nodes
        if (n, k) in self.points:
            return self.points[(n, k)]
        lo, hi, w = self._neighbours(n, k)
        (x0, u0), (x1, u1) = self.points[(lo, k)], self.points[(hi, k)]
        return x0 + w * (x1 - x0), u0 + w * (u1 - u0)

    def _neighbours(self, n: int, k: int) -> tuple[int, int, float]:
        """The given counts on ``k`` nodes around ``n`` and ``n``'s weight between them."""
        counts = sorted(c for c, nodes in self.points if nodes == k)
        below = [c for c in counts if c < n]
        above = [c for c in counts if c > n]
        if not below or not above:
            covered = f"counts {counts[0]}..{counts[-1]}" if counts else "no counts"
            raise CurveError(
                f"curve {self.name}: no point at or around {n} workers on {k} node(s) "
                f"(its points on {k} node(s) cover {covered}; packed on "
                f"{self.gpus_per_node or 'unbounded'}-GPU nodes)"
            )
        lo, hi = below[-1], above[0]
        return lo, hi, (n - lo) / (hi - lo)


def _field(raw: Mapping[str, str | None], name: str, where: str, *, integer: bool) -> float:
    text = (raw.get(name) or "").strip()
    if not text:
        raise CurveError(f"{where}: field {name!r} is empty")
    try:
        value = float(int(text)) if integer else float(text)
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise CurveError(f"{where}: field {name!r} is {text!r}, not {kind}") from None
    if not math.isfinite(value):
        raise CurveError(f"{where}: field {name!r} is {text!r}, not a finite number")
    return value


def parse_csv_curve(
    text: str, *, name: str = "curve.csv", gpus_per_node: int | None = None
) -> TableCurve:
    """Read a measured curve from CSV text (header ``count,nodes,samples_per_second,gpu_utilization``).

    ``gpus_per_node`` defaults to the largest count measured on one node when some rows span
    several nodes (the rows must then be a packed placement of that node size), else None.

    Raises:
        CurveError: naming the line and the field of the first bad value, a missing column,
            a duplicate point, or rows that are no packed placement.
    """
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in reader.fieldnames or ()]
    missing = [c for c in CSV_COLUMNS if c not in header]
    if missing:
        raise CurveError(
            f"{name} line 1: missing column(s) {', '.join(missing)} "
            f"(the header must name {','.join(CSV_COLUMNS)})"
        )
    reader.fieldnames = header
    points: dict[tuple[int, int], tuple[float, float]] = {}
    sync: dict[tuple[int, int], float] | None = {} if SYNC_COLUMN in header else None
    for row in reader:
        where = f"{name} line {reader.line_num}"
        key, value = _parse_csv_row(row, where)
        if key in points:
            raise CurveError(f"{where}: a second row for {key[0]} workers on {key[1]} node(s)")
        points[key] = value
        if sync is not None:
            f = _field(row, SYNC_COLUMN, where, integer=False)
            if not 0 <= f < 1:
                raise CurveError(f"{where}: field {SYNC_COLUMN!r} must be within [0, 1), got {f:g}")
            sync[key] = f
    if not points:
        raise CurveError(f"{name}: no data rows")
    if gpus_per_node is None and any(k > 1 for _, k in points):
        gpus_per_node = _infer_node_size(name, points)
    return TableCurve(name, points, gpus_per_node, sync)


def _parse_csv_row(
    row: Mapping[str, str | None], where: str
) -> tuple[tuple[int, int], tuple[float, float]]:
    """One data row: ((count, nodes), (samples/s, utilization)), each field checked."""
    if None in row:
        raise CurveError(f"{where}: more fields than the header names")
    count = int(_field(row, "count", where, integer=True))
    nodes = int(_field(row, "nodes", where, integer=True))
    x = _field(row, "samples_per_second", where, integer=False)
    u = _field(row, "gpu_utilization", where, integer=False)
    if count < 1:
        raise CurveError(f"{where}: field 'count' must be >= 1, got {count}")
    if not 1 <= nodes <= count:
        raise CurveError(f"{where}: field 'nodes' must be within [1, count], got {nodes}")
    if x < 0:
        raise CurveError(f"{where}: field 'samples_per_second' must be >= 0, got {x:g}")
    if not 0 <= u <= 1:
        raise CurveError(f"{where}: field 'gpu_utilization' must be within [0, 1], got {u:g}")
    return (count, nodes), (x, u)


def _infer_node_size(name: str, points: Mapping[tuple[int, int], object]) -> int | None:
    """The node size multi-node rows imply: the largest one-node count, checked packed (a
    row of one worker per node, ``nodes == count``, is a measured spread placement)."""
    single = [c for c, k in points if k == 1]
    gpus_per_node = max(single) if single else None
    wrong = [
        (c, k)
        for c, k in sorted(points)
        if gpus_per_node is None or (k != math.ceil(c / gpus_per_node) and k != c)
    ]
    if wrong:
        c, k = wrong[0]
        raise CurveError(
            f"{name}: {c} workers on {k} node(s) is no packed placement on "
            f"{gpus_per_node or '?'}-GPU nodes (inferred from the one-node rows); "
            "give the node size explicitly (--gpus-per-node)"
        )
    return gpus_per_node


def load_curve(name_or_path: str, *, gpus_per_node: int | None = None) -> Curve:
    """A named family, or a CSV file when the argument ends in ``.csv`` or names a file.

    Raises:
        CurveError: on an unknown name, an unreadable file or a bad CSV.
    """
    if name_or_path in _FAMILIES:
        return named_curve(name_or_path, gpus_per_node=gpus_per_node)
    path = Path(name_or_path)
    if name_or_path.endswith(".csv") or path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise CurveError(f"cannot read curve {name_or_path}: {exc.strerror}") from None
        return parse_csv_curve(text, name=path.name, gpus_per_node=gpus_per_node)
    return named_curve(name_or_path, gpus_per_node=gpus_per_node)


# --------------------------------------------------------------------------------------------
# Hindsight: the best static count


@dataclass(frozen=True)
class Constraint:
    """An objective's constraint on a count: a floor on a value, or a ceiling (budget)."""

    name: str  # "efficiency", "GPU utilization", "cost per hour"
    limit: float
    ceiling: bool = False
    measured: bool = True  # False: known exactly from the spec (cost), not from noisy metrics

    def holds(self, value: float) -> bool:
        """Whether ``value`` keeps the constraint."""
        return value <= self.limit + _EPS if self.ceiling else value >= self.limit - _EPS


@dataclass(frozen=True)
class JobModel:
    """A curve seen through a spec: the counts it allows, its GPUs per replica, its objective."""

    curve: Curve
    spec: TrainingJobSpec

    @property
    def counts(self) -> tuple[int, ...]:
        """The counts the spec allows (bounds and ``allowedReplicas``)."""
        return allowed_sizes(self.spec)

    def point(self, replicas: int) -> Point:
        """Throughput and utilization at ``replicas`` (packed)."""
        return self.curve.point(replicas, max(1, self.spec.gpus_per_replica))

    def best_per_replica(self) -> float:
        """The best throughput per worker over counts 1..maxReplicas (efficiency 1)."""
        best = 0.0
        for n in range(1, self.spec.max_replicas + 1):
            try:
                best = max(best, self.point(n).samples_per_second / n)
            except CurveError:
                continue  # a CSV curve need not start at 1
        return best

    def constraint(self) -> Constraint:
        """The objective's constraint."""
        auto = self.spec.autoscaling
        if auto.objective is Objective.BUDGET:
            assert auto.max_cost_per_hour is not None  # the model validator requires it
            return Constraint("cost per hour", auto.max_cost_per_hour, ceiling=True, measured=False)
        if auto.objective is Objective.UTILIZATION:
            return Constraint("GPU utilization", auto.target_gpu_utilization)
        return Constraint("efficiency", auto.min_efficiency)

    def constrained_value(self, replicas: int, best_per_replica: float) -> float:
        """The constrained quantity at ``replicas``."""
        auto = self.spec.autoscaling
        if auto.objective is Objective.BUDGET:
            return compute_cost_per_hour(self.spec, replicas)
        p = self.point(replicas)
        if auto.objective is Objective.UTILIZATION:
            return p.gpu_utilization
        return p.samples_per_second / replicas / best_per_replica if best_per_replica else 0.0


@dataclass(frozen=True)
class Hindsight:
    """The best static count knowing the true curve, and what it processes."""

    replicas: int
    samples_per_second: float
    feasible: bool  # False: no allowed count keeps the constraint; the smallest is taken
    constrained_value: float  # the constrained quantity at that count
    edge: tuple[int, float] | None = None
    """The count nearest the limit among those that break it and would beat the best by
    more than :data:`KNIFE_EDGE_SHARE` if they kept it, with its constrained value."""


KNIFE_EDGE_SHARE = 0.95
"""A count faster than the best that breaks the constraint matters to :func:`samples_to_resolve`
when the best processes less than this share of its samples (the benchmark's goal): a twin
curve where it keeps the constraint makes it the best, and a run that avoids it then falls
short of that share."""


def hindsight(curve: Curve, spec: TrainingJobSpec) -> Hindsight:
    """The allowed count with the most samples among those keeping the constraint.

    Ties go to the smaller count. When no count keeps it, ``minReplicas`` with
    ``feasible=False``.

    Raises:
        CurveError: when the curve has no point for an allowed count.
    """
    job = JobModel(curve, spec)
    ref = job.best_per_replica()
    constraint = job.constraint()
    # per allowed count, in order: samples/s and the constrained value
    counts = [
        (n, job.point(n).samples_per_second, job.constrained_value(n, ref)) for n in job.counts
    ]
    best: tuple[int, float, float] | None = None
    for n, x, value in counts:
        if constraint.holds(value) and (best is None or x > best[1]):
            best = (n, x, value)
    if best is None:
        n = spec.min_replicas
        return Hindsight(n, job.point(n).samples_per_second, False, job.constrained_value(n, ref))
    edge: tuple[int, float] | None = None
    for n, x, value in counts:
        faster = best[1] < KNIFE_EDGE_SHARE * x
        nearer = edge is None or abs(value - constraint.limit) < abs(edge[1] - constraint.limit)
        if faster and not constraint.holds(value) and nearer:
            edge = (n, value)
    return Hindsight(best[0], best[1], True, best[2], edge)


RESOLVE_Z = 1.645
"""One-sided 95 %: the z-score :func:`samples_to_resolve` asks for."""


def edge_count(best: Hindsight, constraint: Constraint) -> tuple[int, float]:
    """The count whose side of the limit decides the run, and its constrained value: the
    best count, or a faster one breaking the limit by less (:attr:`Hindsight.edge`)."""
    own = (best.replicas, best.constrained_value)
    if best.edge is None:
        return own
    near = abs(best.edge[1] - constraint.limit) < abs(best.constrained_value - constraint.limit)
    return best.edge if near else own


def relative_margin(best: Hindsight, constraint: Constraint) -> float:
    """How far :func:`edge_count`'s constrained value sits from the limit, relative to it."""
    return abs(edge_count(best, constraint)[1] - constraint.limit) / constraint.limit


def samples_to_resolve(best: Hindsight, constraint: Constraint, relative_noise: float) -> float:
    """Scrapes at one count a run needs to tell whether that count keeps the constraint.

    Why: when the best count's efficiency or utilization sits a hair from the limit, the
    curve has a twin that differs from it only there, by as much on the other side. Telling
    the two apart, wrong at most 5 % of the time either way, takes ``(z * noise / margin)^2``
    scrapes of that count (a Gaussian mean, ``z`` = :data:`RESOLVE_Z`, ``margin`` relative to
    the limit), even with every other count known exactly. A run with fewer scrapes than that
    cannot know which side of the limit its best count is on; its result there is decided
    by the noise. The same holds for a faster count that breaks the limit by a hair (its
    twin keeps it and is best; overlap-amdahl under a 0.8 utilization target: 9 at 0.7983),
    when the best count falls short of :data:`KNIFE_EDGE_SHARE` of its samples: the margin
    is the nearer of the two (:func:`edge_count`). 0 when there is nothing to resolve (the
    cost is known exactly, or no count keeps the constraint); ``inf`` for a count exactly
    on the limit.
    """
    if not constraint.measured or not best.feasible or relative_noise <= 0:
        return 0.0
    margin = relative_margin(best, constraint)
    return math.inf if margin == 0 else (RESOLVE_Z * relative_noise / margin) ** 2


# --------------------------------------------------------------------------------------------
# The closed loop


@dataclass(frozen=True)
class Noise:
    """What separates the metrics from the truth.

    Attributes:
        relative: Standard deviation of the multiplicative Gaussian noise on each observed
            value (throughput and utilization independently).
        missing: Fraction of scrapes that return nothing at all.
        sync_seen: Share of the synchronisation the trainer's timer sees (its sync share
            is this times the true one): all-reduce that overlaps the backward pass and
            slows it shows as compute, not as waiting.
        windowed: Where the throughput's (and the sync share's) noise arises. False: in
            each scrape, independently. True: in the training itself, interval by interval,
            and ``rate()`` averages it over its window, so scrapes whose windows overlap
            share it (a 60 s window scraped every 30 s: neighbours correlate 0.5), as on a
            real cluster; each scrape's own noise is still ``relative``.
        stall_every: Seconds of training between two checkpoint writes that stop it (0:
            none), counted from every restart (an elastic restart resumes from one).
        stall_seconds: How long each such write stops training. A ``rate()`` window
            holding part of one reads that share less; the GPU gauge scraped inside one
            reads idle; the sync share (of step seconds) does not see it.
    """

    relative: float = 0.05
    missing: float = 0.0
    sync_seen: float = 1.0
    windowed: bool = False
    stall_every: float = 0.0
    stall_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.stall_every < 0 or self.stall_seconds < 0:
            raise ValueError(
                f"stalls must be >= 0, got every {self.stall_every!r} s for {self.stall_seconds!r} s"
            )

    def stalled(self, since: float, start: float, end: float) -> float:
        """Seconds of ``[start, end)`` the trainer spent in a checkpoint stall, for a run
        training since ``since`` (it trains ``stall_every`` seconds, then stalls for
        ``stall_seconds``, from every restart on)."""
        if self.stall_every <= 0 or self.stall_seconds <= 0:
            return 0.0
        cycle = self.stall_every + self.stall_seconds
        start = max(start, since)
        if end <= start:
            return 0.0

        def upto(t: float) -> float:  # stalled seconds in [since, t)
            k, rest = divmod(t - since, cycle)
            return k * self.stall_seconds + max(0.0, rest - self.stall_every)

        return upto(end) - upto(start)


class _WindowNoise:
    """Noise that arises in the training, one unit draw per ``width`` seconds, read as
    ``rate()`` reads it: averaged over the window, scaled so one scrape's standard
    deviation is one whatever the window (only neighbours' correlation changes)."""

    def __init__(self, rng: random.Random, width: float) -> None:
        self._rng, self._width = rng, width
        self._draws: dict[int, float] = {}
        self._next = 0

    def _draw(self, index: int) -> float:
        while self._next <= index:  # in order, so a run's draws do not depend on its reads
            self._draws[self._next] = self._rng.gauss(0.0, 1.0)
            self._next += 1
        return self._draws[index]

    def over(self, start: float, end: float) -> float:
        """The unit noise of a window ``[start, end)`` (of a bare instant when empty)."""
        last = max(0, math.ceil(end / self._width) - 1)
        first = min(last, max(0, math.ceil(start / self._width)))
        draws = [self._draw(i) for i in range(first, last + 1)]
        return sum(draws) / math.sqrt(len(draws))


@dataclass(frozen=True)
class Restarts:
    """What a rescale costs in training time, restart by restart.

    A fixed cost is our assumption, not the cluster's: a restart that lands a worker on a
    node that has never run the job pulls its image there (minutes for a multi-GB CUDA
    image) and bootstraps the collective across one more node, and the time to load a
    checkpoint, schedule and rendezvous varies from restart to restart. The autoscaler
    learns the median of the restarts it saw, so a run where they vary tests that.

    Attributes:
        seconds: The typical (mean) cost of one restart.
        spread: Log-normal spread of each restart's cost around ``seconds`` (the standard
            deviation of its logarithm; the mean stays ``seconds``): 0.5 puts one restart
            in twenty below 0.33x or above 2.2x of it. 0: every restart costs ``seconds``.
        new_nodes: Seconds added to a move onto more nodes than the run has spanned so
            far: the image is pulled on the new nodes (in parallel, so once however many),
            and a later move back onto them finds it cached. The run's first nodes are
            paid before it starts, as a static job's are.
        new_nodes_each: ``new_nodes`` is paid once per new node, not once per move: the
            pulls share one link (a registry's bandwidth, a NAT gateway), so pulling on
            four new nodes at once takes four times as long as on one.
        warmup_seconds: After each restart the job trains this long at ``warmup_share``
            of its rate (and GPU utilization) before it runs at full speed: a
            ``torch.compile`` recompiling for the new world size, cuDNN autotuning, a cold
            page cache under the data loader. The restart is over (the pods run, steps are
            counted) but the count does not yet run as it will. Its synchronisation per
            step is what it will be, so the sync share the trainer exports is smaller.
        warmup_share: The share of its rate a warming job trains at (0: no step at all
            until the warm-up ends, as while it compiles).
    """

    seconds: float = 60.0
    spread: float = 0.0
    new_nodes: float = 0.0
    warmup_seconds: float = 0.0
    warmup_share: float = 1.0
    new_nodes_each: bool = False

    def __post_init__(self) -> None:
        for name in ("seconds", "spread", "new_nodes", "warmup_seconds"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"restart {name} must be >= 0, got {value!r}")
        if not 0 <= self.warmup_share <= 1:
            raise ValueError(
                f"restart warmup_share must be within [0, 1], got {self.warmup_share!r}"
            )

    def cost(self, nodes: int, most_nodes: int, rng: random.Random) -> float:
        """One restart's cost, onto ``nodes`` nodes where the run spanned at most
        ``most_nodes`` so far; draws from ``rng`` only where ``spread`` > 0."""
        base = self.seconds
        if self.spread > 0:
            base *= math.exp(rng.gauss(-self.spread * self.spread / 2.0, self.spread))
        added = max(0, nodes - most_nodes)
        if self.new_nodes_each:
            return base + self.new_nodes * added
        return base + (self.new_nodes if added else 0.0)

    def variations(self) -> list[str]:
        """How its restarts vary, in words (``spread 0.5``, ``+120 s onto new nodes``,
        ``then 180 s at 0.5 of the rate``); empty where each costs ``seconds``."""
        words = [f"spread {self.spread:g}"] if self.spread else []
        if self.new_nodes:
            each = " each" if self.new_nodes_each else ""
            words.append(f"+{self.new_nodes:g} s onto new nodes{each}")
        if self.warmup_seconds and self.warmup_share < 1:
            words.append(f"then {self.warmup_seconds:g} s at {self.warmup_share:g} of the rate")
        return words


def parse_warmup(text: str) -> tuple[float, float]:
    """``SECONDS:SHARE`` (a warm-up after each restart, :class:`Restarts`) as two numbers.

    Raises:
        ValueError: saying what is expected (the caller names its flag).
    """
    try:
        seconds, share = (float(v) for v in text.split(":"))
    except ValueError:
        raise ValueError("expected SECONDS:SHARE, e.g. 180:0.5") from None
    if not (math.isfinite(seconds) and seconds >= 0 and 0 <= share <= 1):
        raise ValueError("SECONDS must be >= 0 and SHARE within [0, 1]")
    return seconds, share


class _RestartCosts:
    """A run's restarts, one after another: :class:`Restarts` with the nodes spanned so far
    (from the first move's origin) and a random stream of their own."""

    def __init__(self, restarts: Restarts, seed: int) -> None:
        self.restarts = restarts
        self.rng = random.Random(f"restart-{seed}")
        self.most_nodes: int | None = None
        self.last: float | None = None  # the latest restart's cost

    def next(self, from_nodes: int, to_nodes: int) -> float:
        """The cost of a move from ``from_nodes`` nodes onto ``to_nodes``."""
        most = from_nodes if self.most_nodes is None else self.most_nodes
        self.most_nodes = max(most, to_nodes)
        self.last = self.restarts.cost(to_nodes, most, self.rng)
        return self.last

    def after(self, then: _Piece) -> list[_Piece]:
        """What runs once a restart is over: ``then``, warming up first where it does."""
        warm, share = self.restarts.warmup_seconds, self.restarts.warmup_share
        if warm <= 0 or share >= 1:
            return [then]
        slow = replace(
            then,
            samples_per_second=then.samples_per_second * share,
            gpu_utilization=then.gpu_utilization * share,
            # the same synchronisation per step, a smaller share of a slower step
            sync_fraction=None if then.sync_fraction is None else then.sync_fraction * share,
        )
        return [slow, replace(then, start=then.start + warm)]


def _noise_streams(
    noise: Noise, seed: int, step: float
) -> tuple[random.Random, random.Random, tuple[_WindowNoise, _WindowNoise] | None]:
    """A run's random streams: the scrapes', the sync share's, and, when ``windowed``, the
    throughput's and the sync share's noise in the training (streams of their own: a run
    without them draws what it always drew)."""
    windowed = (
        (
            _WindowNoise(random.Random(f"window-{seed}"), step),
            _WindowNoise(random.Random(f"window-sync-{seed}"), step),
        )
        if noise.windowed
        else None
    )
    return random.Random(seed), random.Random(f"sync-{seed}"), windowed


class Controller(Protocol):
    """Anything that decides like :class:`JobAutoscaler` (a baseline, a static count)."""

    def decide(
        self,
        observations: Sequence[Observation],
        *,
        current_replicas: int,
        now: float,
        placement: Placement | None = None,
        pending_replicas: int = 0,
        unschedulable_replicas: int = 0,
        ceiling: int | None = None,
        room: int | None = None,
    ) -> Recommendation:
        """The recommendation after the new ``observations``, at most ``ceiling`` (cluster
        arbitration's cap) when one is given; ``pending_replicas``,
        ``unschedulable_replicas`` and ``room`` as :meth:`JobAutoscaler.decide` takes them (a
        cap the job is not told of shows only as pods the scheduler rejected, and as the free
        GPUs the cluster has)."""
        ...


@runtime_checkable
class ReadsRestarts(Protocol):
    """A controller that learns restart costs from the trainer's own measure of them, as
    :class:`JobAutoscaler` does (``run_simulation(report_restarts=True)``)."""

    def restart_reading_since(self, now: float) -> float | None:
        """The rescale whose restart is wanted, or None."""
        ...

    def take_restart(self, reading: RestartReading, *, running: int) -> bool:
        """Learn from the trainer's measure of a restart."""
        ...


@dataclass(frozen=True)
class TracePoint:
    """The job at one decision: count and nodes after it, true throughput and efficiency
    of what ran just before it (throughput 0 while restarting)."""

    time: float
    replicas: int
    nodes: int
    samples_per_second: float
    efficiency: float
    gpu_utilization: float


@dataclass(frozen=True)
class Segment:
    """A stretch of the run with nothing changing: training at a count, or restarting."""

    start: float
    end: float
    replicas: int
    nodes: int
    samples_per_second: float  # true, 0 while restarting
    gpu_utilization: float  # true, 0 while restarting
    efficiency: float  # of the count, whether or not it is restarting
    restarting: bool


@dataclass(frozen=True)
class Decision:
    """One decision and what was observed for it."""

    time: float
    recommendation: Recommendation
    observation: Observation


@dataclass(frozen=True)
class Score:
    """A run against hindsight.

    Attributes:
        samples_ratio: Samples processed / the best static count's, 0 if the constraint broke.
        raw_samples_ratio: The same before the constraint is applied.
        rescales: How many times the count changed.
        settled_at: Seconds into the run of the last rescale (0 if none).
        constraint: The objective's constraint.
        constraint_value: The constrained quantity, averaged over the run's time (efficiency
            and utilization over the time the job trained, cost over all of it).
        constraint_met: Whether that average keeps the constraint (or, when no count could,
            does no worse than the hindsight count).
    """

    samples_ratio: float
    raw_samples_ratio: float
    rescales: int
    settled_at: float
    constraint: Constraint
    constraint_value: float
    constraint_met: bool


@dataclass(frozen=True)
class SimulationResult:
    """A whole run: the trace, the decisions, totals, hindsight and the score."""

    curve: str
    spec: TrainingJobSpec
    hours: float
    points: tuple[TracePoint, ...]
    decisions: tuple[Decision, ...]
    segments: tuple[Segment, ...]
    samples: float
    gpu_hours: float
    final_replicas: int
    hindsight: Hindsight
    score: Score
    noise: Noise = field(default_factory=Noise)
    changed_at: float | None = None
    """When the curve changed (``run_simulation(change=...)``): ``hindsight`` and ``score``
    are of the run after it."""
    ceilings: tuple[Ceiling, ...] = ()
    """The cluster ceilings of the run, in order (``run_simulation(ceiling=...)``): ``score``
    is of the run after the last one lifts."""

    @property
    def scored_from(self) -> float:
        """Seconds into the run where ``score`` starts counting (0: the whole run)."""
        return _scored_from_result(self.changed_at, self.ceilings)

    @property
    def margin(self) -> float:
        """:func:`relative_margin` of this run's best count (or the faster one at the edge)."""
        return relative_margin(self.hindsight, self.score.constraint)

    @property
    def scrapes_to_resolve(self) -> float:
        """:func:`samples_to_resolve` for this run's best count and noise."""
        return samples_to_resolve(self.hindsight, self.score.constraint, self.noise.relative)


@dataclass
class _Piece:
    start: float
    replicas: int
    nodes: int
    samples_per_second: float
    gpu_utilization: float
    running: bool
    sync_fraction: float | None = None


@dataclass
class _Timeline:
    """Piecewise-constant history of the job (each piece lasts until the next one starts)."""

    pieces: list[_Piece] = field(default_factory=list)

    def cut(self, at: float) -> None:
        """Drop what was scheduled after ``at`` (a restart a new decision interrupts)."""
        while self.pieces and self.pieces[-1].start > at:
            self.pieces.pop()

    def resize(self, at: float, nodes: int, then: Sequence[_Piece]) -> None:
        """A rescale at ``at`` to ``then[0].replicas`` on ``nodes``: restarting until
        ``then`` starts (its pieces one after another: a warm-up, then full speed; what was
        scheduled after ``at`` is dropped)."""
        self.cut(at)
        self.pieces.append(_Piece(at, then[0].replicas, nodes, 0.0, 0.0, False))
        self.pieces.extend(then)

    def running_since(self, t: float) -> float:
        """When the training running at ``t`` last (re)started (``t`` when it is not)."""
        since = t
        for piece in reversed(self.pieces):
            if piece.start > t:
                continue
            if not piece.running:
                break
            since = piece.start
        return since

    def at(self, t: float) -> _Piece:
        """The piece in force at ``t``."""
        for piece in reversed(self.pieces):
            if piece.start <= t:
                return piece
        return self.pieces[0]

    def switch(self, at: float, running: Callable[[float, int], _Piece]) -> None:
        """The curve changed at ``at``: what runs from then on runs as ``running`` says
        (a restart in progress ends on the new curve)."""
        pending = [p for p in self.pieces if p.start > at]
        self.cut(at)
        now = self.at(at)
        if now.running:
            self.pieces.append(running(at, now.replicas))
        self.pieces.extend(running(p.start, p.replicas) if p.running else p for p in pending)

    def samples(self, start: float, end: float) -> float:
        """Samples processed over ``[start, end)``."""
        return sum(p.samples_per_second * s for p, s in self.spans(start, end))

    def gpu_seconds(self, end: float, gpus_per_replica: int) -> float:
        """GPU-seconds held up to ``end`` (restarts included)."""
        return sum(p.replicas * gpus_per_replica * s for p, s in self.spans(0.0, end))

    def segments(
        self, end: float, efficiency: Callable[[int, float], float]
    ) -> tuple[Segment, ...]:
        """The run up to ``end`` as segments (``efficiency(count, start)``)."""
        return tuple(
            Segment(
                p.start,
                p.start + seconds,
                p.replicas,
                p.nodes,
                p.samples_per_second,
                p.gpu_utilization,
                efficiency(p.replicas, p.start),
                not p.running,
            )
            for p, seconds in self.spans(0.0, end)
        )

    def spans(self, start: float, end: float) -> Iterable[tuple[_Piece, float]]:
        """Each piece overlapping ``[start, end)`` with the seconds it overlaps."""
        for i, piece in enumerate(self.pieces):
            stop = self.pieces[i + 1].start if i + 1 < len(self.pieces) else math.inf
            seconds = min(stop, end) - max(piece.start, start)
            if seconds > 0:
                yield piece, seconds

    def mean_sync(self, start: float, end: float) -> float | None:
        """What the ratio of two ``rate()`` over ``[start, end)`` reports: communication
        seconds over step seconds of the pieces that trained (None: none did, or unknown)."""
        total = weight = 0.0
        for piece, seconds in self.spans(start, end):
            if piece.running and piece.sync_fraction is not None:
                total += piece.sync_fraction * seconds
                weight += seconds
        return total / weight if weight > 0 else None

    def mean_throughput(self, start: float, end: float) -> float:
        """What ``rate()`` over ``[start, end)`` reports."""
        seconds = end - start
        if seconds <= 0:
            return self.at(end).samples_per_second
        # only the tail can overlap a short window; walk it from the end
        total = 0.0
        stop = math.inf
        for piece in reversed(self.pieces):
            overlap = min(stop, end) - max(piece.start, start)
            if overlap > 0:
                total += piece.samples_per_second * overlap
            if piece.start <= start:
                break
            stop = piece.start
        return total / seconds


def _observe(
    timeline: _Timeline,
    t: float,
    *,
    rate_window: float,
    noise: Noise,
    rng: random.Random,
    report_utilization: bool,
    report_throughput: bool,
    sync_rng: random.Random,
    window_noise: tuple[_WindowNoise, _WindowNoise] | None = None,
) -> Observation:
    now = timeline.at(t)
    if noise.missing > 0 and rng.random() < noise.missing:
        return Observation(t, now.replicas)
    start = max(0.0, t - rate_window)
    x = timeline.mean_throughput(start, t)
    u = now.gpu_utilization
    if now.running and noise.stall_every > 0:
        # a checkpoint stall: rate() loses the window's stalled share of this run's rate,
        # the GPU gauge (nearly instantaneous) reads idle inside one
        since = timeline.running_since(t)
        lost = noise.stalled(since, start, t)
        if t > start:
            x = max(0.0, x - now.samples_per_second * lost / (t - start))
        if noise.stalled(since, t - 1.0, t) >= 1.0:
            u = 0.0
    sync = timeline.mean_sync(start, t) if report_throughput else None
    # drawn in this order, and only what is reported: a run's draws do not change
    u_noise = rng.gauss(0, noise.relative) if report_utilization else 0.0
    x_noise = rng.gauss(0, noise.relative) if report_throughput else 0.0
    if window_noise is not None:  # the training's own noise, shared by overlapping windows
        x_noise = noise.relative * window_noise[0].over(start, t)
    if sync is not None:  # its own random stream: runs without it draw the same noise
        s_noise = sync_rng.gauss(0, noise.relative)
        if window_noise is not None:
            s_noise = noise.relative * window_noise[1].over(start, t)
        sync = min(0.99, max(0.0, noise.sync_seen * sync * (1 + s_noise)))
    return Observation(
        t,
        now.replicas,
        min(1.0, max(0.0, u * (1 + u_noise))) if report_utilization else None,
        max(0.0, x * (1 + x_noise)) if report_throughput else None,
        sync_fraction=sync,
    )


def _told_time_left(
    observation: Observation, job: JobModel, seconds_left: float, told: bool
) -> Observation:
    """``observation`` with the samples the job has left where it says (``told``, and a
    scrape that read its throughput): what it would train at its count's true rate in the
    ``seconds_left`` of the run (the trainer counts its samples, it does not measure them)."""
    if not told or observation.samples_per_second is None:
        return observation
    left = job.point(observation.replicas).samples_per_second * seconds_left
    return replace(observation, remaining_samples=left)


def _score(
    job: JobModel,
    timeline: _Timeline,
    end: float,
    samples: float,
    best: Hindsight,
    rescales: int,
    settled_at: float,
    start: float = 0.0,
) -> Score:
    ref = job.best_per_replica()
    constraint = job.constraint()
    cache: dict[int, float] = {}

    def value(n: int) -> float:
        if n not in cache:
            cache[n] = job.constrained_value(n, ref)
        return cache[n]

    weighted = seconds_total = 0.0
    for piece, seconds in timeline.spans(start, end):
        if constraint.ceiling or piece.running:  # cost accrues while restarting too
            weighted += value(piece.replicas) * seconds
            seconds_total += seconds
    mean = weighted / seconds_total if seconds_total else value(job.spec.replicas)
    met = constraint.holds(mean)
    if not best.feasible:  # no count keeps it: do no worse than the hindsight count
        met = (
            mean <= best.constrained_value + _EPS
            if constraint.ceiling
            else mean >= best.constrained_value - _EPS
        )
    reference = best.samples_per_second * (end - start)
    raw = samples / reference if reference > 0 else 0.0
    return Score(raw if met else 0.0, raw, rescales, settled_at, constraint, mean, met)


@dataclass(frozen=True)
class CurveChange:
    """The job's true curve changes during the run (another tenant's traffic on the links,
    a slower input pipeline): from ``at_seconds`` on it is ``curve``."""

    at_seconds: float
    curve: Curve


@dataclass(frozen=True)
class Ceiling:
    """The cluster caps the job at ``replicas`` from ``at_seconds`` for ``seconds`` (another
    job took its GPUs): a forced move down, and back up once it lifts.

    ``told``: cluster arbitration tells the job its cap (the operator's ceiling). Untold, as
    on a full cluster without arbitration or under another scheduler's preemption, the job
    sees only its pods: those beyond the cap are evicted or stay pending, rejected by the
    scheduler (``unschedulable_replicas``), and no one says when room comes back. Pending
    pods start as soon as it does; a job that gave them up must ask again to find out, or
    see the free GPUs (``run_simulation(report_room=True)``: ``room`` is the cap less the
    workers running while it holds, ``maxReplicas`` less them after).
    """

    at_seconds: float
    seconds: float
    replicas: int
    told: bool = True

    @property
    def lifts_at(self) -> float:
        return self.at_seconds + self.seconds

    def at(self, t: float) -> int | None:
        """The cap at ``t``, None when there is none."""
        return self.replicas if self.at_seconds <= t < self.lifts_at else None


def _scored_from(change: CurveChange | None, ceilings: Sequence[Ceiling]) -> float:
    """When the scored part of a run starts: the curve change, the last ceiling's lift, else 0."""
    return _scored_from_result(None if change is None else change.at_seconds, ceilings)


def _scored_from_result(changed_at: float | None, ceilings: Sequence[Ceiling]) -> float:
    if changed_at is not None:
        return changed_at
    return max((c.lifts_at for c in ceilings), default=0.0)


def _ceilings(ceiling: Ceiling | Sequence[Ceiling] | None) -> tuple[Ceiling, ...]:
    """``run_simulation``'s ``ceiling`` as ceilings in the order they come."""
    if ceiling is None:
        return ()
    if isinstance(ceiling, Ceiling):
        return (ceiling,)
    return tuple(sorted(ceiling, key=lambda c: c.at_seconds))


def _ceiling_at(ceilings: Sequence[Ceiling], t: float) -> Ceiling | None:
    """Whichever ceiling holds at ``t``, None when none does."""
    return next((c for c in ceilings if c.at(t) is not None), None)


def _capped(replicas: int, holding: Ceiling | None) -> int:
    """No more than the cap that holds allows."""
    return replicas if holding is None else min(replicas, holding.replicas)


@dataclass
class _Running:
    """The job's counts during a run: running (``current``) and asked for (``asked``, more
    while pods are pending), and what its moves cost."""

    timeline: _Timeline
    current: int
    asked: int
    settle: float = 0.0  # no decision this long after a change of the running count ...
    await_world: bool = False  # ... counted from the new world (the pause's end, at most 120 s)
    rescales: int = 0  # scored ones
    settled_at: float = 0.0  # the last move
    moved_at: float | None = None  # when the running count last changed
    quiet_until: float = 0.0  # no decision before (the daemon's settling after a change)

    def move(
        self, to: int, at: float, scored: bool, nodes: int, then: Sequence[_Piece], pause: float
    ) -> None:
        """The running count changes at ``at``: a restart pausing ``pause`` seconds (``then``
        runs after it), and the daemon's settling after it."""
        self.current, self.moved_at, self.settled_at = to, at, at
        self.rescales += scored
        self.timeline.resize(at, nodes, then)
        world = min(pause, AWAIT_WORLD_SECONDS) if self.await_world else 0.0
        self.quiet_until = at + world + self.settle

    def decide(
        self,
        controller: Controller,
        observation: Observation,
        t: float,
        holding: Ceiling | None,
        placement: Placement,
        room: int | None,
        restart: float | None = None,
    ) -> Recommendation:
        """One decision as the operator asks for it: the count the job asked for with its
        pending pods (held back by a cap it is not told of, all unschedulable), a told cap
        as the ceiling. The job then asks for what it recommends (no more than a told cap).
        ``restart``: the latest restart's cost where the job's trainer reports it."""
        self._tell_restart(controller, t, restart)
        told = holding is not None and holding.told
        rec = controller.decide(
            [observation],
            current_replicas=self.asked,
            now=t,
            placement=placement,
            pending_replicas=self.asked - self.current,
            unschedulable_replicas=self.asked - self.current,
            ceiling=holding.replicas if holding is not None and told else None,
            room=room,
        )
        self.asked = _capped(rec.replicas, holding) if told else rec.replicas
        return rec

    def _tell_restart(self, controller: Controller, t: float, cost: float | None) -> None:
        """What the job's trainer reports of its latest restart (``cost`` seconds from the
        last move), once it is over, to a controller that reads it."""
        if cost is None or self.moved_at is None or not isinstance(controller, ReadsRestarts):
            return
        since = controller.restart_reading_since(t)
        if since is not None and since <= self.moved_at + cost <= t:
            reading = RestartReading(since, self.current, cost)
            controller.take_restart(reading, running=self.current)


def _cluster_places(asked: int, current: int, holding: Ceiling | None) -> int:
    """Workers running before a decision: the cluster, not the job, changes them when a cap
    it is not told of holds (pods beyond it evicted or left pending) or when pods the job
    asked for were pending (they start once no cap holds them back). A told cap is applied
    with the decision (the job is asked to move)."""
    if (holding is None or holding.told) and asked <= current:
        return current
    return asked if holding is None else min(asked, holding.replicas)


def _room(
    spec: TrainingJobSpec, ceilings: Sequence[Ceiling], holding: Ceiling | None, current: int
) -> int | None:
    """The free workers the job sees (``decide(room=...)``) in a run with a cap it is not
    told of: what the cap leaves while it holds, ``maxReplicas`` after; None otherwise."""
    if all(c.told for c in ceilings):
        return None
    return max(0, _capped(spec.max_replicas, holding) - current)


def _trace_point(t: float, current: int, nodes: int, before: _Piece, ref: float) -> TracePoint:
    """What the trace shows at ``t``: the count now, and what ran up to the decision."""
    efficiency = before.samples_per_second / before.replicas / ref if before.replicas else 0.0
    return TracePoint(
        t,
        current,
        nodes,
        before.samples_per_second,
        efficiency if before.running else 0.0,
        before.gpu_utilization,
    )


def _check_ceilings(spec: TrainingJobSpec, hours: float, ceilings: Sequence[Ceiling]) -> None:
    """Each ceiling within the run and at least ``minReplicas``; none overlapping."""
    for ceiling, after in itertools.pairwise(ceilings):
        if after.at_seconds < ceiling.lifts_at:
            raise ValueError(
                f"ceilings must not overlap: one from {after.at_seconds} s while one from "
                f"{ceiling.at_seconds} s holds until {ceiling.lifts_at} s"
            )
    for ceiling in ceilings:
        if not 0.0 < ceiling.at_seconds < ceiling.lifts_at < hours * 3600.0:
            raise ValueError(
                f"the ceiling must start and lift within the run, got {ceiling.at_seconds} s "
                f"for {ceiling.seconds} s"
            )
        if not spec.min_replicas <= ceiling.replicas:
            raise ValueError(
                f"the ceiling ({ceiling.replicas}) must be at least minReplicas "
                f"({spec.min_replicas})"
            )


def _checked_run(
    spec: TrainingJobSpec,
    hours: float,
    interval: float | None,
    noise: Noise | float,
    restart_seconds: float | Restarts,
    seed: int,
    change: CurveChange | None = None,
    ceilings: Sequence[Ceiling] = (),
) -> tuple[TrainingJobSpec, Noise, _RestartCosts]:
    """Validate :func:`run_simulation`'s settings; the spec with ``interval`` applied, the
    noise, and the run's restarts (their nodes spanned and random stream start here)."""
    if change is not None and not 0.0 < change.at_seconds < hours * 3600.0:
        raise ValueError(f"the curve must change within the run, got {change.at_seconds} s")
    if ceilings and change is not None:
        raise ValueError("a run has a curve change or a ceiling, not both")
    _check_ceilings(spec, hours, ceilings)
    if interval is not None:
        if interval <= 0 or interval != int(interval):
            raise ValueError(f"interval must be a positive whole number of seconds, got {interval}")
        auto = spec.autoscaling.model_copy(update={"interval_seconds": int(interval)})
        spec = spec.model_copy(update={"autoscaling": auto})
    if not hours > 0:
        raise ValueError(f"hours must be > 0, got {hours}")
    if isinstance(restart_seconds, Restarts):
        restarts = restart_seconds
    elif restart_seconds < 0 or not math.isfinite(restart_seconds):
        raise ValueError(f"restart_seconds must be >= 0, got {restart_seconds}")
    else:
        restarts = Restarts(float(restart_seconds))
    noise = Noise(relative=float(noise)) if isinstance(noise, int | float) else noise
    return spec, noise, _RestartCosts(restarts, seed)


def _told_placement(placement: Placement, node_size: bool) -> Placement:
    """The placement as the operator reads it: without the GPUs per node where it may not
    list nodes (``run_simulation(report_node_size=False)``)."""
    return placement if node_size else Placement(placement.workers_per_node)


def run_simulation(
    curve: Curve,
    spec: TrainingJobSpec,
    *,
    hours: float = 4.0,
    interval: float | None = None,
    noise: Noise | float = 0.05,
    restart_seconds: float | Restarts = 60.0,
    seed: int = 0,
    rate_window: float = 60.0,
    settle_seconds: float | None = None,
    await_world: bool = False,
    controller: Controller | None = None,
    report_utilization: bool = True,
    report_throughput: bool = True,
    report_sync: bool = True,
    change: CurveChange | None = None,
    ceiling: Ceiling | Sequence[Ceiling] | None = None,
    report_room: bool = True,
    report_node_size: bool = True,
    report_time_left: bool = False,
    report_restarts: bool = False,
) -> SimulationResult:
    """Run the job on ``curve`` under ``controller`` for ``hours`` and score it.

    Args:
        curve: The true speedup curve.
        spec: The job (start count ``replicas``, bounds, objective, interval).
        hours: Length of the run.
        interval: Seconds between decisions; default ``spec.autoscaling.intervalSeconds``
            (the spec is updated to match).
        noise: A :class:`Noise`, or just its relative part.
        restart_seconds: Training time lost to each rescale, or a :class:`Restarts` whose
            cost varies from restart to restart (drawn from a stream of its own: a fixed
            cost draws what it always drew), or that warms up after it (a curve change
            during a warm-up ends it).
        seed: Seeds the noise; the same arguments give the same run.
        rate_window: Seconds of the throughput ``rate()``; 0 reports the instantaneous value.
        settle_seconds: No decision this long after the running count changed (the daemon's
            ``settleSeconds``); default the spec's, 0 decides every interval.
        await_world: The autoscale daemon's timing: after the running count changed, the
            settling clock starts only once the workers report their new world, at the end
            of the restart's pause (or ``AWAIT_WORLD_SECONDS`` after the change, whichever
            comes first), so nothing is measured for that long plus ``settle_seconds``.
        controller: Default: a fresh :class:`JobAutoscaler` of ``spec``.
        report_utilization, report_throughput: Whether the job exports each metric.
        report_sync: Whether the job exports its sync share (with throughput, where the
            curve knows it: the trainer's communication over step seconds).
        change: The curve changes during the run. The result then scores the run after
            the change against the new curve's best static count (``hindsight``, the
            constraint and the rescales are those after it): how well the job re-learns.
        ceiling: Cluster arbitration caps the job for a while (passed to the controller,
            and no more replicas run than it allows), or several times (a sequence, none
            overlapping). The result then scores the run after the (last) cap lifts, as
            after a change: how well the job returns from forced moves.
        report_room: With a cap the job is not told of (``Ceiling.told``), whether it sees
            the free GPUs (``room``), as an operator that may list nodes and pods does.
        report_node_size: Whether the placement the job is told carries the GPUs per node,
            as where the operator may list nodes; without it the job knows how many nodes
            each count it ran spanned, not how many a count it has not run would.
        report_time_left: Whether the job says how many samples it has left (with its
            throughput), as our trainer does for its configured epochs or steps: what it
            would train at its count's true rate until the run's end.
        report_restarts: Whether the job's trainer measures each restart as ours does (the
            ``resize_phase_seconds`` it exports): a controller that reads them
            (:class:`ReadsRestarts`) is told each restart's cost once it is over and the
            job's pods train again (the pause only: a warm-up after it is not in it).

    Raises:
        CurveError: when the curve has no point at an allowed count.
        ValueError: on a non-positive ``hours`` or ``interval`` or a negative restart.
    """
    ceilings = _ceilings(ceiling)
    spec, noise, restarts = _checked_run(
        spec, hours, interval, noise, restart_seconds, seed, change, ceilings
    )
    step = float(spec.autoscaling.interval_seconds)
    settle = float(spec.autoscaling.settle_seconds if settle_seconds is None else settle_seconds)
    job = JobModel(curve, spec)
    curves = (curve,) if change is None else (curve, change.curve)
    best = [hindsight(c, spec) for c in curves][-1]  # checks each covers every allowed count
    changed_at: float | None = None  # when the curve changed (None: not yet)
    if controller is None:
        controller = JobAutoscaler(spec)
    rng, sync_rng, window_noise = _noise_streams(noise, seed, step)
    end = hours * 3600.0

    def running(t: float, n: int) -> _Piece:
        p = job.point(n)
        sync = p.sync_fraction if report_sync else None
        return _Piece(t, n, p.nodes, p.samples_per_second, p.gpu_utilization, True, sync)

    state = _Running(
        _Timeline([running(0.0, spec.replicas)]), spec.replicas, spec.replicas, settle, await_world
    )
    points: list[TracePoint] = []
    decisions: list[Decision] = []
    ref = job.best_per_replica()
    first = (job, ref)  # the curve before a change, for the segments before it

    def efficiency_of(n: int, at: float) -> float:
        j, r = first if changed_at is not None and at < changed_at else (job, ref)
        return j.point(n).samples_per_second / n / r if n and r else 0.0

    # with a change or a ceiling, the run is scored after it (rescales too)
    scored_from = _scored_from(change, ceilings)

    def move(to: int, at: float) -> None:
        pause = restarts.next(job.point(state.current).nodes, job.point(to).nodes)
        state.move(
            to,
            at,
            at >= scored_from,
            job.point(to).nodes,
            restarts.after(running(at + pause, to)),
            pause,
        )

    t = 0.0
    while t < end:
        t += step
        if change is not None and changed_at is None and t >= change.at_seconds:
            changed_at = change.at_seconds
            job = JobModel(change.curve, spec)
            ref = job.best_per_replica()
            state.timeline.switch(changed_at, running)
        holding = _ceiling_at(ceilings, t)
        if (placed := _cluster_places(state.asked, state.current, holding)) != state.current:
            move(placed, t)
        if t < state.quiet_until:
            continue  # the daemon measures no size younger than settleSeconds (in its world)
        observation = _told_time_left(
            _observe(
                state.timeline,
                t,
                rate_window=rate_window,
                noise=noise,
                rng=rng,
                report_utilization=report_utilization,
                report_throughput=report_throughput,
                sync_rng=sync_rng,
                window_noise=window_noise,
            ),
            job,
            end - t,
            report_time_left,
        )
        room = _room(spec, ceilings, holding, state.current) if report_room else None
        placement = _told_placement(job.curve.placement(state.current), report_node_size)
        rec = state.decide(
            controller,
            observation,
            t,
            holding,
            placement,
            room,
            restarts.last if report_restarts else None,
        )
        decisions.append(Decision(t, rec, observation))
        before = state.timeline.at(t)
        if (applied := _capped(state.asked, holding)) != state.current:
            move(applied, t)
        points.append(_trace_point(t, state.current, job.point(state.current).nodes, before, ref))
    samples, scored = (state.timeline.samples(s, end) for s in (0.0, scored_from))
    return SimulationResult(
        curve=curve.name,
        spec=spec,
        hours=hours,
        points=tuple(points),
        decisions=tuple(decisions),
        segments=state.timeline.segments(end, efficiency_of),
        samples=samples,
        gpu_hours=state.timeline.gpu_seconds(end, max(1, spec.gpus_per_replica)) / 3600.0,
        final_replicas=state.current,
        hindsight=best,
        score=_score(
            job, state.timeline, end, scored, best, state.rescales, state.settled_at, scored_from
        ),
        noise=noise,
        changed_at=changed_at,
        ceilings=ceilings,
    )
