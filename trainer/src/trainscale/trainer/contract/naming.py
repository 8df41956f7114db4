"""How a job's worker pods are named, and the pattern that finds them again.

Why this module exists: the operator names each worker pod ``{job}-worker-{index}``, and every
reader of per-pod series (the autoscaler's PromQL, the Grafana dashboard) recovers the job
from the ``pod`` label with a regular expression. A name and a pattern written apart drift,
and a query that matches no pod reads as "no metrics". Standard library only.
"""

from __future__ import annotations

WORKER_INFIX = "-worker-"


def worker_pod_name(job_name: str, index: int) -> str:
    """Name of the job's worker pod with replica index ``index``."""
    return f"{job_name}{WORKER_INFIX}{index}"


def worker_pod_pattern(job_pattern: str) -> str:
    """RE2 pattern (unanchored text, as PromQL's ``=~`` anchors it) matching the worker pods of
    the jobs ``job_pattern`` matches; ``job_pattern`` is itself a pattern (escape a literal
    job name first)."""
    return f"{job_pattern}{WORKER_INFIX}[0-9]+"
