"""TEMPORARY SHIM of :class:`JobAutoscaler` (INTERFACES.md) over today's ``policy.recommend``.

Why this module exists: the simulator, ``trainscale simulate`` and the benchmark are written
against the stateful ``JobAutoscaler`` API while the policy itself is rewritten in another
branch. This shim keeps exactly the memory the operator's autoscale daemon keeps today
(observations bounded by ``compact_observations``, recent raw targets for stabilization,
the learned restart cost, the last scale time) and calls ``recommend``; it ignores
placement. The real implementation replaces this file at merge.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trainscale.operator.api import TrainingJobSpec
from trainscale.operator.autoscaling.placement import Placement
from trainscale.operator.autoscaling.policy import (
    Observation,
    Recommendation,
    compact_observations,
    recommend,
)


@dataclass(frozen=True)
class AutoscalerMemory:
    """The compact, JSON-able state kept in TrainingJob status (shim: what the daemon keeps)."""

    observations: tuple[Observation, ...] = ()
    recent_targets: tuple[tuple[float, int], ...] = ()
    restart_cost_seconds: float | None = None
    last_scale_time: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """camelCase keys, JSON types only."""
        return {
            "observations": [
                [o.timestamp, o.replicas, o.gpu_utilization, o.samples_per_second]
                for o in self.observations
            ],
            "recentTargets": [[t, n] for t, n in self.recent_targets],
            "restartCostSeconds": self.restart_cost_seconds,
            "lastScaleTime": self.last_scale_time,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AutoscalerMemory:
        """Tolerant of missing keys."""
        return cls(
            observations=tuple(Observation(*row) for row in data.get("observations") or ()),
            recent_targets=tuple((float(t), int(n)) for t, n in data.get("recentTargets") or ()),
            restart_cost_seconds=data.get("restartCostSeconds"),
            last_scale_time=data.get("lastScaleTime"),
        )


class JobAutoscaler:
    """Everything the operator keeps for one job between passes (shim over ``recommend``)."""

    def __init__(self, spec: TrainingJobSpec, *, memory: AutoscalerMemory | None = None) -> None:
        self._spec = spec
        memory = memory or AutoscalerMemory()
        self._observations = list(memory.observations)
        self._targets = list(memory.recent_targets)
        self._restart_cost = memory.restart_cost_seconds
        self._last_scale = memory.last_scale_time
        self._expected: int | None = None  # the count the last decision asked for
        self._last: Recommendation | None = None

    def update_spec(self, spec: TrainingJobSpec) -> None:
        """The user edited the job."""
        self._spec = spec

    def decide(
        self,
        observations: Sequence[Observation],
        *,
        current_replicas: int,
        now: float,
        placement: Placement | None = None,
        pending_replicas: int = 0,
        unschedulable_replicas: int = 0,
        ceiling: int | None = None,
    ) -> Recommendation:
        """Record the new observations and decide (see ``policy.recommend``)."""
        del placement  # the shim's model knows no placement
        if self._expected is not None and current_replicas != self._expected:
            self._last_scale = now  # someone else moved spec.replicas
        self._observations = compact_observations([*self._observations, *observations], now)
        spec = self._spec
        if spec.replicas != current_replicas:
            spec = spec.model_copy(update={"replicas": current_replicas})
        rec = recommend(
            spec,
            self._observations,
            current_replicas,
            now,
            pending_replicas=pending_replicas,
            unschedulable_replicas=unschedulable_replicas,
            last_scale_time=self._last_scale,
            restart_cost_seconds=self._restart_cost,
            recent_targets=self._targets,
            max_schedulable_replicas=ceiling,
        )
        auto = spec.autoscaling
        keep = max(auto.scale_up_stabilization_seconds, auto.scale_down_stabilization_seconds)
        keep += 10 * auto.interval_seconds
        self._targets = [(t, n) for t, n in self._targets if t >= now - keep]
        self._targets.append((now, rec.target))
        if rec.learned_restart_cost_seconds is not None:
            self._restart_cost = rec.learned_restart_cost_seconds
        if rec.replicas != current_replicas:
            self._last_scale = now
        self._expected = rec.replicas
        self._last = rec
        return rec

    def predict_throughput(self, replicas: int, *, nodes: int | None = None) -> float | None:
        """The fitted model's throughput at ``replicas``; None before anything is measured."""
        del nodes
        if self._last is None or self._last.model is None:
            return None
        return self._last.model.throughput(replicas)

    def memory(self) -> AutoscalerMemory:
        """Compact state for status."""
        return AutoscalerMemory(
            tuple(self._observations),
            tuple(self._targets),
            self._restart_cost,
            self._last_scale,
        )
