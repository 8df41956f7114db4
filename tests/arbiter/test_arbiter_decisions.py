"""Decision tables of the cluster arbiter: one readable row per rule of its module docstring.

Covers: throughput at counts the demand does not list; the candidate counts (bounds,
allowed sizes, budgets, efficiency floor, minimum always); pinned jobs' GPUs subtracted;
admission (running jobs keep their minimum, strict FIFO by priority then age, no
backfilling, never-fitting jobs skipped, the youngest running job evicted when the cluster
shrank); growth by gain per GPU (fair split, a scaling job over a flat one, a cliff jumped,
restart charged, priority tiers, packing limits); a job's workers per node within what
their CPU and memory leave room for; the reasons in words; bad input.
"""

from __future__ import annotations

from typing import Any

import pytest

from trainscale.operator.autoscaling import allocate
from trainscale.operator.autoscaling.arbiter import (
    ArbiterSettings,
    Capacity,
    JobDemand,
    admit_minimums,
    compute_allowed_counts,
    predicted_throughput,
    subtract_pinned,
)


def linear(hi: int) -> dict[int, float]:
    return {n: 100.0 * n for n in range(1, hi + 1)}


def amdahl(hi: int, serial: float) -> dict[int, float]:
    return {n: 100.0 * n / (1.0 + serial * (n - 1)) for n in range(1, hi + 1)}


def job(key: str, **kw: Any) -> JobDemand:
    """A demand; ``current_nodes={"n0": 4, "n1": 2}`` is shorthand for the workers' nodes
    by index (``worker_nodes``: indexes 0-3 on n0, 4-5 on n1)."""
    if "current_nodes" in kw:
        kw["worker_nodes"] = tuple(n for n, w in kw.pop("current_nodes").items() for _ in range(w))
    kw.setdefault("min_replicas", 1)
    kw.setdefault("max_replicas", 8)
    kw.setdefault("throughput", linear(kw["max_replicas"]))
    return JobDemand(key=key, **kw)


def growing(time_left: float) -> list[JobDemand]:
    """A job at 4 of 8 GPUs it could double onto, with a minute's restart and
    ``time_left`` seconds of training left."""
    return [job("a", current_replicas=4, restart_cost_seconds=60, time_left_seconds=time_left)]


def sharing(time_left: float) -> list[JobDemand]:
    """A job on 6 of 8 GPUs with a 10 s restart and ``time_left`` seconds left, and a
    newcomer that would take 2 of them for an even split."""
    a = job("a", current_replicas=6, current_nodes={"n0": 4, "n1": 2}, restart_cost_seconds=10,
            time_left_seconds=time_left)  # fmt: skip
    return [a, job("b")]


def nodes(
    count: int, gpus: int = 4, cpu: list[int] | None = None, memory: list[int] | None = None
) -> Capacity:
    """``count`` nodes of ``gpus`` GPUs; ``cpu`` and ``memory``: what each has left of
    them, in node order (not known: unbounded)."""
    names = [f"n{i}" for i in range(count)]
    return Capacity(
        {n: gpus for n in names},
        free_cpu_millis=dict(zip(names, cpu or [], strict=False)),
        free_memory_bytes=dict(zip(names, memory or [], strict=False)),
    )


@pytest.mark.parametrize(
    ("throughput", "replicas", "expected"),
    [
        pytest.param({2: 200.0, 4: 300.0}, 4, 300.0, id="listed"),
        pytest.param({2: 200.0, 4: 300.0}, 3, 250.0, id="interpolated-between"),
        pytest.param({2: 200.0, 4: 300.0}, 1, 100.0, id="below-smallest-per-worker-as-there"),
        pytest.param({2: 200.0, 4: 300.0}, 8, 300.0, id="above-largest-flat"),
        pytest.param({}, 4, 0.0, id="nothing-known"),
        pytest.param({2: 200.0}, 0, 0.0, id="zero-workers"),
    ],
)
def test_predicted_throughput(throughput: dict[int, float], replicas: int, expected: float) -> None:
    demand = JobDemand(key="a", throughput=throughput, max_replicas=8)
    assert predicted_throughput(demand, replicas) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        pytest.param({"min_replicas": 2, "max_replicas": 5}, (2, 3, 4, 5), id="bounds"),
        pytest.param(
            {"max_replicas": 8, "allowed_sizes": (1, 2, 4, 8)}, (1, 2, 4, 8), id="allowed-sizes"
        ),
        pytest.param(
            {"min_replicas": 3, "max_replicas": 8, "allowed_sizes": (4, 8)},
            (3, 4, 8),
            id="minimum-always-even-if-not-an-allowed-size",
        ),
        pytest.param(
            {"max_replicas": 8, "gpus_per_worker": 2, "max_gpus": 6}, (1, 2, 3), id="budget-in-gpus"
        ),
        pytest.param(
            {"max_replicas": 8, "max_cost_per_hour": 10.0, "cost_per_gpu_hour": 2.5},
            (1, 2, 3, 4),
            id="budget-in-cost",
        ),
        pytest.param(
            {"min_replicas": 4, "max_replicas": 8, "max_gpus": 2},
            (4,),
            id="minimum-wins-over-budget",
        ),
        # amdahl(0.1): efficiency 1/(1+0.1(n-1)) >= 0.7 up to n = 5
        pytest.param(
            {"max_replicas": 8, "throughput": amdahl(8, 0.1), "min_efficiency": 0.7},
            (1, 2, 3, 4, 5),
            id="efficiency-floor-cut-off",
        ),
        pytest.param(
            {"max_replicas": 4, "throughput": {}, "min_efficiency": 0.7},
            (1, 2, 3, 4),
            id="efficiency-unknown-not-filtered",
        ),
        pytest.param(
            {
                "min_replicas": 2,
                "max_replicas": 4,
                "min_efficiency": 0.99,
                "throughput": {2: 150.0, 4: 200.0},
            },
            (2,),
            id="efficiency-from-smallest-known-count",
        ),
    ],
)
def test_compute_allowed_counts(kw: dict[str, Any], expected: tuple[int, ...]) -> None:
    kw.setdefault("throughput", linear(kw["max_replicas"]))
    assert compute_allowed_counts(JobDemand(key="a", **kw)) == expected


@pytest.mark.parametrize(
    ("demand", "free", "placement"),
    [
        pytest.param(
            job("p", pinned=True, current_replicas=3, current_nodes={"n1": 3}),
            {"n0": 4, "n1": 1},
            (("n1", 3),),
            id="where-it-runs",
        ),
        pytest.param(
            job("p", pinned=True, current_replicas=6),
            {"n0": 0, "n1": 2},
            (("n0", 4), ("n1", 2)),
            id="packed-when-unknown",
        ),
        pytest.param(
            job("p", pinned=True, current_replicas=2, gpus_per_worker=4, current_nodes={"n0": 2}),
            {"n0": 0, "n1": 4},
            (("n0", 2),),
            id="never-below-zero",
        ),
    ],
)
def test_subtract_pinned(demand: JobDemand, free: dict[str, int], placement: Any) -> None:
    left, placements = subtract_pinned([demand], nodes(2))
    assert left == free
    assert placements == {"p": placement}


@pytest.mark.parametrize(
    ("demands", "gpus", "admitted", "queued"),
    [
        pytest.param(
            [job("a", min_replicas=2, created=1), job("b", min_replicas=2, created=2)],
            4,
            {"a", "b"},
            [],
            id="all-fit",
        ),
        pytest.param(
            [job("a", min_replicas=3, created=1), job("b", min_replicas=3, created=2)],
            4,
            {"a"},
            ["b"],
            id="fifo-by-age",
        ),
        pytest.param(
            [job("a", min_replicas=3, created=1), job("b", min_replicas=3, created=2, priority=10)],
            4,
            {"b"},
            ["a"],
            id="priority-before-age",
        ),
        pytest.param(
            [
                job("a", min_replicas=3, created=1, current_replicas=3),
                job("b", min_replicas=3, created=2, priority=10),
            ],
            4,
            {"a"},
            ["b"],
            id="no-preemption-of-a-running-minimum",
        ),
        pytest.param(
            [
                job("a", min_replicas=3, created=1),
                job("b", min_replicas=2, created=2),
                job("c", min_replicas=1, created=3),
            ],
            4,
            {"a"},
            ["b", "c"],
            id="no-backfilling-past-the-head",
        ),
        pytest.param(
            [
                job("a", min_replicas=9, max_replicas=9, created=1),
                job("b", min_replicas=2, created=2),
            ],
            8,
            {"b"},
            ["a"],
            id="never-fitting-head-does-not-block",
        ),
        pytest.param(
            [
                job("a", min_replicas=1, max_replicas=1, gpus_per_worker=8, created=1),
                job("b", min_replicas=2, created=2),
            ],
            8,
            {"b"},
            ["a"],
            id="a-head-whose-worker-fits-no-node-does-not-block",
        ),
        pytest.param(
            [
                job("a", min_replicas=4, created=1, current_replicas=4),
                job("b", min_replicas=4, created=2, current_replicas=4),
            ],
            4,
            {"a"},
            ["b"],
            id="cluster-shrank-youngest-running-evicted",
        ),
    ],
)
def test_admit_minimums(
    demands: list[JobDemand], gpus: int, admitted: set[str], queued: list[str]
) -> None:
    free = dict(nodes(gpus // 4).free_gpus)
    placed, waiting = admit_minimums(demands, free)
    assert set(placed) == admitted
    assert [d.key for d in waiting] == queued
    for demand in demands:
        if demand.key in placed:
            assert sum(placed[demand.key].values()) == demand.min_replicas


@pytest.mark.parametrize(
    ("demands", "capacity", "replicas"),
    [
        pytest.param([job("a"), job("b")], nodes(2), {"a": 4, "b": 4}, id="equal-jobs-split"),
        pytest.param(
            [job("a"), job("b", throughput={n: 100.0 for n in range(1, 9)})],
            nodes(2),
            {"a": 7, "b": 1},
            id="gpus-go-where-they-help",
        ),
        pytest.param(
            [job("a", throughput=amdahl(8, 0.6)), job("b")],
            nodes(2),
            {"a": 3, "b": 5},
            id="better-scaler-gets-more",
        ),
        pytest.param(
            [job("a", max_replicas=2), job("b")],
            nodes(2),
            {"a": 2, "b": 6},
            id="max-replicas-respected",
        ),
        pytest.param(
            [job("a", throughput=amdahl(8, 0.1), min_efficiency=0.7)],
            nodes(2),
            {"a": 5},
            id="efficiency-floor-leaves-gpus-free",
        ),
        pytest.param(
            [job("a", current_replicas=4, restart_cost_seconds=300), job("b")],
            nodes(2),
            {"a": 4, "b": 4},
            id="restart-charged-stays",
        ),
        pytest.param(
            [job("a", current_replicas=5, restart_cost_seconds=300), job("b")],
            nodes(2),
            {"a": 5, "b": 3},
            id="restart-charged-keeps-current-size",
        ),
        pytest.param(
            [job("a", current_replicas=5, restart_cost_seconds=0), job("b")],
            nodes(2),
            {"a": 4, "b": 4},
            id="free-restart-rebalances",
        ),
        pytest.param(
            growing(300),
            nodes(2),
            {"a": 8},
            id="five-minutes-left-pay-a-minute-restart-for-twice-the-gpus",
        ),
        pytest.param(growing(120), nodes(2), {"a": 4}, id="two-minutes-left-do-not"),
        pytest.param(
            growing(3600), nodes(2), {"a": 8}, id="an-hour-left-charges-as-the-usual-horizon"
        ),
        pytest.param(
            sharing(60), nodes(2), {"a": 4, "b": 4}, id="a-minute-left-pays-a-10-s-restart-to-share"
        ),
        pytest.param(
            sharing(30),
            nodes(2),
            {"a": 6, "b": 2},
            id="half-a-minute-left-is-not-shrunk-for-a-gain",
        ),
        pytest.param(
            [job("a", priority=10, created=2), job("b", created=1)],
            nodes(2),
            {"a": 7, "b": 1},
            id="higher-priority-grows-first",
        ),
        pytest.param(
            [job("a", priority=10, created=2, max_replicas=3), job("b", created=1)],
            nodes(2),
            {"a": 3, "b": 5},
            id="lower-priority-gets-the-rest",
        ),
        pytest.param(
            [
                job("a", min_replicas=4, max_replicas=4, created=1),
                job("b", min_replicas=6, max_replicas=6, created=2),
                job("c", min_replicas=1, max_replicas=4, created=3),
            ],
            nodes(2),
            {"a": 4, "b": 0, "c": 0},
            id="queued-head-blocks-behind",
        ),
        pytest.param(
            [job("a", gpus_per_worker=3, max_replicas=4), job("b", max_replicas=2)],
            nodes(2),
            {"a": 2, "b": 2},
            id="whole-workers-per-node",
        ),
        pytest.param(
            [job("a", allowed_sizes=(1, 2, 4, 8)), job("b", max_replicas=1)],
            nodes(2),
            {"a": 4, "b": 1},
            id="allowed-sizes-only",
        ),
        pytest.param(
            [job("a", throughput={n: 100.0 * n / (1.4 if n > 4 else 1.0) for n in range(1, 9)})],
            nodes(2),
            {"a": 8},
            id="jumps-over-a-node-boundary-dip",
        ),
        pytest.param(
            [job("a", pinned=True, current_replicas=6, current_nodes={"n0": 4, "n1": 2}), job("b")],
            nodes(2),
            {"a": 6, "b": 2},
            id="pinned-subtracted",
        ),
        pytest.param(
            [job("a", throughput={}), job("b")],
            nodes(2),
            {"a": 1, "b": 7},
            id="nothing-measured-stays-at-minimum",
        ),
    ],
)
def test_allocate_replicas(
    demands: list[JobDemand], capacity: Capacity, replicas: dict[str, int]
) -> None:
    allocation = allocate(demands, capacity, now=100.0)
    assert {k: a.replicas for k, a in allocation.jobs.items()} == replicas


@pytest.mark.parametrize(
    ("demands", "key", "reason"),
    [
        pytest.param(
            [job("a", current_replicas=4, restart_cost_seconds=60, time_left_seconds=120)],
            "a",
            "granted 4 GPUs: its size now (the 2 min it has left do not pay a 60 s restart)",
            id="ending",
        ),
        pytest.param(
            [job("a", current_replicas=4, restart_cost_seconds=40, time_left_seconds=70)],
            "a",
            "granted 4 GPUs: its size now (the 70 s it has left do not pay a 40 s restart)",
            id="ending-in-seconds",
        ),
        pytest.param(
            [
                job("a", min_replicas=4, max_replicas=4, created=1),
                job("b", min_replicas=3, max_replicas=3, created=2),
            ],
            "b",
            "queued: needs 3 GPUs, 0 free",
            id="queued",
        ),
        pytest.param(
            [
                job("a", min_replicas=1, created=1),
                job("b", min_replicas=3, created=2),
                job("c", min_replicas=2, created=3),
                job("d", min_replicas=2, created=4),
            ],
            "a",
            "limited to 1 GPU by cluster arbitration (2 jobs waiting)",
            id="limited-while-jobs-wait",
        ),
        pytest.param(
            [
                job("a", min_replicas=2, created=1),
                job("b", min_replicas=3, created=2),
                job("c", min_replicas=4, created=3),
            ],
            "a",
            "limited to 4 GPUs: the nodes it may use have GPUs for 4 of the 8 workers it wants",
            id="limited-by-its-nodes-gpus",  # all the node's GPUs: no neighbour limits it
        ),
        pytest.param(
            [job("a", cpu_millis_per_worker=8000)],
            "a",
            "limited to 2 GPUs: the CPU and memory its workers request leave room for 2 of "
            "the 8 it wants on the nodes it may use",
            id="limited-by-its-nodes-cpu",
        ),
        pytest.param(
            [job("a"), job("b")],
            "a",
            "limited to 2 GPUs by cluster arbitration (shared by 2 jobs)",
            id="limited-while-sharing",
        ),
        pytest.param(
            [job("a", max_replicas=2), job("b", max_replicas=2)],
            "a",
            "granted 2 GPUs: its maxReplicas",
            id="granted-max",
        ),
        pytest.param(
            [job("a", throughput=amdahl(8, 0.1), min_efficiency=0.8)],
            "a",
            "granted 3 GPUs: all it can use (efficiency floor, budget or model)",
            id="granted-floor",
        ),
        pytest.param(
            [job("a", pinned=True, current_replicas=2)],
            "a",
            "pinned at 2 workers (opted out of arbitration)",
            id="pinned",
        ),
    ],
)
def test_allocate_reason(demands: list[JobDemand], key: str, reason: str) -> None:
    allocation = allocate(demands, nodes(1, cpu=[16_000]), now=100.0)
    assert allocation[key].reason == reason


def test_allocation_fields() -> None:
    allocation = allocate(
        [
            job("a", min_replicas=2, max_replicas=6, current_replicas=2, current_nodes={"n1": 2}),
            job("b", min_replicas=4, max_replicas=4),
        ],
        Capacity({"n0": 4, "n1": 4}),
        now=0.0,
    )
    a = allocation["a"]
    assert (a.replicas, a.wanted, a.queued, a.limited) == (4, 6, False, True)
    assert a.placement == (("n1", 4),)
    assert a.workers_per_node == (4,)
    assert allocation["b"].placement == (("n0", 4),)
    assert (allocation.free_gpus, allocation.waiting) == (0, 0)


def test_fairness_power_one_is_plain_goodput() -> None:
    """p = 1 gives the GPU to the job with more throughput gain, fairness aside."""
    demands = [job("a", throughput=amdahl(8, 0.05)), job("b", throughput=amdahl(8, 0.02))]
    fair = allocate(demands, nodes(1), now=0.0)
    greedy = allocate(demands, nodes(1), now=0.0, settings=ArbiterSettings(fairness_power=1.0))
    assert (fair["a"].replicas, fair["b"].replicas) == (2, 2)
    assert (greedy["a"].replicas, greedy["b"].replicas) == (1, 3)


def test_duplicate_keys_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        allocate([job("a"), job("a")], nodes(1), now=0.0)


@pytest.mark.parametrize(
    "kw",
    [
        pytest.param({"gpus_per_worker": 0}, id="no-gpus"),
        pytest.param({"min_replicas": 5, "max_replicas": 4}, id="min-above-max"),
        pytest.param({"cpu_millis_per_worker": -1}, id="negative-cpu"),
        pytest.param({"memory_bytes_per_worker": -1}, id="negative-memory"),
    ],
)
def test_bad_demand_rejected(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"must be|need"):
        JobDemand(key="a", **kw)


# ------------------------------------------------------------------- node pools (nodes=)

POOL_A = frozenset({"n0", "n1"})
POOL_B = frozenset({"n2", "n3"})


@pytest.mark.parametrize(
    ("demands", "replicas", "placed_on"),
    [
        pytest.param(
            [job("a", nodes=POOL_A, max_replicas=16), job("b", nodes=POOL_B, max_replicas=16)],
            {"a": 8, "b": 8},
            {"a": POOL_A, "b": POOL_B},
            id="each-job-fills-its-own-pool",
        ),
        pytest.param(
            [job("a", nodes=POOL_A, max_replicas=16), job("b", max_replicas=16)],
            {"a": 8, "b": 8},
            {"a": POOL_A, "b": POOL_B},
            id="the-unrestricted-job-takes-the-pool-the-other-cannot-use",
        ),
        pytest.param(
            [job("a", nodes=POOL_A, max_replicas=16), job("b", nodes=POOL_A, max_replicas=16)],
            {"a": 4, "b": 4},
            {"a": POOL_A, "b": POOL_A},
            id="two-jobs-share-one-pool-the-other-idles",
        ),
        pytest.param(
            [job("a", nodes=frozenset({"n3"}), max_replicas=16)],
            {"a": 4},
            {"a": frozenset({"n3"})},
            id="one-node-allowed",
        ),
        pytest.param(
            [job("a", nodes=frozenset(), min_replicas=1), job("b", max_replicas=16)],
            {"a": 0, "b": 16},
            {"a": frozenset(), "b": POOL_A | POOL_B},
            id="no-node-allowed-queues-and-blocks-nobody",
        ),
        pytest.param(
            [
                job("p", pinned=True, current_replicas=4, nodes=POOL_B),
                job("a", max_replicas=16),
            ],
            {"p": 4, "a": 12},
            {"p": POOL_B, "a": POOL_A | POOL_B},
            id="a-pinned-job-without-known-nodes-is-packed-on-its-pool",
        ),
    ],
)
def test_allocate_on_node_pools(
    demands: list[JobDemand], replicas: dict[str, int], placed_on: dict[str, frozenset[str]]
) -> None:
    allocation = allocate(demands, nodes(4), now=100.0)
    assert {k: a.replicas for k, a in allocation.jobs.items()} == replicas
    for key, pool in placed_on.items():
        assert {n for n, _ in allocation[key].placement} <= pool


@pytest.mark.parametrize(
    ("demands", "admitted", "queued"),
    [
        pytest.param(
            [
                job("big", min_replicas=6, current_replicas=6, nodes=POOL_A, created=0),
                job("head", min_replicas=4, nodes=POOL_A, created=1),
                job("other-pool", min_replicas=2, nodes=POOL_B, created=2),
            ],
            {"big", "other-pool"},
            ["head"],
            id="a-blocked-head-does-not-block-another-pool",
        ),
        pytest.param(
            [
                job("big", min_replicas=6, current_replicas=6, nodes=POOL_A, created=0),
                job("head", min_replicas=4, nodes=POOL_A, created=1),
                job("same-pool", min_replicas=1, nodes=POOL_A, created=2),
                job("anywhere", min_replicas=1, created=3),
            ],
            {"big"},
            ["head", "same-pool", "anywhere"],
            id="a-blocked-head-blocks-its-own-pool-and-unrestricted-jobs",
        ),
        pytest.param(
            [
                job("head", min_replicas=9, max_replicas=16, nodes=POOL_A, created=1),
                job("same-pool", min_replicas=2, nodes=POOL_A, created=2),
            ],
            {"same-pool"},
            ["head"],
            id="a-head-larger-than-its-pool-never-fits-and-blocks-nothing",
        ),
    ],
)
def test_admit_minimums_on_node_pools(
    demands: list[JobDemand], admitted: set[str], queued: list[str]
) -> None:
    placed, waiting = admit_minimums(demands, dict(nodes(4).free_gpus))
    assert set(placed) == admitted
    assert [d.key for d in waiting] == queued
    for demand in demands:
        for node in placed.get(demand.key, {}):
            assert demand.nodes is None or node in demand.nodes


def test_rebalance_takes_gpus_only_from_donors_on_the_recipients_pool() -> None:
    """A high-priority arrival restricted to pool A shrinks the job running there, never
    the one on pool B (whose GPUs it could not use)."""
    running_a = job("a", current_replicas=8, current_nodes={"n0": 4, "n1": 4}, created=1)
    running_b = job(
        "b", current_replicas=8, current_nodes={"n2": 4, "n3": 4}, nodes=POOL_B, created=2
    )
    urgent = job("u", min_replicas=1, max_replicas=2, nodes=POOL_A, priority=10, created=3)
    allocation = allocate([running_a, running_b, urgent], nodes(4), now=100.0)
    assert allocation["b"].replicas == 8
    assert allocation["u"].replicas == 2
    assert allocation["a"].replicas == 6
    assert {n for n, _ in allocation["u"].placement} <= POOL_A


def test_a_queued_jobs_reason_counts_the_free_gpus_of_its_own_pool() -> None:
    demands = [
        job("a", min_replicas=6, max_replicas=6, nodes=POOL_A, created=1),
        job("b", min_replicas=4, max_replicas=4, nodes=POOL_A, created=2),
    ]
    allocation = allocate(demands, nodes(4), now=100.0)
    assert allocation["b"].reason == "queued: needs 4 GPUs, 2 free"  # 8 free on pool B


def test_a_queued_jobs_reason_says_when_its_free_gpus_are_split_across_nodes() -> None:
    """8 GPUs free in all, 2 on one node and 6 on the other: a job of one 8-GPU worker is
    queued, and "8 free" alone would read as a bug."""
    demands = [
        job(
            "small",
            min_replicas=2,
            max_replicas=2,
            current_replicas=2,
            current_nodes={"n1": 2},
            created=1,
        ),
        job("whole", min_replicas=1, max_replicas=1, gpus_per_worker=8, created=2),
    ]
    allocation = allocate(demands, Capacity({"n0": 6, "n1": 4}), now=100.0)
    assert allocation["whole"].reason == (
        "queued: needs 8 GPUs, 8 free, but each worker needs 8 GPUs on one node: 0 of its 1 "
        "fit (most free on one node: 6)"
    )


def test_a_job_gets_only_the_workers_its_cpu_and_memory_leave_room_for() -> None:
    """Workers asking for a third of a node's CPU: 2 per node whatever the GPUs. The GPUs
    they cannot use go to a job that can (they used to be granted to the first, whose extra
    workers stayed Pending)."""
    heavy = job("heavy", max_replicas=8, cpu_millis_per_worker=6000, created=1)
    light = job("light", max_replicas=8, created=2)
    cluster = nodes(2, cpu=[12_000, 12_000])
    allocation = allocate([heavy, light], cluster, now=100.0)
    assert allocation["heavy"].replicas == 4
    assert dict(allocation["heavy"].placement) == {"n0": 2, "n1": 2}
    assert allocation["light"].replicas == 4
    alone = allocate([heavy], cluster, now=100.0)
    assert alone["heavy"].replicas == 4


def test_a_job_its_cpu_leaves_no_room_for_is_queued_and_told_why() -> None:
    demands = [job("heavy", min_replicas=3, max_replicas=4, memory_bytes_per_worker=2**30)]
    allocation = allocate(demands, nodes(2, memory=[2**30, 2**31 - 1]), now=100.0)
    assert allocation["heavy"].queued
    assert allocation["heavy"].reason == (
        "queued: needs 3 GPUs, 8 free, but the CPU and memory its workers request leave room "
        "for 2 of its 3 on the nodes with free GPUs"
    )


@pytest.mark.parametrize("gain", [0.5, 20.0])
def test_no_job_gives_up_gpus_an_arrival_has_no_cpu_to_use(gain: float) -> None:
    """The arrival has CPU and memory on n1 only. The job on n0, which gains least from its
    last workers, is not shrunk for it (it was cut to 1, its 3 GPUs left free); the job on
    n1 gives up 2. Nor is what the job on n0 would lose counted against the arrival's
    second worker (gaining 20 per worker, that loss had cost the arrival that worker)."""
    a = job("a", max_replicas=4, current_replicas=4, current_nodes={"n0": 4}, created=1,
            throughput={n: 100.0 * min(n, 1) + gain * n for n in range(1, 5)})  # fmt: skip
    b = job("b", max_replicas=4, current_replicas=4, current_nodes={"n1": 4}, created=2,
            throughput={n: 100.0 * min(n, 3) + 0.5 * n for n in range(1, 5)})  # fmt: skip
    r = job("r", max_replicas=4, cpu_millis_per_worker=4000, created=3)
    allocation = allocate([a, b, r], nodes(2, cpu=[2000, 64_000]), now=100.0)
    assert (allocation["a"].replicas, allocation["b"].replicas) == (4, 2)
    assert dict(allocation["r"].placement) == {"n1": 2}


def test_a_donor_gives_up_first_the_workers_on_nodes_the_recipient_has_cpu_on() -> None:
    """Three new jobs on three 4-GPU nodes; j0's workers ask for memory that only n1 has
    (4 workers' worth), j2 may run on n0 only. When j1 gives up a worker it was placed this
    decision for j0, it is the one on n1, and j0 gets all of n1. Choosing among them by the
    nodes j0 may use alone (every node), j0 got 3. The GPUs j1 had been placed on n2 for
    the workers it then gave up were left idle; they go back to it (all its 5)."""
    jobs = [
        job("j0", max_replicas=6, throughput=amdahl(6, 0.16), created=0,
            memory_bytes_per_worker=2**30),
        job("j1", max_replicas=5, throughput=amdahl(5, 0.27), created=1),
        job("j2", max_replicas=7, throughput=amdahl(7, 0.3), created=2,
            nodes=frozenset({"n0"})),
    ]  # fmt: skip
    allocation = allocate(jobs, nodes(3, memory=[0, 4 * 2**30, 0]), now=10.0)
    assert dict(allocation["j0"].placement) == {"n1": 4}
    assert dict(allocation["j1"].placement) == {"n2": 4, "n0": 1}


def test_running_workers_beyond_their_room_keep_running() -> None:
    """Another team's pod took CPU on a node after the job's 3 workers started there: they
    keep running (the arbiter never moves a worker), but no new one goes there."""
    running = job("r", max_replicas=6, current_replicas=3, current_nodes={"n0": 3},
                  cpu_millis_per_worker=8000)  # fmt: skip
    allocation = allocate([running], nodes(2, cpu=[8000, 32_000]), now=100.0)
    assert dict(allocation["r"].placement) == {"n0": 3, "n1": 3}


def test_a_donor_on_another_pool_is_not_charged_for_a_move() -> None:
    """Same priority: the arrival on pool A may grow only by what the job on pool A gives
    up; the job on pool B, cheaper to shrink, is neither shrunk nor counted as a loss (it
    was, and its loss cut the move short: r 3, a 5)."""
    a = job(
        "a",
        current_replicas=8,
        current_nodes={"n0": 4, "n1": 4},
        throughput=amdahl(8, 0.3),
        created=1,
    )
    b = job(
        "b",
        current_replicas=8,
        current_nodes={"n2": 4, "n3": 4},
        throughput=amdahl(8, 0.6),
        nodes=POOL_B,
        created=2,
    )
    r = job("r", min_replicas=1, max_replicas=8, nodes=POOL_A, created=3)
    allocation = allocate([a, b, r], nodes(4), now=100.0)
    assert {k: x.replicas for k, x in allocation.jobs.items()} == {"a": 4, "b": 8, "r": 4}


@pytest.mark.parametrize(
    ("order", "a_after", "a_where"),
    [
        pytest.param(
            ("n0",) * 4 + ("n1",) * 3 + ("n2",), 5, {"n0": 4, "n1": 1}, id="last-index-off-pool"
        ),
        pytest.param(
            ("n2",) + ("n0",) * 4 + ("n1",) * 3,
            6,
            {"n2": 1, "n0": 4, "n1": 1},
            id="first-index-off-pool",
        ),
    ],
)
def test_a_donor_across_pools_frees_its_highest_indexes_wherever_they_run(
    order: tuple[str, ...], a_after: int, a_where: dict[str, int]
) -> None:
    """The donor runs on both pools; the operator deletes its highest replica indexes when
    it shrinks, so the arbiter frees those GPUs, not the ones it would like: when its last
    worker runs on pool B, freeing two GPUs on pool A for the arrival costs it three workers
    (the arbiter took one from pool A and kept n2's, which the operator then deleted, and
    the arrival's worker waited for a GPU nobody freed)."""
    a = job("a", current_replicas=8, worker_nodes=order, created=1)
    b = job(
        "b",
        current_replicas=7,
        max_replicas=7,
        current_nodes={"n2": 3, "n3": 4},
        nodes=POOL_B,
        created=2,
    )
    r = job("r", min_replicas=1, max_replicas=3, nodes=POOL_A, priority=10, created=3)
    allocation = allocate([a, b, r], nodes(4), now=100.0)
    assert {k: x.replicas for k, x in allocation.jobs.items()} == {"a": a_after, "b": 7, "r": 3}
    assert dict(allocation["a"].placement) == a_where
    assert dict(allocation["r"].placement) == {"n1": 3}


# ------------------------------------------------- running workers leave highest index first


@pytest.mark.parametrize(
    ("running", "arrival", "expected"),
    [
        pytest.param(
            [job("x", current_nodes={"n0": 4, "n1": 4}, current_replicas=8, created=1)],
            job("y", min_replicas=2, max_replicas=2, created=2),
            {"x": {"n0": 4, "n1": 2}, "y": {"n1": 2}},
            id="arrival-takes-the-last-indexes-gpus",
        ),
        pytest.param(
            [
                job("x", current_nodes={"n0": 4}, current_replicas=4, max_replicas=4, created=1),
                job("z", current_nodes={"n1": 2}, current_replicas=2, max_replicas=2, created=2),
            ],
            job("y", min_replicas=2, max_replicas=2, created=3),
            {"x": {"n0": 4}, "z": {"n1": 2}, "y": {"n1": 2}},
            id="free-gpus-first",
        ),
        pytest.param(
            [
                job("hi", current_nodes={"n0": 4}, current_replicas=4, priority=5, created=1),
                job("lo", current_nodes={"n1": 4}, current_replicas=4, created=2),
            ],
            job("y", min_replicas=3, max_replicas=3, priority=5, created=3),
            {"hi": {"n0": 4}, "lo": {"n1": 1}, "y": {"n1": 3}},
            id="lower-priority-gives-first",
        ),
        pytest.param(
            [
                job("x", current_nodes={"n0": 1, "n1": 3}, current_replicas=4, created=1),
                job("z", current_nodes={"n0": 3, "n1": 1}, current_replicas=4, created=2),
            ],
            job("y", min_replicas=1, max_replicas=1, created=3),
            {"x": {"n0": 1, "n1": 3}, "z": {"n0": 3}, "y": {"n1": 1}},
            id="fewest-gpus-lost",
        ),
        pytest.param(
            [
                job("x", current_nodes={"n0": 4}, current_replicas=4, max_replicas=4, created=1),
                job(
                    "z",
                    current_nodes={"n1": 4},
                    current_replicas=4,
                    max_replicas=4,
                    throughput=dict.fromkeys(range(1, 5), 100.0),
                    created=2,
                ),
            ],
            job("y", min_replicas=2, max_replicas=2, created=3),
            {"x": {"n0": 4}, "z": {"n1": 1}, "y": {"n1": 2}},  # z gains nothing from 2
            id="least-utility-lost",
        ),
    ],
)
def test_an_arrival_takes_the_gpus_whose_loss_costs_running_jobs_least(
    running: list[JobDemand], arrival: JobDemand, expected: dict[str, dict[str, int]]
) -> None:
    """Running jobs keep their first workers where they run (the operator deletes the
    highest replica indexes when a job shrinks), so which GPUs an arrival takes decides how
    many workers they keep: it takes free GPUs first, then those of the lowest priority's
    last indexes, where the loss of utility is least (z gains nothing from its last two
    workers: they go, not two of x's, whose throughput they double); on
    arrival-takes-the-last-indexes-gpus it had taken two on n0, where x's worker 1 runs,
    and x kept 1 worker where it could keep 6."""
    allocation = allocate([*running, arrival], nodes(2), now=100.0)
    assert {k: dict(a.placement) for k, a in allocation.jobs.items()} == expected


def test_an_arrival_leaves_the_cpu_a_running_job_returns_to() -> None:
    """Job a runs 4 workers on n0 and asks for all its CPU; b arrives. n0 still has free
    GPUs, and is the best fit by them, but its CPU is a's: b goes to n1 and a keeps its 4
    (by GPUs alone b was put on n0 and a's fourth worker had no CPU)."""
    a = job("a", max_replicas=4, current_replicas=4, current_nodes={"n0": 4}, created=1,
            cpu_millis_per_worker=2000, throughput=linear(4))  # fmt: skip
    b = job("b", max_replicas=1, created=2, cpu_millis_per_worker=2000, throughput=linear(1))
    allocation = allocate([a, b], nodes(2, gpus=8, cpu=[8000, 64_000]), now=10.0)
    assert dict(allocation["a"].placement) == {"n0": 4}
    assert dict(allocation["b"].placement) == {"n1": 1}


def test_cpu_a_donor_gives_up_goes_to_the_job_that_gains() -> None:
    """One node, its CPU all taken by two running jobs; d gains nothing from its 3
    workers, r scales linearly but has no CPU to grow on. d shrinks to its minimum, and the
    CPU it frees holds 4 more of r's lighter workers: the node's 8 CPUs exactly (the move
    itself took 1, and left the rest idle beside free GPUs)."""
    flat = {n: 100.0 + 0.1 * n for n in range(1, 9)}
    d = job("d", current_replicas=3, current_nodes={"n0": 3}, cpu_millis_per_worker=2000,
            created=1, throughput=flat)  # fmt: skip
    r = job("r", current_replicas=2, current_nodes={"n0": 2}, cpu_millis_per_worker=1000,
            created=2, throughput=linear(8))  # fmt: skip
    allocation = allocate([d, r], nodes(1, gpus=8, cpu=[8000]), now=10.0)
    assert (allocation["d"].replicas, allocation["r"].replicas) == (1, 6)


def test_new_workers_pack_on_a_node_whose_cpu_holds_them_all() -> None:
    """Three workers of 4 CPUs: n0's 4 GPUs hold them but its CPU only one; n1 holds all
    three, so they go there together (by GPUs alone, n0 was the best fit: 1 + 2)."""
    c = job("c", min_replicas=3, max_replicas=3, cpu_millis_per_worker=4000, throughput=linear(3))
    cluster = Capacity({"n0": 4, "n1": 6}, free_cpu_millis={"n0": 4000, "n1": 12_000})
    assert dict(allocate([c], cluster, now=10.0)["c"].placement) == {"n1": 3}


def test_two_jobs_share_a_nodes_cpu_not_each_its_own() -> None:
    """Two jobs whose workers ask a quarter of the node's CPU each: 4 workers in all, not 4
    each (each job's room counted alone planned 8, of which 4 stayed Pending)."""
    jobs = [job(k, cpu_millis_per_worker=16_000, created=i) for i, k in enumerate("ab")]
    allocation = allocate(jobs, nodes(1, gpus=8, cpu=[64_000]), now=10.0)
    assert allocation["a"].replicas + allocation["b"].replicas == 4
    assert allocation["a"].replicas >= 1 and allocation["b"].replicas >= 1


def running_at(key: str, count: int, node: str = "n0", **kw: Any) -> JobDemand:
    """A job running ``count`` workers on ``node`` at its minimum and maximum."""
    return job(key, min_replicas=count, max_replicas=count, current_replicas=count,
               current_nodes={node: count}, throughput=linear(count), **kw)  # fmt: skip


def beside_low(key: str, least: int, priority: int, preempts: bool) -> list[JobDemand]:
    """Job ``low`` running 4 workers on n0, and an arrival of that minimum and priority."""
    arrival = job(key, min_replicas=least, priority=priority, preempts=preempts, created=2)
    return [running_at("low", 4, created=1), arrival]


@pytest.mark.parametrize(
    ("count", "demands", "queued", "reason"),
    [
        pytest.param(1, beside_low("high", 2, 10, True), {"low"},
                     "preempted by high (priority 10 over 0); queued: needs 4 GPUs, 2 free",
                     id="a-higher-priority-arrival-queues-a-running-job"),
        pytest.param(1, beside_low("high", 2, 10, False), {"high"}, None,
                     id="preemption-policy-never-waits"),
        pytest.param(1, beside_low("peer", 2, 0, True), {"peer"}, None,
                     id="the-same-priority-never-preempts"),
        pytest.param(1, beside_low("huge", 8, 10, True), {"huge"}, None,
                     id="no-victim-when-even-all-would-not-make-room"),
        pytest.param(
            2,
            [running_at("old", 4, "n0", created=1), running_at("new", 4, "n1", created=2),
             job("high", min_replicas=4, max_replicas=4, priority=10, preempts=True,
                 created=3)],
            {"new"},
            "preempted by high (priority 10 over 0); queued: needs 4 GPUs, 0 free",
            id="the-newest-of-the-lowest-priority-goes",
        ),
        pytest.param(
            2,
            [running_at("small", 1, "n0", created=2), running_at("mid", 3, "n0", priority=1, created=1),
             running_at("other", 4, "n1", priority=5, created=1),
             job("high", min_replicas=3, max_replicas=3, priority=10, preempts=True,
                 created=3)],
            {"mid"},
            "preempted by high (priority 10 over 1); queued: needs 3 GPUs, 0 free",
            id="a-victim-not-needed-is-spared",  # small went first, but mid alone makes room
        ),
    ],
)  # fmt: skip
def test_preemption(
    count: int, demands: list[JobDemand], queued: set[str], reason: str | None
) -> None:
    """A waiting job whose PriorityClass preempts (the Kubernetes default) and whose minimum
    does not fit queues running jobs of lower priority, as few as do it: the lowest priority
    first, then the newest, then a victim whose going is not needed is spared. Their workers
    stop (the operator deletes a queued job's workers, which checkpoint); the job says who
    took its place."""
    allocation = allocate(demands, nodes(count), now=100.0)
    assert {k for k, a in allocation.jobs.items() if a.queued} == queued
    for key in queued:
        if reason is not None:
            assert allocation[key].reason == reason
            assert allocation[key].preempted_by == preemptor(reason)
    for demand in demands:
        if demand.key not in queued:
            assert allocation[demand.key].replicas >= demand.min_replicas
            assert allocation[demand.key].preempted_by is None


def preemptor(reason: str) -> str | None:
    """The job a ``preempted by KEY (...)`` reason names."""
    return reason.removeprefix("preempted by ").split(" ", 1)[0] if "preempted" in reason else None


def urgent_on_n0(preempts: bool = True, **kw: Any) -> JobDemand:
    """An urgent job (priority 10) running 4 workers on n0, scaling linearly to 8."""
    kw.setdefault("throughput", linear(8))
    return job("urgent", min_replicas=1, max_replicas=kw.pop("max_replicas", 8), priority=10,
               preempts=preempts, current_replicas=4, current_nodes={"n0": 4}, created=5,
               **kw)  # fmt: skip


@pytest.mark.parametrize(
    ("count", "demands", "expected", "reason"),
    [
        pytest.param(2, [urgent_on_n0(), running_at("low", 4, "n1", created=1)],
                     {"urgent": 8, "low": 0},
                     "preempted by urgent (priority 10 over 0); queued: needs 4 GPUs, 0 free",
                     id="an-urgent-job-grows-into-a-lower-priority-minimum"),
        pytest.param(2, [urgent_on_n0(False), running_at("low", 4, "n1", created=1)],
                     {"urgent": 4, "low": 4}, None, id="preemption-policy-never-does-not"),
        pytest.param(2, [urgent_on_n0(throughput={n: 100.0 * min(n, 4) for n in range(1, 9)}),
                         running_at("low", 4, "n1", created=1)],
                     {"urgent": 4, "low": 4}, None, id="no-stop-for-no-gain"),
        pytest.param(2, [urgent_on_n0(), running_at("low", 4, "n1", priority=10, created=1)],
                     {"urgent": 4, "low": 4}, None, id="never-into-its-own-priority"),
        pytest.param(3, [urgent_on_n0(), running_at("old", 4, "n1", created=1),
                         running_at("new", 4, "n2", created=2)],
                     {"urgent": 8, "old": 4, "new": 0},
                     "preempted by urgent (priority 10 over 0); queued: needs 4 GPUs, 0 free",
                     id="the-newest-of-the-lowest-priority-goes"),
        pytest.param(2, [urgent_on_n0(max_replicas=6),
                         job("low", min_replicas=2, max_replicas=4, current_replicas=4,
                             current_nodes={"n1": 4}, created=1, throughput=linear(4))],
                     {"urgent": 6, "low": 2}, None, id="shrunk-to-its-minimum-before-any-stop"),
        pytest.param(2, [urgent_on_n0(nodes=frozenset({"n0"})),
                         running_at("low", 4, "n1", created=1)],
                     {"urgent": 4, "low": 4}, None, id="not-for-gpus-it-may-not-use"),
        pytest.param(3, [urgent_on_n0(),
                         job("mid", min_replicas=4, max_replicas=8, priority=5, preempts=True,
                             current_replicas=4, current_nodes={"n1": 4}, created=3),
                         running_at("low", 4, "n2", created=1)],
                     {"urgent": 8, "mid": 4, "low": 0},
                     "preempted by urgent (priority 10 over 0); queued: needs 4 GPUs, 0 free",
                     id="the-highest-priority-grows-first"),  # not mid into low, then urgent into mid
        pytest.param(3, [urgent_on_n0(),
                         job("mid", min_replicas=2, max_replicas=4, priority=5,
                             current_replicas=4, current_nodes={"n1": 4}, created=3),
                         running_at("low", 4, "n2", created=1)],
                     {"urgent": 8, "mid": 4, "low": 0},
                     "preempted by urgent (priority 10 over 0); queued: needs 4 GPUs, 0 free",
                     id="the-lowest-priority-goes-before-a-middle-one-shrinks"),
        pytest.param(3, [urgent_on_n0(max_replicas=10, throughput=linear(10)),
                         job("mid", min_replicas=2, max_replicas=4, priority=5,
                             current_replicas=4, current_nodes={"n1": 4}, created=3),
                         running_at("low", 4, "n2", created=1)],
                     {"urgent": 10, "mid": 2, "low": 0}, None,
                     id="then-the-middle-one-shrinks"),  # steps 6 and 7 again, low gone
        pytest.param(2, [job("urgent", min_replicas=1, max_replicas=2, gpus_per_worker=4,
                             priority=10, preempts=True, current_replicas=1,
                             current_nodes={"n0": 1}, created=5),
                         running_at("mid", 2, "n1", priority=5, created=3),
                         running_at("low", 2, "n1", created=1)],
                     {"urgent": 2, "mid": 0, "low": 0}, None,
                     id="both-when-the-lowest-alone-makes-no-room"),  # a worker of 4 GPUs
    ],
)  # fmt: skip
def test_preemption_for_growth(
    count: int, demands: list[JobDemand], expected: dict[str, int], reason: str | None
) -> None:
    """A running job whose PriorityClass preempts grows into lower-priority jobs' GPUs, as
    its pods would preempt theirs: beyond shrinking them to their minimum, the fewest stop
    (the lowest priority, then the newest), for a gain net of its restart only, never into
    its own priority, never with ``preemptionPolicy: Never``."""
    allocation = allocate(demands, nodes(count), now=100.0)
    assert {k: a.replicas for k, a in allocation.jobs.items()} == expected
    for key, replicas in expected.items():
        assert allocation[key].queued == (replicas == 0)
        assert (allocation[key].preempted_by is None) == (replicas > 0)
        if replicas == 0 and reason is not None:
            assert allocation[key].reason == reason
            assert allocation[key].preempted_by == preemptor(reason)
