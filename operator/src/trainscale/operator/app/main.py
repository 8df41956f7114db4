"""Runs the operator process: metrics endpoint, kopf with our handlers, HA peering.

Why this module exists: ``trainscale operator`` must start the same way in a pod, on a
laptop against a kubeconfig, and in the end-to-end tests; this is the one place that turns
command-line flags into kopf's run settings.
"""

from __future__ import annotations

import logging
import random

import kopf

from trainscale.operator.adapters.prometheus_access import warn_if_insecure
from trainscale.operator.daemons.options import OperatorOptions
from trainscale.operator.observability.metrics import serve_metrics

__all__ = ["OperatorOptions", "run_operator"]


def run_operator(options: OperatorOptions) -> int:
    """Run until SIGINT/SIGTERM. Returns the process exit code."""
    level = getattr(logging, options.log_level.upper(), logging.INFO)
    if options.log_format == "json":
        # kopf's JSON formatter: one object per line, with the job's namespace/name when the
        # record is about one; then our level on the root logger.
        kopf.configure(log_format=kopf.LogFormat.JSON)
        logging.getLogger().setLevel(level)
    else:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import trainscale.operator.daemons.handlers  # noqa: F401 - registers the kopf handlers

    warn_if_insecure(options.prometheus_access, options.prometheus_url)

    if options.metrics_port:
        serve_metrics(options.metrics_port, options.metrics_address)
    liveness = (
        f"http://{options.liveness_address}:{options.liveness_port}/healthz"
        if options.liveness_port
        else None
    )
    standalone = options.peering is None
    # kopf peering pauses every operator but the highest-priority one; equal priorities
    # would both run, so each replica draws its own.
    priority = options.priority if options.priority is not None else random.randint(1, 2**30)
    kopf.run(
        clusterwide=options.all_namespaces,
        namespaces=list(options.namespaces),
        liveness_endpoint=liveness,
        standalone=standalone,
        peering_name=options.peering,
        priority=priority,
        memo=kopf.Memo(options=options),
    )
    return 0
