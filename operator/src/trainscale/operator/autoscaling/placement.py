"""Where a job's workers sit: how many nodes they span, and how many share each node.

Why this module exists: data-parallel throughput depends on the node span, not only on the
worker count. All-reduce inside a node (NVLink, PCIe) is far cheaper than across nodes, so
measured curves drop at the first count that spills onto another node (5 on 4-GPU nodes, 9
on 8-GPU nodes). The policy's model has a separate inter-node term and predicts per
(count, nodes); this is the one type that says what a placement is, shared by the policy,
the operator (which observes placements from the pods' ``nodeName``) and the simulator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Placement:
    """How a job's running workers sit on nodes.

    Attributes:
        workers_per_node: One entry per node used, sorted descending.
        gpus_per_node: Allocatable ``nvidia.com/gpu`` of those nodes, if known.
    """

    workers_per_node: tuple[int, ...]
    gpus_per_node: int | None = None

    def __post_init__(self) -> None:
        if any(
            isinstance(w, bool) or not isinstance(w, int) or w <= 0 for w in self.workers_per_node
        ):
            raise ValueError(
                f"Placement.workers_per_node must be positive integers, got {self.workers_per_node!r}"
            )
        if self.gpus_per_node is not None and self.gpus_per_node <= 0:
            raise ValueError(f"Placement.gpus_per_node must be > 0, got {self.gpus_per_node!r}")
        ordered = tuple(sorted(self.workers_per_node, reverse=True))
        if ordered != self.workers_per_node:
            object.__setattr__(self, "workers_per_node", ordered)

    @property
    def replicas(self) -> int:
        """Workers placed: ``sum(workers_per_node)``."""
        return sum(self.workers_per_node)

    @property
    def nodes(self) -> int:
        """Nodes used: ``len(workers_per_node)``."""
        return len(self.workers_per_node)

    @classmethod
    def packed(
        cls, replicas: int, *, workers_per_node_max: int | None, gpus_per_node: int | None = None
    ) -> Placement:
        """Fill one node before the next: ``packed(10, workers_per_node_max=4)`` is (4, 4, 2).

        ``workers_per_node_max`` None puts everything on one node; ``gpus_per_node`` is the
        nodes' size, as the placement carries it.

        Raises:
            ValueError: ``replicas`` is negative or ``workers_per_node_max`` is below 1.
        """
        if replicas < 0:
            raise ValueError(f"replicas must be >= 0, got {replicas}")
        if workers_per_node_max is not None and workers_per_node_max < 1:
            raise ValueError(f"workers_per_node_max must be >= 1, got {workers_per_node_max}")
        if replicas == 0:
            return cls((), gpus_per_node)
        if workers_per_node_max is None:
            return cls((replicas,), gpus_per_node)
        full, rest = divmod(replicas, workers_per_node_max)
        return cls((workers_per_node_max,) * full + ((rest,) if rest else ()), gpus_per_node)


def compute_packed_nodes(replicas: int, workers_per_node_max: int | None) -> int:
    """Nodes a packed placement of ``replicas`` spans (1 when the node size is unknown)."""
    if replicas <= 0:
        return 0
    if workers_per_node_max is None or workers_per_node_max <= 0:
        return 1
    return math.ceil(replicas / workers_per_node_max)


def infer_workers_per_node(
    told: int | None,
    latest: Placement | None,
    spans: Sequence[tuple[int, int]] = (),
) -> int | None:
    """How many of the job's workers a node takes, for predicting the placement of a count
    not running now: packed, this many to a node before the next.

    ``told`` is the node size in workers where the operator may list nodes (GPUs per node
    over GPUs per worker). It is not always what the job gets: where other pods hold part of
    every node, the scheduler's packing fills what is free, and the job's node boundary comes
    sooner. ``latest`` is the job's latest placement across several nodes: its fullest node
    shows how many workers a node takes now (a packed placement fills a node before the
    next), at most ``told``. Without one (a restart: the measurements restored from status
    keep ``(replicas, nodes)`` without the per-node split), ``spans`` that crossed more nodes
    than ``told`` packs them onto (all multi-node ones where nothing is told) give
    ``ceil(replicas / nodes)``, a lower bound. None where nothing is told and no placement
    crossed a node: every count is then predicted as on one node."""
    if latest is not None and latest.nodes > 1:
        seen = latest.workers_per_node[0]
        return seen if told is None else min(told, seen)
    crossed = [
        math.ceil(n / k)
        for n, k in spans
        if 1 < k <= n and (told is None or k > math.ceil(n / told))
    ]
    if not crossed:
        return told
    return max(crossed) if told is None else min(told, max(crossed))
