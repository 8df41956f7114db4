"""Decision tables of the arbiter's incremental steps: it starts from what runs.

Covers: running jobs restored to their size before anyone grows (``restore_running``), the
admission's GPUs missed by the job that loses least; the resize margin (no restart for a
small gain); GPUs moved between running jobs only when the gain pays both restarts
(``rebalance``), from lower-priority jobs first and never from a higher-priority one; and
an arrival or a departure changing no more jobs than it must.
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
    rebalance,
    restore_running,
)


def amdahl(hi: int, serial: float) -> dict[int, float]:
    return {n: 100.0 * n / (1.0 + serial * (n - 1)) for n in range(1, hi + 1)}


def job(key: str, **kw: Any) -> JobDemand:
    kw.setdefault("min_replicas", 1)
    kw.setdefault("max_replicas", 8)
    kw.setdefault("throughput", amdahl(kw["max_replicas"], 0.0))
    kw.setdefault("restart_cost_seconds", 60.0)
    return JobDemand(key=key, **kw)


def nodes(count: int, gpus: int = 4) -> dict[str, int]:
    return {f"n{i}": gpus for i in range(count)}


def counts(placed: dict[str, dict[str, int]]) -> dict[str, int]:
    return {key: sum(where.values()) for key, where in placed.items()}


def run_steps(
    demands: list[JobDemand], free: dict[str, int], *, restore: bool, moves: bool
) -> dict[str, int]:
    settings = ArbiterSettings()
    allowed = {d.key: compute_allowed_counts(d) for d in demands}
    placed, _ = admit_minimums(demands, free)
    if restore:
        restore_running(demands, allowed, placed, free, settings)
    if moves:
        rebalance(demands, allowed, placed, free, settings)
    return counts(placed)


@pytest.mark.parametrize(
    ("demands", "free", "expected"),
    [
        pytest.param(
            [job("a", current_replicas=6), job("b", current_replicas=2)],
            nodes(2),
            {"a": 6, "b": 2},
            id="everyone-back-to-its-size",
        ),
        pytest.param(
            [job("a", current_replicas=6), job("b", current_replicas=2), job("c")],
            nodes(2),
            {"a": 5, "b": 2, "c": 1},
            id="the-arrival-takes-from-the-job-that-loses-least",
        ),
        pytest.param(
            [
                job("a", current_replicas=6, throughput=amdahl(8, 0.3)),
                job("b", current_replicas=2),
                job("c", min_replicas=2),
            ],
            nodes(2),
            {"a": 4, "b": 2, "c": 2},
            id="a-poor-scaler-gives-up-its-tail",
        ),
        pytest.param(
            [job("a", current_replicas=6, priority=1), job("b", current_replicas=2), job("c")],
            nodes(2),
            {"a": 6, "b": 1, "c": 1},
            id="higher-priority-restored-first",
        ),
        pytest.param(
            [job("a", current_replicas=6, max_replicas=8, allowed_sizes=(1, 2, 4, 8))],
            nodes(2),
            {"a": 4},
            id="not-an-allowed-size-kept-at-the-one-below",
        ),
        pytest.param(
            [job("a", current_replicas=3)],
            nodes(2),
            {"a": 3},
            id="never-above-its-size",
        ),
    ],
)
def test_restore_running(
    demands: list[JobDemand], free: dict[str, int], expected: dict[str, int]
) -> None:
    assert run_steps(demands, free, restore=True, moves=False) == expected


@pytest.mark.parametrize(
    ("demands", "free", "expected"),
    [
        pytest.param(
            [job("a", current_replicas=7), job("b", current_replicas=1)],
            nodes(2),
            {"a": 4, "b": 4},
            id="big-gains-pay-two-restarts-until-even",
        ),
        pytest.param(
            [job("a", current_replicas=5), job("b", current_replicas=3)],
            nodes(2),
            {"a": 5, "b": 3},
            id="a-small-gain-does-not",
        ),
        pytest.param(
            [job("a", current_replicas=7, priority=1), job("b", current_replicas=1)],
            nodes(2),
            {"a": 7, "b": 1},
            id="never-from-a-higher-priority-job",
        ),
        pytest.param(
            [job("a", current_replicas=1, priority=1), job("b", current_replicas=7)],
            nodes(2),
            {"a": 7, "b": 1},
            id="a-higher-priority-job-takes-from-lower-down-to-their-minimum",
        ),
        pytest.param(
            [
                job("a", current_replicas=1, priority=1),
                job("b", current_replicas=7, min_replicas=4),
            ],
            nodes(2),
            {"a": 4, "b": 4},
            id="never-below-the-minimum",
        ),
    ],
)
def test_rebalance(
    demands: list[JobDemand], free: dict[str, int], expected: dict[str, int]
) -> None:
    assert run_steps(demands, free, restore=True, moves=True) == expected


@pytest.mark.parametrize(
    ("margin", "expected"),
    [
        pytest.param(0.0, 5, id="no-margin-grows-for-any-gain-net-of-restart"),
        pytest.param(0.3, 4, id="margin-holds-it"),
    ],
)
def test_resize_margin(margin: float, expected: int) -> None:
    """4 -> 5 workers of a near-linear job is 1.22x net of a 60 s restart over 600 s."""
    demand = job("a", current_replicas=4, throughput=amdahl(8, 0.02), max_replicas=5)
    allocation = allocate(
        [demand], Capacity(nodes(2)), now=0.0, settings=ArbiterSettings(resize_margin=margin)
    )
    assert allocation["a"].replicas == expected


def changed(before: dict[str, int], after: dict[str, int]) -> set[str]:
    return {key for key, n in after.items() if key in before and before[key] != n}


def test_an_arrival_shrinks_only_what_it_needs() -> None:
    """Eight running jobs on a full cluster; a fixed-size job arrives needing 2 GPUs: at
    most two jobs change size (the previous arbiter rebuilt from the minimums and moved
    many)."""
    running = [
        job(f"j{i}", current_replicas=4, throughput=amdahl(8, 0.01 * i), created=float(i))
        for i in range(8)
    ]
    arrival = job("new", min_replicas=2, max_replicas=2, created=10.0)
    allocation = allocate([*running, arrival], Capacity(nodes(8)), now=20.0)
    after = {key: a.replicas for key, a in allocation.jobs.items()}
    assert after["new"] == 2
    assert len(changed({d.key: 4 for d in running}, after)) <= 2, after


def test_a_departure_changes_few() -> None:
    """A job leaves 4 GPUs free: they go to the jobs gaining most, the rest stay put."""
    running = [
        job(f"j{i}", current_replicas=4, throughput=amdahl(8, 0.01 * i), created=float(i))
        for i in range(7)
    ]
    allocation = allocate(running, Capacity(nodes(8)), now=20.0)
    after = {key: a.replicas for key, a in allocation.jobs.items()}
    assert sum(after.values()) == 32
    assert len(changed({d.key: 4 for d in running}, after)) <= 4, after
