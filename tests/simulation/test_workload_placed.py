"""The workload simulator where throughput follows placement (``benchmarks/cluster.py
--placed``).

Covers: the parametric family pays its node-boundary cliff whenever a job's workers span two
nodes, not only past a node's GPUs (a measured curve has packed rows and keeps them); a
running job progresses at the throughput of where its workers run, and the per-job
autoscaler is told that placement; without the mode nothing changes; the arbiter is told
each job's throughput across nodes only in that mode.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from trainscale.operator.autoscaling import workload
from trainscale.operator.autoscaling.arbiter import Allocation, Capacity, JobDemand, allocate
from trainscale.operator.autoscaling.simulation import TableCurve
from trainscale.operator.autoscaling.workload import (
    Cluster,
    Job,
    Running,
    _advance,
    believed_across,
    believed_throughput,
    fitted,
    measured_job,
    observe,
    placed,
    policy_trainscale,
)

JOB = Job(
    name="j", arrival=0.0, samples=1e9, rate=100.0, serial=0.02, cliff=0.5,
    min_replicas=1, max_replicas=8, requested=4,
)  # fmt: skip


def test_the_cliff_is_paid_where_the_workers_span_two_nodes() -> None:
    packed = JOB.throughput(4, gpus_per_node=4)
    assert packed == pytest.approx(100.0 * 4 / 1.06)
    assert JOB.throughput(4, 4, nodes=1) == packed
    assert JOB.throughput(4, 4, nodes=2) == pytest.approx(100.0 * 4 / 1.56)
    assert JOB.throughput(6, 4) == JOB.throughput(6, 4, nodes=2)  # packed spans two already
    assert JOB.efficiency(4, 4, nodes=2) == pytest.approx(1 / 1.56)
    measured = dataclasses.replace(JOB, measured=tuple(100.0 * n for n in range(1, 9)))
    assert measured.throughput(4, 4, nodes=2) == measured.throughput(4, 4)


@pytest.mark.parametrize(
    ("mode", "nodes", "expected"),
    [
        pytest.param(True, ["node-00"] * 2 + ["node-01"] * 2, 100.0 * 4 / 1.56, id="spread"),
        pytest.param(True, ["node-00"] * 4, 100.0 * 4 / 1.06, id="packed"),
        pytest.param(False, ["node-00"] * 2 + ["node-01"] * 2, 100.0 * 4 / 1.06, id="count-only"),
    ],
)
def test_a_running_job_progresses_at_the_throughput_of_where_it_runs(
    mode: bool, nodes: list[str], expected: float
) -> None:
    cluster = Cluster(nodes=2, gpus_per_node=4, interval=60.0, seed=1, placed_throughput=mode)
    s = Running(JOB, replicas=4, started=True, nodes=list(nodes))
    _advance(s, 0.0, 60.0, cluster)
    assert s.done == pytest.approx(expected * 60.0)
    assert s.last_rate == pytest.approx(expected)


def test_the_per_job_autoscaler_is_told_where_the_workers_run() -> None:
    spread = ["node-00", "node-01", "node-01"]
    on = Cluster(nodes=2, gpus_per_node=4, interval=60.0, seed=1, placed_throughput=True)
    s = Running(JOB, replicas=3, started=True, nodes=list(spread))
    assert placed(s, on).workers_per_node == (2, 1)
    assert observe(s, on, 60.0).nodes == 2
    off = Cluster(nodes=2, gpus_per_node=4, interval=60.0, seed=1)
    assert placed(s, off).workers_per_node == (3,)
    assert observe(s, off, 60.0).nodes == 1


def test_the_arbiter_is_told_the_throughput_across_nodes_only_where_it_counts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Counts that fit one node, from the same fitted model as the packed figures; nothing
    when throughput does not follow placement, or in the ablation."""
    across = believed_across(JOB, 1, 4)
    assert sorted(across) == [2, 3, 4]
    packed = believed_throughput(JOB, 1, 4)
    assert all(across[n] < packed[n] for n in across)
    s = Running(JOB, replicas=2, started=True, nodes=["node-00", "node-01"])
    seen: list[Mapping[int, float]] = []

    def spy(demands: Sequence[JobDemand], capacity: Capacity, **kw: Any) -> Allocation:
        seen.extend(d.throughput_across_nodes for d in demands)
        return allocate(demands, capacity, **kw)

    monkeypatch.setattr(workload, "allocate", spy)
    for mode, tell in ((True, True), (True, False), (False, True)):
        cluster = Cluster(nodes=2, gpus_per_node=4, interval=60.0, seed=1,
                          placed_throughput=mode, tell_across=tell)  # fmt: skip
        policy_trainscale([s], cluster, 0.0)
    assert [dict(x) for x in seen] == [dict(across), {}, {}]


def test_a_resized_job_moves_its_workers_to_where_the_plan_holds_them() -> None:
    """As the operator's reconcile rule 11: a job resized with a plan on one node loses its
    workers elsewhere (the first indexes keep their slots), and the placement that follows
    puts them on the planned node; a job that keeps its size is not moved."""
    cluster = Cluster(nodes=3, gpus_per_node=4, interval=60.0, seed=1, placed_throughput=True)
    s = Running(JOB, replicas=2, started=True, nodes=["node-00", "node-01"])
    other = Running(dataclasses.replace(JOB, name="o"), replicas=6, started=True,
                    nodes=["node-00"] * 3 + ["node-01"] * 3)  # fmt: skip
    cluster.plans = {"j": {"node-02": 3}, "o": {"node-00": 3, "node-01": 3}}
    assert workload._apply([s, other], {"j": 3, "o": 6}, cluster) == {"j": 3, "o": 6}
    assert s.nodes == ["node-02"] * 3
    assert other.nodes == ["node-00"] * 3 + ["node-01"] * 3
    kept = Running(JOB, replicas=2, started=True, nodes=["node-00", "node-01"])
    cluster.plans = {"j": {"node-02": 2}}
    workload._apply([kept], {"j": 2}, cluster)
    assert kept.nodes == ["node-00", "node-01"]


MEASURED = TableCurve(
    "measured",
    {(1, 1): (100.0, 0.9), (2, 1): (190.0, 0.85), (3, 2): (250.0, 0.7), (4, 2): (330.0, 0.7),
     (2, 2): (150.0, 0.6)},
    gpus_per_node=2,
)  # fmt: skip


def test_a_measured_curve_spread_over_nodes_reads_its_rows_one_worker_per_node() -> None:
    """Its packed rows where packed; 2 workers on two nodes read the measured one-per-node
    row (150, not 190); counts without such a row, or beyond a node, as packed. The
    arbiter's belief carries the same persistent error on both."""
    job = measured_job("m", 0.0, 1.0, MEASURED, min_replicas=1, max_replicas=4, requested=2)
    assert job.measured_across == (150.0,)
    assert [job.throughput(n, 2) for n in range(1, 5)] == [100.0, 190.0, 250.0, 330.0]
    assert job.throughput(2, 2, nodes=2) == 150.0
    assert job.throughput(3, 2, nodes=3) == 250.0  # no 3-worker row beyond a 2-GPU node
    believed = fitted(job, 7)
    assert believed.measured_across[0] != 150.0  # the job's persistent error
    assert believed_across(job, 7, 2) == {2: believed.measured_across[0]}
    packed_only = TableCurve("p", {k: v for k, v in MEASURED.points.items() if k != (2, 2)}, 2)
    job = measured_job("p", 0.0, 1.0, packed_only, min_replicas=1, max_replicas=4, requested=2)
    assert job.measured_across == () and job.throughput(2, 2, nodes=2) == 190.0
    assert believed_across(job, 7, 2) == {}
