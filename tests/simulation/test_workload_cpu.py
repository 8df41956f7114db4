"""The workload simulator with CPU beside the GPUs (``benchmarks/cluster.py --cpu-per-node``).

Covers: which jobs' workers ask half a node's CPU (the share asked, the same draw for every
policy, nothing when CPU is not modelled); a worker needs its GPU and its CPU request on one
node, and a job that shrinks frees both (that every policy keeps each node within its CPU
at every step: ``test_workload_pools.py``); the arbiter told the nodes' CPU and the workers' requests grants only workers that fit, and not
told them it grants GPUs whose CPU other workers hold.
"""

from __future__ import annotations

from typing import Any

import pytest

from trainscale.operator.autoscaling.workload import (
    Cluster,
    FreeGpus,
    Running,
    generate,
    simulate,
)


def cpu_cluster(**kw: Any) -> Cluster:
    """8 nodes of 4 GPUs and 32 CPUs; a third of the jobs' workers ask 16 of them."""
    return Cluster(nodes=8, gpus_per_node=4, interval=60.0, seed=3, cpu_per_node=32_000,
                   cpu_heavy=0.3, **kw)  # fmt: skip


def test_a_share_of_the_jobs_workers_ask_half_a_nodes_cpu() -> None:
    cluster = cpu_cluster()
    jobs = generate(seed=5, jobs=200, hours=1.0, gpus_per_node=4)
    asked = [cluster.cpu_of(job) for job in jobs]
    assert set(asked) == {16_000, 4_000}  # half a node, half a GPU's share
    assert 40 <= asked.count(16_000) <= 80  # about 0.3, drawn per job
    assert asked == [cluster.cpu_of(job) for job in jobs]  # the same for every policy
    plain = Cluster(nodes=8, gpus_per_node=4, interval=60.0, seed=5)
    assert all(plain.cpu_of(job) == 0 for job in jobs)


def test_a_worker_needs_its_gpu_and_its_cpu_on_one_node() -> None:
    """node-00 runs two heavy workers: its CPU is full though 2 GPUs are free; the next
    heavy worker goes to node-01, a light one still finds no CPU on node-00."""
    cluster = Cluster(nodes=2, gpus_per_node=4, interval=60.0, seed=1, cpu_per_node=32_000)
    job = generate(seed=1, jobs=1, hours=1.0, gpus_per_node=4)[0]
    heavy = Running(job, nodes=["node-00", "node-00"], cpu=16_000)
    light = Running(job, cpu=4_000)
    free = FreeGpus([heavy, light], cluster)
    assert free.available(heavy) == 2  # node-01's 32 CPUs: two more of them
    assert free.available(light) == 4  # node-01's 4 GPUs
    assert free.take(light, 5) == ["node-01"] * 4
    assert free.cpu == {"node-00": 0, "node-01": 16_000}
    free.give(heavy, 1)  # its second worker leaves node-00
    assert free.holds(light, "node-00") == 3  # its 3 free GPUs (CPU for 4)
    assert free.cpu == {"node-00": 16_000, "node-01": 16_000}


@pytest.mark.slow  # ~2 s: two workloads under arbitration
def test_the_arbiter_grants_what_the_nodes_cpu_holds_when_told_it(
    checked_steps: list[int],
) -> None:
    """Told the nodes' CPU and the workers' requests, every worker the arbiter grants
    finds its GPU and its CPU; not told (as it planned by GPUs alone), many find none."""
    jobs = generate(seed=3, jobs=60, hours=2.0, gpus_per_node=4)

    def unplaced(**told: bool) -> int:
        cluster = cpu_cluster(**told)
        return simulate("trainscale", jobs, cluster, horizon=jobs[-1].arrival + 86400.0).unplaced

    assert unplaced() == 0
    assert unplaced(tell_cpu=False) > 0
