"""An operator restarted mid-job resumes autoscaling from the memory in status.

Everything is real except the GPUs: the test-bed control plane, ``trainscale operator`` as a
process, the Debian Prometheus scraping every second, and
:class:`~trainscale.testbed.simjob.SimulatedJob` exporting dcgm-exporter's and the trainer's
series for the worker pods kwok runs, on the ``cliff-4`` curve: 2-GPU workers on the
test-bed's 8-GPU nodes, four per node, nearly linear up to 4 and collapsing (efficiency 0.6)
as soon as the job spills onto a second node. The best count, 4, is found only by measuring.

Covers, in order:

- the first operator grows the job, measures, and settles at the best count with a count
  above it measured and left downwards: ``status.autoscaling.memory`` holds both;
- the operator is SIGKILLed and a new one started: over many passes it never rescales
  (neither back to a count it measured and left, nor anywhere else), makes no exploring
  decision (``Recommendation.exploring``: the ``explore`` class of its decisions metric,
  the exploration step's ``exploring N`` and the confidence step's ``probing N``), and
  decides on the remembered curve (the measured points are still in status, with their
  samples; the fitted model still counts them).

A second test runs the same job with ``allowedReplicas`` and checks the operator only ever
asks for allowed counts.

Without the memory (``restore_autoscaler`` ignoring ``status.autoscaling.memory``) a new
operator sees one count, fits a curve that looks linear, and jumps back above the cliff:
this test then fails on the first rescale after the restart.
"""

from __future__ import annotations

import calendar
import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import OperatorProcess
from tests.support.prometheus import PrometheusServer, start_prometheus
from tests.support.testbed import GPUS_PER_NODE, foreign_gpu_pod, wait_for
from trainscale.operator.autoscaling.autoscaler import RESTORED_SAMPLES
from trainscale.operator.autoscaling.simulation import named_curve
from trainscale.operator.observability.metric_names import SCALING_DECISIONS_NAME
from trainscale.testbed.cluster import Testbed
from trainscale.testbed.simjob import (
    FAST_AUTOSCALING,
    SimulatedExporter,
    SimulatedJob,
    follow_running_workers,
    list_worker_pods_with,
)
from trainscale.trainer.launch.local import find_free_port

pytestmark = [pytest.mark.testbed, pytest.mark.slow, pytest.mark.prometheus]

JOB = "phoenix"
GPUS_PER_WORKER = 2
WORKERS_PER_NODE = GPUS_PER_NODE // GPUS_PER_WORKER  # 4: the fifth worker spills over
BEST = WORKERS_PER_NODE  # cliff-4: efficiency ~0.97 up to 4, ~0.6 beyond (floor 0.7)
START = 2
PASSES_AFTER_RESTART = 20  # decisions the new operator makes while we watch


def job_manifest(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "trainscale.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": JOB},
        "spec": {
            "replicas": START,
            "minReplicas": spec.pop("minReplicas", 1),
            "maxReplicas": 8,
            "template": {
                "spec": {
                    "terminationGracePeriodSeconds": 0,
                    "containers": [
                        {
                            "name": "trainer",
                            "image": "trainer:1",
                            "resources": {"limits": {"nvidia.com/gpu": GPUS_PER_WORKER}},
                        }
                    ],
                }
            },
            "autoscaling": FAST_AUTOSCALING,
            **spec,
        },
    }


@pytest.fixture
def simulated(
    request: pytest.FixtureRequest,
    testbed: Testbed,
    private_operator: tuple[str, Callable[..., OperatorProcess]],
    tmp_path: Path,
) -> Iterator[PrometheusServer]:
    """Prometheus scraping the simulated job of the private namespace, which follows the
    job's running worker pods (on ``cliff-4``, or the curve named by an indirect param)."""
    namespace, _ = private_operator
    curve = named_curve(getattr(request, "param", "cliff-4"))
    sim = SimulatedJob(namespace, JOB, sync=0.0, curve=curve)
    exporter = SimulatedExporter([sim])
    prometheus = start_prometheus(tmp_path / "prometheus", exporter.target)
    stop = threading.Event()
    kubelet = threading.Thread(
        target=follow_running_workers,
        args=([sim], stop, 0.2, list_worker_pods_with(testbed.fetch_json)),
        daemon=True,
    )
    kubelet.start()
    yield prometheus
    stop.set()
    kubelet.join(5)
    prometheus.stop()
    exporter.close()


def decisions_metric(port: int) -> dict[tuple[str, str], float]:
    """The operator's decisions counter, by (direction, reason class); empty until it serves."""
    name = SCALING_DECISIONS_NAME
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels_text, value = line[len(name) + 1 :].rsplit("} ", 1)
            labels = dict(part.split("=", 1) for part in labels_text.split(",") if "=" in part)
            out[(labels["direction"].strip('"'), labels["reason"].strip('"'))] = float(value)
    return out


def memory_points(job: dict[str, Any]) -> dict[tuple[int, int], int]:
    """``status.autoscaling.memory``'s points: (replicas, nodes) -> settled samples."""
    memory = ((job.get("status") or {}).get("autoscaling") or {}).get("memory") or {}
    return {(p["replicas"], p["nodes"]): p["samples"] for p in memory.get("points") or []}


def left_downwards(job: dict[str, Any]) -> set[int]:
    memory = ((job.get("status") or {}).get("autoscaling") or {}).get("memory") or {}
    return set(memory.get("leftDownwards") or [])


def holds_after_measuring(job: dict[str, Any]) -> bool:
    """The autoscaler holds at ``spec.replicas`` by a full decision (not while settling),
    with at least two counts in its memory, one above it measured and left downwards."""
    auto = (job.get("status") or {}).get("autoscaling") or {}
    held = job["spec"]["replicas"]
    counts = {n for n, _ in memory_points(job)}
    reason = str(auto.get("reason", ""))
    return (
        len(counts) >= 2
        and held in counts
        and any(c > held for c in left_downwards(job))
        and auto.get("recommendedReplicas") == held
        and auto.get("step") not in (None, "settling", "metrics freshness")
        and not reason.startswith("settling")  # the daemon's own hold while pods start
        and "holding" in reason
    )


class WatchedJob:
    """The test's job as kubectl reads it, every ``spec.replicas`` read, and what a failure
    shows (the autoscaling status, the counts seen, the operator's log)."""

    def __init__(self, kubectl: Any, namespace: str, operator: OperatorProcess) -> None:
        self.kubectl, self.namespace, self.operator = kubectl, namespace, operator
        self.seen: list[int] = []

    def get(self) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(
            self.kubectl("get", f"tj/{JOB}", "-n", self.namespace, "-o", "json").stdout
        )
        self.seen.append(found["spec"]["replicas"])
        return found

    def describe(self) -> str:
        auto = (self.get().get("status") or {}).get("autoscaling") or {}
        shown = {k: auto.get(k) for k in ("reason", "step", "memory", "decisions")}
        return json.dumps(shown, indent=1) + f"\nseen {self.seen}\n" + self.operator.log_tail()


def scaled_since(job: dict[str, Any], moment: float) -> list[dict[str, Any]]:
    """The rescales ``status.autoscaling.decisions`` records after ``moment`` (their times
    are whole seconds: one in the second of ``moment`` is taken as before it)."""
    decisions = ((job.get("status") or {}).get("autoscaling") or {}).get("decisions") or []
    return [
        d
        for d in decisions
        if calendar.timegm(time.strptime(d["time"], "%Y-%m-%dT%H:%M:%SZ")) > int(moment)
    ]


def test_restarted_operator_resumes_from_the_memory_in_status(
    kubectl: Any,
    private_operator: tuple[str, Callable[..., OperatorProcess]],
    simulated: PrometheusServer,
) -> None:
    namespace, start = private_operator
    prometheus = simulated

    def start_operator() -> tuple[OperatorProcess, int]:
        port = find_free_port()
        op = start("--prometheus-url", prometheus.url, "--no-arbitration",
                   "--metrics-port", str(port), "--metrics-address", "127.0.0.1")  # fmt: skip
        return op, port

    def job() -> dict[str, Any]:
        found: dict[str, Any] = json.loads(
            kubectl("get", f"tj/{JOB}", "-n", namespace, "-o", "json").stdout
        )
        return found

    def describe(op: OperatorProcess) -> Callable[[], str]:
        def text() -> str:
            auto = (job().get("status") or {}).get("autoscaling") or {}
            shown = {k: auto.get(k) for k in ("reason", "step", "memory", "decisions")}
            return json.dumps(shown, indent=1) + "\n" + op.log_tail()

        return text

    first, _ = start_operator()
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(job_manifest()))

    # 1. The first operator measures its way to the best count and holds there.
    def held_after_measuring() -> dict[str, Any] | None:
        found = job()
        return found if holds_after_measuring(found) else None

    before = wait_for(held_after_measuring, timeout=180, what="the job held after measuring",
                      describe=describe(first))  # fmt: skip
    held = before["spec"]["replicas"]
    assert held == BEST, describe(first)()

    # 2. The operator dies; a new one takes the job over.
    first.kill()
    killed_at = time.time()
    second, port = start_operator()

    # 3. While the new operator makes PASSES_AFTER_RESTART decisions, the job never moves.
    replicas_seen: set[int] = set()

    def watched() -> bool:
        replicas_seen.add(job()["spec"]["replicas"])
        return sum(decisions_metric(port).values()) >= PASSES_AFTER_RESTART

    wait_for(watched, timeout=120, what=f"{PASSES_AFTER_RESTART} decisions of the new operator",
             describe=describe(second))  # fmt: skip
    decided = decisions_metric(port)
    after = job()
    auto = after["status"]["autoscaling"]
    assert replicas_seen == {held}, describe(second)()
    assert not scaled_since(after, killed_at), describe(second)()
    assert {direction for direction, _ in decided} == {"hold"}, decided
    assert not any(reason == "explore" for _, reason in decided), decided
    assert auto["step"] not in ("settling", "metrics freshness"), describe(second)()
    assert "exploring" not in auto["reason"] and "probing" not in auto["reason"], auto["reason"]
    # It decided on the remembered curve: every point is still there, none reset, and the
    # model it fitted counts them (a fresh operator's would count one).
    remembered, now_remembered = memory_points(before), memory_points(after)
    for point, samples in remembered.items():
        assert now_remembered.get(point, 0) >= min(samples, RESTORED_SAMPLES), now_remembered
    assert left_downwards(before) <= left_downwards(after), auto["memory"]
    assert auto["model"]["countsMeasured"] >= len({n for n, _ in remembered}), auto
    assert second.proc is not None and second.proc.poll() is None, second.log_tail()


def test_the_operator_asks_only_for_allowed_sizes(
    kubectl: Any,
    private_operator: tuple[str, Callable[..., OperatorProcess]],
    simulated: PrometheusServer,
) -> None:
    """With ``allowedReplicas: {values: [2, 3, 6, 8]}`` on the same cliff (best count 4,
    not allowed) the operator settles at 3, the best allowed count, after measuring one
    past the node boundary; ``spec.replicas`` only ever takes an allowed value and every
    recorded decision asks for one. (Before the policy honoured the field it asked for 4,
    its unrestricted choice, and the apiserver refused the patch: the job never settled.)"""
    namespace, start = private_operator
    allowed = {2, 3, 6, 8}
    operator = start("--prometheus-url", simulated.url, "--no-arbitration")
    manifest = job_manifest(minReplicas=2, allowedReplicas={"values": sorted(allowed)})
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))
    watched = WatchedJob(kubectl, namespace, operator)
    describe = watched.describe

    def held_after_measuring() -> dict[str, Any] | None:
        found = watched.get()
        return found if holds_after_measuring(found) else None

    settled = wait_for(held_after_measuring, timeout=180, what="the job held after measuring",
                       describe=describe)  # fmt: skip
    assert settled["spec"]["replicas"] == BEST - 1, describe()
    seen = set(watched.seen)
    assert seen <= allowed and len(seen) > 1, describe()
    decisions = settled["status"]["autoscaling"]["decisions"]
    assert decisions and all(d["toReplicas"] in allowed for d in decisions), decisions
    assert {n for n, _ in memory_points(settled)} <= allowed, describe()
    assert "InvalidSpec" not in json.dumps(settled.get("status")), describe()


def schedulable(found: dict[str, Any]) -> dict[str, Any] | None:
    """``status.autoscaling.memory.schedulable``: the wait after unschedulable pods."""
    auto = (found.get("status") or {}).get("autoscaling") or {}
    cap: dict[str, Any] | None = (auto.get("memory") or {}).get("schedulable")
    return cap


def wait_until_capped(watched: WatchedJob) -> dict[str, Any] | None:
    """The wait the job's status shows once the operator capped it at the workers that ran."""

    def was_capped() -> dict[str, Any] | None:
        return schedulable(watched.get())

    cap: dict[str, Any] | None = wait_for(
        was_capped, timeout=180, describe=watched.describe,
        what="the job capped at the workers the cluster placed")  # fmt: skip
    return cap


@pytest.mark.parametrize("simulated", ["linear"], indirect=True)
def test_on_a_full_cluster_the_operator_waits_before_asking_again(
    kubectl: Any,
    private_operator: tuple[str, Callable[..., OperatorProcess]],
    simulated: PrometheusServer,
) -> None:
    """On a linear curve the objective wants ``maxReplicas`` 12, more 2-GPU workers than the
    test-bed's two 8-GPU nodes hold: the scheduler leaves the extra pods unschedulable and the
    operator caps the job at the workers that ran. It then waits (5 minutes after a first
    failed try, ``memory.schedulable`` in status says until when) before asking for more:
    before the wait, it asked again as soon as the capped count had settled, and the job
    went up and down every few passes for as long as the cluster stayed full."""
    namespace, start = private_operator
    operator = start("--prometheus-url", simulated.url, "--no-arbitration")
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(job_manifest(maxReplicas=12)))
    watched = WatchedJob(kubectl, namespace, operator)
    job, describe = watched.get, watched.describe

    cap = wait_until_capped(watched)
    assert cap is not None and cap["tries"] == 1 and cap["replicas"] < 12, describe()
    assert cap["until"] - time.time() > 240, cap  # five minutes from the cap
    # ~30 passes (interval 1 s, settle 6 s): before the wait it asked again within ten.
    watch_until = time.time() + 30
    while time.time() < watch_until:
        found = job()
        assert found["spec"]["replicas"] <= cap["replicas"], describe()
        time.sleep(0.5)
    auto = found["status"]["autoscaling"]
    assert schedulable(found) == cap, describe()
    assert f"pods beyond {cap['replicas']} were unschedulable (once)" in auto["reason"], describe()
    assert "asking for more again in 5 min" in auto["reason"] or \
        "asking for more again in 4 min" in auto["reason"], describe()  # fmt: skip


@pytest.mark.parametrize("simulated", ["linear"], indirect=True)
def test_when_gpus_are_freed_the_operator_asks_again_at_once(
    kubectl: Any,
    private_operator: tuple[str, Callable[..., OperatorProcess]],
    simulated: PrometheusServer,
) -> None:
    """As above, but one of the two nodes is taken by someone else's pod: the job is capped
    at the 4 workers the other node holds, and the operator reads no free GPUs
    (``memory.schedulable.room`` 0). Once that pod is deleted it reads room for 4 more
    workers and asks again within a few passes, not after its 5-minute wait (with the wait
    alone, a 30-minute cap kept jobs at half their count 7.5 min past its end)."""
    namespace, start = private_operator
    kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=json.dumps(foreign_gpu_pod("other", GPUS_PER_NODE)),
    )
    wait_for(lambda: json.loads(kubectl("get", "pod/other", "-n", namespace, "-o", "json").stdout)
             ["spec"].get("nodeName"), timeout=60, what="the other team's pod bound")  # fmt: skip
    operator = start("--prometheus-url", simulated.url, "--no-arbitration")
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(job_manifest(maxReplicas=12)))
    watched = WatchedJob(kubectl, namespace, operator)
    job, describe = watched.get, watched.describe

    cap = wait_until_capped(watched)
    assert cap is not None and cap["replicas"] == WORKERS_PER_NODE and cap["room"] == 0, describe()
    assert cap["until"] - time.time() > 240, cap  # five minutes from the cap
    kubectl("delete", "pod/other", "-n", namespace, "--wait=false")
    freed = time.time()

    def asked_again() -> dict[str, Any] | None:
        found = job()
        return found if found["spec"]["replicas"] > cap["replicas"] else None

    wait_for(asked_again, timeout=60, describe=describe, what="the job asking for more")
    assert time.time() - freed < 60 < cap["until"] - time.time(), describe()
    tried = [d for d in scaled_since(job(), freed - 1) if d["toReplicas"] > cap["replicas"]]
    assert tried and "the cluster has room for 4 more than the 4 running, 0 more than 4 " \
        "when pods beyond were unschedulable" in tried[0]["reason"], describe()  # fmt: skip
    wait_for(lambda: job()["spec"]["replicas"] >= 2 * WORKERS_PER_NODE, timeout=60,
             describe=describe, what="the job on both nodes")  # fmt: skip
