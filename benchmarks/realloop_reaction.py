"""Reaction time of the autoscaler on real training: a change of the job's own throughput
curve to the new ``spec.replicas``, and on to the first step at the new size.

Everything is real except the GPUs: the test-bed control plane with a *process node* (pods
run as processes in their own network namespaces), Prometheus discovering the worker pods
through the chart's PodMonitor as prometheus-operator would, ``trainscale operator`` as a
process reading it, and a TrainingJob whose workers run ``trainscale-train`` (our agent,
gloo) on the synthetic task. A micro-batch sleeps ``COMPUTE_MS`` (an accelerator's work; the
CPU stays free) plus ``TRAINSCALE_SYNTHETIC_SYNC_FILE`` milliseconds for each worker beyond
the first (communication). The operator is told nothing of this: it sees the samples counter
in Prometheus.

Scenario: the job, allowed 1 or 2 workers, starts at 1 and finds its size (2 workers double
the throughput: a step of a global batch of 64 is 4 micro-batches of 16 on 1 worker, 2 on
each of 2; a third worker would add nothing, and on this 2-core machine its CPU share would
cost more, which is the real loop test's scenario, not this one). Then, ``--rounds`` times:

* **communication gets slow** (the sync file goes from 0 to ``SLOW_SYNC_MS``): at 2 workers
  the job's efficiency falls to 0.33 (below the 0.7 floor), so the autoscaler should
  go to 1;
* **it recovers** (back to 0): 1 worker does not see the difference (it has no one to talk
  to); the job re-measures the count it left once ``forgetAfterSeconds`` has passed and goes
  back to 2.

Measured per change, from the moment the file is written (T0): ``prometheus_s`` to the first
Prometheus answer showing the new throughput (the collapse only: at 1 worker a recovery is
invisible); ``decision_s`` to the new ``spec.replicas``; ``resize_s`` from there to the first
training step at the new size (the sample audit log's times); ``total_s`` T0 to that step.

Run (as root; one process runtime per host): ``.venv/bin/python
benchmarks/realloop_reaction.py --rounds 2`` (about 2 minutes a round plus 1 minute of
set-up).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainscale.testbed import procnode
from trainscale.testbed.chart_readme import CHART_DIR
from trainscale.testbed.cluster import Testbed
from trainscale.testbed.prometheus import (
    build_podmonitor_scrape_configs,
    fetch_prometheus_with_kubernetes_sd,
    render_chart_podmonitor,
    start_prometheus,
)
from trainscale.testbed.simjob import FAST_AUTOSCALING
from trainscale.trainer.contract.audit import read_audit
from trainscale.trainer.contract.environment import ENV_AUDIT_LOG_DIR
from trainscale.trainer.contract.metric_names import SAMPLES_TOTAL
from trainscale.trainer.contract.naming import worker_pod_pattern

NAMESPACE = "reaction-real"
JOB = "react"
CLAIM, CHECKPOINTS = "ckpt", "/checkpoints"
COMPUTE_MS = 100  # per micro-batch (1 worker runs 4 a step, 2 run 2): the sleep, not the
# shared CPU, shapes the curve (with 50 ms, CPU contention made 2 workers measure slow)
SLOW_SYNC_MS = 200  # per micro-batch and extra worker: efficiency at 2 falls to 100/300
FORGET_AFTER_SECONDS = 30


def job_manifest() -> dict[str, Any]:
    autoscaling = copy.deepcopy(FAST_AUTOSCALING)
    autoscaling.update(clusterArbitration=False, forgetAfterSeconds=FORGET_AFTER_SECONDS)
    trainer = {
        "name": "trainer",
        "image": "ignored-by-the-process-runtime",
        "command": [
            "trainscale-train", "--task", "trainscale.trainer.examples.synthetic:task",
            "--epochs", "100000", "--micro-batch-size", "16", "--checkpoint-every-steps", "500",
        ],
        "env": [
            {"name": "TRAINSCALE_SYNTHETIC_DELAY_MS", "value": str(COMPUTE_MS)},
            {"name": "TRAINSCALE_SYNTHETIC_SYNC_FILE", "value": f"{CHECKPOINTS}/sync-ms"},
            {"name": ENV_AUDIT_LOG_DIR, "value": f"{CHECKPOINTS}/audit"},
        ],
        "resources": {"requests": {"cpu": "100m"}},
    }  # fmt: skip
    return {
        "apiVersion": "trainscale.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": JOB, "namespace": NAMESPACE},
        "spec": {
            "replicas": 1, "minReplicas": 1, "maxReplicas": 2, "maxRestarts": 10,
            "autoscaling": autoscaling,
            "checkpoint": {"claimName": CLAIM, "path": CHECKPOINTS},
            "template": {"spec": {"terminationGracePeriodSeconds": 30,
                                  "nodeSelector": {"type": "process"},
                                  "containers": [trainer]}},
        },
    }  # fmt: skip


def wait(predicate: Callable[[], Any], timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


class Job:
    """The job as the benchmark watches it: spec, Prometheus, the audit of trained steps."""

    def __init__(self, testbed: Testbed, prometheus_url: str) -> None:
        self.testbed = testbed
        self.prometheus_url = prometheus_url
        self.shared = procnode.claim_dir(testbed.paths.procnode, NAMESPACE, CLAIM)

    def body(self) -> dict[str, Any]:
        path = f"/apis/trainscale.dev/v1alpha1/namespaces/{NAMESPACE}/trainingjobs/{JOB}"
        return self.testbed.fetch_json(path)

    def replicas(self) -> int:
        return int(self.body()["spec"]["replicas"])

    def set_sync(self, milliseconds: int) -> None:
        self.shared.mkdir(parents=True, exist_ok=True)
        (self.shared / "sync-ms").write_text(str(milliseconds))

    def throughput(self) -> float | None:
        pods = worker_pod_pattern(JOB)
        query = f'sum(rate({SAMPLES_TOTAL}{{namespace="{NAMESPACE}",pod=~"{pods}"}}[5s]))'
        url = f"{self.prometheus_url}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                result = json.load(response)["data"]["result"]
        except OSError:
            return None
        return float(result[0]["value"][1]) if result else None

    def first_step_at(self, world: int, after: float) -> float | None:
        """Wall time of the first step of a world of ``world`` workers that began after
        ``after`` (None: none yet)."""
        began: dict[str, tuple[float, int]] = {}
        for e in read_audit(self.shared / "audit"):
            first, _ = began.get(e["world_id"], (e["time"], 0))
            began[e["world_id"]] = (min(first, e["time"]), e["world_size"])
        times = [t for t, size in began.values() if size == world and t > after]
        return min(times) if times else None

    def decisions(self) -> list[tuple[int, int]]:
        made = ((self.body().get("status") or {}).get("autoscaling") or {}).get("decisions") or []
        return [(d["fromReplicas"], d["toReplicas"]) for d in made]


def measure(job: Job, sync_ms: int, expect: int, *, visible: bool) -> dict[str, float]:
    """Write the sync file at T0; time Prometheus, the decision and the first step."""
    before = job.throughput() or 0.0
    wall0, t0 = time.time(), time.monotonic()
    job.set_sync(sync_ms)
    result: dict[str, float] = {}
    if visible:  # the collapse: the job's rate falls by more than half
        t_prom = wait(lambda: (job.throughput() or before) < 0.6 * before, 60,
                      "Prometheus to show the slower job")  # fmt: skip
        result["prometheus_s"] = t_prom - t0
    timeout = 120 + (0 if visible else FORGET_AFTER_SECONDS)
    t_spec = wait(lambda: job.replicas() == expect, timeout, f"spec.replicas {expect}")
    result["decision_s"] = t_spec - t0
    wait(lambda: job.first_step_at(expect, wall0), 120, f"a step at world {expect}")
    first = job.first_step_at(expect, wall0)
    assert first is not None
    result["resize_s"] = (first - wall0) - result["decision_s"]
    result["total_s"] = first - wall0
    return result


def start_operator(testbed: Testbed, prometheus_url: str, log: Path) -> subprocess.Popen[bytes]:
    command = [
        str(Path(sys.executable).with_name("trainscale")), "operator", "--namespace", NAMESPACE,
        "--prometheus-url", prometheus_url, "--no-arbitration",
        "--metrics-address", "127.0.0.1", "--metrics-port", "0",
        "--liveness-address", "127.0.0.1", "--liveness-port", "0",
    ]  # fmt: skip
    with log.open("wb") as out:
        return subprocess.Popen(command, env=testbed.env(), stdout=out, stderr=subprocess.STDOUT)


def run(args: argparse.Namespace, work: Path) -> list[tuple[str, dict[str, float]]]:
    results: list[tuple[str, dict[str, float]]] = []
    with Testbed(nodes=1, gpus_per_node=8, process_nodes=1) as testbed:
        testbed.kubectl("cordon", "gpu-node-0")  # every pod where processes run
        testbed.apply_crd()
        testbed.kubectl("create", "namespace", NAMESPACE)
        for obj in procnode.build_claim_manifests(NAMESPACE, CLAIM):
            testbed.kubectl("apply", "-f", "-", input=json.dumps(obj))
        monitor = render_chart_podmonitor(testbed.helm, CHART_DIR, [NAMESPACE])
        configs = build_podmonitor_scrape_configs(monitor, testbed.kubeconfig)
        prometheus = start_prometheus(work / "prometheus", scrape_configs=configs,
                                      binary=fetch_prometheus_with_kubernetes_sd())  # fmt: skip
        operator = start_operator(testbed, prometheus.url, work / "operator.log")
        job = Job(testbed, prometheus.url)
        try:
            job.set_sync(0)
            testbed.kubectl("apply", "-f", "-", input=json.dumps(job_manifest()))
            wait(lambda: (1, 2) in job.decisions(), 300, "the job to find its size (1 -> 2)")
            print(f"found its size: {job.decisions()}", flush=True)
            for round_ in range(args.rounds):
                for kind, sync_ms, expect, visible in (
                    ("communication slows down", SLOW_SYNC_MS, 1, True),
                    ("communication recovers", 0, 2, False),
                ):
                    wait(lambda size=3 - expect: job.first_step_at(size, time.time() - 8), 120,
                         "the job training at its size")  # fmt: skip
                    time.sleep(args.settle)  # a few settled samples at the current size
                    result = measure(job, sync_ms, expect, visible=visible)
                    results.append((kind, result))
                    shown = ", ".join(f"{k} {v:.1f}" for k, v in result.items())
                    print(f"round {round_ + 1}: {kind}, {3 - expect} -> {expect}: {shown}",
                          flush=True)  # fmt: skip
        except (TimeoutError, AssertionError):
            status = (job.body().get("status") or {}).get("autoscaling")
            print("autoscaler status:", json.dumps(status, indent=1)[-4000:], file=sys.stderr)
            raise
        finally:
            operator.terminate()
            operator.wait(30)
            prometheus.stop()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="slow-down/recovery pairs")
    parser.add_argument("--settle", type=float, default=15.0,
                        help="seconds at a size before each change")  # fmt: skip
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="trainscale-realloop-reaction-"))
    results = run(args, work)
    print(f"\nreaction on real training (Prometheus scrape 1 s, intervalSeconds 1, settleSeconds "
          f"6, forgetAfterSeconds {FORGET_AFTER_SECONDS}); median / max over {args.rounds}:")  # fmt: skip
    for kind in dict.fromkeys(k for k, _ in results):
        rows = [r for k, r in results if k == kind]
        parts = [
            f"{key} {statistics.median(r[key] for r in rows):.1f} / {max(r[key] for r in rows):.1f}"
            for key in rows[0]
        ]
        print(f"  {kind:26s} " + ", ".join(parts))
    print(f"operator log: {work / 'operator.log'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
