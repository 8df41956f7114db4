"""Helpers for the policy tests: specs, and the closed-loop simulation of a job.

The simulation is :func:`trainscale.operator.autoscaling.simulation.run_simulation` (the one
job model the benchmark and ``trainscale simulate`` use too), run in its simplest form:
every ``intervalSeconds`` the job is observed (true throughput and GPU utilization from a
speedup curve ``tau(n)``, times noise; zero while it restarts, no ``rate()`` window, no
settle time), the autoscaler decides, and a rescale costs ``restart_seconds`` of training.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trainscale.operator.api import TrainingJobSpec
from trainscale.operator.autoscaling.policy import Observation, Recommendation
from trainscale.operator.autoscaling.simulation import (
    COMPUTE_FRACTION,
    RATE,
    count_curve,
    run_simulation,
)

__all__ = [
    "COMPUTE_FRACTION",
    "RATE",
    "Trace",
    "amdahl",
    "linear",
    "make_spec",
    "peaked",
    "simulate",
    "steady",
]


def make_spec(
    *, replicas: int = 4, lo: int = 1, hi: int = 32, gpus: int = 1, **autoscaling: Any
) -> TrainingJobSpec:
    """A valid spec; ``autoscaling`` keys are the wire (camelCase) names."""
    container: dict[str, Any] = {"name": "worker", "image": "trainer:1"}
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": gpus}}
    return TrainingJobSpec.model_validate(
        {
            "replicas": replicas,
            "minReplicas": lo,
            "maxReplicas": hi,
            "template": {"spec": {"containers": [container]}},
            "autoscaling": {"enabled": True, **autoscaling},
        }
    )


def steady(
    replicas: int,
    *,
    start: float = 0.0,
    count: int = 10,
    interval: float = 30.0,
    tau: Callable[[int], float] = lambda n: 1.0,
    util: bool = True,
    throughput: bool = True,
) -> list[Observation]:
    """``count`` noise-free observations of a job running at ``replicas`` on curve ``tau``."""
    point = count_curve("steady", tau).point(replicas)
    return [
        Observation(
            start + i * interval,
            replicas,
            point.gpu_utilization if util else None,
            point.samples_per_second if throughput else None,
        )
        for i in range(count)
    ]


@dataclass
class Trace:
    replicas: list[int] = field(default_factory=list)  # after each decision
    recommendations: list[Recommendation] = field(default_factory=list)

    @property
    def rescales(self) -> int:
        return sum(1 for a, b in itertools.pairwise(self.replicas) if a != b)

    @property
    def reversals(self) -> int:
        """How often the direction of change flipped (up then down, or down then up)."""
        moves = [b - a for a, b in itertools.pairwise(self.replicas) if a != b]
        return sum(1 for a, b in itertools.pairwise(moves) if (a > 0) != (b > 0))


def simulate(
    spec: TrainingJobSpec,
    tau: Callable[[int], float],
    *,
    hours: float = 2.0,
    noise: float = 0.05,
    restart_seconds: float = 60.0,
    seed: int = 0,
    util: bool = True,
    throughput: bool = True,
) -> Trace:
    """Run ``spec`` on the curve ``tau`` (relative step time) with a fresh ``JobAutoscaler``."""
    result = run_simulation(
        count_curve("tau", tau),
        spec,
        hours=hours,
        noise=noise,
        restart_seconds=restart_seconds,
        seed=seed,
        rate_window=0.0,
        settle_seconds=0.0,
        report_utilization=util,
        report_throughput=throughput,
    )
    return Trace(
        [spec.replicas, *(p.replicas for p in result.points)],
        [d.recommendation for d in result.decisions],
    )


def linear(n: int) -> float:
    return 1.0


def amdahl(beta: float) -> Callable[[int], float]:
    return lambda n: 1.0 + beta * (n - 1)


def peaked(beta: float, gamma: float) -> Callable[[int], float]:
    return lambda n: 1.0 + beta * (n - 1) + gamma * (n - 1) ** 2
