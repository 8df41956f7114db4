"""Pollux's published workloads as the cluster simulator's jobs.

Why this module exists: issue 10's claim is about the trace Pollux (OSDI'21) published, 160
jobs over 8 hours on 16 nodes x 4 GPUs, and the benchmark should replay *that*, with the
speedup curves its authors measured, not only workloads we generate. The data is
transcribed under ``benchmarks/data/pollux/`` (provenance in its READMEs); this module reads
it and builds :class:`~trainscale.operator.autoscaling.workload.Job` values, so the simulator
(:mod:`trainscale.operator.autoscaling.workload`, pure) never reads a file. Dev tooling, not
the product.

One Pollux workload row (``name,time,application,num_replicas,batch_size``) becomes a job:

* ``arrival`` = ``time``; ``requested`` (the fixed-size baseline, as Pollux's baselines ran
  it) = ``num_replicas``, lowered to the job's maximum when its batch cannot be split that far;
  ``min_replicas`` 1; priority 0.
* ``total_samples`` = iterations at the completion epoch x the batch, from
  ``benchmarks/data/pollux/job_lengths.csv`` at the job's batch size. The stored copy of the
  artifact we could read lacks some validation runs (cifar10 4096, imagenet 3200 and 6400,
  ncf 32768: the workload generator picked batch sizes among the validated ones, so the full
  artifact has them); such a job takes the row of the largest batch size below its own with
  one. A job's samples barely depend on its batch (the same epochs: bert 177k, 181k and 184k
  samples at batch 12, 96 and 384), so this is the same work to within a few percent. Pollux
  counts progress in statistical-efficiency-weighted samples; at a fixed batch the validation
  run's own iteration count is what it takes. Trainscale does not adapt batch sizes, so the
  job keeps its batch while its worker count changes (strong scaling).
* The throughput curve: strong scaling at that global batch from the measured step times
  (a ``curve_for(application, batch)`` function, see :func:`load_workload`); the local batch
  is ``batch / n`` (gradient accumulation above the largest local batch measured).
* ``max_replicas`` = ``min(64, batch // min_local_batch)``: no worker gets less than the
  smallest local batch measured.
* ``restart`` = :data:`RESTART_SECONDS`, the 30 s Pollux's simulator charges every
  reallocation (its testbed measured restarts of roughly 25-250 s; a larger charge is a
  ``--restart`` away in the benchmark).

An application without step-time data (``ncf``: the artifact ships its validation runs, not
its placements) gets :data:`ASSUMED_THROUGHPUT`: a one-GPU job (Pollux itself never gives
ncf more than one GPU, and every ncf row asks for one) at an assumed throughput. Its run time
is then the same under every policy; only its wait differs.

:func:`trace_files` writes a workload as ``trainscale simulate --workload``'s trace CSV, its
``curve`` column naming a curve file per (application, batch) in the simulator's curve format
(``benchmarks/pollux_trace.py`` writes them to a directory), so the product's CLI replays the
same jobs ``benchmarks/cluster.py --pollux`` does.
"""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from trainscale.operator.autoscaling.placement import Placement
from trainscale.operator.autoscaling.simulation import Curve, CurveError, TableCurve
from trainscale.operator.autoscaling.workload import Job, measured_job
from trainscale.testbed.pollux import DATA_DIR, GPUS_PER_NODE, PolluxApp, read_app

WORKLOAD_COLUMNS = ("name", "time", "application", "num_replicas", "batch_size")
LENGTH_COLUMNS = ("application", "batch_size", "completion_epoch", "iterations", "max_batch_size")
MAX_REPLICAS = 64
RESTART_SECONDS = 30.0
ASSUMED_THROUGHPUT: Mapping[str, float] = {"ncf": 16384 / 0.1}
"""Samples/s of a one-GPU job for applications without step-time data (an assumption:
0.1 s per 16,384-sample step, so an ncf job runs about 5 minutes)."""


class PolluxTraceError(ValueError):
    """A workload or job-length file that cannot be used; the message names the file, the
    line and the column."""


@dataclass(frozen=True)
class PolluxJob:
    """One row of a Pollux workload CSV."""

    name: str
    time: float
    application: str
    num_replicas: int
    batch_size: int


@dataclass(frozen=True)
class JobLength:
    """Iterations an application's job needs at one batch size (a ``job_lengths.csv`` row)."""

    application: str
    batch_size: int
    completion_epoch: int
    iterations: int
    max_batch_size: int


@dataclass(frozen=True)
class Scaling:
    """What the measured data says about an application at one global batch: its strong-
    scaling curve and the counts it covers (``min_replicas == max_replicas`` for a job the
    data only measured at its requested size)."""

    curve: Curve
    min_replicas: int
    max_replicas: int


ScalingSource = Callable[[str, int, int], Scaling | None]
"""``(application, batch, requested) -> Scaling``, or None without step-time data."""


def _rows(path: Path, columns: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    """The rows of a CSV with the given columns, each with its line number."""
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise PolluxTraceError(f"{path}: missing column(s) {', '.join(missing)}")
        rows = [(i + 2, {k: (v or "").strip() for k, v in row.items() if k}) for i, row in
                enumerate(reader)]  # fmt: skip
    if not rows:
        raise PolluxTraceError(f"{path}: no rows")
    return rows


def _number(path: Path, line: int, row: Mapping[str, str], column: str, *, whole: bool) -> float:
    text = row.get(column, "")
    try:
        value = float(int(text)) if whole else float(text)
    except ValueError:
        kind = "a whole number" if whole else "a number"
        raise PolluxTraceError(
            f"{path} line {line}: {column} must be {kind}, got {text!r}"
        ) from None
    if value < 0 or not math.isfinite(value):
        raise PolluxTraceError(f"{path} line {line}: {column} must be >= 0, got {text!r}")
    return value


def read_workload(path: Path) -> list[PolluxJob]:
    """A Pollux workload CSV (``name,time,application,num_replicas,batch_size``), by time.

    Raises:
        PolluxTraceError: a missing column, a bad value or a duplicate name, naming the line.
    """
    jobs: list[PolluxJob] = []
    for line, row in _rows(path, WORKLOAD_COLUMNS):
        replicas = int(_number(path, line, row, "num_replicas", whole=True))
        batch = int(_number(path, line, row, "batch_size", whole=True))
        if replicas < 1 or batch < 1:
            raise PolluxTraceError(
                f"{path} line {line}: num_replicas and batch_size must be >= 1,"
                f" got {replicas} and {batch}"
            )
        if not row["name"] or not row["application"]:
            raise PolluxTraceError(f"{path} line {line}: name and application must be set")
        jobs.append(
            PolluxJob(
                row["name"],
                _number(path, line, row, "time", whole=False),
                row["application"],
                replicas,
                batch,
            )
        )
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise PolluxTraceError(f"{path}: job names must be unique")
    return sorted(jobs, key=lambda j: j.time)


def read_job_lengths(path: Path) -> dict[tuple[str, int], JobLength]:
    """``job_lengths.csv``: (application, batch size) -> its length.

    Raises:
        PolluxTraceError: a missing column or a bad value, naming the line.
    """
    out: dict[tuple[str, int], JobLength] = {}
    for line, row in _rows(path, LENGTH_COLUMNS):
        length = JobLength(
            row["application"],
            *(int(_number(path, line, row, c, whole=True)) for c in LENGTH_COLUMNS[1:]),
        )
        if length.iterations < 1 or not 1 <= length.batch_size <= length.max_batch_size:
            raise PolluxTraceError(
                f"{path} line {line}: need iterations >= 1 and 1 <= batch_size <="
                f" max_batch_size, got {length.iterations}, {length.batch_size},"
                f" {length.max_batch_size}"
            )
        out[(length.application, length.batch_size)] = length
    return out


def job_length(job: PolluxJob, lengths: Mapping[tuple[str, int], JobLength]) -> JobLength:
    """The job-length row for ``job``: at its batch size, or else at the largest batch size
    below it with a row (the smallest above when none is below); see the module docstring.

    Raises:
        PolluxTraceError: the application has no row.
    """
    rows = sorted(
        (ln for ln in lengths.values() if ln.application == job.application),
        key=lambda ln: ln.batch_size,
    )
    if not rows:
        raise PolluxTraceError(f"{job.name}: no job length for application {job.application!r}")
    below = [ln for ln in rows if ln.batch_size <= job.batch_size]
    return below[-1] if below else rows[0]


def to_job(
    job: PolluxJob,
    lengths: Mapping[tuple[str, int], JobLength],
    scaling: ScalingSource,
    *,
    total_gpus: int,
    restart: float = RESTART_SECONDS,
) -> Job:
    """One simulator job from a workload row (module docstring).

    ``scaling`` gives the measured curve (:func:`measured_scaling`), or None when the
    application has no step-time data (then :data:`ASSUMED_THROUGHPUT` applies).

    Raises:
        PolluxTraceError: no job length, no data for the application, or a curve without a
            point the job needs.
    """
    length = job_length(job, lengths)
    samples = float(length.iterations * length.batch_size)
    measured = scaling(job.application, job.batch_size, job.num_replicas)
    if measured is None:
        if job.application not in ASSUMED_THROUGHPUT:
            raise PolluxTraceError(f"{job.name}: no step times for {job.application!r}")
        rate = ASSUMED_THROUGHPUT[job.application]
        return Job(job.name, job.time, samples, rate, 0.0, 0.0, 1, 1, 1, restart=restart,
                   measured=(rate,))  # fmt: skip
    most = max(measured.min_replicas, min(MAX_REPLICAS, total_gpus, measured.max_replicas))
    try:
        return measured_job(
            job.name,
            job.time,
            samples,
            measured.curve,
            min_replicas=measured.min_replicas,
            max_replicas=most,
            requested=max(measured.min_replicas, min(job.num_replicas, most)),
            restart=restart,
        )
    except CurveError as err:
        raise PolluxTraceError(f"{job.name}: {err}") from None


SCALABILITY_COLUMNS = ("num_nodes", "num_replicas", "local_bsz", "step_time", "sync_time")


def _spread_step_time(path: Path, replicas: int, local_bsz: float) -> float:
    """Seconds per step of ``replicas`` workers one per node (``scalability.csv`` rows with
    ``num_nodes == num_replicas``), linear in the local batch between measured ones.

    Raises:
        PolluxTraceError: no row for that count, or the local batch outside the measured ones.
    """
    steps = {
        int(_number(path, line, row, "local_bsz", whole=True)): _number(
            path, line, row, "step_time", whole=False
        )
        for line, row in _rows(path, SCALABILITY_COLUMNS)
        if row["num_nodes"] == row["num_replicas"] == str(replicas)
    }
    sizes = sorted(steps)
    for lo, hi in itertools.pairwise(sizes):
        if lo <= local_bsz <= hi:
            return steps[lo] + (local_bsz - lo) / (hi - lo) * (steps[hi] - steps[lo])
    raise PolluxTraceError(
        f"{path}: no step time for {replicas} workers one per node at local batch"
        f" {local_bsz:g} (measured local batches {sizes})"
    )


def measured_scaling(data_dir: Path = DATA_DIR) -> ScalingSource:
    """The :data:`ScalingSource` of the transcribed measurements.

    An application with ``placements.csv`` gets its strong-scaling curve at the batch
    (:meth:`PolluxApp.strong_curve`, packed on 4-GPU nodes) over the counts from 1 up to the
    first one the data does not cover (every packed placement is measured up to 16 workers,
    and no worker goes below the smallest local batch measured), and at 2 to 4 workers one
    per node as well (the data's ``11``, ``111``, ``1111``: what those counts make spread
    over nodes, read by ``benchmarks/cluster.py --placed``). One with only
    ``scalability.csv`` (deepspeech2: every placement there spreads over 6 or more nodes) is
    a rigid job at its requested size, one worker per node as measured. Any other has none.
    """
    apps: dict[str, PolluxApp] = {}

    def source(application: str, batch: int, requested: int) -> Scaling | None:
        if (data_dir / application / "placements.csv").exists():
            if application not in apps:
                apps[application] = read_app(application, data_dir)
            points: dict[tuple[int, int], tuple[float, float]] = {}
            for p in apps[application].strong_curve(batch, MAX_REPLICAS):
                if p.replicas != len(points) + 1:
                    break
                points[(p.replicas, p.nodes)] = (p.samples_per_second, p.gpu_utilization)
            if not points:
                raise PolluxTraceError(f"{application}: no measured point at batch {batch}")
            packed = len(points)
            for n in range(2, min(GPUS_PER_NODE, packed) + 1):  # one worker per node
                spread = apps[application].throughput((1,) * n, batch / n)
                if spread is None:
                    break
                points[(n, n)] = spread
            curve = TableCurve(f"{application}-{batch}", points, gpus_per_node=GPUS_PER_NODE)
            return Scaling(curve, 1, packed)
        path = data_dir / application / "scalability.csv"
        if path.exists():
            rate = batch / _spread_step_time(path, requested, batch / requested)
            linear = {
                (n, -(-n // GPUS_PER_NODE)): (rate * n / requested, 1.0)
                for n in range(1, requested + 1)
            }
            curve = TableCurve(f"{application}-{batch}-rigid", linear, GPUS_PER_NODE)
            return Scaling(curve, requested, requested)
        return None

    return source


def workload_path(number: int, data_dir: Path = DATA_DIR) -> Path:
    """The transcribed ``workload-<number>.csv``."""
    return data_dir / "workloads" / f"workload-{number}.csv"


def load_workload(
    number: int,
    scaling: ScalingSource,
    *,
    total_gpus: int,
    restart: float = RESTART_SECONDS,
    data_dir: Path = DATA_DIR,
) -> list[Job]:
    """Workload ``number`` (``workloads/workload-<number>.csv``) as simulator jobs."""
    lengths = read_job_lengths(data_dir / "job_lengths.csv")
    rows = read_workload(workload_path(number, data_dir))
    return [to_job(r, lengths, scaling, total_gpus=total_gpus, restart=restart) for r in rows]


TRACE_FILE = "trace.csv"
CURVES_SUBDIR = "curves"
TRACE_HEADER = ("name", "arrival_seconds", "total_samples", "curve", "min_replicas",
                "max_replicas", "requested_replicas", "priority", "restart_seconds")  # fmt: skip
CURVE_HEADER = "count,nodes,samples_per_second,gpu_utilization"


def _curve_file(job: PolluxJob, measured: Scaling | None, most: int) -> tuple[str, str]:
    """``(file name, CSV text)`` of the curve a workload row's job runs on, counts 1 to
    ``most`` packed and, where measured, 2 to 4 one per node (``repr`` numbers, so reading it
    back gives the same floats). A job
    without step-time data gets its assumed one-GPU throughput, utilization written as 1."""
    if measured is None:
        rows = [(1, 1, ASSUMED_THROUGHPUT[job.application], 1.0)]
        name = f"{job.application}-assumed.csv"
    else:
        points = [measured.curve.point(n) for n in range(1, most + 1)]
        rows = [(p.replicas, p.nodes, p.samples_per_second, p.gpu_utilization) for p in points]
        for n in range(2, min(most, GPUS_PER_NODE) + 1):  # one worker per node, as measured
            try:
                spread = measured.curve.measure(Placement((1,) * n, GPUS_PER_NODE))
            except CurveError:
                break
            rows.append((n, n, *spread))
        rigid = f"-rigid-{measured.max_replicas}" if measured.min_replicas > 1 else ""
        name = f"{job.application}-{job.batch_size}{rigid}.csv"
    lines = [CURVE_HEADER, *(f"{n},{k},{x!r},{u!r}" for n, k, x, u in rows)]
    return name, "\n".join(lines) + "\n"


def trace_files(
    rows: Sequence[PolluxJob], jobs: Sequence[Job], scaling: ScalingSource
) -> dict[str, str]:
    """A workload as ``trainscale simulate --workload``'s trace: relative path -> text of
    :data:`TRACE_FILE` (one row per job, the ``curve`` column naming a file under
    :data:`CURVES_SUBDIR`) and of each curve file. ``rows`` are the workload's
    (:func:`read_workload`) and ``jobs`` what :func:`load_workload` made of them, in the same
    order; reading the trace back
    (:func:`~trainscale.operator.autoscaling.workload.read_trace`) gives ``jobs``.

    Raises:
        PolluxTraceError: rows and jobs that do not match, or two different curves under
            one file name.
    """
    files: dict[str, str] = {}
    lines = [",".join(TRACE_HEADER)]
    if [r.name for r in rows] != [j.name for j in jobs]:
        raise PolluxTraceError("the jobs are not the rows' (names or order differ)")
    for row, job in zip(rows, jobs, strict=True):
        measured = scaling(row.application, row.batch_size, row.num_replicas)
        name, text = _curve_file(row, measured, job.max_replicas)
        path = f"{CURVES_SUBDIR}/{name}"
        if files.setdefault(path, text) != text:
            raise PolluxTraceError(f"{job.name}: a different curve already named {path}")
        bounds = (job.min_replicas, job.max_replicas, job.requested)
        lines.append(",".join([job.name, repr(job.arrival), repr(job.samples), path,
                               *map(str, bounds), str(job.priority), repr(job.restart)]))  # fmt: skip
    return {TRACE_FILE: "\n".join(lines) + "\n", **files}
