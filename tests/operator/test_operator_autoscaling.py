"""The autoscaler end to end: the real operator on kmock, a real Prometheus, a simulated job.

Covers: a job whose speedup curve rewards more workers is scaled up, with an Event and a
status decision giving the reason; a job whose scaling efficiency collapses is scaled down;
when Prometheus goes away both hold their size and report MetricsUnavailable.

The simulated job: the test plays the kubelet (worker pods become Running) and
:mod:`trainscale.testbed.simjob` exports, per running worker pod, the trainer's samples
counter and dcgm-exporter's DCGM_FI_PROF_GR_ENGINE_ACTIVE with dcgm-exporter's labels,
following a synchronous data-parallel step time ``compute + sync * (n - 1)``. Prometheus (the Debian binary, 1 s
scrape) scrapes that exporter; the operator reads Prometheus as it would in a cluster.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import kmock
import pytest

from tests.support.kmock import (
    RealisticEmulator,
    create_job,
    events,
    eventually,
    objects,
    pods,
    run_operator,
    set_pod_state,
    workers,
)
from tests.support.prometheus import start_prometheus
from trainscale.testbed.simjob import SimulatedExporter, SimulatedJob
from trainscale.trainer.contract.metric_names import SAMPLES_TOTAL

pytestmark = [pytest.mark.slow, pytest.mark.prometheus, pytest.mark.kmock(cls=RealisticEmulator)]


async def play_kubelet(
    server: kmock.KubernetesEmulator, sims: list[SimulatedJob], stop: asyncio.Event
) -> None:
    """Start every new worker pod and advance the simulated jobs' counters."""
    last = time.monotonic()
    while not stop.is_set():
        for name, pod in pods(server).items():
            if "-worker-" in name and (pod.get("status") or {}).get("phase") != "Running":
                await set_pod_state(server, name, "Running", ready=True)
        now = time.monotonic()
        names = workers(server)
        for sim in sims:
            sim.advance(now - last, [n for n in names if n.startswith(f"{sim.name}-worker-")])
        last = now
        await asyncio.sleep(0.2)


def autoscaled_job(name: str, replicas: int, prometheus_url: str) -> dict[str, Any]:
    return {
        "apiVersion": "trainscale.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "minReplicas": 1,
            "maxReplicas": 8,
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "trainer",
                            "image": "trainer:1",
                            "resources": {"limits": {"nvidia.com/gpu": 1}},
                        }
                    ]
                }
            },
            "autoscaling": {
                "enabled": True,
                "objective": "efficiency",
                "minEfficiency": 0.7,
                "intervalSeconds": 1,
                "scaleDownStabilizationSeconds": 2,
                "restartCostSeconds": 1,
                "settleSeconds": 5,  # the 4 s rate window below + a scrape
                "prometheus": {
                    "url": prometheus_url,
                    # A short rate window: the simulated job reaches a steady rate at once.
                    "throughputQuery": (
                        f'sum(rate({SAMPLES_TOTAL}{{namespace="{{namespace}}",'
                        f'pod=~"{{job_regex}}-worker-[0-9]+"}}[4s]))'
                    ),
                },
            },
        },
    }


def spec_replicas(server: kmock.KubernetesEmulator, name: str) -> int:
    (found,) = [
        j
        for j in objects(server, "trainscale.dev/v1alpha1/trainingjobs")
        if j["metadata"]["name"] == name
    ]
    return int(found["spec"]["replicas"])


def status_of(server: kmock.KubernetesEmulator, name: str) -> dict[str, Any]:
    (found,) = [
        j
        for j in objects(server, "trainscale.dev/v1alpha1/trainingjobs")
        if j["metadata"]["name"] == name
    ]
    return dict(found.get("status") or {})


async def test_scales_up_when_rewarded_down_when_inefficient_and_holds_without_prometheus(
    kmock: kmock.KubernetesEmulator, cluster: Any, tmp_path: Path
) -> None:
    grow = SimulatedJob("default", "grow", sync=0.005)  # efficiency at 8 workers: 0.97
    shrink = SimulatedJob("default", "shrink", sync=0.5)  # efficiency at 6 workers: 0.17
    exporter = SimulatedExporter([grow, shrink])
    prometheus = start_prometheus(tmp_path / "prometheus", exporter.target)
    stop = asyncio.Event()
    kubelet = asyncio.create_task(play_kubelet(kmock, [grow, shrink], stop))
    try:
        async with run_operator() as runner:
            await create_job(kmock, autoscaled_job("grow", 1, prometheus.url))
            await create_job(kmock, autoscaled_job("shrink", 6, prometheus.url))

            await eventually(
                lambda: spec_replicas(kmock, "grow") >= 4, within=120, what="grow scaled up"
            )
            await eventually(
                lambda: spec_replicas(kmock, "shrink") <= 2, within=120, what="shrink scaled down"
            )

            # kopf posts events from a queue of its own: they may follow the patch by a moment.
            def posted(reason: str, prefix: str) -> bool:
                return any(r == reason and m.startswith(prefix) for _, r, m in events(kmock))

            await eventually(lambda: posted("AutoscaledUp", "1 -> "), within=30,
                             what="the AutoscaledUp event of 1 -> more")  # fmt: skip
            await eventually(lambda: posted("AutoscaledDown", "6 -> "), within=30,
                             what="the AutoscaledDown event of 6 -> fewer")  # fmt: skip
            decisions = status_of(kmock, "grow")["autoscaling"]["decisions"]
            assert decisions[0]["fromReplicas"] == 1 and decisions[0]["reason"]
            assert status_of(kmock, "grow")["autoscaling"]["model"], "the fitted model is shown"

            # -- Prometheus goes away: hold, and say so --
            prometheus.stop()
            for name in ("grow", "shrink"):
                await eventually(
                    lambda name=name: any(
                        c["type"] == "MetricsUnavailable" and c["status"] == "True"
                        for c in status_of(kmock, name).get("conditions", [])
                    ),
                    within=30,
                    what=f"{name} MetricsUnavailable",
                )
            held = {name: spec_replicas(kmock, name) for name in ("grow", "shrink")}
            await asyncio.sleep(5)
            assert {name: spec_replicas(kmock, name) for name in ("grow", "shrink")} == held
        assert runner.exception is None
        assert "autoscaling of" not in runner.output, runner.output
    finally:
        stop.set()
        await kubelet
        prometheus.stop()
        exporter.close()
