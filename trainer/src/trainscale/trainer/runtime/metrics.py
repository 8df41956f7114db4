"""Prometheus exporter of one worker process (the adapter around prometheus_client and NVML).

Why this module exists: the autoscaler decides from what the workers export: throughput
(``rate()`` of the samples counter), step, compute and communication time, and GPU
utilization. The names come from :mod:`trainscale.trainer.contract.metric_names`; this module only
keeps the values, serves them over HTTP and reads NVML at scrape time (no polling thread;
without a GPU or without nvidia-ml-py the GPU metric is simply absent).

Recording a step must cost next to nothing (the goal is < 2 % of a step of a few ms), so the
values are plain attributes updated without locks and turned into Prometheus families only
when Prometheus scrapes (a custom collector), instead of prometheus_client's locked metric
objects (~20 us per step for our ten values on this machine).
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from trainscale.trainer.contract import metric_names as names
from trainscale.trainer.runtime.settings import MetricsSettings

logger = logging.getLogger(__name__)

_STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_CHECKPOINT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class NvmlUtilizationCollector(Collector):
    """Reads the utilization of one GPU through NVML each time Prometheus scrapes."""

    def __init__(self, handle: Any, nvml: Any) -> None:
        self._handle = handle
        self._nvml = nvml

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            names.GPU_UTILIZATION_RATIO,
            _doc(names.GPU_UTILIZATION_RATIO),
        )
        try:
            rates = self._nvml.nvmlDeviceGetUtilizationRates(self._handle)
        except Exception as exc:  # NVML errors must not break the scrape
            logger.debug("NVML read failed: %s", exc)
            return
        family.add_metric([], rates.gpu / 100.0)
        yield family


def open_nvml_handle(device_index: int) -> tuple[Any, Any] | None:
    """Return ``(pynvml, handle)`` for CUDA device ``device_index``, or None without NVML.

    The device is matched by UUID, so CUDA_VISIBLE_DEVICES remapping is respected.
    """
    try:
        import pynvml
        import torch

        pynvml.nvmlInit()
        uuid = str(torch.cuda.get_device_properties(device_index).uuid)
        uuid = uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"
        return pynvml, pynvml.nvmlDeviceGetHandleByUUID(uuid)
    except Exception as exc:  # no driver, no library, old torch: degrade gracefully
        logger.info("GPU utilization metric unavailable: %s", exc)
        return None


def _doc(name: str) -> str:
    return next(m.doc for m in names.ALL_METRICS if m.name == name)


class _Histogram:
    """Bucket counts kept as plain numbers (exported cumulatively at scrape time)."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def family(self, name: str) -> HistogramMetricFamily:
        cumulative, running = [], 0
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += count
            cumulative.append(("+Inf" if bound == math.inf else repr(bound), running))
        return HistogramMetricFamily(name, _doc(name), buckets=cumulative, sum_value=self.sum)


class TrainerMetrics(Collector):
    """The metrics of one worker; recording a step costs a few microseconds."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.samples = 0.0
        self.compute_seconds = 0.0
        self.communication_seconds = 0.0
        self.data_seconds = 0.0
        self.step_seconds = _Histogram(_STEP_BUCKETS)
        self.world_size = 0.0
        self.global_step = 0.0
        self.epoch = 0.0
        self.epoch_progress = 0.0
        self.loss = math.nan
        self.resumes = 0.0
        self.agent_restarts = 0.0
        self.checkpoint_seconds = _Histogram(_CHECKPOINT_BUCKETS)
        self.checkpoint_step = -1.0
        self.registry.register(self)
        self._server: Any = None

    def collect(self) -> Iterator[Metric]:
        """Turn the current values into Prometheus families (called at scrape time)."""
        counters = {
            names.SAMPLES_TOTAL: self.samples,
            names.COMPUTE_SECONDS_TOTAL: self.compute_seconds,
            names.COMMUNICATION_SECONDS_TOTAL: self.communication_seconds,
            names.DATA_SECONDS_TOTAL: self.data_seconds,
            names.RESUMES_TOTAL: self.resumes,
        }
        gauges = {
            names.WORLD_SIZE: self.world_size,
            names.GLOBAL_STEP: self.global_step,
            names.EPOCH: self.epoch,
            names.EPOCH_PROGRESS_RATIO: self.epoch_progress,
            names.LOSS: self.loss,
            names.AGENT_RESTARTS: self.agent_restarts,
            names.CHECKPOINT_STEP: self.checkpoint_step,
        }
        histograms = {
            names.STEP_SECONDS: self.step_seconds,
            names.CHECKPOINT_SAVE_SECONDS: self.checkpoint_seconds,
        }
        for metric in names.ALL_METRICS:
            if metric.name in counters:
                yield CounterMetricFamily(
                    metric.name.removesuffix("_total"), metric.doc, value=counters[metric.name]
                )
            elif metric.name in gauges:
                yield GaugeMetricFamily(metric.name, metric.doc, value=gauges[metric.name])
            elif metric.name in histograms:
                yield histograms[metric.name].family(metric.name)

    def watch_gpu(self, device_index: int) -> bool:
        """Export the utilization of CUDA device ``device_index``; False when NVML is absent."""
        opened = open_nvml_handle(device_index)
        if opened is None:
            return False
        nvml, handle = opened
        self.registry.register(NvmlUtilizationCollector(handle, nvml))
        return True

    def serve(self, settings: MetricsSettings, port: int | None) -> int | None:
        """Serve ``/metrics`` on ``settings.address:port``; return the port (None: disabled)."""
        if port is None:
            return None
        self._server, _ = start_http_server(port, addr=settings.address, registry=self.registry)
        return int(self._server.server_port)

    def shutdown(self) -> None:
        """Stop the HTTP server (tests; a worker process just exits)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def record_world(self, world_size: int, agent_restarts: int) -> None:
        """Record the world this worker process belongs to."""
        self.world_size = float(world_size)
        self.agent_restarts = float(agent_restarts)

    def record_resume(self, step: int) -> None:
        """Record that this process resumed from the checkpoint of ``step``."""
        self.resumes += 1
        self.checkpoint_step = float(step)

    def record_step(
        self,
        *,
        samples: int,
        step_seconds: float,
        compute_seconds: float,
        communication_seconds: float,
        data_seconds: float,
        global_step: int,
        epoch: int,
        epoch_progress: float,
        loss: float,
    ) -> None:
        """Record one finished optimizer step."""
        self.samples += samples
        self.step_seconds.observe(step_seconds)
        self.compute_seconds += max(compute_seconds, 0.0)
        self.communication_seconds += communication_seconds
        self.data_seconds += data_seconds
        self.global_step = global_step
        self.epoch = epoch
        self.epoch_progress = epoch_progress
        self.loss = loss

    def record_checkpoint(self, step: int, seconds: float) -> None:
        """Record one written checkpoint."""
        self.checkpoint_seconds.observe(seconds)
        self.checkpoint_step = float(step)


class NullMetrics(TrainerMetrics):
    """Metrics that record nothing (``--no-metrics``; the overhead benchmark's baseline)."""

    def record_step(self, **_: Any) -> None:
        """Do nothing."""

    def record_checkpoint(self, step: int, seconds: float) -> None:
        """Do nothing."""
