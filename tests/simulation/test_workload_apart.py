"""The workload simulator with jobs whose workers may not share a node (``--apart``).

Covers: which jobs keep their workers one per node (the share asked, the same draw for every
policy, none unless asked); the scheduler puts no two of such a job's workers on one node,
nor one where it runs already, and a worker that finds no such node stays Pending (that
every policy keeps them apart at every step: ``test_workload_pools.py``); the arbiter told
the bound grants only workers that find a node, not told (as before it read the rule) it
grants some that find none; such a job's floor and best size are those of its workers
spread; the GPU time jobs hold under their efficiency floors is counted.
"""

from __future__ import annotations

import pytest

from trainscale.operator.autoscaling.workload import (
    Cluster,
    FreeGpus,
    Job,
    Running,
    alone_jct,
    generate,
    simulate,
)


def apart_cluster(**kw: object) -> Cluster:
    """8 nodes of 4 GPUs, throughput where the workers run, half the jobs one per node."""
    return Cluster(nodes=8, gpus_per_node=4, interval=60.0, seed=3, apart=0.5,
                   placed_throughput=True, **kw)  # type: ignore[arg-type]  # fmt: skip


def test_a_share_of_the_jobs_keep_their_workers_one_per_node() -> None:
    cluster = apart_cluster()
    jobs = generate(seed=5, jobs=200, hours=1.0, gpus_per_node=4)
    apart = [cluster.apart_of(job) for job in jobs]
    assert 70 <= sum(apart) <= 130  # about half, drawn per job
    assert apart == [cluster.apart_of(job) for job in jobs]  # the same for every policy
    plain = Cluster(nodes=8, gpus_per_node=4, interval=60.0, seed=5)
    assert not any(plain.apart_of(job) for job in jobs)


def test_its_workers_go_one_to_a_node_where_it_runs_none() -> None:
    cluster = Cluster(nodes=3, gpus_per_node=4, interval=60.0, seed=1, apart=1.0)
    job = generate(seed=1, jobs=1, hours=1.0, gpus_per_node=4)[0]
    apart = Running(job, nodes=["node-00"], apart=True)
    packed = Running(job)
    free = FreeGpus([apart, packed], cluster)
    assert free.holds(apart, "node-00") == 0 and free.holds(apart, "node-01") == 1
    assert free.available(apart) == 2 and free.available(packed) == 11
    assert free.take(apart, 3, placed=apart.nodes) == ["node-01", "node-02"]  # one Pending
    assert apart.nodes == ["node-00", "node-01", "node-02"]
    assert free.take(packed, 2) == ["node-00", "node-00"]


@pytest.mark.slow  # ~3 s: two workloads under arbitration
def test_the_arbiter_grants_what_finds_a_node_when_told_the_bound(
    checked_steps: list[int],
) -> None:
    """Told that a job's workers may not share a node, every worker the arbiter grants finds
    a node; not told (it planned them packed), some find none."""
    jobs = generate(seed=3, jobs=60, hours=2.0, gpus_per_node=4)

    def unplaced(**told: bool) -> int:
        cluster = apart_cluster(**told)
        return simulate("trainscale", jobs, cluster, horizon=jobs[-1].arrival + 86400.0).unplaced

    assert unplaced() == 0
    assert unplaced(tell_apart=False) > 0


def test_a_job_one_per_node_has_the_floor_and_best_size_of_its_workers_spread() -> None:
    """With a cliff of 0.4 across nodes, a job asking 2 workers apart accepted their
    efficiency spread (1 / 1.45), not packed (1 / 1.05); alone, its best size is its largest
    spread, and a job asking 1 keeps the 0.7 floor its spread counts break."""
    job = Job("j", arrival=0.0, samples=1e6, serial=0.05, cliff=0.4, rate=100.0,
              min_replicas=1, max_replicas=4, requested=2, restart=60.0)  # fmt: skip
    assert job.min_efficiency(4) == pytest.approx(0.7)
    assert job.min_efficiency(4, apart=True) == pytest.approx(1 / 1.45)
    assert job.floor_count(4) == 4
    assert job.floor_count(4, apart=True) == 2
    single = Job("k", arrival=0.0, samples=1e6, serial=0.05, cliff=0.4, rate=100.0,
                 min_replicas=1, max_replicas=4, requested=1, restart=60.0)  # fmt: skip
    assert single.floor_count(4, apart=True) == 1
    cluster = Cluster(nodes=4, gpus_per_node=4, interval=60.0, seed=1, apart=1.0,
                      placed_throughput=True)  # fmt: skip
    assert alone_jct(job, cluster) == pytest.approx(60.0 + 1e6 / (100.0 * 4 / 1.55))


def test_gpu_time_under_a_jobs_floor_is_counted() -> None:
    """Two 4-GPU nodes: a and c take 3 GPUs each, so b's 2 workers run one on each node.
    With a cliff of 0.4 across nodes b's efficiency is 1 / 1.45, under its 0.7 floor: its
    2 GPUs for the hour are counted, and nothing of a and c (packed, 1 / 1.1). With a
    cliff of 0.2 (1 / 1.25) nothing is."""
    for cliff, expected in ((0.4, 2.0), (0.2, 0.0)):
        jobs = [
            Job(name, arrival=0.0, samples=1e9, serial=0.05, cliff=cliff, rate=100.0,
                min_replicas=n, max_replicas=n, requested=n, restart=0.0)
            for name, n in (("a", 3), ("c", 3), ("b", 2))
        ]  # fmt: skip
        cluster = Cluster(nodes=2, gpus_per_node=4, interval=60.0, seed=1, placed_throughput=True)
        result = simulate("fixed", jobs, cluster, horizon=3600.0)
        assert [s.nodes for s in cluster.states] == [
            ["node-00"] * 3, ["node-01"] * 3, ["node-00", "node-01"],
        ]  # fmt: skip
        assert result.below_floor_hours == pytest.approx(expected)
