"""Helpers for tests against a real Prometheus: a test exporter and the server.

A real Prometheus scraping a test exporter that speaks dcgm-exporter's and the trainer's names.

The exporter (prometheus_client on 127.0.0.1) serves GPU gauges with dcgm-exporter's exact
metric names and labels, in both label styles the operator must handle, plus the trainer's
samples counter growing at a known rate, and its communication and step-time counters growing
at known rates (the sync share). Prometheus (the Debian ``prometheus`` binary)
scrapes it every second with ``honor_labels: true``, as dcgm-exporter's own ServiceMonitor
recommends, so the ``pod``/``exported_pod`` labels arrive as the exporter wrote them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from trainscale.testbed.prometheus import (
    PrometheusServer,
    start_prometheus,
    wait_for_series,
)
from trainscale.trainer.contract.metric_names import (
    COMMUNICATION_SECONDS_TOTAL,
    REMAINING_SAMPLES,
    RESIZE_END_TIME,
    RESIZE_PHASE_LABEL,
    RESIZE_PHASE_SECONDS,
    RESIZE_STEPS_LOST,
    SAMPLES_TOTAL,
    STEP_SECONDS,
)

__all__ = [
    "ALPHA_RATES",
    "DCGM_EXPORTED",
    "DCGM_LABELS",
    "DECOY_RATES",
    "GPUS",
    "RATE_WINDOW",
    "RESTARTS",
    "RESTART_SINCE",
    "SAMPLES_LEFT",
    "SAMPLE_RATES",
    "SYNC_RATES",
    "DcgmTrainerExporter",
    "Gpu",
    "PrometheusServer",
    "start_prometheus",
    "wait_for_series",
]
RATE_WINDOW = "5s"
DCGM_LABELS = ("gpu", "UUID", "device", "modelName", "Hostname", "container", "namespace", "pod")
DCGM_EXPORTED = (
    "gpu", "UUID", "device", "modelName", "Hostname", "exported_container",
    "exported_namespace", "exported_pod",
)  # fmt: skip


@dataclass(frozen=True)
class Gpu:
    """One GPU series: which pod uses it, in which label style, and its readings."""

    namespace: str
    pod: str
    engine_active: float | None  # DCGM_FI_PROF_GR_ENGINE_ACTIVE, None = GPU without profiling
    util_percent: float
    exported: bool = False  # labels as behind a ServiceMonitor without honorLabels


# job "alpha" (pod labels): engine active 0.6 and 0.8 -> 0.7
# job "beta" (exported_* labels, no profiling metrics): 40 % and 60 % -> 0.5
# decoys that a correct query must never include
GPUS = [
    Gpu("team-a", "alpha-worker-0", 0.6, 55),
    Gpu("team-a", "alpha-worker-1", 0.8, 75),
    Gpu("team-a", "beta-worker-0", None, 40, exported=True),
    Gpu("team-a", "beta-worker-1", None, 60, exported=True),
    Gpu("team-b", "alpha-worker-0", 0.05, 5),  # same job name, other namespace
    Gpu("team-a", "alpha-rdzv", 0.01, 1),  # not a worker
    Gpu("team-a", "alphax-worker-0", 0.02, 2),  # a job whose name extends alpha
    Gpu("team-a", "alpha-worker-0-debug", 0.03, 3),  # not a worker of alpha
]
# samples/s per pod (the counter grows at exactly this rate). Every decoy outweighs the
# job's own throughput (250), so a query whose scope is wrong in any one way (no namespace
# matcher, the whole namespace, a prefix or unanchored pod pattern) reads far more than the
# tests' 5 % tolerance.
ALPHA_RATES = {("team-a", "alpha-worker-0"): 100.0, ("team-a", "alpha-worker-1"): 150.0}
DECOY_RATES = {
    ("team-b", "alpha-worker-0"): 700.0,  # same job name, other namespace
    ("team-a", "alphax-worker-0"): 1100.0,  # a job whose name extends alpha
    ("team-a", "alpha-rdzv"): 300.0,  # not a worker
    ("team-a", "alpha-worker-0-debug"): 500.0,  # not a worker of alpha
    ("team-a", "alpha-worker-x"): 400.0,  # not a replica index
}
SAMPLE_RATES = {**ALPHA_RATES, **DECOY_RATES, ("team-a", "gamma-worker-0"): 50.0}
# (communication, step) seconds per second per pod: the trainer's communication counter and
# its step-time histogram's _sum grow at exactly these rates.
# job "alpha": (0.1 + 0.4) / (0.8 + 1.2) = 0.25 (a mean of the pods' shares would be 0.229);
# every decoy spends 0.9 of its step time blocked, so a wrong scope reads >= 0.3;
# job "gamma": more communication than step time (1.5), which the operator must refuse;
# job "beta" exports neither (no sync share, and that is not an error).
SYNC_RATES = {
    ("team-a", "alpha-worker-0"): (0.1, 0.8),
    ("team-a", "alpha-worker-1"): (0.4, 1.2),
    **{pod: (0.9, 1.0) for pod in DECOY_RATES},
    ("team-a", "gamma-worker-0"): (1.5, 1.0),
}


# samples left per pod (the trainer's gauge): alpha's second worker is the one further on
# (48,000: the job's figure); every decoy reports 100, so a wrong scope reads 100; gamma
# has not stepped yet (NaN: unknown, not an error); beta exports none.
SAMPLES_LEFT = {
    ("team-a", "alpha-worker-0"): 50_000.0,
    ("team-a", "alpha-worker-1"): 48_000.0,
    **{pod: 100.0 for pod in DECOY_RATES},
    ("team-a", "gamma-worker-0"): float("nan"),
}


# The latest restart per pod (the trainer's gauges): when it ended, seconds per phase, steps
# trained again. Since RESTART_SINCE (a rescale), alpha's two workers restarted: the job's
# pause is each phase's slowest pod, stop 1 + rendezvous 4 + first step 1 = 6 s, and 3 steps
# are trained again (worker-1 is new to the job: unknown, NaN) at alpha's mean step of
# (0.8 + 1.2) / 2 = 1 s (SYNC_RATES, one step a second each): 9 s in all. alpha-worker-2 is an
# old-world pod on its way out (its restart ended before the rescale: left out); every decoy
# restarted after it, slowly, so a wrong scope reads far more.
RESTART_SINCE = 1_000_000.0
RESTARTS = {
    ("team-a", "alpha-worker-0"): (
        RESTART_SINCE + 10,
        {"stop": 1.0, "rendezvous": 2.0, "first_step": 0.5},
        3.0,
    ),
    ("team-a", "alpha-worker-1"): (
        RESTART_SINCE + 12,
        {"stop": 0.5, "rendezvous": 4.0, "first_step": 1.0},
        float("nan"),
    ),
    ("team-a", "alpha-worker-2"): (RESTART_SINCE - 600, {"rendezvous": 100.0}, 50.0),
    **{pod: (RESTART_SINCE + 20, {"rendezvous": 1000.0}, 99.0) for pod in DECOY_RATES},
}


class DcgmTrainerExporter(Collector):
    def __init__(self) -> None:
        self.started = time.time()

    def collect(
        self,
    ) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        active = GaugeMetricFamily(
            "DCGM_FI_PROF_GR_ENGINE_ACTIVE", "Ratio of time the graphics engine is active.",
            labels=DCGM_LABELS,
        )  # fmt: skip
        active_exported = GaugeMetricFamily(
            "DCGM_FI_PROF_GR_ENGINE_ACTIVE", "", labels=DCGM_EXPORTED
        )
        util = GaugeMetricFamily(
            "DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", labels=DCGM_LABELS
        )
        util_exported = GaugeMetricFamily("DCGM_FI_DEV_GPU_UTIL", "", labels=DCGM_EXPORTED)
        for i, g in enumerate(GPUS):
            labels = [str(i % 8), f"GPU-{i:08d}-0000", f"nvidia{i % 8}", "NVIDIA H100 80GB HBM3",
                      f"node-{i // 8}", "worker", g.namespace, g.pod]  # fmt: skip
            if g.engine_active is not None:
                (active_exported if g.exported else active).add_metric(labels, g.engine_active)
            (util_exported if g.exported else util).add_metric(labels, g.util_percent)
        samples = CounterMetricFamily(
            SAMPLES_TOTAL.removesuffix("_total"), "Training samples processed.",
            labels=("namespace", "pod"),
        )  # fmt: skip
        elapsed = time.time() - self.started
        for (ns, pod), rate in SAMPLE_RATES.items():
            samples.add_metric([ns, pod], 1000.0 + rate * elapsed)
        communication = CounterMetricFamily(
            COMMUNICATION_SECONDS_TOTAL.removesuffix("_total"), "Seconds blocked on all-reduce.",
            labels=("namespace", "pod"),
        )  # fmt: skip
        steps = HistogramMetricFamily(
            STEP_SECONDS, "Wall time of one optimizer step.", labels=("namespace", "pod")
        )
        for (ns, pod), (blocked, busy) in SYNC_RATES.items():
            communication.add_metric([ns, pod], 10.0 + blocked * elapsed)
            count = 2.0 + elapsed  # one step a second: only the _sum matters here
            steps.add_metric([ns, pod], [("+Inf", count)], sum_value=20.0 + busy * elapsed)
        left = GaugeMetricFamily(
            REMAINING_SAMPLES, "Training samples left.", labels=("namespace", "pod")
        )
        for (ns, pod), value in SAMPLES_LEFT.items():
            left.add_metric([ns, pod], value)
        pod_labels = ("namespace", "pod")
        ended = GaugeMetricFamily(RESIZE_END_TIME, "Restart ended.", labels=pod_labels)
        lost = GaugeMetricFamily(RESIZE_STEPS_LOST, "Steps trained again.", labels=pod_labels)
        phases = GaugeMetricFamily(
            RESIZE_PHASE_SECONDS, "Seconds per phase.", labels=(*pod_labels, RESIZE_PHASE_LABEL)
        )
        for (ns, pod), (end, took, again) in RESTARTS.items():
            ended.add_metric([ns, pod], end)
            lost.add_metric([ns, pod], again)
            for phase, seconds in took.items():
                phases.add_metric([ns, pod, phase], seconds)
        # Two families of the same name would be merged by Prometheus anyway; one family
        # per name keeps the exposition valid.
        for family, extra in ((active, active_exported), (util, util_exported)):
            family.samples.extend(extra.samples)
            yield family
        yield samples
        yield communication
        yield steps
        yield left
        yield ended
        yield lost
        yield phases
