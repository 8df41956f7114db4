"""Runs the operator process: metrics endpoint, kopf with our handlers, HA peering.

Why this module exists: ``trainscale operator`` must start the same way in a pod, on a
laptop against a kubeconfig, and in the end-to-end tests; this is the one place that turns
command-line flags into kopf's run settings.
"""

from __future__ import annotations

import dataclasses
import logging
import random

import kopf

from trainscale.operator.metrics import serve_metrics


@dataclasses.dataclass(frozen=True)
class OperatorOptions:
    """What ``trainscale operator`` was asked to do."""

    namespaces: tuple[str, ...] = ()
    all_namespaces: bool = False
    metrics_port: int = 8080
    metrics_address: str = "0.0.0.0"
    liveness_port: int = 8081
    liveness_address: str = "0.0.0.0"
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"
    peering: str | None = None
    priority: int | None = None
    peering_lifetime: int = 60
    log_level: str = "INFO"


OPTIONS = OperatorOptions()


def run_operator(options: OperatorOptions) -> int:
    """Run until SIGINT/SIGTERM. Returns the process exit code."""
    global OPTIONS  # noqa: PLW0603 - handlers read the process-wide options
    OPTIONS = options
    logging.basicConfig(
        level=getattr(logging, options.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    import trainscale.operator.handlers  # noqa: F401 - registers the kopf handlers

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
    )
    return 0
