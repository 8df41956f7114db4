"""How long one cluster arbitration takes, in pure Python.

Why this script exists: the operator runs :func:`trainscale.operator.autoscaling.allocate`
every interval over every managed job; issue 10 asks for 200 jobs on 1,000 GPUs decided in
well under a second. Timing belongs here, not in the tests (no timed assertions there).

The workload: ``--jobs`` jobs on ``--nodes`` nodes of ``--gpus-per-node`` GPUs, each job
with a throughput per count for every count up to its ``maxReplicas`` (as the caller fills
from ``JobAutoscaler.predict_throughput``), an Amdahl-like curve with a cliff past one node,
random bounds, 1 or 2 GPUs per worker, priorities, efficiency floors on half of them, a
current allocation on two thirds of them (restart costs charged) with its workers' nodes by
replica index (packed, as the operator reports them), and a few pinned jobs. With
``--requests SHARE``, that share of the jobs' workers request CPU and memory
(``JobDemand.cpu_millis_per_worker``), placed against every node's CPU and memory
(``Capacity.free_cpu_millis``: 16 CPUs and 128 GiB per GPU): a GPU's share for most, half a
node's CPU for a fifth of them (data loaders: 2 workers per node).

Run:  .venv/bin/python benchmarks/arbiter_speed.py [--jobs 200] [--nodes 250] [--runs 20]
      [--requests 1.0]
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import sys
import time

from trainscale.operator.autoscaling import allocate
from trainscale.operator.autoscaling.arbiter import Capacity, JobDemand

CPU_PER_GPU = 16_000  # millicores
MEMORY_PER_GPU = 128 * 2**30  # bytes


def make_workload(
    jobs: int,
    nodes: int,
    gpus_per_node: int,
    seed: int,
    requests: float = 0.0,
    across: bool = True,
) -> tuple[list[JobDemand], Capacity]:
    rng = random.Random(seed)
    names = [f"node-{i:04d}" for i in range(nodes)]
    demands: list[JobDemand] = []
    for i in range(jobs):
        gpw = 2 if rng.random() < 0.2 else 1
        lo = rng.choice([1, 1, 1, 2, 4])
        hi = max(lo, rng.choice([8, 16, 32, 64]))
        serial = rng.uniform(0.0, 0.08)
        cliff = rng.uniform(0.0, 0.3)
        throughput = {
            n: 100.0 * n / (1.0 + serial * (n - 1) + (cliff if n * gpw > gpus_per_node else 0.0))
            for n in range(1, hi + 1)
        }
        one_node = min(hi, gpus_per_node // gpw)  # across two nodes: the cliff at any count
        spread = {n: 100.0 * n / (1.0 + serial * (n - 1) + cliff) for n in range(2, one_node + 1)}
        current = rng.randint(lo, min(hi, lo * 4)) if rng.random() < 0.66 else 0
        cpu = memory = 0
        if rng.random() < requests:
            cpu = CPU_PER_GPU * (gpus_per_node // 2 if rng.random() < 0.2 else gpw)
            memory = MEMORY_PER_GPU * gpw
        demands.append(
            JobDemand(
                key=f"ns/job-{i:03d}",
                throughput=throughput,
                gpus_per_worker=gpw,
                min_replicas=lo,
                max_replicas=hi,
                min_efficiency=0.6 if rng.random() < 0.5 else None,
                priority=rng.choice([0, 0, 0, 100]),
                created=float(i),
                current_replicas=current,
                restart_cost_seconds=rng.uniform(10, 120),
                pinned=rng.random() < 0.03,
                cpu_millis_per_worker=cpu,
                memory_bytes_per_worker=memory,
                throughput_across_nodes=spread if across else {},
            )
        )
    capacity = Capacity(
        dict.fromkeys(names, gpus_per_node),
        free_cpu_millis=dict.fromkeys(names, CPU_PER_GPU * gpus_per_node),
        free_memory_bytes=dict.fromkeys(names, MEMORY_PER_GPU * gpus_per_node),
    )
    return _placed(demands, names, capacity, rng), capacity


def _placed(
    demands: list[JobDemand], names: list[str], capacity: Capacity, rng: random.Random
) -> list[JobDemand]:
    """Each running job's workers on nodes, by replica index, as the operator passes them:
    packed (a node filled before the next) from a random node on, within the GPUs, CPU
    and memory."""
    gpus, cpu = dict(capacity.free_gpus), dict(capacity.free_cpu_millis)
    memory = dict(capacity.free_memory_bytes)
    out = []
    for demand in demands:
        order: list[str] = []
        start = rng.randrange(len(names))
        ring = names[start:] + names[:start]
        for _ in range(demand.current_replicas):
            node = next(
                (
                    n
                    for n in ring
                    if gpus[n] >= demand.gpus_per_worker
                    and cpu[n] >= demand.cpu_millis_per_worker
                    and memory[n] >= demand.memory_bytes_per_worker
                ),
                None,
            )
            if node is None:
                break
            gpus[node] -= demand.gpus_per_worker
            cpu[node] -= demand.cpu_millis_per_worker
            memory[node] -= demand.memory_bytes_per_worker
            order.append(node)
        out.append(dataclasses.replace(demand, worker_nodes=tuple(order)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--nodes", type=int, default=250)
    parser.add_argument("--gpus-per-node", type=int, default=4)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--requests", type=float, default=0.0,
                        help="share of the jobs whose workers request CPU and memory")  # fmt: skip
    parser.add_argument("--no-across", action="store_true",
                        help="no job's throughput across nodes (as before 2026-12-05)")  # fmt: skip
    args = parser.parse_args(argv)
    times: list[float] = []
    allocation = None
    for run in range(args.runs):
        demands, capacity = make_workload(
            args.jobs,
            args.nodes,
            args.gpus_per_node,
            args.seed + run,
            args.requests,
            not args.no_across,
        )
        start = time.perf_counter()
        allocation = allocate(demands, capacity, now=float(args.jobs))
        times.append(time.perf_counter() - start)
    assert allocation is not None
    gpus = args.nodes * args.gpus_per_node
    print(
        f"allocate: {args.jobs} jobs on {gpus} GPUs ({args.nodes} nodes x {args.gpus_per_node}),"
        f" {args.runs} runs{f', {args.requests:g} requesting CPU' if args.requests else ''}:"
        f" median {statistics.median(times) * 1000:.0f} ms,"
        f" max {max(times) * 1000:.0f} ms"
        f" (last run: {allocation.waiting} queued, {allocation.free_gpus} GPUs left free)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
