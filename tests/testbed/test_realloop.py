"""The operator and the trainer meet: a TrainingJob whose workers really train, on the
test-bed's process nodes.

Covers:
- ``kubectl apply`` of a TrainingJob running ``trainscale-train`` on the digits task, with its
  checkpoints on a claim: the operator creates the rendezvous pod and Service and two workers,
  the process runtime runs them (the workers find the store through the Service name, talk to
  each other over their pod IPs), training ends, the workers exit 0 and the job is Succeeded;
  the shared claim holds the checkpoints.

- the real loop, autoscaled (:func:`test_autoscaler_resizes_real_training`, below).

Its own control plane (module scope): one process node, and one kwok node cordoned so that
every pod of the job (the rendezvous pod has no nodeSelector: on a real cluster it needs no
GPU node, so the template's GPU-node selector is deliberately not copied) lands where
processes run.
"""

from __future__ import annotations

import copy
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import OperatorProcess
from tests.support.audit import assert_exact_data_order, read_audit
from tests.support.testbed import cleanup_namespace, make_namespace, wait_for
from tests.testbed.test_procnode import make_claim, process_testbed
from trainscale.testbed import procnode
from trainscale.testbed.chart_readme import CHART_DIR
from trainscale.testbed.cluster import Testbed
from trainscale.testbed.prometheus import (
    PrometheusServer,
    build_podmonitor_scrape_configs,
    fetch_prometheus_with_kubernetes_sd,
    fetch_targets,
    render_chart_podmonitor,
    start_prometheus,
)
from trainscale.testbed.simjob import FAST_AUTOSCALING
from trainscale.trainer.contract.environment import ENV_AUDIT_LOG_DIR

pytestmark = [pytest.mark.realloop, pytest.mark.testbed, pytest.mark.slow]


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    with process_testbed() as testbed:
        testbed.kubectl("cordon", "gpu-node-0")
        testbed.apply_crd()
        yield testbed


@pytest.fixture
def operator_ns(bed: Testbed) -> Iterator[str]:
    """A namespace, and the operator watching it (run as a user runs it)."""
    name = make_namespace(bed.kubectl, "realloop-")
    operator = OperatorProcess(bed, name, bed.paths.logs / f"operator-{name}.log").start()
    try:
        yield name
        cleanup_namespace(bed.kubectl, name)
    finally:
        operator.stop()


def digits_job(name: str, replicas: int, claim: str) -> dict[str, Any]:
    return {
        "apiVersion": "trainscale.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas, "minReplicas": 1, "maxReplicas": replicas, "maxRestarts": 3,
            "autoscaling": {"enabled": False},
            "checkpoint": {"claimName": claim, "path": "/checkpoints"},
            "template": {"spec": {
                "terminationGracePeriodSeconds": 30,
                "nodeSelector": {"type": "process"},
                "containers": [{
                    "name": "trainer", "image": "ignored-by-the-process-runtime",
                    "command": ["trainscale-train", "--task",
                                "trainscale.trainer.examples.digits:task", "--max-steps", "60",
                                "--checkpoint-every-steps", "20"],
                    "resources": {"requests": {"cpu": "100m"}},
                }],
            }},
        },
    }  # fmt: skip


def phase_of(tj: dict[str, Any]) -> str:
    return str((tj.get("status") or {}).get("phase", ""))


@pytest.mark.timeout(420)
def test_digits_job_trains_on_process_pods(bed: Testbed, operator_ns: str) -> None:
    ns = operator_ns
    make_claim(bed, ns, "ckpt")
    bed.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(digits_job("digits", 2, "ckpt")))

    def phase() -> str:
        return phase_of(
            bed.fetch_json(f"/apis/trainscale.dev/v1alpha1/namespaces/{ns}/trainingjobs/digits")
        )

    def describe() -> str:
        pods = bed.kubectl("get", "pods", "-n", ns, "-o", "wide").stdout
        logs = sorted((bed.paths.procnode / "logs").glob(f"{ns}_*"))
        tails = "\n".join(f"== {p.name}\n" + "\n".join(p.read_text().splitlines()[-15:])
                          for p in logs)  # fmt: skip
        return f"job phase {phase()!r}\n{pods}\n{tails}"

    wait_for(lambda: phase() in ("Succeeded", "Failed"), timeout=240, interval=1,
             what="job digits Succeeded", describe=describe)  # fmt: skip
    assert phase() == "Succeeded", describe()
    checkpoints = procnode.claim_dir(bed.paths.procnode, ns, "ckpt")
    assert any(checkpoints.rglob("*")), describe()
    # Both workers trained together, over their pod IPs, to the last step.
    worker = procnode.container_log(bed.paths.procnode, ns, "digits-worker-0", "trainer")
    text = worker.read_text()
    assert "world 2" in text and "finished at step 60" in text, describe()


# -- the real loop, autoscaled ------------------------------------------------------------
#
# Covers:
# - Prometheus (built with Kubernetes discovery) finds the job's worker pods through the
#   chart's own PodMonitor, translated as prometheus-operator would, and scrapes their real
#   ``/metrics`` on their pod IPs;
# - the operator (``--prometheus-url`` at it) reads the job's real throughput there and
#   resizes the job: 1 -> 2 (exploring: one count cannot identify a curve), 2 -> 3 (the
#   measured efficiency at 2 predicts 3 above the floor), 3 -> 2 (the measured efficiency
#   at 3 is below the floor): the last two are decided on measurements, and the last one is
#   a scale-down whose pod is deleted (SIGTERM), checkpoints within its grace period, and
#   whose survivors resume at that very step;
# - a worker SIGKILLed at the final size (its pod's processes, as in a crash) is replaced by
#   the operator and the job trains at that size again, from its last checkpoint;
# - the job ends Succeeded, and the sample audit shows every sample of every epoch trained
#   exactly once in the final history, no step trained twice before the crash (the resizes
#   lose no progress), and at most one checkpoint interval retrained after it.
#
# The job's throughput curve. Each micro-batch costs a fixed 200 ms (the synthetic task's
# per-micro-batch delay, a sleep standing in for an accelerator's forward/backward: a CPU-
# bound step would measure how loaded this shared 2-core machine is, not the job) plus 10 ms
# for each worker beyond the first (its sync delay, a stand-in for communication). With a
# 64-sample global batch and at most 16 samples per micro-batch, one worker runs 4 micro-
# batches per step (800 ms), two run 2 each (420 ms), three still 2 each (22 = 16 + 6
# samples; 440 ms): throughput nearly doubles from 1 to 2 workers (efficiency 0.95) and
# falls a little at 3 (efficiency 0.61 < the 0.7 floor), as the CPU curve of this machine
# does but repeatably. Nothing tells the operator so: it only sees
# ``rate(trainscale_trainer_samples_total)`` in Prometheus, and decides by its policy
# (efficiency objective, default floor 0.7).
#
# Both margins are what the delays are for. The policy tries 3 only if the efficiency it
# measures at 2 predicts 3 above the floor by its Amdahl line through 1 and 2 (E(2) >= 0.823);
# each step's gloo all-reduce and Python overhead, 25-30 ms on a loaded 2-core machine, pulls
# E(2) down (with a 50 ms delay and no sync delay it measured 0.81, and the job held 2).
# And the move down from 3 should be for the broken floor: with a 100 ms delay and no sync
# delay (E(3) 2/3 nominally), overhead at 1 measured E(3) at 0.70 once, on the floor, and the
# job moved down for another reason. Here E(2) is near 0.90 and E(3) near 0.63 with that
# overhead: both about 0.07 from the line.
AUTOSCALED_JOB = "loop"
MICRO_BATCH_DELAY_MS = 200
SYNC_DELAY_MS = 10
DATASET_SAMPLES = 1024  # 16 steps an epoch
EPOCHS = 120  # far more than the resizes need: the test then lifts the delay to finish
SHARED_MOUNT = "/shared"
CHECKPOINT_EVERY_STEPS = 100


@pytest.fixture
def autoscaled_ns(
    bed: Testbed, tmp_path: Path
) -> Iterator[tuple[str, PrometheusServer, OperatorProcess]]:
    """A namespace, Prometheus discovering its worker pods through the chart's PodMonitor,
    and the operator watching the namespace and reading that Prometheus."""
    name = make_namespace(bed.kubectl, "realloop-as-")
    monitor = render_chart_podmonitor(bed.helm, CHART_DIR, [name])
    configs = build_podmonitor_scrape_configs(monitor, bed.kubeconfig)
    binary = fetch_prometheus_with_kubernetes_sd()
    server = start_prometheus(tmp_path / "prometheus", scrape_configs=configs, binary=binary)
    operator = OperatorProcess(
        bed, name, bed.paths.logs / f"operator-{name}.log",
        ("--prometheus-url", server.url, "--no-arbitration"),
    ).start()  # fmt: skip
    try:
        yield name, server, operator
        cleanup_namespace(bed.kubectl, name)
    finally:
        operator.stop()
        server.stop()


def autoscaled_job() -> dict[str, Any]:
    autoscaling = copy.deepcopy(FAST_AUTOSCALING)
    autoscaling["clusterArbitration"] = False
    return {
        "apiVersion": "trainscale.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": AUTOSCALED_JOB},
        "spec": {
            "replicas": 1, "minReplicas": 1, "maxReplicas": 3, "maxRestarts": 5,
            "autoscaling": autoscaling,
            "checkpoint": {"claimName": "ckpt", "path": "/checkpoints"},
            "template": {"spec": {
                "terminationGracePeriodSeconds": 30,
                "nodeSelector": {"type": "process"},
                "volumes": [{"name": "shared", "persistentVolumeClaim": {"claimName": "shared"}}],
                "containers": [{
                    "name": "trainer", "image": "ignored-by-the-process-runtime",
                    "command": ["trainscale-train", "--task",
                                "trainscale.trainer.examples.synthetic:task",
                                "--epochs", str(EPOCHS), "--micro-batch-size", "16",
                                "--checkpoint-every-steps", str(CHECKPOINT_EVERY_STEPS)],
                    "env": [
                        {"name": "TRAINSCALE_SYNTHETIC_SAMPLES", "value": str(DATASET_SAMPLES)},
                        {"name": "TRAINSCALE_SYNTHETIC_DELAY_FILE",
                         "value": f"{SHARED_MOUNT}/delay-ms"},
                        {"name": "TRAINSCALE_SYNTHETIC_SYNC_FILE",
                         "value": f"{SHARED_MOUNT}/sync-ms"},
                        {"name": ENV_AUDIT_LOG_DIR, "value": f"{SHARED_MOUNT}/audit"},
                    ],
                    "volumeMounts": [{"name": "shared", "mountPath": SHARED_MOUNT}],
                    "resources": {"requests": {"cpu": "100m"}},
                }],
            }},
        },
    }  # fmt: skip


def decisions(tj: dict[str, Any]) -> list[dict[str, Any]]:
    return list(((tj.get("status") or {}).get("autoscaling") or {}).get("decisions") or [])


def describe_autoscaled(
    bed: Testbed, ns: str, prometheus: PrometheusServer, operator: OperatorProcess
) -> str:
    """The job's status, pods, Prometheus targets and every log's tail (failure messages)."""
    tj = bed.fetch_json(
        f"/apis/trainscale.dev/v1alpha1/namespaces/{ns}/trainingjobs/{AUTOSCALED_JOB}"
    )
    pods = bed.kubectl("get", "pods", "-n", ns, "-o", "wide").stdout
    logs = sorted((bed.paths.procnode / "logs").glob(f"{ns}_*"))
    tails = "\n".join(f"== {p.name}\n" + "\n".join(p.read_text().splitlines()[-12:])
                      for p in logs)  # fmt: skip
    try:
        targets = [(t["labels"].get("pod"), t["health"], t.get("lastError"))
                   for t in fetch_targets(prometheus.url)["activeTargets"]]  # fmt: skip
    except OSError as err:
        targets = [("unreachable", str(err), None)]
    status = json.dumps({k: v for k, v in (tj.get("status") or {}).items()
                         if k != "conditions"}, indent=1)[-3000:]  # fmt: skip
    return (
        f"spec.replicas {tj['spec']['replicas']}\nstatus {status}\n{pods}\n"
        f"prometheus targets {targets}\n{tails}\n== operator\n{operator.log_tail(30)}"
    )


def crash_a_worker(
    bed: Testbed, ns: str, audit_dir: Path, size: int, describe: Callable[[], str]
) -> float:
    """SIGKILL a worker pod's processes (no SIGTERM, no checkpoint), wait until the operator
    replaced the pod and the job trains at ``size`` again; return when it was killed."""
    victim = f"/api/v1/namespaces/{ns}/pods/{AUTOSCALED_JOB}-worker-{size - 1}"
    victim_uid = bed.fetch_json(victim)["metadata"]["uid"]
    worlds_before = {e["world_id"] for e in read_audit(audit_dir)}
    killed_at = time.time()
    procnode.kill_pod_processes(victim_uid)

    def retrained() -> bool:
        return any(e["world_size"] == size and e["world_id"] not in worlds_before
                   for e in read_audit(audit_dir))  # fmt: skip

    wait_for(retrained, timeout=120, interval=1, what="training again after the crash",
             describe=describe)  # fmt: skip
    assert bed.fetch_json(victim)["metadata"]["uid"] != victim_uid  # a new pod
    return killed_at


def assert_restart_cost_is_the_trainers(memory: dict[str, Any], logs: list[str]) -> None:
    """The trainer's measure of its restarts reached the operator through Prometheus: the
    memory (read when the job left 3) keeps at least the shorter of the two restarts before
    (1 -> 2, 2 -> 3), each the sum over its phases of the slowest pod, as each pod's rank 0
    logged them (``restart phases (world N): stop 0.31s | ...``, 0.01 s resolution): the
    median of both where the second was read before the job left 3, the first alone where
    not (a loaded machine). The throughput missed across a rescale, all the operator had
    before, read 0-0.8 s here where the trainer paused 1-3 s (and the memory then held 0 s
    where the trainer's shorter pause was 1.7 s)."""
    pauses = []
    for world, pods in ((2, logs[:2]), (3, logs[:3])):
        slowest: dict[str, float] = {}
        for log in pods:  # each pod's first restart at this size
            line = re.search(rf"restart phases \(world {world}\): (.*)", log)
            assert line, log[-3000:]
            for phase, seconds in re.findall(r"(\w+) ([0-9.]+)s", line.group(1)):
                slowest[phase] = max(slowest.get(phase, 0.0), float(seconds))
        pauses.append(sum(slowest.values()))
    assert min(pauses) > 0, pauses
    assert min(pauses) - 0.05 <= memory.get("restartCostSeconds", 0.0) < 30, (memory, pauses)


def assert_audit(entries: list[dict[str, Any]], killed_at: float) -> None:
    """Every sample of every epoch trained exactly once in the final history; no step trained
    twice before the crash (resizes lose nothing), at most one checkpoint interval after it."""
    assert_exact_data_order(entries, DATASET_SAMPLES, EPOCHS)
    assert {e["world_size"] for e in entries} == {1, 2, 3}

    def retrained(records: list[dict[str, Any]]) -> list[int]:
        worlds: dict[int, set[str]] = {}
        for entry in records:
            worlds.setdefault(entry["step"], set()).add(entry["world_id"])
        return sorted(step for step, w in worlds.items() if len(w) > 1)

    assert retrained([e for e in entries if e["time"] < killed_at]) == []
    assert len(retrained(entries)) <= CHECKPOINT_EVERY_STEPS, retrained(entries)


@pytest.mark.prometheus
@pytest.mark.timeout(420)
def test_autoscaler_resizes_real_training(
    bed: Testbed, autoscaled_ns: tuple[str, PrometheusServer, OperatorProcess]
) -> None:
    ns, prometheus, operator = autoscaled_ns
    for claim in ("ckpt", "shared"):
        make_claim(bed, ns, claim)
    shared = procnode.claim_dir(bed.paths.procnode, ns, "shared")
    shared.mkdir(parents=True, exist_ok=True)
    delay, sync = shared / "delay-ms", shared / "sync-ms"
    delay.write_text(str(MICRO_BATCH_DELAY_MS))
    sync.write_text(str(SYNC_DELAY_MS))
    bed.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(autoscaled_job()))
    path = f"/apis/trainscale.dev/v1alpha1/namespaces/{ns}/trainingjobs/{AUTOSCALED_JOB}"
    audit_dir = shared / "audit"

    def describe() -> str:
        return describe_autoscaled(bed, ns, prometheus, operator)

    # The measured scale-down: from 3, where the floor broke, to fewer. The memory is read
    # in the same status: once the job is made to run out (no delay) its curve changes, and
    # the autoscaler rightly forgets what it measured before (seen on a loaded machine).
    time_left: list[int] = []  # status.autoscaling.timeLeftSeconds, as the passes wrote it

    def scaled_down() -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
        tj = bed.fetch_json(path)
        left = ((tj.get("status") or {}).get("autoscaling") or {}).get("timeLeftSeconds")
        if left is not None:
            time_left.append(left)
        made = decisions(tj)
        down = [d for d in made if d["fromReplicas"] == 3 and d["toReplicas"] < 3]
        return (made, tj["status"]["autoscaling"]["memory"]) if down else None

    made, memory = wait_for(scaled_down, timeout=240, interval=1,
                            what="a measured scale-down from 3", describe=describe)  # fmt: skip
    # The survivors train on at the new size: then let the job run out quickly.
    final_size = made[-1]["toReplicas"]

    def resumed() -> bool:
        entries = read_audit(audit_dir)
        return bool(entries) and max(entries, key=lambda e: e["time"])["world_size"] == final_size

    wait_for(resumed, timeout=120, interval=1, what=f"training at world {final_size}",
             describe=describe)  # fmt: skip
    killed_at = crash_a_worker(bed, ns, audit_dir, final_size, describe)
    delay.write_text("0")
    sync.write_text("0")
    wait_for(lambda: phase_of(bed.fetch_json(path)) in ("Succeeded", "Failed"), timeout=180,
             interval=1, what="job Succeeded", describe=describe)  # fmt: skip
    assert phase_of(bed.fetch_json(path)) == "Succeeded", describe()

    # Decided on measurements: every count it left or went to was measured through Prometheus,
    # the move to 3 is not an exploration, and the move down names the broken floor.
    moves = [(d["fromReplicas"], d["toReplicas"]) for d in made]
    assert moves[:3] == [(1, 2), (2, 3), (3, final_size)], (moves, describe())
    assert "exploring" not in made[1]["reason"] and "floor" in made[1]["reason"], made
    assert "< floor" in made[2]["reason"], made
    measured = {p["replicas"]: p["samplesPerSecond"] for p in memory["points"]}
    assert set(measured) >= {1, 2, 3}, memory
    assert measured[2] > 1.5 * measured[1] and measured[3] < 1.2 * measured[2], measured
    # The trainer's samples left reached the operator through Prometheus: the time the job
    # has left, never more than all its epochs at half its slowest measured rate (a reading
    # in the start's ramp is slower than the settled rate: 64 samples/s against 80 once, on
    # a loaded CI machine, 1,913 s against 1,536)
    slowest = 0.5 * measured[1]
    assert time_left and 0 < max(time_left) <= EPOCHS * DATASET_SAMPLES / slowest, time_left

    # The removed pod got SIGTERM; at every resize rank 0 checkpointed the step it stopped
    # at, and the next world resumed from exactly that step.
    def log_of(index: int) -> str:
        log = procnode.container_log(bed.paths.procnode, ns, f"{AUTOSCALED_JOB}-worker-{index}",
                                     "trainer")  # fmt: skip
        return log.read_text(errors="replace") if log.exists() else ""

    assert "Received 15 death signal" in log_of(2), log_of(2)[-3000:]
    logs = "\n".join(log_of(i) for i in range(3))
    stops = re.findall(r"stopping at step (\d+) for a resize", logs)
    resumes = re.findall(r"resumed from step (\d+) ", logs)
    lines = "\n".join(f"{i}: {line}" for i in range(3) for line in log_of(i).splitlines()
                      if "step" not in line or "stopping" in line or "resumed" in line)  # fmt: skip
    # (rank 0 prints "stopping at step N"; where rank 0 is the removed pod's the line may be
    # cut short by its exit: the audit below proves the step-exact resume in every case)
    assert set(stops) <= set(resumes) and len(set(resumes)) >= len(moves), lines
    assert_restart_cost_is_the_trainers(memory, [log_of(i) for i in range(3)])

    assert_audit(read_audit(audit_dir), killed_at)
