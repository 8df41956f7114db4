"""The workload simulator on node pools (``benchmarks/cluster.py --pools``).

Covers: which jobs a cluster of pools holds to one pool (the share asked, the same draw for
every policy); a policy takes free GPUs only on the nodes a job may use and a shrinking job
frees its highest indexes; under every policy, at every step of a whole workload, each job's
workers are on its pool and no node holds more workers than GPUs; the arbiter told the
pools places them there itself (what it grants is what runs), and its new workers find their
GPUs when they go to the nodes it planned for them. The placement check at every step runs
with CPU beside the GPUs too (``test_workload_cpu.py`` covers the rest of CPU), and with
jobs whose workers may not share a node (``test_workload_apart.py`` covers the rest).
"""

from __future__ import annotations

from typing import Any

import pytest

from trainscale.operator.autoscaling.workload import (
    POLICIES,
    Cluster,
    FreeGpus,
    Running,
    generate,
    simulate,
)


def test_a_share_of_the_jobs_is_held_to_one_pool() -> None:
    cluster = Cluster(nodes=8, gpus_per_node=4, interval=60.0, seed=5, pools=2, restricted=0.5)
    assert cluster.pool_nodes(0) == {f"node-0{i}" for i in range(4)}
    assert cluster.pool_nodes(1) == {f"node-0{i}" for i in range(4, 8)}
    jobs = generate(seed=5, jobs=200, hours=1.0, gpus_per_node=4)
    admitted = [cluster.admitted(job) for job in jobs]
    held = [a for a in admitted if a is not None]
    assert 70 <= len(held) <= 130  # about half, drawn per job
    assert set(held) == {cluster.pool_nodes(0), cluster.pool_nodes(1)}
    assert admitted == [cluster.admitted(job) for job in jobs]  # the same for every policy
    one_pool = Cluster(nodes=8, gpus_per_node=4, interval=60.0, seed=5)
    assert all(one_pool.admitted(job) is None for job in jobs)


def test_free_gpus_are_taken_on_the_jobs_pool_and_freed_highest_index_first() -> None:
    cluster = Cluster(nodes=4, gpus_per_node=2, interval=60.0, seed=1, pools=2, restricted=1.0)
    job = generate(seed=1, jobs=1, hours=1.0, gpus_per_node=2)[0]
    wide = Running(job, nodes=["node-00", "node-00", "node-02"])
    held = Running(job, allowed=cluster.pool_nodes(1))
    free = FreeGpus([wide, held], cluster)
    assert free.available(held) == 3  # node-02 has 1 free, node-03 2
    assert free.take(held, 5) == ["node-03", "node-03", "node-02"]  # its own node first
    assert free.available(held) == 0
    free.give(wide, 1)  # keeps worker 0 on node-00: workers 1 (node-00) and 2 (node-02) go
    assert free.free == {"node-00": 1, "node-01": 2, "node-02": 1, "node-03": 0}


def test_new_workers_take_the_nodes_planned_for_them_while_they_have_a_free_gpu() -> None:
    """The plan (the arbiter's ``preferredNodes``) sends a new worker to a node the
    scheduler's packing would not choose (node-01's last GPU, not the empty node-03); a
    planned node with no GPU left sends it where the packing would."""
    cluster = Cluster(nodes=4, gpus_per_node=2, interval=60.0, seed=1)
    job = generate(seed=1, jobs=1, hours=1.0, gpus_per_node=2)[0]
    other = Running(job, nodes=["node-00", "node-00", "node-01", "node-02"])
    mine = Running(job)

    assert FreeGpus([other, mine], cluster).take(mine, 2) == ["node-03", "node-03"]
    planned = FreeGpus([other, mine], cluster)
    assert planned.take(mine, 2, plan={"node-01": 1, "node-03": 1}) == ["node-01", "node-03"]
    assert planned.free == {"node-00": 0, "node-01": 0, "node-02": 1, "node-03": 1}
    full = FreeGpus([Running(job, nodes=[*other.nodes, "node-01"]), mine], cluster)
    assert full.take(mine, 1, plan={"node-01": 1}) == ["node-03"]


CLUSTERS: dict[str, dict[str, Any]] = {  # 8 nodes of 4 GPUs, and:
    "pools": {"pools": 2, "restricted": 0.5},  # two pools, half the jobs held to one
    "cpu": {"cpu_per_node": 32_000, "cpu_heavy": 0.3},  # 32 CPUs, 30 % heavy workers
    "apart": {"apart": 0.5, "placed_throughput": True},  # half the jobs one worker per node
}


@pytest.mark.slow  # ~12 s: five policies over a workload, on pools, with CPU, one per node
@pytest.mark.parametrize("kind", list(CLUSTERS))
@pytest.mark.parametrize("policy", list(POLICIES))
def test_every_policy_keeps_each_job_on_its_pool_each_node_within_its_cpu_and_apart_jobs_apart(
    policy: str, kind: str, checked_steps: list[int]
) -> None:
    jobs = generate(seed=3, jobs=40, hours=1.0, gpus_per_node=4)
    cluster = Cluster(nodes=8, gpus_per_node=4, interval=60.0, seed=3, **CLUSTERS[kind])
    result = simulate(policy, jobs, cluster, horizon=jobs[-1].arrival + 24 * 3600.0)
    assert result.unfinished == 0
    assert len(checked_steps) > 10
    assert result.unplaced == sum(checked_steps)


@pytest.mark.slow  # ~3 s: three workloads under arbitration
def test_the_arbiter_grants_what_the_pools_can_hold_when_told_them(
    checked_steps: list[int],
) -> None:
    """Every job held to one pool: told the pools, the arbiter grants only workers that
    find a GPU; not told (as before it read them), it grants GPUs of the other pool. With
    half the jobs held, told the pools but not where workers run (as before it freed the
    highest indexes), many grants find none: a shrinking job freed GPUs elsewhere; told
    both but with new workers placed by the scheduler alone, not on the nodes the arbiter
    planned, a few find none."""
    jobs = generate(seed=3, jobs=60, hours=2.0, gpus_per_node=4)

    def unplaced(restricted: float, **told: bool) -> int:
        cluster = Cluster(nodes=8, gpus_per_node=4, interval=60.0, seed=3, pools=2,
                          restricted=restricted, **told)  # fmt: skip
        return simulate("trainscale", jobs, cluster, horizon=jobs[-1].arrival + 86400.0).unplaced

    assert unplaced(1.0) == 0
    assert unplaced(1.0, tell_pools=False) > 0
    told = unplaced(0.5)
    assert 4 * told < unplaced(0.5, tell_order=False)
    assert 4 * told < unplaced(0.5, tell_pools=False)
    # New workers on the nodes the arbiter planned: every grant finds its GPU (23 did not,
    # placed by the scheduler's packing alone).
    assert told == 0
    assert unplaced(0.5, tell_plan=False) > 0
