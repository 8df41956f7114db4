"""Reaction time of the autoscaler: from a metric change to the new ``spec.replicas``.

Everything is real except the GPUs: the test-bed control plane (kube-apiserver, scheduler,
controller-manager, kwok GPU nodes), ``trainscale operator`` as a process, the Debian
Prometheus scraping every second, and :mod:`trainscale.testbed.simjob` exporting
dcgm-exporter's and the trainer's series for the pods kwok runs.

Scenario, repeated ``--rounds`` times: a job settles at the count its speedup curve
rewards; at T0 the curve changes (its synchronisation cost jumps, so scaling efficiency
collapses — or drops back, so more workers pay again). Measured per change:

* ``prometheus_s``: T0 to the first Prometheus answer that shows the new GPU utilization
  (scrape interval + evaluation);
* ``operator_s``: from there to the new ``spec.replicas`` (waiting for the next autoscaling
  pass, the policy's settled samples at the new level, the decision, the patch);
* ``total_s``: T0 to the new ``spec.replicas``.

Run: ``.venv/bin/python benchmarks/reaction.py`` (about 3 minutes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from trainscale.operator.api.dcgm import DCGM_ENGINE_ACTIVE
from trainscale.testbed.cluster import REPO_ROOT, Testbed
from trainscale.testbed.prometheus import start_prometheus
from trainscale.testbed.simjob import (
    FAST_AUTOSCALING,
    SimulatedExporter,
    SimulatedJob,
    follow_running_workers,
    list_worker_pods_with,
)
from trainscale.trainer.contract.naming import worker_pod_pattern

NAMESPACE = "default"
JOB = "react"
COMPUTE = 0.5
EFFICIENT_SYNC = 0.02  # efficiency at 4 workers: 0.89 -> the policy grows the job
COLLAPSED_SYNC = 1.0  # efficiency at 2 workers: 0.33 -> back to 1
FORGET_AFTER_SECONDS = 20


def job_manifest(interval: int) -> dict[str, Any]:
    return {
        "apiVersion": "trainscale.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": JOB, "namespace": NAMESPACE},
        "spec": {
            "replicas": 1,
            "minReplicas": 1,
            "maxReplicas": 4,
            "template": {
                "spec": {
                    "terminationGracePeriodSeconds": 0,
                    "containers": [
                        {
                            "name": "trainer",
                            "image": "trainer:1",
                            "resources": {"limits": {"nvidia.com/gpu": 1}},
                        }
                    ],
                }
            },
            # forgetAfterSeconds: after a change the job re-measures the counts it left
            # (without it, the collapsed measurements keep it down when the curve recovers)
            "autoscaling": {
                **FAST_AUTOSCALING,
                "intervalSeconds": interval,
                "forgetAfterSeconds": FORGET_AFTER_SECONDS,
            },
        },
    }


def replicas(testbed: Testbed) -> int:
    job = testbed.fetch_json(
        f"/apis/trainscale.dev/v1alpha1/namespaces/{NAMESPACE}/trainingjobs/{JOB}"
    )
    return int(job["spec"]["replicas"])


def prometheus_gpu(url: str) -> float | None:
    query = f'avg({DCGM_ENGINE_ACTIVE}{{namespace="{NAMESPACE}",pod=~"{worker_pod_pattern(JOB)}"}})'
    with urllib.request.urlopen(
        f"{url}/api/v1/query?{urllib.parse.urlencode({'query': query})}", timeout=2
    ) as r:
        result = json.load(r)["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def wait(predicate: Any, timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def measure_change(
    testbed: Testbed, sim: SimulatedJob, prom_url: str, sync: float, settled: int
) -> dict[str, float]:
    """Change the curve; time Prometheus seeing it and the operator acting on it."""
    before = prometheus_gpu(prom_url)
    t0 = time.monotonic()
    with sim.lock:
        sim.sync = sync
    expected = COMPUTE / sim.step_seconds(settled)
    t_prom = wait(
        lambda: (
            (g := prometheus_gpu(prom_url)) is not None
            and abs(g - expected) < abs((before or 0) - expected) / 2
        ),
        30,
        "Prometheus to show the new utilization",
    )
    try:
        t_spec = wait(lambda: replicas(testbed) != settled, 120, "a new spec.replicas")
    except TimeoutError:
        status = testbed.fetch_json(
            f"/apis/trainscale.dev/v1alpha1/namespaces/{NAMESPACE}/trainingjobs/{JOB}"
        )
        print(
            "autoscaler status:", json.dumps(status.get("status", {}).get("autoscaling"), indent=1)
        )
        raise
    return {"prometheus_s": t_prom - t0, "operator_s": t_spec - t_prom, "total_s": t_spec - t0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="up/down changes to measure")
    parser.add_argument("--interval", type=int, default=1, help="autoscaling.intervalSeconds")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="trainscale-reaction-"))
    sim = SimulatedJob(NAMESPACE, JOB, sync=EFFICIENT_SYNC, compute=COMPUTE)
    exporter = SimulatedExporter([sim])
    prometheus = start_prometheus(work / "prometheus", exporter.target)
    results: list[dict[str, float]] = []
    with Testbed() as testbed:
        testbed.kubectl(
            "apply", "-f", str(REPO_ROOT / "manifests" / "crd" / "trainingjobs.trainscale.dev.yaml")
        )
        testbed.kubectl("wait", "--for", "condition=established", "crd/trainingjobs.trainscale.dev")
        env = testbed.env()
        log = (work / "operator.log").open("wb")
        operator = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("trainscale")),
                "operator",
                "--namespace",
                NAMESPACE,
                "--metrics-port",
                "0",
                "--liveness-port",
                "0",
                "--prometheus-url",
                prometheus.url,
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        stop = threading.Event()
        kubelet = threading.Thread(
            target=follow_running_workers,
            args=([sim], stop, 0.2, list_worker_pods_with(testbed.fetch_json)),
            daemon=True,
        )
        kubelet.start()
        try:
            testbed.kubectl("apply", "-f", "-", input=json.dumps(job_manifest(args.interval)))
            for round_ in range(args.rounds):
                # Let the job grow to where the efficient curve puts it, then collapse it.
                wait(lambda: replicas(testbed) >= 3, 180, "the job to grow")
                for kind, sync in (
                    ("efficiency collapse", COLLAPSED_SYNC),
                    ("efficiency recovers", EFFICIENT_SYNC),
                ):
                    time.sleep(8)  # let the job settle where the current curve puts it
                    before = replicas(testbed)
                    result = measure_change(testbed, sim, prometheus.url, sync, before)
                    results.append(result)
                    print(
                        f"round {round_ + 1}: {kind} at {before} workers -> {replicas(testbed)}: "
                        f"{result}",
                        flush=True,
                    )
        finally:
            stop.set()
            operator.terminate()
            operator.wait(20)
            prometheus.stop()
            exporter.close()
    print(
        f"\nreaction time, Prometheus scrape 1 s, autoscaling.intervalSeconds {args.interval} s, "
        f"{len(results)} changes (median / max):"
    )
    for key in ("prometheus_s", "operator_s", "total_s"):
        values = [r[key] for r in results]
        print(f"  {key:13s} {statistics.median(values):6.2f} / {max(values):6.2f}")
    print(f"operator log: {work / 'operator.log'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
