"""The worker counts a job may run with: ``[minReplicas, maxReplicas]`` and ``allowedReplicas``.

Why this module exists: the CRD's CEL rules, the models' validation and the autoscaler must
agree on which counts are allowed. The models refuse a spec whose ``replicas``,
``minReplicas`` or ``maxReplicas`` is not allowed (:meth:`AllowedReplicas.allows`); this
module answers the autoscaler's questions — which counts may I pick, and which allowed count
is nearest to the one I want — so no policy step re-derives the rule.

A validated spec has ``minReplicas`` and ``maxReplicas`` allowed, so there is always an
allowed count at or below any count >= minReplicas, and at or above any count <= maxReplicas.
"""

from __future__ import annotations

from typing import Literal

from trainscale.operator.api.models import TrainingJobSpec

Direction = Literal["down", "up", "nearest"]


def is_allowed(spec: TrainingJobSpec, replicas: int) -> bool:
    """Whether the job may run with ``replicas`` workers (bounds and ``allowedReplicas``)."""
    within = spec.min_replicas <= replicas <= spec.max_replicas
    return within and spec.allowed_replicas.allows(replicas)


def allowed_sizes(spec: TrainingJobSpec) -> tuple[int, ...]:
    """Every count the job may run with, ascending; never empty for a validated spec."""
    return tuple(n for n in range(spec.min_replicas, spec.max_replicas + 1) if is_allowed(spec, n))


def nearest_allowed(spec: TrainingJobSpec, replicas: int, direction: Direction) -> int:
    """The allowed count nearest to ``replicas`` in ``direction``.

    ``replicas`` is first clamped into ``[minReplicas, maxReplicas]``. ``down``: the largest
    allowed count <= it; ``up``: the smallest allowed count >= it; ``nearest``: whichever of
    the two is closer, the smaller one on a tie (fewer GPUs for the same distance).

    Raises:
        ValueError: the spec allows no count at all (only a spec that skipped validation).
    """
    sizes = allowed_sizes(spec)
    if not sizes:
        raise ValueError(f"allowedReplicas ({spec.allowed_replicas.describe()}) allows no count")
    target = min(max(replicas, spec.min_replicas), spec.max_replicas)
    below = [n for n in sizes if n <= target]
    above = [n for n in sizes if n >= target]
    down = below[-1] if below else sizes[0]
    up = above[0] if above else sizes[-1]
    if direction == "down":
        return down
    if direction == "up":
        return up
    return down if target - down <= up - target else up
