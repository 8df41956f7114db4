"""Prometheus metrics of a worker pod: every local rank records, one endpoint per pod serves.

Why this module exists: the autoscaler decides from what the workers export: throughput
(``rate()`` of the samples counter), step, compute and communication time, and GPU
utilization. The names come from :mod:`trainscale.trainer.contract.metric_names`; this module
keeps the values and serves them over HTTP (NVML is read at scrape time, no polling thread;
without a GPU or without nvidia-ml-py the GPU metric is simply absent).

A worker pod runs one process per GPU (local rank), but it declares one metrics port and the
PodMonitor scrapes only that one, so the pod's endpoint must report the work of *all* its
ranks. Each rank therefore keeps its values in a small memory-mapped file in a per-pod
directory that the pod's agent creates (:func:`publish_to` / :class:`PodMetricsCollector`); the
agent, which lives across every restart of its workers, serves the single endpoint and sums
the ranks at scrape time:

* counters and histograms are the sum over the ranks alive now **plus** the final values of
  every rank that has exited since the agent started (folded in once, then the file is
  deleted), so the pod's counters never go down when a resize restarts the workers and
  ``rate()`` sees no reset;
* gauges come from the live ranks only (the highest value: the ranks of a pod agree on world
  size, step, epoch and loss), or, while none is running, from the exited rank that got
  furthest (highest step);
* a rank is alive while it holds an ``flock`` on its file: the kernel releases it when the
  process dies however it dies (SIGKILL included), so no PID checks (reuse) are needed.

Recording a step must cost next to nothing (the goal is < 2 % of a step of a few ms), so a
rank's values are plain doubles in a buffer (its file when published) updated without locks,
framed by a sequence number (a seqlock) so the reader never sums a half-written step;
Prometheus families are built only at scrape time (a custom collector), instead of
prometheus_client's locked metric objects (~20 us per step for our ten values on this
machine) or its multiprocess mode (a locked mmap write per value, one file per process that
is never compacted, and gauge files cleaned only by an explicit ``mark_process_dead``).
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import json
import logging
import math
import mmap
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
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

_COUNTERS = (
    names.SAMPLES_TOTAL,
    names.COMPUTE_SECONDS_TOTAL,
    names.COMMUNICATION_SECONDS_TOTAL,
    names.DATA_SECONDS_TOTAL,
    names.RESUMES_TOTAL,
)
_GAUGES = (
    names.WORLD_SIZE,
    names.GLOBAL_STEP,
    names.EPOCH,
    names.EPOCH_PROGRESS_RATIO,
    names.REMAINING_SAMPLES,
    names.LOSS,
    names.AGENT_RESTARTS,
    names.CHECKPOINT_STEP,
    names.RESIZE_STEPS_LOST,
    names.RESIZE_END_TIME,
)
_HISTOGRAMS = (
    (names.STEP_SECONDS, _STEP_BUCKETS),
    (names.CHECKPOINT_SAVE_SECONDS, _CHECKPOINT_BUCKETS),
)


def _build_layout() -> dict[str, int]:
    """Slot of each value in a rank's buffer; slot 0 is the seqlock's sequence number."""
    slots, nxt = {}, 1
    for name in (*_COUNTERS, *_GAUGES):
        slots[name], nxt = nxt, nxt + 1
    slots[names.RESIZE_PHASE_SECONDS], nxt = nxt, nxt + len(names.RESIZE_PHASES)  # gauges too
    for name, bounds in _HISTOGRAMS:
        slots[name], nxt = nxt, nxt + len(bounds) + 2  # one count per bucket (+Inf), the sum
    slots[""] = nxt  # total number of slots
    return slots


_SLOT = _build_layout()
_SLOTS = _SLOT.pop("")
_HEADER_BYTES = 256  # JSON {"local_rank", "pid", "gpu"} padded with spaces
_FILE_BYTES = _HEADER_BYTES + 8 * _SLOTS
_FILE_SUFFIX = ".metrics"
_SUMMED = range(_SLOT[_COUNTERS[0]], _SLOT[_GAUGES[0]])  # counters
_SUMMED_HIST = range(_SLOT[_HISTOGRAMS[0][0]], _SLOTS)  # histogram counts and sums
_GAUGE_SLOTS = range(_SLOT[_GAUGES[0]], _SLOT[_HISTOGRAMS[0][0]])
_SAMPLES = _SLOT[names.SAMPLES_TOTAL]
_COMPUTE = _SLOT[names.COMPUTE_SECONDS_TOTAL]
_COMMUNICATION = _SLOT[names.COMMUNICATION_SECONDS_TOTAL]
_DATA = _SLOT[names.DATA_SECONDS_TOTAL]
_GLOBAL_STEP = _SLOT[names.GLOBAL_STEP]
_EPOCH = _SLOT[names.EPOCH]
_EPOCH_PROGRESS = _SLOT[names.EPOCH_PROGRESS_RATIO]
_LOSS = _SLOT[names.LOSS]
_REMAINING = _SLOT[names.REMAINING_SAMPLES]
_STEP_HIST = _SLOT[names.STEP_SECONDS]
_STEP_SUM = _STEP_HIST + len(_STEP_BUCKETS) + 1
_CKPT_HIST = _SLOT[names.CHECKPOINT_SAVE_SECONDS]
_PHASES = _SLOT[names.RESIZE_PHASE_SECONDS]
_STEPS_LOST = _SLOT[names.RESIZE_STEPS_LOST]
_RESIZE_END = _SLOT[names.RESIZE_END_TIME]
# The latest (re)start's figures: unknown (NaN) until a process's first step; a pod whose
# new ranks have not got there yet keeps serving the previous restart's.
_RESTART_SLOTS = (*range(_PHASES, _PHASES + len(names.RESIZE_PHASES)), _STEPS_LOST, _RESIZE_END)


def _doc(name: str) -> str:
    return next(m.doc for m in names.ALL_METRICS if m.name == name)


def build_families(values: Sequence[float]) -> Iterator[Metric]:
    """Prometheus families of one buffer's ``values`` (a rank's or a pod's sum)."""
    histograms = dict(_HISTOGRAMS)
    for metric in names.ALL_METRICS:
        slot = _SLOT.get(metric.name)
        if slot is None:
            continue
        if metric.name == names.RESIZE_PHASE_SECONDS:
            yield _phase_family(values, metric.doc)
        elif metric.name in _COUNTERS:
            base = metric.name.removesuffix("_total")
            yield CounterMetricFamily(base, metric.doc, value=values[slot])
        elif metric.name in _GAUGES:
            yield GaugeMetricFamily(metric.name, metric.doc, value=values[slot])
        else:
            bounds = histograms[metric.name]
            cumulative, running = [], 0.0
            for i, bound in enumerate((*bounds, math.inf)):
                running += values[slot + i]
                cumulative.append(("+Inf" if bound == math.inf else repr(bound), running))
            sum_value = values[slot + len(bounds) + 1]
            yield HistogramMetricFamily(
                metric.name, metric.doc, buckets=cumulative, sum_value=sum_value
            )


def _phase_family(values: Sequence[float], doc: str) -> GaugeMetricFamily:
    """The ``phase``-labelled gauge of the latest (re)start; unknown phases are left out."""
    family = GaugeMetricFamily(names.RESIZE_PHASE_SECONDS, doc, labels=[names.RESIZE_PHASE_LABEL])
    for i, phase in enumerate(names.RESIZE_PHASES):
        if not math.isnan(values[_PHASES + i]):
            family.add_metric([phase], values[_PHASES + i])
    return family


class NvmlUtilizationCollector(Collector):
    """Reads the mean utilization of some GPUs through NVML each time Prometheus scrapes.

    ``handles`` is a list of NVML handles or a callable returning one (the pod's live ranks'
    GPUs change with every restart).
    """

    def __init__(self, handles: Any, nvml: Any) -> None:
        self._handles = handles
        self._nvml = nvml

    def collect(self) -> Iterator[GaugeMetricFamily]:
        handles = self._handles() if callable(self._handles) else self._handles
        try:
            readings = [self._nvml.nvmlDeviceGetUtilizationRates(h).gpu for h in handles]
        except Exception as exc:  # NVML errors must not break the scrape
            logger.debug("NVML read failed: %s", exc)
            return
        if readings:
            doc = _doc(names.GPU_UTILIZATION_RATIO)
            value = sum(readings) / len(readings) / 100.0
            yield GaugeMetricFamily(names.GPU_UTILIZATION_RATIO, doc, value=value)


def gpu_uuid(device_index: int) -> str | None:
    """The NVML UUID (``GPU-...``) of CUDA device ``device_index``; None without CUDA.

    The device is matched by UUID, so CUDA_VISIBLE_DEVICES remapping is respected.
    """
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        uuid = str(torch.cuda.get_device_properties(device_index).uuid)
        return uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"
    except Exception as exc:  # no driver, old torch: degrade gracefully
        logger.info("GPU utilization metric unavailable: %s", exc)
        return None


def _nvml_handle(uuid: str) -> tuple[Any, Any] | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml, pynvml.nvmlDeviceGetHandleByUUID(uuid)
    except Exception as exc:  # no driver, no library: degrade gracefully
        logger.info("GPU utilization metric unavailable: %s", exc)
        return None


def open_nvml_handle(device_index: int) -> tuple[Any, Any] | None:
    """Return ``(pynvml, handle)`` for CUDA device ``device_index``, or None without NVML."""
    uuid = gpu_uuid(device_index)
    return None if uuid is None else _nvml_handle(uuid)


def _read_consistent(view: memoryview[float], writer_gone: bool) -> list[float]:
    """The buffer's values as of one moment (the seqlock's reader side).

    A writer that died mid-update leaves an odd sequence number forever: its values are as
    complete as they will ever be, so take them.
    """
    values = [float(x) for x in view.tolist()]
    for attempt in range(200):
        before = view[0]
        if before % 2 == 0:
            values = [float(x) for x in view.tolist()]
            if values[0] == before:
                return values
        elif writer_gone:
            return values
        if attempt > 20:
            time.sleep(0.0005)
    return values  # a writer stuck mid-step for 0.1 s: its last values


class TrainerMetrics(Collector):
    """The metrics of one worker process; recording a step costs a few microseconds."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._storage: Any = bytearray(_FILE_BYTES)
        self._values = memoryview(self._storage)[_HEADER_BYTES:].cast("d")
        self._values[_SLOT[names.LOSS]] = math.nan
        self._values[_REMAINING] = math.nan  # unknown until a step says
        self._values[_SLOT[names.CHECKPOINT_STEP]] = -1.0
        for i in _RESTART_SLOTS:
            self._values[i] = math.nan
        self._header: dict[str, Any] = {"local_rank": 0, "pid": os.getpid(), "gpu": None}
        self._file: int | None = None
        self.registry.register(self)
        self._server: Any = None

    @property
    def samples(self) -> float:
        """Samples this process has recorded."""
        return float(self._values[_SLOT[names.SAMPLES_TOTAL]])

    def values(self) -> list[float]:
        """A consistent copy of this process's values (slot layout of this module)."""
        return _read_consistent(self._values, writer_gone=False)

    def collect(self) -> Iterator[Metric]:
        """Turn the current values into Prometheus families (called at scrape time)."""
        return build_families(self.values())

    def publish_to(self, directory: Path, local_rank: int) -> Path:
        """Keep this process's values in a file of the pod's metrics ``directory`` (the agent
        serves their sum) instead of serving them itself; returns the file.

        The file appears under its final name only once it is locked and filled, so the
        agent never mistakes a starting rank for a dead one.
        """
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".rank-{local_rank}-", suffix=".tmp")
        os.ftruncate(fd, _FILE_BYTES)
        fcntl.flock(fd, fcntl.LOCK_EX)  # held until this process exits
        mapped = mmap.mmap(fd, _FILE_BYTES)
        mapped[:] = bytes(self._storage)
        self._storage, self._file = mapped, fd
        self._values = memoryview(mapped)[_HEADER_BYTES:].cast("d")
        self._header.update(local_rank=local_rank, pid=os.getpid())
        self._write_header()
        final = directory / f"rank-{local_rank}-{os.getpid()}{_FILE_SUFFIX}"
        os.rename(tmp, final)
        return final

    def _write_header(self) -> None:
        raw = json.dumps(self._header).encode()
        if len(raw) > _HEADER_BYTES:
            raise ValueError(f"metrics header too long: {raw!r}")
        self._storage[:_HEADER_BYTES] = raw.ljust(_HEADER_BYTES)

    def watch_gpu(self, device_index: int) -> bool:
        """Export the utilization of CUDA device ``device_index``; False when NVML is absent.

        A published rank only names its GPU (the pod's endpoint reads NVML at scrape time).
        """
        uuid = gpu_uuid(device_index)
        if uuid is None:
            return False
        if self._file is not None:
            self._header["gpu"] = uuid
            self._write_header()
            return True
        opened = _nvml_handle(uuid)
        if opened is None:
            return False
        nvml, handle = opened
        self.registry.register(NvmlUtilizationCollector([handle], nvml))
        return True

    def serve(self, settings: MetricsSettings, port: int | None) -> int | None:
        """Serve ``/metrics`` on ``settings.address:port``; return the port (None: disabled)."""
        if port is None:
            return None
        self._server, _ = start_http_server(port, addr=settings.address, registry=self.registry)
        return int(self._server.server_port)

    def shutdown(self) -> None:
        """Stop the HTTP server, or stop publishing: the pod's endpoint then counts this rank
        as exited, as it would once the process ends (its final values stay counted).
        Recording still works afterwards, into memory only."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._file is not None:
            storage = bytearray(self._storage)
            self._values.release()
            self._storage.close()  # the mapping holds a duplicate of the locked descriptor
            os.close(self._file)
            self._file = None
            self._storage = storage
            self._values = memoryview(storage)[_HEADER_BYTES:].cast("d")

    def record_world(self, world_size: int, agent_restarts: int) -> None:
        """Record the world this worker process belongs to."""
        v = self._values
        v[0] += 1
        v[_SLOT[names.WORLD_SIZE]] = float(world_size)
        v[_SLOT[names.AGENT_RESTARTS]] = float(agent_restarts)
        v[0] += 1

    def record_resume(self, step: int) -> None:
        """Record that this process resumed from the checkpoint of ``step``."""
        v = self._values
        v[0] += 1
        v[_SLOT[names.RESUMES_TOTAL]] += 1
        v[_SLOT[names.CHECKPOINT_STEP]] = float(step)
        v[0] += 1

    def record_restart(
        self, phases: Mapping[str, float], steps_lost: float | None, *, ended: float | None = None
    ) -> None:
        """Record the latest (re)start: seconds per phase (names from
        :data:`~trainscale.trainer.contract.metric_names.RESIZE_PHASES`; others are an error),
        the steps it trains again (None: unknown) and when it ended (Unix seconds; default
        now, its first step just done)."""
        unknown = set(phases) - set(names.RESIZE_PHASES)
        if unknown:
            raise ValueError(f"unknown resize phase(s) {sorted(unknown)}")
        v = self._values
        v[0] += 1
        for i, phase in enumerate(names.RESIZE_PHASES):
            v[_PHASES + i] = float(phases.get(phase, math.nan))
        v[_STEPS_LOST] = math.nan if steps_lost is None else float(steps_lost)
        v[_RESIZE_END] = time.time() if ended is None else float(ended)
        v[0] += 1

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
        remaining_samples: float = math.nan,
    ) -> None:
        """Record one finished optimizer step (``remaining_samples``: NaN when unknown)."""
        v = self._values
        v[0] += 1  # odd: an update is under way
        v[_SAMPLES] += samples
        v[_STEP_HIST + bisect.bisect_left(_STEP_BUCKETS, step_seconds)] += 1
        v[_STEP_SUM] += step_seconds
        v[_COMPUTE] += max(compute_seconds, 0.0)
        v[_COMMUNICATION] += communication_seconds
        v[_DATA] += data_seconds
        v[_GLOBAL_STEP] = global_step
        v[_EPOCH] = epoch
        v[_EPOCH_PROGRESS] = epoch_progress
        v[_LOSS] = loss
        v[_REMAINING] = remaining_samples
        v[0] += 1  # even: consistent again

    def record_checkpoint(self, step: int, seconds: float) -> None:
        """Record one written checkpoint."""
        v = self._values
        v[0] += 1
        v[_CKPT_HIST + bisect.bisect_left(_CHECKPOINT_BUCKETS, seconds)] += 1
        v[_CKPT_HIST + len(_CHECKPOINT_BUCKETS) + 1] += seconds
        v[_SLOT[names.CHECKPOINT_STEP]] = float(step)
        v[0] += 1


class NullMetrics(TrainerMetrics):
    """Metrics that record nothing (``--no-metrics``; the overhead benchmark's baseline)."""

    def record_step(self, **_: Any) -> None:
        """Do nothing."""

    def record_checkpoint(self, step: int, seconds: float) -> None:
        """Do nothing."""


def _add(total: list[float], values: Sequence[float], slots: Iterable[int]) -> None:
    for i in slots:
        total[i] += values[i]


class PodMetricsCollector(Collector):
    """The sum of every local rank's values in a pod's metrics directory (see module doc).

    Scrapes may run concurrently (prometheus_client serves each in a thread): a lock makes
    sure an exited rank is folded into the retired totals exactly once.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._retired = [0.0] * _SLOTS  # counters and histograms of exited ranks
        self._last_gauges: list[float] | None = None  # exited rank with the highest step
        self._lock = threading.Lock()
        self._nvml: dict[str, tuple[Any, Any] | None] = {}

    def _scan(self) -> tuple[list[list[float]], list[str]]:
        """Fold exited ranks into the retired totals; return the live ranks' values and GPUs."""
        live: list[list[float]] = []
        gpus: list[str] = []
        for path in sorted(self.directory.glob(f"*{_FILE_SUFFIX}")):
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                header, values, gone = self._read_rank(fd)
                if gone:
                    _add(self._retired, values, (*_SUMMED, *_SUMMED_HIST))
                    last = self._last_gauges
                    if last is None or values[_GLOBAL_STEP] >= last[_GLOBAL_STEP]:
                        self._last_gauges = values
                    path.unlink()  # while we hold the lock: nobody folds it twice
                else:
                    live.append(values)
                    if header.get("gpu"):
                        gpus.append(str(header["gpu"]))
            finally:
                os.close(fd)  # releases our lock, if we took it
        return live, gpus

    @staticmethod
    def _read_rank(fd: int) -> tuple[dict[str, Any], list[float], bool]:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            gone = True  # its writer no longer holds the lock: the rank has exited
        except BlockingIOError:
            gone = False
        with mmap.mmap(fd, _FILE_BYTES, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            try:
                values = _read_consistent(view[_HEADER_BYTES:].cast("d"), writer_gone=gone)
                raw = bytes(view[:_HEADER_BYTES])
            finally:
                view.release()
        try:
            header = json.loads(raw)
        except ValueError:
            header = {}
        return header, values, gone

    def pod_values(self) -> tuple[list[float], list[str]]:
        """The pod's values now (slot layout of this module) and its live ranks' GPUs."""
        with self._lock:
            live, gpus = self._scan()
            total = list(self._retired)
            for values in live:
                _add(total, values, (*_SUMMED, *_SUMMED_HIST))
            last = self._last_gauges
            if live:
                for i in _GAUGE_SLOTS:
                    known = [values[i] for values in live if not math.isnan(values[i])]
                    total[i] = max(known) if known else math.nan
                if last is not None and all(math.isnan(total[i]) for i in _RESTART_SLOTS):
                    for i in _RESTART_SLOTS:  # a restart under way: still the previous one
                        total[i] = last[i]
            elif last is not None:
                for i in _GAUGE_SLOTS:
                    total[i] = last[i]
            else:
                total[_LOSS], total[_SLOT[names.CHECKPOINT_STEP]] = math.nan, -1.0
                total[_REMAINING] = math.nan
                for i in _RESTART_SLOTS:
                    total[i] = math.nan
            return total, gpus

    def _gpu_handles(self, uuids: Sequence[str]) -> tuple[Any, list[Any]]:
        nvml, handles = None, []
        for uuid in uuids:
            if uuid not in self._nvml:
                self._nvml[uuid] = _nvml_handle(uuid)
            opened = self._nvml[uuid]
            if opened is not None:
                nvml = opened[0]
                handles.append(opened[1])
        return nvml, handles

    def collect(self) -> Iterator[Metric]:
        """The pod's families: counters and histograms summed, gauges of the live ranks."""
        total, gpus = self.pod_values()
        yield from build_families(total)
        nvml, handles = self._gpu_handles(gpus)
        if handles:
            yield from NvmlUtilizationCollector(handles, nvml).collect()


def serve_pod_metrics(
    settings: MetricsSettings, port: int, directory: Path
) -> tuple[PodMetricsCollector, Any]:
    """Serve the pod's ``/metrics`` (the sum of the ranks publishing into ``directory``)
    on ``settings.address:port``; returns the collector and the HTTP server."""
    registry = CollectorRegistry()
    collector = PodMetricsCollector(directory)
    registry.register(collector)
    server, _ = start_http_server(port, addr=settings.address, registry=registry)
    return collector, server


def stop_server(server: Any) -> None:
    """Stop an HTTP server started by :func:`serve_pod_metrics`."""
    with contextlib.suppress(Exception):
        server.shutdown()
        server.server_close()
