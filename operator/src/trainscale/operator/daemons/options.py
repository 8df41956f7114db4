"""What ``trainscale operator`` was asked to do, and how a daemon finds it.

Why this module exists: the options are given once, on the command line, and kopf hands every
handler its ``memo``; the process entry point puts the options there, so no handler reads a
module-level global. A runner that gives none (kopf's ``KopfRunner`` in tests) gets the
defaults.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from trainscale.operator.adapters.prometheus_access import PrometheusAccess

DEFAULT_PROMETHEUS_URL = "http://prometheus-operated.monitoring.svc:9090"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")


@dataclasses.dataclass(frozen=True)
class OperatorOptions:
    """What ``trainscale operator`` was asked to do."""

    namespaces: tuple[str, ...] = ()
    all_namespaces: bool = False
    metrics_port: int = 8080
    metrics_address: str = "0.0.0.0"
    liveness_port: int = 8081
    liveness_address: str = "0.0.0.0"
    prometheus_url: str = DEFAULT_PROMETHEUS_URL
    prometheus_access: PrometheusAccess = dataclasses.field(default_factory=PrometheusAccess)
    peering: str | None = None
    priority: int | None = None
    peering_lifetime: int = 60
    log_level: str = "INFO"
    log_format: str = "text"  # one of LOG_FORMATS
    arbitration: bool = True
    arbitration_interval_seconds: float = 10.0
    # a job whose PriorityClass preempts queues lower-priority jobs to grow as well as to
    # start (``--arbitration-preemption grow``); False: only to start (``start``)
    arbitration_preempt_to_grow: bool = True


def options_of(memo: Any) -> OperatorOptions:
    """The options kopf's ``memo`` carries (the defaults when it carries none)."""
    found = getattr(memo, "options", None)
    return found if isinstance(found, OperatorOptions) else OperatorOptions()
