"""Helpers for the policy tests: specs, and a small closed-loop simulation of a job.

The simulation is the operator's loop in miniature: every ``intervalSeconds`` the job is
observed (true throughput and GPU utilization from a speedup curve, times noise; zero
while it restarts), a :class:`JobAutoscaler` decides, and a rescale costs ``restart_seconds``
of training. It is deliberately simpler than ``benchmarks/policy.py`` (no rate window).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from trainscale.operator.api import TrainingJobSpec
from trainscale.operator.autoscaling import JobAutoscaler, Placement
from trainscale.operator.autoscaling.placement import compute_packed_nodes
from trainscale.operator.autoscaling.policy import Observation, Recommendation
from trainscale.operator.autoscaling.simulation import (
    Curve,
    Noise,
    SimulationResult,
    run_simulation,
)

RATE = 100.0  # samples/s of one replica at one replica
COMPUTE_FRACTION = 0.95


def make_spec(
    *,
    replicas: int = 4,
    lo: int = 1,
    hi: int = 32,
    gpus: int = 1,
    allowed: dict[str, Any] | None = None,
    **autoscaling: Any,
) -> TrainingJobSpec:
    """A valid spec; ``autoscaling`` keys are the wire (camelCase) names, ``allowed`` is
    ``spec.allowedReplicas``."""
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
            **({"allowedReplicas": allowed} if allowed is not None else {}),
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
    x = RATE * replicas / tau(replicas)
    u = COMPUTE_FRACTION / tau(replicas)
    return [
        Observation(
            start + i * interval,
            replicas,
            u if util else None,
            x if throughput else None,
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
    workers_per_node: int | None = None,
    change: tuple[float, Callable[[int], float]] | None = None,
) -> Trace:
    """Run the policy on curve ``tau`` for ``hours``; workers fill one node before the next
    (``workers_per_node``; None: one node), and the policy is told the node size. With
    ``change = (seconds, tau2)`` the job runs on ``tau2`` from then on."""
    rng = random.Random(seed)
    interval = float(spec.autoscaling.interval_seconds)
    current = spec.replicas
    restarting_until = -1.0
    autoscaler = JobAutoscaler(spec)
    trace = Trace([current])
    t = 0.0
    while t < hours * 3600:
        t += interval
        running = t >= restarting_until
        curve = change[1] if change is not None and t >= change[0] else tau
        x = RATE * current / curve(current) if running else 0.0
        u = COMPUTE_FRACTION / curve(current) if running else 0.0
        o = Observation(
            t,
            current,
            min(1.0, max(0.0, u * (1 + rng.gauss(0, noise)))) if util else None,
            max(0.0, x * (1 + rng.gauss(0, noise))) if throughput else None,
            compute_packed_nodes(current, workers_per_node),
        )
        placement = Placement.packed(current, workers_per_node_max=workers_per_node)
        if workers_per_node is not None:
            placement = replace(placement, gpus_per_node=workers_per_node * spec.gpus_per_replica)
        rec = autoscaler.decide([o], current_replicas=current, now=t, placement=placement)
        trace.recommendations.append(rec)
        if rec.replicas != current:
            current = rec.replicas
            restarting_until = t + restart_seconds
        trace.replicas.append(current)
    return trace


def linear(n: int) -> float:
    return 1.0


def amdahl(beta: float) -> Callable[[int], float]:
    return lambda n: 1.0 + beta * (n - 1)


def peaked(beta: float, gamma: float) -> Callable[[int], float]:
    return lambda n: 1.0 + beta * (n - 1) + gamma * (n - 1) ** 2


def cliff(beta: float, inter: float, per_node: int) -> Callable[[int], float]:
    """Amdahl inside a node plus ``inter`` once a packed job spills onto a second node."""
    return lambda n: 1.0 + beta * (n - 1) + (inter if n > per_node else 0.0)


def run_slow_restart_seed(curve: Curve, spec: TrainingJobSpec) -> SimulationResult:
    """The benchmark's seed with 250 s restarts (2 % noise, 80 % of the sync share seen),
    4 h on the shared simulated job (``benchmarks/policy.py`` seed 1)."""
    return run_simulation(
        curve, spec, hours=4.0, noise=Noise(0.02, 0.0, 0.8), restart_seconds=250.0, seed=1
    )


def moves(result: SimulationResult) -> list[int]:
    """The counts a simulated run rescaled to, in order."""
    return [
        d.recommendation.replicas
        for d in result.decisions
        if d.recommendation.replicas != d.recommendation.current_replicas
    ]
