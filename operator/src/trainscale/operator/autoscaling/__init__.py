"""Autoscaling decisions, pure: the policy that recommends a worker count from observations,
the per-job :class:`JobAutoscaler` that keeps what the policy needs between passes, and the
status, conditions and events a recommendation turns into, and the cluster arbiter that
divides GPUs between jobs. The autoscale daemon in
:mod:`trainscale.operator.daemons` feeds it observations and applies its result."""

from trainscale.operator.autoscaling.arbiter import allocate
from trainscale.operator.autoscaling.autoscaler import AutoscalerMemory, JobAutoscaler
from trainscale.operator.autoscaling.placement import Placement

__all__ = ["AutoscalerMemory", "JobAutoscaler", "Placement", "allocate"]
