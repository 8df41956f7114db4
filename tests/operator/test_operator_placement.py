"""Placement: the type the policy speaks, and how it is read from pods and nodes.

Covers:
- ``Placement.packed`` fills one node before the next; its ``replicas`` and ``nodes``;
- ``build_placement`` counts bound workers per node, sorted descending (1, 2 and 3 nodes);
  unscheduled (Pending, no nodeName), terminating and finished pods are not placed;
- GPUs per node come from the used nodes' allocatable ``nvidia.com/gpu``; nodes without GPUs
  are ignored; before any worker is bound the cluster's GPU nodes say it (those the worker
  template admits, when it is given); unknown is None; a bound on the job's workers per
  node (its required pod anti-affinity) counts only the GPUs that many workers take.
"""

from __future__ import annotations

from typing import Any

import pytest

from trainscale.operator.autoscaling.observed_placement import build_placement, node_gpus
from trainscale.operator.autoscaling.placement import Placement


@pytest.mark.parametrize(
    ("replicas", "per_node_max", "expected"),
    [
        pytest.param(10, 4, (4, 4, 2), id="ten-on-fours"),
        pytest.param(8, 4, (4, 4), id="exactly-two-nodes"),
        pytest.param(3, 8, (3,), id="fits-one-node"),
        pytest.param(5, None, (5,), id="unknown-size-one-node"),
        pytest.param(0, 8, (), id="nothing"),
        pytest.param(3, 1, (1, 1, 1), id="one-per-node"),
    ],
)
def test_packed_fills_one_node_before_the_next(
    replicas: int, per_node_max: int | None, expected: tuple[int, ...]
) -> None:
    placement = Placement.packed(replicas, workers_per_node_max=per_node_max)
    assert placement.workers_per_node == expected
    assert placement.replicas == replicas
    assert placement.nodes == len(expected)


@pytest.mark.parametrize(("replicas", "per_node_max"), [(-1, 4), (4, 0)])
def test_packed_refuses_impossible_sizes(replicas: int, per_node_max: int) -> None:
    with pytest.raises(ValueError, match="must be >="):
        Placement.packed(replicas, workers_per_node_max=per_node_max)


def pod(node: str | None, phase: str = "Running", *, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": f"w-{node}-{phase}"}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    spec: dict[str, Any] = {"containers": [{"name": "t", "image": "x"}]}
    if node is not None:
        spec["nodeName"] = node
    return {"metadata": meta, "spec": spec, "status": {"phase": phase}}


def node(name: str, gpus: Any) -> dict[str, Any]:
    allocatable = {"cpu": "64"} if gpus is None else {"cpu": "64", "nvidia.com/gpu": gpus}
    return {"metadata": {"name": name}, "status": {"allocatable": allocatable}}


EIGHTS = [node("a", "8"), node("b", "8"), node("c", "8")]


@pytest.mark.parametrize(
    ("pods", "nodes", "expected"),
    [
        pytest.param([pod("a")] * 4, EIGHTS, Placement((4,), 8), id="one-node"),
        pytest.param([pod("a"), pod("b"), pod("b"), pod("a"), pod("b")], EIGHTS,
                     Placement((3, 2), 8), id="two-nodes-sorted-descending"),
        pytest.param([pod("c"), pod("a"), pod("b"), pod("a"), pod("a"), pod("b")], EIGHTS,
                     Placement((3, 2, 1), 8), id="three-nodes"),
        pytest.param([pod("a"), pod("a"), pod(None, "Pending"), pod(None, "Pending")], EIGHTS,
                     Placement((2,), 8), id="unscheduled-pending-ignored"),
        pytest.param([pod("a"), pod("b", "Pending")], EIGHTS,
                     Placement((1, 1), 8), id="bound-but-starting-counts"),
        pytest.param([pod("a"), pod("b", deleting=True), pod("b", "Succeeded"),
                      pod("b", "Failed")], EIGHTS, Placement((1,), 8),
                     id="terminating-and-finished-ignored"),
        pytest.param([pod(None, "Pending")] * 3, EIGHTS, Placement((), 8),
                     id="none-bound-size-from-the-cluster"),
        pytest.param([], [], Placement((), None), id="nothing-known"),
        pytest.param([pod("cpu"), pod("cpu")], [node("cpu", None), *EIGHTS],
                     Placement((2,), None), id="node-without-gpus"),
        pytest.param([pod("cpu"), pod("a")], [node("cpu", "0"), *EIGHTS],
                     Placement((1, 1), 8), id="zero-gpu-node-ignored"),
        pytest.param([pod("a"), pod("x")], [node("a", "4"), node("x", "8")],
                     Placement((1, 1), 8), id="mixed-sizes-largest"),
        pytest.param([pod("a")], [node("a", "4"), node("x", "8")],
                     Placement((1,), 4), id="only-the-used-nodes-size"),
        pytest.param([pod("gone")], EIGHTS, Placement((1,), None),
                     id="node-not-listed"),
    ],
)  # fmt: skip
def test_build_placement(
    pods: list[dict[str, Any]], nodes: list[dict[str, Any]], expected: Placement
) -> None:
    assert build_placement(pods, nodes) == expected


@pytest.mark.parametrize(
    ("allocatable", "gpus"),
    [("8", 8), (4, 4), (None, 0), ("0", 0), ("lots", 0), ("-1", 0)],
)
def test_node_gpus_reads_allocatable(allocatable: Any, gpus: int) -> None:
    assert node_gpus(node("n", allocatable)) == gpus
    assert node_gpus({}) == 0


def pool(name: str, gpus: str, label: str) -> dict[str, Any]:
    return {**node(name, gpus), "metadata": {"name": name, "labels": {"pool": label}}}


POOLS = [pool("t4", "4", "t4"), pool("a100", "8", "a100")]


@pytest.mark.parametrize(
    ("pods", "pod_spec", "expected"),
    [
        pytest.param([], {"nodeSelector": {"pool": "t4"}}, Placement((), 4), id="its-pool"),
        pytest.param([], {}, Placement((), 8), id="every-node-admits-it"),
        pytest.param([], None, Placement((), 8), id="no-template-given"),
        pytest.param([], {"nodeSelector": {"pool": "h100"}}, Placement((), 8),
                     id="no-node-admits-it-the-cluster-says"),
        pytest.param([pod("a100")], {"nodeSelector": {"pool": "t4"}}, Placement((1,), 8),
                     id="bound-workers-say-it-whatever-the-template"),
    ],
)  # fmt: skip
def test_before_any_worker_is_bound_the_node_size_is_its_pools(
    pods: list[dict[str, Any]], pod_spec: dict[str, Any] | None, expected: Placement
) -> None:
    assert build_placement(pods, POOLS, pod_spec) == expected


@pytest.mark.parametrize(
    ("pods", "gpus_per_worker", "bound", "expected"),
    [
        pytest.param([pod("a"), pod("b")], 2, 1, Placement((1, 1), 2), id="one-worker-of-2-gpus"),
        pytest.param([], 4, 1, Placement((), 4), id="before-any-is-bound"),
        pytest.param([pod("a")], 2, None, Placement((1,), 8), id="no-bound"),
        pytest.param([pod("a")], 0, 1, Placement((1,), 8), id="gpus-per-worker-unknown"),
        pytest.param([pod("a")], 8, 1, Placement((1,), 8), id="a-worker-fills-the-node-anyway"),
        pytest.param([], 2, 1, Placement((), None), id="nothing-known"),
    ],
)  # fmt: skip
def test_a_bound_on_workers_per_node_counts_only_the_gpus_they_can_take(
    pods: list[dict[str, Any]], gpus_per_worker: int, bound: int | None, expected: Placement
) -> None:
    """A job whose template lets a node run one of its workers (a required pod
    anti-affinity) is told nodes of one worker's GPUs: its autoscaler predicts every count
    on a node per worker, the placement the scheduler makes."""
    nodes = EIGHTS if expected.gpus_per_node is not None or pods else []
    found = build_placement(
        pods, nodes, gpus_per_worker=gpus_per_worker, max_workers_per_node=bound
    )
    assert found == expected
