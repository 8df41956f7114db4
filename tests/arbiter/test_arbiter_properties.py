"""Properties of the cluster arbiter over generated clusters and jobs (deterministic).

Covers: no node over capacity; placements add up to the counts; every admitted job at or
above its minimum, none above its maximum, counts among the candidates; pinned jobs
untouched; a higher-priority job that wants more is never held back while a lower-priority
one grows above its minimum; waiting jobs admitted strictly in order; nobody queued when all
minimums fit; the same answer for the same input in any order. On node pools (each job
allowed some nodes): every worker on a node its job may use, no node over capacity, counts
in bounds; a queued job that could start on its pool holds back the later waiting jobs that
want one of its nodes; the same answer in any order. On both: a running job given ``c``
workers keeps its first ``c`` where they run (the operator deletes the highest indexes).
With some jobs' workers requesting CPU and memory that some nodes have little of: the
workers the arbiter plans on a node, of every job together, fit its CPU and memory, and the
rules above hold. With some jobs bound to at most 1-3 workers per node
(``max_workers_per_node``): no node holds more of one such job's workers, and the rules above
hold. Running jobs' workers are generated where a cluster could hold them (``with_workers``;
CPU and memory too; within the bound for those jobs).
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainscale.operator.autoscaling import allocate
from trainscale.operator.autoscaling.arbiter import (
    Allocation,
    Capacity,
    JobDemand,
    compute_allowed_counts,
    predicted_throughput,
    subtract_pinned,
)

PROPERTY = settings(derandomize=True, database=None, max_examples=150, deadline=None)


@st.composite
def capacities(draw: st.DrawFn) -> Capacity:
    count = draw(st.integers(1, 6))
    return Capacity({f"n{i}": draw(st.integers(0, 8)) for i in range(count)})


@st.composite
def demands(
    draw: st.DrawFn, key: str, *, simple: bool = False, node_names: tuple[str, ...] = ()
) -> JobDemand:
    lo = draw(st.integers(1, 3))
    hi = draw(st.integers(lo, 10))
    serial = draw(st.floats(0.0, 0.3))
    cliff = 0.0 if simple else draw(st.floats(0.0, 0.5))
    throughput = {
        n: 100.0 * n / (1.0 + serial * (n - 1) + (cliff if n > 4 else 0.0))
        for n in range(1, hi + 1)
    }
    kw: dict[str, Any] = {
        "key": key,
        "throughput": throughput,
        "min_replicas": lo,
        "max_replicas": hi,
        "priority": draw(st.sampled_from([0, 0, 1, 2])),
        "created": float(draw(st.integers(0, 5))),
    }
    if simple:
        return JobDemand(**kw)
    pinned = draw(st.booleans()) and draw(st.booleans())
    current = draw(st.just(0) | st.integers(0, hi))  # half of them waiting
    kw |= {
        "gpus_per_worker": draw(st.sampled_from([1, 1, 2, 3])),
        "allowed_sizes": draw(st.none() | st.just((1, 2, 4, 8))),
        "min_efficiency": draw(st.none() | st.floats(0.5, 0.95)),
        "max_gpus": draw(st.none() | st.integers(1, 12)),
        "current_replicas": current,
        "restart_cost_seconds": draw(st.floats(0.0, 600.0)),
        "time_left_seconds": draw(st.none() | st.floats(0.0, 1200.0)),
        "pinned": pinned,
    }
    if pinned and node_names and current:
        kw["worker_nodes"] = (draw(st.sampled_from(node_names)),) * current
    return JobDemand(**kw)


def with_workers(
    draw: st.DrawFn,
    jobs: list[JobDemand],
    capacity: Capacity,
    pools: dict[str, frozenset[str] | None] | None = None,
) -> list[JobDemand]:
    """Each running arbitrated job's workers on nodes, by replica index, as a cluster holds
    them: within the GPUs the pinned jobs leave, on nodes of its pool (``pools``); a job
    runs as many workers as found a node."""
    room, _ = subtract_pinned(jobs, capacity)
    out = []
    for demand in jobs:
        if demand.pinned or not demand.current_replicas:
            out.append(demand)
            continue
        pool = (pools or {}).get(demand.key)
        order: list[str] = []
        for _ in range(demand.current_replicas):
            cap = demand.max_workers_per_node
            fits = sorted(
                n
                for n, g in room.items()
                if g >= demand.gpus_per_worker
                and (pool is None or n in pool)
                and (cap is None or order.count(n) < cap)
            )
            if not fits:
                break
            node = draw(st.sampled_from(fits))
            room[node] -= demand.gpus_per_worker
            order.append(node)
        out.append(
            dataclasses.replace(demand, current_replicas=len(order), worker_nodes=tuple(order))
        )
    return out


@st.composite
def clusters(draw: st.DrawFn, *, simple: bool = False) -> tuple[list[JobDemand], Capacity]:
    capacity = draw(capacities())
    names = tuple(capacity.free_gpus)
    count = draw(st.integers(1, 8))
    jobs = [draw(demands(f"j{i}", simple=simple, node_names=names)) for i in range(count)]
    return (jobs if simple else with_workers(draw, jobs, capacity)), capacity


def decide(jobs: list[JobDemand], capacity: Capacity) -> Allocation:
    return allocate(jobs, capacity, now=10.0)


@pytest.mark.slow  # ~2 s of examples: in make test, not make unit
@PROPERTY
@given(clusters())
def test_no_node_over_capacity(cluster: tuple[list[JobDemand], Capacity]) -> None:
    jobs, capacity = cluster
    assert_within_capacity(jobs, capacity, decide(jobs, capacity))


def assert_within_capacity(
    jobs: list[JobDemand], capacity: Capacity, allocation: Allocation
) -> None:
    """No node holds more GPUs than it has; pinned jobs are where they are, even over
    capacity, and arbitration adds nothing there."""
    used: dict[str, int] = {}
    for demand in jobs:
        for node, workers in allocation[demand.key].placement:
            used[node] = used.get(node, 0) + workers * demand.gpus_per_worker
    for node, gpus in used.items():
        pinned_here = sum(
            d.current_nodes.get(node, 0) * d.gpus_per_worker for d in jobs if d.pinned
        )
        assert gpus <= max(capacity.free_gpus[node], pinned_here), node


@pytest.mark.slow  # ~2 s of examples: in make test, not make unit
@PROPERTY
@given(clusters())
def test_counts_within_bounds_and_placed(cluster: tuple[list[JobDemand], Capacity]) -> None:
    jobs, capacity = cluster
    allocation = decide(jobs, capacity)
    for demand in jobs:
        got = allocation[demand.key]
        if demand.pinned:
            assert got.replicas == demand.current_replicas
            assert got.pinned
            continue
        assert sum(w for _, w in got.placement) == got.replicas
        if got.queued:
            assert got.replicas == 0
        else:
            assert demand.min_replicas <= got.replicas <= demand.max_replicas
            assert got.replicas in compute_allowed_counts(demand)


@PROPERTY
@given(clusters(simple=True))
def test_higher_priority_served_before_lower_grows(
    cluster: tuple[list[JobDemand], Capacity],
) -> None:
    jobs, capacity = cluster
    allocation = decide(jobs, capacity)
    for low in jobs:
        if allocation[low.key].replicas <= low.min_replicas:
            continue
        for high in jobs:
            got = allocation[high.key]
            if high.priority > low.priority and not got.queued:
                assert got.replicas == got.wanted, (high.key, low.key)


@pytest.mark.slow  # ~2 s of examples: in make test, not make unit
@PROPERTY
@given(clusters())
def test_waiting_jobs_admitted_in_order(cluster: tuple[list[JobDemand], Capacity]) -> None:
    jobs, capacity = cluster
    allocation = decide(jobs, capacity)
    # "All the GPUs there are" for trainscale: what pinned jobs hold is not coming back.
    free, _ = subtract_pinned(jobs, capacity)
    total = sum(free.values())

    def order(d: JobDemand) -> tuple[int, float, str]:
        return (-d.priority, d.created, d.key)

    waiting = [d for d in jobs if not d.pinned and d.current_replicas == 0]
    for queued in waiting:
        if not allocation[queued.key].queued:
            continue
        whole = sum(g // queued.gpus_per_worker for g in free.values())
        if queued.min_replicas * queued.gpus_per_worker > total or queued.min_replicas > whole:
            continue  # can never start (each worker on one node): skipped, does not block
        for other in waiting:
            if order(other) > order(queued):
                assert allocation[other.key].queued, (queued.key, other.key)


@PROPERTY
@given(clusters(simple=True))
def test_nobody_queued_when_minimums_fit(cluster: tuple[list[JobDemand], Capacity]) -> None:
    jobs, capacity = cluster
    allocation = decide(jobs, capacity)
    if sum(d.min_replicas for d in jobs) <= capacity.total:
        assert allocation.waiting == 0


@pytest.mark.slow  # ~2 s of examples: in make test, not make unit
@PROPERTY
@given(clusters(), st.randoms(use_true_random=False))
def test_same_answer_in_any_order(cluster: tuple[list[JobDemand], Capacity], rnd: Any) -> None:
    jobs, capacity = cluster
    shuffled = list(jobs)
    rnd.shuffle(shuffled)
    assert decide(jobs, capacity) == decide(shuffled, capacity)


# ------------------------------------------------------------------- node pools (nodes=)


@st.composite
def pooled_clusters(draw: st.DrawFn) -> tuple[list[JobDemand], Capacity]:
    """Clusters whose jobs may each use only some nodes (a node selector, a taint), as
    ``cluster.build_demand`` passes them: a running job's workers run on nodes of its pool."""
    jobs, capacity = draw(clusters())
    names = sorted(capacity.free_gpus)
    pools = {
        d.key: draw(st.none() | st.frozensets(st.sampled_from(names), max_size=len(names)))
        for d in jobs
    }
    jobs = with_workers(
        draw,
        [dataclasses.replace(d, worker_nodes=d.worker_nodes if d.pinned else ()) for d in jobs],
        capacity,
        pools,
    )
    pooled = []
    for demand in jobs:
        nodes = pools[demand.key]
        if nodes is not None:
            nodes = nodes | frozenset(demand.worker_nodes)
        pooled.append(dataclasses.replace(demand, nodes=nodes))
    return pooled, capacity


def _may_use(demand: JobDemand, node: str) -> bool:
    return demand.nodes is None or node in demand.nodes


@pytest.mark.slow  # ~2 s of examples: in make test, not make unit
@PROPERTY
@given(pooled_clusters())
def test_on_node_pools_every_worker_is_on_a_node_its_job_may_use(
    cluster: tuple[list[JobDemand], Capacity],
) -> None:
    jobs, capacity = cluster
    allocation = decide(jobs, capacity)
    assert_within_capacity(jobs, capacity, allocation)
    for demand in jobs:
        got = allocation[demand.key]
        if demand.pinned:
            continue
        for node, _ in got.placement:
            assert _may_use(demand, node), (demand.key, node, demand.nodes)
        assert sum(w for _, w in got.placement) == got.replicas
        if not got.queued:
            assert demand.min_replicas <= got.replicas <= demand.max_replicas


@pytest.mark.slow  # ~2 s of examples: in make test, not make unit
@PROPERTY
@given(pooled_clusters())
def test_on_node_pools_a_queued_job_holds_back_only_jobs_wanting_its_nodes(
    cluster: tuple[list[JobDemand], Capacity],
) -> None:
    jobs, capacity = cluster
    allocation = decide(jobs, capacity)
    free, _ = subtract_pinned(jobs, capacity)

    def order(d: JobDemand) -> tuple[int, float, str]:
        return (-d.priority, d.created, d.key)

    def pool(d: JobDemand) -> set[str]:
        return {n for n in free if _may_use(d, n)}

    waiting = [d for d in jobs if not d.pinned and d.current_replicas == 0]
    for queued in waiting:
        if not allocation[queued.key].queued:
            continue
        whole = sum(free[n] // queued.gpus_per_worker for n in pool(queued))
        if whole < queued.min_replicas:
            continue  # can never start on its pool, a worker per node: skipped, no block
        for other in waiting:
            if order(other) > order(queued) and pool(other) & pool(queued):
                assert allocation[other.key].queued, (queued.key, other.key)


@pytest.mark.slow  # ~2 s of examples: in make test, not make unit
@PROPERTY
@given(pooled_clusters(), st.randoms(use_true_random=False))
def test_on_node_pools_the_same_answer_in_any_order(
    cluster: tuple[list[JobDemand], Capacity], rnd: Any
) -> None:
    jobs, capacity = cluster
    shuffled = list(jobs)
    rnd.shuffle(shuffled)
    assert decide(jobs, capacity) == decide(shuffled, capacity)


def assert_running_jobs_keep_their_first_workers(
    jobs: list[JobDemand], allocation: Allocation
) -> None:
    """A running job given ``c`` workers holds its first ``c`` where they run (the operator
    deletes the highest indexes when it shrinks), or all of them and more."""
    for demand in jobs:
        got = allocation[demand.key]
        if demand.pinned or not demand.worker_nodes or got.queued:
            continue
        where = collections.Counter(dict(got.placement))
        kept = collections.Counter(demand.worker_nodes[: got.replicas])
        assert where & kept == kept, (demand.key, demand.worker_nodes, got.placement)


@pytest.mark.slow  # ~2 s of examples: in make test, not make unit
@PROPERTY
@given(clusters(), pooled_clusters())
def test_a_running_job_keeps_its_first_workers_where_they_run(
    plain: tuple[list[JobDemand], Capacity], pooled: tuple[list[JobDemand], Capacity]
) -> None:
    for jobs, capacity in (plain, pooled):
        assert_running_jobs_keep_their_first_workers(jobs, decide(jobs, capacity))


@st.composite
def roomy_clusters(draw: st.DrawFn) -> tuple[list[JobDemand], Capacity]:
    """Pooled clusters where some jobs' workers ask for CPU or memory (1-4 units) and some
    nodes have only a few units of them left (0-12), as ``cluster.decide_arbitration``
    passes them; a node holds what the workers running on it ask (a cluster holds them)."""
    jobs, capacity = draw(pooled_clusters())
    names = sorted(capacity.free_gpus)
    out = []
    for demand in jobs:
        if demand.pinned or not draw(st.booleans()):
            out.append(demand)
            continue
        cpu, memory = draw(st.integers(0, 4)), draw(st.integers(0, 4))
        out.append(
            dataclasses.replace(
                demand, cpu_millis_per_worker=1000 * cpu, memory_bytes_per_worker=memory
            )
        )
    left: dict[str, dict[str, int]] = {"cpu": {}, "memory": {}}
    for resource, per in left.items():
        for node in draw(st.frozensets(st.sampled_from(names))):
            unit = 1000 if resource == "cpu" else 1
            running = sum(_asks(d, resource) * d.current_nodes.get(node, 0) for d in out)
            per[node] = max(unit * draw(st.integers(0, 12)), running)
    capacity = dataclasses.replace(
        capacity, free_cpu_millis=left["cpu"], free_memory_bytes=left["memory"]
    )
    return out, capacity


def _asks(demand: JobDemand, resource: str) -> int:
    if demand.pinned:
        return 0
    return demand.cpu_millis_per_worker if resource == "cpu" else demand.memory_bytes_per_worker


@pytest.mark.slow  # ~2 s of examples: in make test, not make unit
@PROPERTY
@given(roomy_clusters())
def test_the_workers_planned_on_a_node_fit_its_cpu_and_memory(
    cluster: tuple[list[JobDemand], Capacity],
) -> None:
    jobs, capacity = cluster
    allocation = decide(jobs, capacity)
    assert_within_capacity(jobs, capacity, allocation)
    assert_running_jobs_keep_their_first_workers(jobs, allocation)
    asked: dict[str, collections.Counter[str]] = {
        r: collections.Counter() for r in ("cpu", "memory")
    }
    for demand in jobs:
        got = allocation[demand.key]
        for node, workers in got.placement:
            for resource, per in asked.items():
                per[node] += workers * _asks(demand, resource)
        if demand.pinned:
            continue
        assert sum(w for _, w in got.placement) == got.replicas
        if not got.queued:
            assert demand.min_replicas <= got.replicas <= demand.max_replicas
        for node, _ in got.placement:
            assert _may_use(demand, node), (demand.key, node)
    for resource, left in (
        ("cpu", capacity.free_cpu_millis),
        ("memory", capacity.free_memory_bytes),
    ):
        for node, amount in left.items():
            assert asked[resource][node] <= amount, (resource, node, asked[resource][node], amount)


@st.composite
def preempting_clusters(draw: st.DrawFn) -> tuple[list[JobDemand], Capacity]:
    """Pooled clusters where some jobs' PriorityClass preempts (the Kubernetes default) and
    others' says ``Never``; waiting jobs often outrank running ones (0-3 higher)."""
    jobs, capacity = draw(pooled_clusters())
    out = []
    for d in jobs:
        raise_by = draw(st.integers(0, 3)) if d.current_replicas == 0 else 0
        out.append(
            dataclasses.replace(d, preempts=draw(st.booleans()), priority=d.priority + raise_by)
        )
    return out, capacity


@pytest.mark.slow  # ~2 s of examples: in make test, not make unit
@PROPERTY
@given(preempting_clusters())
def test_a_running_job_is_queued_only_for_a_preempting_job_of_higher_priority(
    cluster: tuple[list[JobDemand], Capacity],
) -> None:
    """A running job the arbiter would keep without preemption is queued only when a job
    that preempts, of higher priority, was admitted in its place or grew into it (its
    reason names it); every node stays within its GPUs."""
    jobs, capacity = cluster
    allocation = decide(jobs, capacity)
    assert_within_capacity(jobs, capacity, allocation)
    without = decide([dataclasses.replace(d, preempts=False) for d in jobs], capacity)
    by_key = {d.key: d for d in jobs}
    for demand in jobs:
        got = allocation[demand.key]
        if demand.pinned or demand.current_replicas == 0 or not got.queued:
            continue
        if without[demand.key].queued:
            continue  # queued anyway (the cluster under it shrank)
        assert got.reason.startswith("preempted by "), (demand.key, got.reason)
        preemptor = by_key[got.reason.split()[2]]
        assert preemptor.preempts, preemptor
        assert preemptor.priority > demand.priority, (preemptor, demand)
        assert not allocation[preemptor.key].queued


@st.composite
def priority_clusters(draw: st.DrawFn) -> tuple[list[JobDemand], Capacity]:
    """Pooled clusters whose jobs, running or waiting, are often 0-3 priorities apart and
    whose PriorityClass preempts or not."""
    jobs, capacity = draw(pooled_clusters())
    return [
        dataclasses.replace(
            d, preempts=draw(st.booleans()), priority=d.priority + draw(st.integers(0, 3))
        )
        for d in jobs
    ], capacity


def _value(demand: JobDemand, count: int) -> float:
    """A job's term of the objective at ``count`` (the module docstring's, default
    settings): ``-1 / speedup`` over its minimum, a running job's other counts charged its
    restart over 600 s (or the time it has left, if shorter) and a 10 % margin."""
    base = predicted_throughput(demand, max(1, demand.min_replicas))
    speedup = predicted_throughput(demand, count) / base if base > 0 else 1.0
    if demand.current_replicas > 0 and count != demand.current_replicas:
        left = demand.time_left_seconds
        horizon = 600.0 if left is None else min(600.0, max(1.0, left))
        speedup *= max(0.0, 1.0 - demand.restart_cost_seconds / horizon) / 1.1
    return -1.0 / speedup if speedup > 0 else -math.inf


@pytest.mark.slow  # ~2 s of examples: in make test, not make unit
@PROPERTY
@given(priority_clusters())
def test_a_preempting_job_is_left_no_gain_in_lower_priority_jobs_gpus(
    cluster: tuple[list[JobDemand], Capacity],
) -> None:
    """Once allocated, no admitted job whose PriorityClass preempts could still raise its
    value with the GPUs that jobs of lower priority hold (or that are free) on the nodes it
    may use: it took them, as its pods would (a running job that lost a worker's GPU to an
    arrival is left out: it does not grow elsewhere in that decision)."""
    jobs, capacity = cluster
    allocation = decide(jobs, capacity)
    room, _ = subtract_pinned(jobs, capacity)
    for demand in jobs:
        got = allocation[demand.key]
        if demand.pinned or not demand.preempts or got.queued:
            continue
        placed = collections.Counter(dict(got.placement))
        if placed & collections.Counter(demand.worker_nodes) != collections.Counter(
            demand.worker_nodes
        ):
            continue  # it runs fewer than it did where it did: a blocked index
        held = collections.Counter[str]()
        for other in jobs:
            if other.pinned or other.key == demand.key or other.priority < demand.priority:
                continue
            for node, workers in allocation[other.key].placement:
                held[node] += workers * other.gpus_per_worker
        reach = sum(
            max(0, room[n] - held[n] - placed[n] * demand.gpus_per_worker) // demand.gpus_per_worker
            for n in room
            if _may_use(demand, n)
        )
        here = _value(demand, got.replicas)
        better = [
            n
            for n in compute_allowed_counts(demand)
            if got.replicas < n <= got.replicas + reach and _value(demand, n) > here + 1e-9
        ]
        assert not better, (demand.key, got.replicas, reach, better, got.reason)


@st.composite
def apart_clusters(draw: st.DrawFn) -> tuple[list[JobDemand], Capacity]:
    """Clusters where some arbitrated jobs run at most 1-3 workers per node (their
    template's required pod anti-affinity, or a topology spread constraint's maxSkew), their
    running workers within it; half of those under a bound that moves (a spread constraint
    counting every node, or those and a node outside the capacity)."""
    capacity = draw(capacities())
    names = tuple(capacity.free_gpus)
    jobs = []
    for i in range(draw(st.integers(1, 8))):
        demand = draw(demands(f"j{i}", node_names=names))
        if not demand.pinned and draw(st.booleans()):
            bound = draw(st.integers(1, 3))
            domains = None
            if draw(st.booleans()):
                domains = frozenset(names) | ({"elsewhere"} if draw(st.booleans()) else set())
            demand = dataclasses.replace(demand, max_workers_per_node=bound, spread_domains=domains)
        jobs.append(demand)
    return with_workers(draw, jobs, capacity), capacity


@pytest.mark.slow  # ~2 s of examples: in make test, not make unit
@PROPERTY
@given(apart_clusters())
def test_workers_bound_per_node_are_planned_within_the_bound(
    cluster: tuple[list[JobDemand], Capacity],
) -> None:
    jobs, capacity = cluster
    allocation = decide(jobs, capacity)
    assert_within_capacity(jobs, capacity, allocation)
    assert_running_jobs_keep_their_first_workers(jobs, allocation)
    for demand in jobs:
        got = allocation[demand.key]
        assert sum(w for _, w in got.placement) == got.replicas
        if demand.max_workers_per_node is not None and demand.spread_domains is None:
            bound = demand.max_workers_per_node
            assert all(w <= bound for _, w in got.placement), (demand.key, got.placement)
        elif demand.max_workers_per_node is not None:
            # a worker joins a node only while that node holds at most maxSkew - 1 more than
            # the emptiest node counted, and the emptiest only fills up: no node ends above
            # that, unless its running workers already were
            placed = dict(got.placement)
            level = demand.max_workers_per_node + min(
                placed.get(d, 0) for d in demand.spread_domains
            )
            running = collections.Counter(demand.worker_nodes)
            for node, w in placed.items():
                assert w <= max(level, running[node]), (demand.key, placed, running)
        if not demand.pinned and not got.queued:
            assert demand.min_replicas <= got.replicas <= demand.max_replicas
            assert got.replicas in compute_allowed_counts(demand)
