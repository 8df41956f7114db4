"""Prometheus exporter of one worker process (the adapter around prometheus_client and NVML).

Why this module exists: the autoscaler decides from what the workers export: throughput
(``rate()`` of the samples counter), step, compute and communication time, and GPU
utilization. The names come from :mod:`trainscale.trainer.metric_names`; this module only
builds the metric objects, serves them over HTTP and reads NVML at scrape time (no polling
thread; without a GPU or without nvidia-ml-py the GPU metric is simply absent).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from trainscale.trainer import metric_names as names
from trainscale.trainer.settings import MetricsSettings

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


class TrainerMetrics:
    """The metrics of one worker; cheap to update on every step."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # Workers restart on every resize; "_created" series would only double each scrape.
        disable_created_metrics()
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.samples = Counter(names.SAMPLES_TOTAL, _doc(names.SAMPLES_TOTAL), registry=r)
        self.step_seconds = Histogram(
            names.STEP_SECONDS, _doc(names.STEP_SECONDS), buckets=_STEP_BUCKETS, registry=r
        )
        self.compute = Counter(
            names.COMPUTE_SECONDS_TOTAL, _doc(names.COMPUTE_SECONDS_TOTAL), registry=r
        )
        self.communication = Counter(
            names.COMMUNICATION_SECONDS_TOTAL, _doc(names.COMMUNICATION_SECONDS_TOTAL), registry=r
        )
        self.data = Counter(names.DATA_SECONDS_TOTAL, _doc(names.DATA_SECONDS_TOTAL), registry=r)
        self.world_size = Gauge(names.WORLD_SIZE, _doc(names.WORLD_SIZE), registry=r)
        self.global_step = Gauge(names.GLOBAL_STEP, _doc(names.GLOBAL_STEP), registry=r)
        self.epoch = Gauge(names.EPOCH, _doc(names.EPOCH), registry=r)
        self.epoch_progress = Gauge(
            names.EPOCH_PROGRESS_RATIO, _doc(names.EPOCH_PROGRESS_RATIO), registry=r
        )
        self.loss = Gauge(names.LOSS, _doc(names.LOSS), registry=r)
        self.resumes = Counter(names.RESUMES_TOTAL, _doc(names.RESUMES_TOTAL), registry=r)
        self.agent_restarts = Gauge(names.AGENT_RESTARTS, _doc(names.AGENT_RESTARTS), registry=r)
        self.checkpoint_seconds = Histogram(
            names.CHECKPOINT_SAVE_SECONDS,
            _doc(names.CHECKPOINT_SAVE_SECONDS),
            buckets=_CHECKPOINT_BUCKETS,
            registry=r,
        )
        self.checkpoint_step = Gauge(names.CHECKPOINT_STEP, _doc(names.CHECKPOINT_STEP), registry=r)
        self.checkpoint_step.set(-1)
        self._server: Any = None

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
        self.samples.inc(samples)
        self.step_seconds.observe(step_seconds)
        self.compute.inc(max(compute_seconds, 0.0))
        self.communication.inc(communication_seconds)
        self.data.inc(data_seconds)
        self.global_step.set(global_step)
        self.epoch.set(epoch)
        self.epoch_progress.set(epoch_progress)
        self.loss.set(loss)

    def record_checkpoint(self, step: int, seconds: float) -> None:
        """Record one written checkpoint."""
        self.checkpoint_seconds.observe(seconds)
        self.checkpoint_step.set(step)


class NullMetrics(TrainerMetrics):
    """Metrics that record nothing (``--no-metrics``; the overhead benchmark's baseline)."""

    def __init__(self) -> None:
        super().__init__()

    def record_step(self, **_: Any) -> None:
        """Do nothing."""

    def record_checkpoint(self, step: int, seconds: float) -> None:
        """Do nothing."""
