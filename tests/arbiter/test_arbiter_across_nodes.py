"""A job's throughput across nodes (``JobDemand.throughput_across_nodes``) in arbitration.

Covers: a job whose next workers would spill past the room on its one node is valued at its
throughput across nodes, so it does not grow into a spread that loses more than it gains
(and does grow on its own node's room); a job that spans nodes already is valued there; an
arrival that takes running jobs' GPUs keeps its workers on one node when it can; a job
without the figures is placed as before.
"""

from __future__ import annotations

from trainscale.operator.autoscaling import allocate
from trainscale.operator.autoscaling.arbiter import JobDemand, consolidate

from .test_arbiter_decisions import job, nodes

CLIFF = {2: 90.0, 3: 135.0, 4: 180.0}  # across two nodes: 0.45 of the packed figure


def _placements(demands: list[JobDemand], count: int = 3) -> dict[str, dict[str, int]]:
    allocation = allocate(demands, nodes(count), now=100.0)
    return {k: dict(a.placement) for k, a in allocation.jobs.items()}


def test_a_job_does_not_spill_onto_a_second_node_that_loses_more_than_it_gains() -> None:
    """a runs 2 workers on n0, which b fills: its 3rd and 4th would go to another node,
    where 4 workers make 180 samples/s against 200 for its 2 together. Told so, it stays,
    and c takes the free GPUs; not told, it spills."""
    b = job("b", current_nodes={"n0": 2}, current_replicas=2, max_replicas=2, created=1)
    c = job("c", current_nodes={"n1": 1}, current_replicas=1, max_replicas=8, created=3)
    told = job("a", current_nodes={"n0": 2}, current_replicas=2, max_replicas=4, created=2,
               throughput_across_nodes=CLIFF)  # fmt: skip
    assert _placements([told, b, c]) == {"a": {"n0": 2}, "b": {"n0": 2}, "c": {"n1": 4, "n2": 4}}
    blind = job("a", current_nodes={"n0": 2}, current_replicas=2, max_replicas=4, created=2)
    assert sum(_placements([blind, b, c])["a"].values()) == 4


def test_a_job_grows_into_the_room_on_its_own_node() -> None:
    a = job("a", current_nodes={"n0": 2}, current_replicas=2, max_replicas=4,
            throughput_across_nodes=CLIFF)  # fmt: skip
    assert _placements([a]) == {"a": {"n0": 4}}


def test_a_job_spread_already_is_valued_where_it_runs() -> None:
    """Spread over two nodes, 2 workers make 120 samples/s; a 3rd makes 150 there: a gain
    against where it runs, though less than its 2 would make together (200)."""
    a = job("a", current_nodes={"n0": 1, "n1": 1}, current_replicas=2, max_replicas=3,
            throughput_across_nodes={2: 120.0, 3: 150.0})  # fmt: skip
    z = job("z", current_nodes={"n0": 3, "n1": 2}, current_replicas=5, min_replicas=5,
            max_replicas=5)  # fmt: skip
    assert _placements([a, z], count=2) == {"a": {"n0": 1, "n1": 2}, "z": {"n0": 3, "n1": 2}}


def test_an_arrival_takes_its_gpus_on_one_node_when_it_can() -> None:
    """x and z each run two workers on both nodes; the arrival y needs 2. Each of them
    losing its last worker costs the same as z losing its last two, but one from each puts
    y's two workers on two nodes: told its throughput across nodes, y takes z's two on n0."""
    x = job("x", current_nodes={"n0": 2, "n1": 2}, current_replicas=4, created=1)
    z = job("z", current_nodes={"n1": 2, "n0": 2}, current_replicas=4, created=2)
    told = job("y", min_replicas=2, max_replicas=2, created=3, throughput_across_nodes={2: 120.0})
    assert _placements([x, z, told], count=2) == {
        "x": {"n0": 2, "n1": 2}, "z": {"n1": 2}, "y": {"n0": 2},
    }  # fmt: skip
    blind = job("y", min_replicas=2, max_replicas=2, created=3)
    assert _placements([x, z, blind], count=2)["y"] == {"n0": 1, "n1": 1}


def test_a_job_that_resizes_is_planned_on_one_node_that_holds_it() -> None:
    """a runs 1 worker on n0 and 1 on n1 (started where the GPUs were); n2 is free now and
    a may grow to 3: its workers restart anyway, so all 3 are planned on n2 (the operator
    moves the two it runs). b fills n0 and n1's rest."""
    a = job("a", current_nodes={"n0": 1, "n1": 1}, current_replicas=2, max_replicas=3,
            throughput_across_nodes=CLIFF)  # fmt: skip
    b = job("b", current_nodes={"n0": 3, "n1": 3}, current_replicas=6, min_replicas=6,
            max_replicas=6)  # fmt: skip
    assert _placements([a, b]) == {"a": {"n2": 3}, "b": {"n0": 3, "n1": 3}}


def test_a_job_that_keeps_its_size_is_not_moved() -> None:
    a = job("a", current_nodes={"n0": 1, "n1": 1}, current_replicas=2, max_replicas=2,
            throughput_across_nodes=CLIFF)  # fmt: skip
    assert _placements([a]) == {"a": {"n0": 1, "n1": 1}}


def test_consolidate_keeps_a_job_where_most_of_its_workers_run_and_needs_a_node_that_holds_all(
) -> None:  # fmt: skip
    a = job("a", current_nodes={"n0": 1, "n1": 2}, current_replicas=3,
            throughput_across_nodes=CLIFF)  # fmt: skip
    placed = {"a": {"n0": 1, "n1": 2, "n2": 1}}
    free = {"n0": 3, "n1": 2, "n2": 0}
    consolidate([a], placed, free)
    # its worker on n0 holds its GPU until it moves; n2's new one was only planned
    assert placed == {"a": {"n1": 4}} and free == {"n0": 3, "n1": 0, "n2": 1}
    placed = {"a": {"n0": 1, "n1": 2, "n2": 1}}
    full = {"n0": 0, "n1": 1, "n2": 0}  # no node holds 4
    consolidate([a], placed, full)
    assert placed == {"a": {"n0": 1, "n1": 2, "n2": 1}} and full == {"n0": 0, "n1": 1, "n2": 0}
    blind = job("b", current_nodes={"n0": 1, "n1": 2}, current_replicas=3)
    placed = {"b": {"n0": 1, "n1": 2, "n2": 1}}
    consolidate([blind], placed, {"n0": 3, "n1": 2, "n2": 0})
    assert placed == {"b": {"n0": 1, "n1": 2, "n2": 1}}  # not told what spreading costs it


def test_an_arrival_keeps_to_its_node_only_at_the_cost_of_its_own_priority_or_lower() -> None:
    """u (priority 5) runs 3 workers on n0, x 3 on n1; the arrival y needs 2 and finds one
    free GPU on each. Its second worker does not take u's last GPU to sit beside its first:
    an arrival never costs a higher priority workers for its packing (u then preempted its
    way back, stopping jobs: 18 running jobs stopped on the placed benchmark's worst seed
    with urgent jobs, against 9 now). It spreads, as it would not told the figures."""
    u = job("u", current_nodes={"n0": 3}, current_replicas=3, max_replicas=3, priority=5,
            created=1)  # fmt: skip
    x = job("x", current_nodes={"n1": 3}, current_replicas=3, max_replicas=3, created=2)
    y = job("y", min_replicas=2, max_replicas=2, created=3, throughput_across_nodes={2: 120.0})
    assert _placements([u, x, y], count=2) == {
        "u": {"n0": 3}, "x": {"n1": 3}, "y": {"n0": 1, "n1": 1},
    }  # fmt: skip
