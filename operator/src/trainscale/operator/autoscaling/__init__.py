"""Autoscaling decisions, pure: the policy that recommends a worker count from observations,
and the status, conditions and events a recommendation turns into. The autoscale daemon in
:mod:`trainscale.operator.daemons` feeds it observations and applies its result."""

from trainscale.operator.autoscaling.arbiter import allocate

__all__ = ["allocate"]
