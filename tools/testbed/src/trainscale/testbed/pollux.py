"""Speedup curves built from step times measured on a real GPU cluster (Pollux, OSDI'21).

Why this module exists: the autoscaler's benchmark must not only run on curves we invented.
The Pollux authors published the step times of six models measured on a 16-node x 4-GPU
cluster (``benchmarks/data/pollux/README.md`` says where from and what subset we keep).
This module turns that data into the speedup curves our simulator reads (a CSV of
``count,nodes,samples_per_second,gpu_utilization``, see
:func:`trainscale.operator.autoscaling.simulation.parse_csv_curve`). It is dev tooling, not
the product: the operator never reads it, and ``benchmarks/pollux_curves.py`` regenerates
the committed curve files with it. It also measures how much the published step times
scatter (:func:`step_time_scatter`, ``benchmarks/pollux_noise.py``): the only real-cluster
figure for the benchmark's otherwise assumed noise.

The data
--------
``<app>/placements.csv``: ``placement,local_bsz,step_time,sync_time``. ``placement`` is the
number of the job's GPUs on each node it uses, one digit per node, written as the
lexicographically smallest rotation of the per-node counts (4 + 1 workers is ``"14"``, 4 + 4
is ``"44"``, four nodes with one each is ``"1111"``). ``step_time`` is the seconds of one
synchronous data-parallel step at that local (per-GPU) batch, ``sync_time`` the part of it
spent waiting for the gradient all-reduce.

How a point is computed (each rule is ours, not Pollux's)
---------------------------------------------------------
* Between two measured local batches of the same placement, ``step_time`` and ``sync_time``
  are interpolated linearly in the local batch. Below the smallest measured local batch
  there is no point (nothing is extrapolated downwards).
* Above the largest measured local batch ``m`` the job accumulates gradients: the local batch
  ``b`` runs as ``k = ceil(b / m)`` micro-batches of ``b / k`` samples, of which only the last
  synchronises, so a step takes ``t + (k - 1) * (t - s)`` where ``t``/``s`` are the step and
  sync time of one micro-batch.
* Throughput is samples per second of the whole job: ``n * b / step`` for ``n`` workers.
* The sync share the trainer would export is ``sync / step`` (column ``sync_fraction``).
* GPU utilization is ESTIMATED as the non-synchronising share of the step,
  ``(step - sync) / step``: the data has no utilization column, and compute is taken to
  keep the GPU busy while synchronisation leaves it idle (input pipeline stalls are not
  in the data and not modelled).
* Workers are placed packed on 4-GPU nodes (one node filled before the next, as the operator
  asks of the scheduler): ``n`` workers use ``ceil(n / 4)`` nodes. A count whose packed
  placement was not measured has no point (the simulator raises ``CurveError`` if a run
  asks for it); the data measures every packed placement of 1 to 16 workers.
"""

from __future__ import annotations

import csv
import itertools
import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from trainscale.operator.autoscaling.placement import Placement
from trainscale.operator.autoscaling.simulation import CSV_COLUMNS, SYNC_COLUMN, Point

DATA_DIR = Path(__file__).resolve().parents[5] / "benchmarks" / "data" / "pollux"
"""Where the transcribed measurements live in this repository."""

GPUS_PER_NODE = 4
"""GPUs per node of the cluster the data was measured on."""

PLACEMENT_COLUMNS = ("placement", "local_bsz", "step_time", "sync_time")
"""The header of a ``placements.csv``."""


class PolluxDataError(ValueError):
    """A data file that is missing, malformed, or has no point for what was asked."""


@dataclass(frozen=True)
class Step:
    """Seconds of one data-parallel step and the part of it spent synchronising."""

    step_time: float
    sync_time: float


def placement_key(workers_per_node: Iterable[int]) -> str:
    """The data's name for a placement: the smallest rotation of its per-node digits.

    ``placement_key((4, 1)) == "14"``, ``placement_key((1, 4, 4)) == "144"``.

    Raises:
        PolluxDataError: a node count outside 1..9 (one digit each) or no node at all.
    """
    counts = tuple(workers_per_node)
    if not counts or any(c < 1 or c > 9 for c in counts):
        raise PolluxDataError(f"placement must be 1-9 workers on each node, got {counts!r}")
    digits = "".join(str(c) for c in counts)
    return min(digits[i:] + digits[:i] for i in range(len(digits)))


@dataclass(frozen=True)
class PolluxApp:
    """One model's measured step times: placement key -> local batch -> :class:`Step`."""

    name: str
    steps: Mapping[str, Mapping[int, Step]]

    def step(self, workers_per_node: Sequence[int], local_bsz: float) -> Step | None:
        """Step and sync seconds at a placement and local batch (None: not measured there).

        Interpolated in the local batch, with gradient accumulation above the largest
        measured one (see the module docstring).
        """
        rows = self.steps.get(placement_key(workers_per_node))
        if not rows or local_bsz <= 0:
            return None
        largest = max(rows)
        micro = math.ceil(local_bsz / largest - 1e-9)
        one = _interpolate(rows, local_bsz / micro)
        if one is None:
            return None
        compute = one.step_time - one.sync_time
        return Step(one.step_time + (micro - 1) * compute, one.sync_time)

    def throughput(
        self, workers_per_node: Sequence[int], local_bsz: float
    ) -> tuple[float, float] | None:
        """``(samples/s, estimated GPU utilization)`` of the whole job, or None if unmeasured."""
        step = self.step(workers_per_node, local_bsz)
        return None if step is None else _rates(step, sum(workers_per_node), local_bsz)

    def weak_curve(self, local_bsz: float, max_count: int) -> list[Point]:
        """Weak scaling: every worker keeps ``local_bsz``; packed counts 1..max_count."""
        return self._curve(lambda n: local_bsz, max_count)

    def strong_curve(self, global_bsz: float, max_count: int) -> list[Point]:
        """Strong scaling: the job keeps ``global_bsz``, each of n workers takes ``B / n``."""
        return self._curve(lambda n: global_bsz / n, max_count)

    def _curve(self, local: Callable[[int], float], max_count: int) -> list[Point]:
        points = []
        for n in range(1, max_count + 1):
            where = Placement.packed(n, workers_per_node_max=GPUS_PER_NODE).workers_per_node
            step = self.step(where, local(n))
            if step is not None:
                sync = step.sync_time / step.step_time
                points.append(Point(n, len(where), *_rates(step, n, local(n)), sync_fraction=sync))
        return points


@dataclass(frozen=True)
class Scatter:
    """How far one model's measured step times stray from their neighbours in the batch.

    Why: the benchmark's per-scrape noise is assumed; this is the one figure the published
    measurements give of a real cluster's. A step time grows smoothly (affinely, in Pollux's
    own model) with the local batch at a fixed placement, so each measured step time is
    compared with the line through the two measured at the neighbouring batches. Each row
    is an average over many steps (how many is not published), like one scrape's rate over
    its window. Curvature in the batch counts as scatter (which overstates the noise) and an
    offset shared by a placement's batches cancels (which hides it: a slow node in one
    placement's runs would shift that placement's whole curve), so it is the scatter of one
    measurement, not a bound on how far a curve is off.
    """

    points: int  # interior measurements compared
    relative: float  # robust standard deviation of one measurement (MAD), relative
    p90: float  # 90th percentile of the same deviations, absolute
    inversions: int  # neighbouring pairs where the larger batch was measured faster
    pairs: int  # neighbouring pairs compared


def step_time_scatter(app: PolluxApp) -> Scatter | None:
    """:class:`Scatter` of ``app``'s step times; None with no placement of 3+ batches.

    With independent relative errors ``e`` of one standard deviation ``s``, the deviation of
    the middle of three measurements from the line through the outer two (at fraction ``f``
    of the way) is ``e1 - (1 - f) e0 - f e2``, of deviation ``s sqrt(1 + (1 - f)^2 + f^2)``;
    each deviation is divided by that factor, so ``relative`` estimates ``s`` itself.
    """
    deviations: list[float] = []
    inversions = pairs = 0
    for rows in app.steps.values():
        sizes = sorted(rows)
        for lo, hi in itertools.pairwise(sizes):
            pairs += 1
            inversions += rows[hi].step_time < rows[lo].step_time
        for b0, b1, b2 in zip(sizes, sizes[1:], sizes[2:], strict=False):
            f = (b1 - b0) / (b2 - b0)
            line = (1.0 - f) * rows[b0].step_time + f * rows[b2].step_time
            spread = math.sqrt(1.0 + (1.0 - f) ** 2 + f * f)
            deviations.append((rows[b1].step_time / line - 1.0) / spread)
    if not deviations:
        return None
    magnitudes = sorted(abs(d) for d in deviations)
    median = statistics.median(magnitudes)
    p90 = magnitudes[min(len(magnitudes) - 1, math.ceil(0.9 * len(magnitudes)) - 1)]
    return Scatter(len(deviations), 1.4826 * median, p90, inversions, pairs)


def _rates(step: Step, replicas: int, local_bsz: float) -> tuple[float, float]:
    """``(samples/s, estimated GPU utilization)`` of ``replicas`` workers at this step."""
    utilization = max(0.0, step.step_time - step.sync_time) / step.step_time
    return replicas * local_bsz / step.step_time, utilization


def _interpolate(rows: Mapping[int, Step], local_bsz: float) -> Step | None:
    """Linear in the local batch between the two measured neighbours; None outside them."""
    sizes = sorted(rows)
    if local_bsz < sizes[0] - 1e-9 or local_bsz > sizes[-1] + 1e-9:
        return None
    for lo, hi in itertools.pairwise(sizes):
        if lo <= local_bsz <= hi:
            w = (local_bsz - lo) / (hi - lo)
            a, b = rows[lo], rows[hi]
            return Step(
                a.step_time + w * (b.step_time - a.step_time),
                a.sync_time + w * (b.sync_time - a.sync_time),
            )
    return rows[sizes[0]]  # one measured size, asked exactly


def read_app(name: str, data_dir: Path = DATA_DIR) -> PolluxApp:
    """Read ``<data_dir>/<name>/placements.csv``.

    Raises:
        PolluxDataError: the file is missing, a column is missing, or a value is bad
            (naming the file, line and field).
    """
    path = data_dir / name / "placements.csv"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise PolluxDataError(f"{path}: cannot read ({err.strerror})") from None
    reader = csv.DictReader(text.splitlines())
    missing = [c for c in PLACEMENT_COLUMNS if c not in (reader.fieldnames or ())]
    if missing:
        raise PolluxDataError(f"{path} line 1: missing column(s) {', '.join(missing)}")
    steps: dict[str, dict[int, Step]] = {}
    for row in reader:
        where = f"{path} line {reader.line_num}"
        key = row["placement"].strip()
        if not key.isdigit():
            raise PolluxDataError(f"{where}: field 'placement' is {key!r}, not digits")
        bsz = int(_number(row, "local_bsz", where))
        step = Step(_number(row, "step_time", where), _number(row, "sync_time", where))
        if not 0 <= step.sync_time <= step.step_time or step.step_time <= 0:
            raise PolluxDataError(f"{where}: need 0 <= sync_time <= step_time, step_time > 0")
        if bsz in steps.setdefault(key, {}):
            raise PolluxDataError(f"{where}: a second row for placement {key} batch {bsz}")
        steps[key][bsz] = step
    if not steps:
        raise PolluxDataError(f"{path}: no data rows")
    return PolluxApp(name, steps)


def _number(row: Mapping[str, str | None], field: str, where: str) -> float:
    text = (row.get(field) or "").strip()
    try:
        value = float(text)
    except ValueError:
        raise PolluxDataError(f"{where}: field {field!r} is {text!r}, not a number") from None
    if not math.isfinite(value) or value < 0:
        raise PolluxDataError(f"{where}: field {field!r} is {text!r}, not a finite number >= 0")
    return value


def curve_csv(points: Sequence[Point]) -> str:
    """The simulator's CSV text for a curve (fixed precision, so regeneration is exact), with
    the ``sync_fraction`` column when every point has it."""
    sync = all(p.sync_fraction is not None for p in points)
    lines = [",".join(CSV_COLUMNS + ((SYNC_COLUMN,) if sync else ()))]
    lines += [
        f"{p.replicas},{p.nodes},{p.samples_per_second:.3f},{p.gpu_utilization:.4f}"
        + (f",{p.sync_fraction:.4f}" if sync else "")
        for p in points
    ]
    return "\n".join(lines) + "\n"


CURVES_DIR = DATA_DIR.parent / "curves"
"""Where the generated curve files are committed (``benchmarks/pollux_curves.py``)."""

MAX_COUNT = 16
"""Largest count of the generated curves: the data's largest packed placement (4 x 4)."""

BENCHMARK_BATCHES: Mapping[str, tuple[int, int]] = {
    "bert": (12, 384),
    "cifar10": (725, 2048),
    "imagenet": (200, 3200),
    "yolov3": (16, 64),
}
"""Per model: (local batch of the weak-scaling curve, global batch of the strong-scaling one).

The global batches are the ones the Pollux workloads train with; the weak local batch is the
largest one measured on every packed placement (the GPU filled, as weak scaling runs).
deepspeech2 has no single-node or packed placements below 24 workers (only
``scalability.csv``) and ncf no step times at all in the published traces, so neither has a
curve.
"""


def benchmark_curves(data_dir: Path = DATA_DIR) -> dict[str, str]:
    """File name -> CSV text of every generated curve (what ``CURVES_DIR`` must hold)."""
    files = {}
    for name, (local_bsz, global_bsz) in BENCHMARK_BATCHES.items():
        app = read_app(name, data_dir)
        files[f"pollux-{name}-weak-{local_bsz}.csv"] = curve_csv(
            app.weak_curve(local_bsz, MAX_COUNT)
        )
        files[f"pollux-{name}-strong-{global_bsz}.csv"] = curve_csv(
            app.strong_curve(global_bsz, MAX_COUNT)
        )
    return files
