"""Where a job's workers sit: how many on each node, and how many GPUs a node has.

Why this module exists: data-parallel throughput depends on how many nodes a job spans, not
only on how many workers it has (all-reduce inside a node is far cheaper than across nodes).
The policy, the arbiter and the simulation all speak of placements; this is the one type.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Placement:
    """How a job's running workers sit on nodes."""

    workers_per_node: tuple[int, ...]  # one entry per node used, sorted descending
    gpus_per_node: int | None = None  # allocatable nvidia.com/gpu of those nodes, if known

    @property
    def replicas(self) -> int:
        """Workers placed, on all nodes together."""
        return sum(self.workers_per_node)

    @property
    def nodes(self) -> int:
        """Nodes the workers span."""
        return len(self.workers_per_node)

    @classmethod
    def packed(cls, replicas: int, *, workers_per_node_max: int | None) -> Placement:
        """Fill one node before the next: ``packed(10, workers_per_node_max=4)`` is (4, 4, 2);
        ``workers_per_node_max=None`` puts everything on one node.

        Raises:
            ValueError: ``replicas`` is negative or ``workers_per_node_max`` is below 1.
        """
        if replicas < 0:
            raise ValueError(f"replicas must be >= 0, got {replicas}")
        if replicas == 0:
            return cls(())
        if workers_per_node_max is None:
            return cls((replicas,))
        if workers_per_node_max < 1:
            raise ValueError(f"workers_per_node_max must be >= 1, got {workers_per_node_max}")
        full, rest = divmod(replicas, workers_per_node_max)
        return cls((workers_per_node_max,) * full + ((rest,) if rest else ()))
