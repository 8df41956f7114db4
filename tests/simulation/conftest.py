"""Shared fixtures of the workload simulator's tests."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping

import pytest

from trainscale.operator.autoscaling import workload
from trainscale.operator.autoscaling.workload import Cluster, Running


@pytest.fixture
def checked_steps(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Every step's placement, checked as it is made: each job on nodes it may use (one
    worker per node where its workers may not share one), no node over its GPUs or (where
    modelled) its CPU, no job above its policy's target. Yields each
    step's workers granted that found no room (what ``Result.unplaced`` sums)."""
    steps: list[int] = []
    apply = workload._apply

    def checked(
        active: list[Running], targets: Mapping[str, int], cluster: Cluster
    ) -> dict[str, int]:
        placed = apply(active, targets, cluster)
        gpus: Counter[str] = Counter()
        cpu: Counter[str] = Counter()
        for s in active:
            gpus.update(s.nodes)
            for node in s.nodes:
                cpu[node] += s.cpu
            assert s.allowed is None or set(s.nodes) <= s.allowed, (s.job.name, s.nodes)
            assert not s.apart or len(set(s.nodes)) == len(s.nodes), (s.job.name, s.nodes)
            assert placed[s.job.name] <= targets.get(s.job.name, s.replicas)
        assert max(gpus.values(), default=0) <= cluster.gpus_per_node, gpus
        if cluster.cpu_per_node > 0:
            assert max(cpu.values(), default=0) <= cluster.cpu_per_node, cpu
        steps.append(sum(targets.get(name, n) - n for name, n in placed.items()))
        return placed

    monkeypatch.setattr(workload, "_apply", checked)
    yield steps
