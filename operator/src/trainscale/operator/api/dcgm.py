"""Names of the NVIDIA dcgm-exporter series the operator reads, defined once.

Why this module exists: the autoscaler's PromQL (:mod:`trainscale.operator.adapters.promql`)
and the Grafana dashboard (:mod:`trainscale.operator.observability.dashboard`) must read the
same GPU series, and they sit in sibling layers that may not import each other, so the names
live here, below both. They are part of what a cluster must provide (dcgm-exporter scraped by
Prometheus), like the CRD. Standard library only.
"""

from __future__ import annotations

DCGM_ENGINE_ACTIVE = "DCGM_FI_PROF_GR_ENGINE_ACTIVE"
"""Fraction of time the graphics/compute engine was active (0..1); data-center GPUs with
profiling metrics. Preferred."""

DCGM_GPU_UTIL = "DCGM_FI_DEV_GPU_UTIL"
"""GPU utilization in percent (0..100); every GPU. The fallback, divided by 100."""
