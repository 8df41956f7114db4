"""The workload simulator with measured (placement-aware) throughput curves.

Covers:
- a job built from a measured curve runs at the curve's throughput, packed on the nodes: a
  job alone finishes at the time computed by hand (start-up, then samples / throughput), under
  the fixed policy and under arbitration (which grows it to its best efficient count);
- the arbiter is not told the truth: the believed curve differs from the measured one by a
  persistent error that is the same at every decision;
- a measured curve that does not cover ``max_replicas`` is refused, naming the job.
"""

from __future__ import annotations

import pytest

from trainscale.operator.autoscaling.simulation import CurveError, TableCurve
from trainscale.operator.autoscaling.workload import (
    Cluster,
    Job,
    believed_throughput,
    fitted,
    measured_job,
    simulate,
)

# 2 GPUs per node: 3 workers spill onto a second node and lose throughput (a cliff)
CURVE = TableCurve(
    "measured",
    {(1, 1): (100.0, 0.9), (2, 1): (190.0, 0.85), (3, 2): (150.0, 0.5), (4, 2): (280.0, 0.7)},
    gpus_per_node=2,
)


def test_measured_job_reads_the_curve_packed() -> None:
    job = measured_job("a", 0.0, 1.0, CURVE, min_replicas=1, max_replicas=4, requested=1)
    assert [job.throughput(n, 2) for n in range(1, 5)] == [100.0, 190.0, 150.0, 280.0]
    assert job.efficiency(4, 2) == pytest.approx(0.7)
    assert job.efficiency(3, 2) == pytest.approx(0.5)


def test_a_job_alone_finishes_when_computed_by_hand() -> None:
    # 2 GPUs at 190 samples/s: 60 s start-up, then 57,000 samples take 300 s
    job = measured_job(
        "a", 0.0, 57_000.0, CURVE, min_replicas=1, max_replicas=2, requested=2, restart=60.0
    )
    result = simulate("fixed", [job], Cluster(2, 2, 60.0, seed=1), horizon=10_000.0)
    assert result.finishes == (("a", pytest.approx(360.0)),)


def test_arbitration_gives_the_best_efficient_count_and_finishes_on_time() -> None:
    # four GPUs (efficiency 0.7, the floor) beat two; three (a cliff) are never chosen
    job = measured_job(
        "a", 0.0, 84_000.0, CURVE, min_replicas=1, max_replicas=4, requested=1, restart=60.0
    )
    result = simulate("trainscale", [job], Cluster(2, 2, 60.0, seed=1), horizon=10_000.0)
    held = {n for _, alloc, _ in result.timeline for n in alloc.values()}
    assert held == {4}
    assert result.finishes == (("a", pytest.approx(60.0 + 84_000.0 / 280.0)),)


def test_the_arbiter_believes_a_persistent_error() -> None:
    job = measured_job("a", 0.0, 1.0, CURVE, min_replicas=1, max_replicas=4, requested=1)
    believed = believed_throughput(job, 7, 2)
    truth = {n: job.throughput(n, 2) for n in range(1, 5)}
    assert believed != truth
    assert believed == {n: fitted(job, 7).throughput(n, 2) for n in range(1, 5)}
    # the error keeps the curve's shape: the cliff at 3 is still a dip
    assert believed[3] < believed[2] < believed[4]


def test_a_curve_short_of_max_replicas_is_refused() -> None:
    with pytest.raises(ValueError, match=r"b: a measured curve needs .* max_replicas 4"):
        Job("b", 0.0, 1.0, 100.0, 0.0, 0.0, 1, 4, 1, measured=(100.0, 190.0))
    with pytest.raises(CurveError, match="no point at or around 5 workers"):
        measured_job("c", 0.0, 1.0, CURVE, min_replicas=1, max_replicas=5, requested=1)
