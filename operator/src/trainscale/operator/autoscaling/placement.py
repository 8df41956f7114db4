"""Where a job's workers sit on nodes.

Why this module exists: data-parallel throughput depends on how many nodes a job spans, not
only on how many workers it has (all-reduce inside a node is far cheaper than across nodes),
so the policy, the simulator and the operator need one shared description of a placement.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Placement:
    """How a job's running workers sit on nodes."""

    workers_per_node: tuple[int, ...]
    """One entry per node used, sorted descending."""
    gpus_per_node: int | None = None
    """Allocatable ``nvidia.com/gpu`` of those nodes, if known."""

    @property
    def replicas(self) -> int:
        """Workers in all: ``sum(workers_per_node)``."""
        return sum(self.workers_per_node)

    @property
    def nodes(self) -> int:
        """Nodes used: ``len(workers_per_node)``."""
        return len(self.workers_per_node)

    @classmethod
    def packed(cls, replicas: int, *, workers_per_node_max: int | None) -> Placement:
        """Fill one node before the next: ``packed(10, workers_per_node_max=4)`` is (4, 4, 2).

        ``workers_per_node_max`` None puts everything on one node.
        """
        if replicas <= 0:
            return cls(())
        if workers_per_node_max is None or workers_per_node_max <= 0:
            return cls((replicas,))
        full, rest = divmod(replicas, workers_per_node_max)
        nodes = (workers_per_node_max,) * full + ((rest,) if rest else ())
        return cls(nodes)
