"""Job loops stop with their jobs: a burst of deletions leaves no loop behind, and a job
recreated under a deleted job's name gets exactly one loop of each kind.

The operator runs as a process against the test-bed (kwok nodes), with /metrics on, and
``trainscale_operator_job_loops{loop}`` counts its live per-job loops (kopf daemons). Covers:

- ``JOBS`` jobs (1 worker each, autoscaling off) are created at once, each gets its worker pod,
  and the gauge counts one reconcile and one autoscale loop per job;
- ``kubectl delete tj --all --wait=false`` deletes them all at once: every job is gone (kopf
  lifted its finalizer), the gauge returns to 0, no loop had to be cancelled by kopf
  (``trainscale_operator_job_loops_cancelled_total``: a loop that ignores kopf's stop flag is
  cancelled after ``cancellation_backoff``) and the log has no "did not exit in time" /
  "orphaned" (a loop that survived even the cancellation);
- a job created again under a deleted job's name has one reconcile and one autoscale loop.

A reconcile loop that ignores the stop flag (``while True:`` instead of ``while not stopped:``)
fails this test on the cancellation counter.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import OperatorProcess
from tests.support.prometheus import free_port
from tests.support.testbed import wait_for
from trainscale.operator.observability.metric_names import (
    AUTOSCALE_LOOP,
    JOB_LOOPS_CANCELLED_NAME,
    JOB_LOOPS_NAME,
    LOOP_LABEL,
    RECONCILE_LOOP,
)

pytestmark = [pytest.mark.testbed, pytest.mark.slow]

JOBS = 50  # enough to delete in one burst on a 2-core machine (the issue saw strays at 200)
LOOPS = (RECONCILE_LOOP, AUTOSCALE_LOOP)
JOB_LABEL = "trainscale.dev/job-name"
STRAY_LOOP_LOG_LINES = ("did not exit in time", "orphaned")


def job_manifest(name: str) -> dict[str, Any]:
    """One worker, no GPU (kwok nodes take any number), autoscaling off (the default)."""
    return {
        "apiVersion": "trainscale.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "minReplicas": 1,
            "maxReplicas": 1,
            "template": {
                "spec": {
                    "terminationGracePeriodSeconds": 0,
                    "containers": [{"name": "trainer", "image": "trainer:1"}],
                }
            },
        },
    }


def scrape(port: int) -> dict[tuple[str, str], float]:
    """The operator's job-loop series, by (sample name, loop); empty until it serves."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    return {
        (sample.name, sample.labels[LOOP_LABEL]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in (JOB_LOOPS_NAME, JOB_LOOPS_CANCELLED_NAME)
    }


def loops(port: int) -> dict[str, float]:
    """Live loops by kind (missing: the operator does not serve yet)."""
    found = scrape(port)
    return {
        loop: found[(JOB_LOOPS_NAME, loop)] for loop in LOOPS if (JOB_LOOPS_NAME, loop) in found
    }


def jobs_with_a_worker(kubectl: Any, namespace: str) -> set[str]:
    out = kubectl("get", "pods", "-n", namespace, "-l", "app.kubernetes.io/component=worker",
                  "-o", "json")  # fmt: skip
    return {p["metadata"]["labels"][JOB_LABEL] for p in json.loads(out.stdout)["items"]}


def jobs_left(kubectl: Any, namespace: str) -> list[str]:
    out = kubectl("get", "tj", "-n", namespace, "-o", "name")
    return out.stdout.split()


def test_burst_delete_stops_every_loop_and_a_recreated_job_has_one_of_each(
    kubectl: Any, private_operator: tuple[str, Callable[..., OperatorProcess]]
) -> None:
    namespace, start = private_operator
    port = free_port()
    op = start("--no-arbitration", "--metrics-port", str(port), "--metrics-address", "127.0.0.1")
    names = [f"loop-{i}" for i in range(JOBS)]

    def describe() -> str:
        return f"loops {scrape(port)}, jobs left {len(jobs_left(kubectl, namespace))}\n" + (
            op.log_tail()
        )

    # 1. JOBS jobs at once; each gets its worker, and one loop of each kind.
    began = time.monotonic()
    burst = {"apiVersion": "v1", "kind": "List", "items": [job_manifest(n) for n in names]}
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(burst), timeout=120)
    wait_for(lambda: jobs_with_a_worker(kubectl, namespace) >= set(names), timeout=240,
             interval=1.0, what=f"a worker pod for each of {JOBS} jobs", describe=describe)  # fmt: skip
    all_pods = time.monotonic() - began
    wait_for(lambda: loops(port) == dict.fromkeys(LOOPS, JOBS), timeout=60, interval=0.5,
             what=f"{JOBS} loops of each kind", describe=describe)  # fmt: skip

    # 2. All deleted at once: every job goes, and every loop with it, none by force.
    deleted = time.monotonic()
    kubectl("delete", "tj", "--all", "-n", namespace, "--wait=false", timeout=120)
    wait_for(lambda: not jobs_left(kubectl, namespace), timeout=240, interval=1.0,
             what="every job gone (finalizers lifted)", describe=describe)  # fmt: skip
    all_gone = time.monotonic() - deleted
    wait_for(lambda: loops(port) == dict.fromkeys(LOOPS, 0), timeout=60, interval=0.5,
             what="no loop left", describe=describe)  # fmt: skip
    found = scrape(port)
    for loop in LOOPS:
        assert found.get((JOB_LOOPS_CANCELLED_NAME, loop), 0) == 0, (
            f"{loop} loops ignored kopf's stop flag and were cancelled\n{describe()}"
        )
    log = op.log_path.read_text(errors="replace")
    for line in STRAY_LOOP_LOG_LINES:
        assert line not in log, describe()

    # 3. A job recreated under a deleted job's name: one loop of each kind, not two.
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(job_manifest(names[0])))
    wait_for(lambda: names[0] in jobs_with_a_worker(kubectl, namespace), timeout=60,
             what=f"the recreated {names[0]}'s worker", describe=describe)  # fmt: skip
    assert loops(port) == dict.fromkeys(LOOPS, 1), describe()
    print(f"{JOBS} jobs: all with a worker {all_pods:.1f} s after the burst; "
          f"all gone {all_gone:.1f} s after the delete")  # fmt: skip
