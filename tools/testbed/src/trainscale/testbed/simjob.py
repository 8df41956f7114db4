"""A simulated training job's metrics, for test-beds, demos and benchmarks without GPUs.

Why this module exists: on a control plane whose nodes are fake (kwok), worker pods run no
trainer and no GPU, so nothing would tell Prometheus how the job scales. This exporter
plays both dcgm-exporter and the trainer for such pods: for each running worker pod it
serves ``DCGM_FI_PROF_GR_ENGINE_ACTIVE`` with dcgm-exporter's labels and the trainer's
samples counter (:data:`trainscale.trainer.contract.metric_names.SAMPLES_TOTAL`), following a
synchronous data-parallel step time ``compute + sync * (n - 1)`` for ``n`` running workers,
or any curve of :mod:`trainscale.operator.autoscaling.simulation` (the one simulated-job
model, shared with ``trainscale simulate`` and the benchmark). Prometheus scrapes it like the
real exporters (with ``honor_labels: true``), and the operator cannot tell the difference.
Change ``sync`` while it runs to model a job whose scaling efficiency collapses.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from trainscale.operator.api.dcgm import DCGM_ENGINE_ACTIVE
from trainscale.operator.autoscaling.simulation import (
    Curve,
    CurveError,
    StepTimeCurve,
    load_curve,
)
from trainscale.trainer.contract.metric_names import SAMPLES_TOTAL
from trainscale.trainer.launch.local import find_free_port

DCGM_LABELS = ("gpu", "UUID", "device", "modelName", "Hostname", "container", "namespace", "pod")

FAST_AUTOSCALING: dict[str, Any] = {
    "enabled": True,
    "objective": "efficiency",
    "minEfficiency": 0.7,
    "intervalSeconds": 1,
    "scaleDownStabilizationSeconds": 0,
    "restartCostSeconds": 1,
    # A 5 s rate() window (Prometheus scraping every second), so a size can be measured
    # 6 s after it starts.
    "settleSeconds": 6,
    "prometheus": {
        "throughputQuery": (
            f'sum(rate({SAMPLES_TOTAL}{{namespace="{{namespace}}",'
            'pod=~"{job_regex}-worker-[0-9]+"}[5s]))'
        )
    },
}
"""``spec.autoscaling`` of a simulated job on a test-bed that decides in seconds, not minutes
(benchmarks and end-to-end tests; a copy is yours to change)."""


@dataclass
class SimulatedJob:
    """One job's workers: step time ``compute + sync * (n - 1)`` seconds, ``batch`` samples
    each; or, when ``curve`` is given, that curve's throughput and GPU utilization."""

    namespace: str
    name: str
    sync: float
    compute: float = 0.5
    batch: int = 64
    curve: Curve | None = None
    running: list[str] = field(default_factory=list)
    samples: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def model(self) -> Curve:
        """The curve now: ``curve``, else the step-time model of ``sync`` and ``compute``."""
        if self.curve is not None:
            return self.curve
        sync, compute = self.sync, self.compute
        return StepTimeCurve(
            f"sync={sync:g}",
            lambda p: 1.0 + sync / compute * max(p.replicas - 1, 0),
            rate=self.batch / compute,
            compute_fraction=1.0,
        )

    def step_seconds(self, workers: int | None = None) -> float:
        """Seconds per synchronous step with ``workers`` (default: those running now)."""
        n = len(self.running) if workers is None else workers
        return self.batch * n / self.throughput(n) if n else self.compute

    def throughput(self, workers: int) -> float:
        """Job samples per second with ``workers`` workers."""
        return self.model().point(workers).samples_per_second if workers else 0.0

    def advance(self, seconds: float, running: Sequence[str]) -> None:
        """Let ``seconds`` pass with ``running`` worker pods (names) training."""
        with self.lock:
            self.running = list(running)
            n = len(self.running)
            per_pod = self.throughput(n) / n if n else 0.0
            for pod in self.running:
                self.samples[pod] = self.samples.get(pod, 0.0) + per_pod * seconds

    def collect(self) -> Iterator[Any]:
        """The current series, in prometheus_client's collector protocol."""
        with self.lock:
            samples = CounterMetricFamily(
                SAMPLES_TOTAL.removesuffix("_total"),
                "Samples processed",
                labels=["namespace", "pod"],
            )
            busy = GaugeMetricFamily(
                DCGM_ENGINE_ACTIVE, "Graphics engine active ratio", labels=list(DCGM_LABELS)
            )
            n = len(self.running)
            utilization = self.model().point(n).gpu_utilization if n else 0.0
            for i, pod in enumerate(self.running):
                samples.add_metric([self.namespace, pod], self.samples[pod])
                busy.add_metric(
                    [
                        str(i),
                        f"GPU-{self.name}-{i}",
                        f"nvidia{i}",
                        "NVIDIA H100 80GB HBM3",
                        "kwok-node",
                        "trainer",
                        self.namespace,
                        pod,
                    ],
                    utilization,
                )
        yield samples
        yield busy


class SimulatedExporter:
    """Serves every simulated job's series over HTTP (``/metrics``) on ``address``."""

    def __init__(
        self, jobs: Sequence[SimulatedJob], address: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.jobs = list(jobs)
        registry = CollectorRegistry()
        registry.register(self)
        if port == 0:
            port = find_free_port(address)
        self.address, self.port = address, port
        self._server, self._thread = start_http_server(port, addr=address, registry=registry)

    @property
    def target(self) -> str:
        """host:port for a Prometheus scrape config."""
        return f"{self.address}:{self.port}"

    def collect(self) -> Iterator[Any]:
        """Collector protocol: the series of every job."""
        for job in self.jobs:
            yield from job.collect()

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()


PodLister = Callable[[str, str], list[dict[str, Any]]]
"""A job's worker pods (namespace, job name), any phase, as the API server returns them."""


def list_worker_pods_with(fetch_json: Callable[[str], Any]) -> PodLister:
    """A :data:`PodLister` that reads through ``fetch_json`` (an API path -> its JSON), e.g.
    :meth:`trainscale.testbed.cluster.Testbed.fetch_json`: no $KUBECONFIG needed."""
    from trainscale.operator.controller.builders import (
        build_selector_string,
        build_worker_selector,
    )

    def list_pods(namespace: str, name: str) -> list[dict[str, Any]]:
        query = urllib.parse.urlencode(
            {"labelSelector": build_selector_string(build_worker_selector(name))}
        )
        found = fetch_json(f"/api/v1/namespaces/{namespace}/pods?{query}") or {}
        return list(found.get("items") or [])

    return list_pods


def follow_running_workers(
    jobs: Sequence[SimulatedJob],
    stop: threading.Event,
    period: float = 0.5,
    list_pods: PodLister | None = None,
) -> None:
    """Advance each job with the worker pods the cluster runs, until ``stop``.

    ``list_pods`` reads them; default: the operator's client for $KUBECONFIG.
    """
    from trainscale.operator.controller.reconcile import parse_worker_pod

    lister = list_pods
    if lister is None:
        from trainscale.operator.adapters import k8s

        clients = k8s.load_clients()

        def lister(namespace: str, name: str) -> list[dict[str, Any]]:
            return k8s.fetch_worker_pods(clients, namespace, name)

    last = time.monotonic()
    while not stop.is_set():
        running: list[list[str]] = []
        for job in jobs:
            workers = [
                w for w in map(parse_worker_pod, lister(job.namespace, job.name)) if w is not None
            ]
            running.append(
                sorted(w.name for w in workers if w.phase == "Running" and not w.terminating)
            )
        now = time.monotonic()
        for job, names in zip(jobs, running, strict=True):
            job.advance(now - last, names)
        last = now
        stop.wait(period)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m trainscale.testbed.simjob``: simulate jobs' metrics for a test-bed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--job",
        action="append",
        required=True,
        metavar="NAMESPACE/NAME=SYNC",
        help=(
            "a job and its synchronisation seconds per extra worker, or a curve of "
            "trainscale simulate (a family name or a .csv file) (repeatable)"
        ),
    )
    parser.add_argument("--compute", type=float, default=0.5, help="compute seconds per step")
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9400)
    args = parser.parse_args(argv)
    jobs = []
    for spec in args.job:
        try:
            ref, sync = spec.split("=", 1)
            namespace, name = ref.split("/", 1)
        except ValueError:
            parser.error(f"--job {spec!r}: expected NAMESPACE/NAME=SYNC, e.g. default/resnet=0.05")
        try:
            jobs.append(SimulatedJob(namespace, name, sync=float(sync), compute=args.compute))
        except ValueError:
            try:
                curve = load_curve(sync)
            except CurveError as exc:
                parser.error(f"--job {spec!r}: {exc}")
            jobs.append(SimulatedJob(namespace, name, sync=0.0, curve=curve))
    exporter = SimulatedExporter(jobs, args.address, args.port)
    print(
        f"serving simulated metrics for {len(jobs)} job(s) on http://{exporter.target}/metrics",
        flush=True,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        follow_running_workers(jobs, stop)
    except KeyboardInterrupt:
        pass
    finally:
        exporter.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
