"""Where a resize of a real training job spends its time: ``kubectl scale`` to the first step.

Everything is real except the GPUs: the test-bed control plane, ``trainscale operator`` as a
process, and a TrainingJob whose workers run ``trainscale-train`` (our agent, gloo) on the
synthetic task on the test-bed's *process node* (real processes in their own network
namespaces, pod IPs, the rendezvous Service, a shared checkpoint claim).

Scenario, repeated ``--repeats`` times: the job trains at 1 worker; ``kubectl scale
--replicas=2`` (the scale subresource, what an HPA or a user does); wait for the first step
at 2; ``kubectl scale --replicas=1``; wait for the first step at 1. Measured per resize (wall
clock; the operator's and the kubelet's parts by polling the API every 0.1 s):

* scale-up: ``create`` patch -> the operator's new pod exists; ``pod start`` -> the pod is
  Running (process started); ``boot`` -> the new pod's agent starts its rendezvous (Python,
  torch imported, the forkserver preloaded; from the new pod's own phases); ``notice`` -> the
  old world's last step (the old agent sees a node waiting, signals its workers, they finish
  their step);
* scale-down: ``delete`` patch -> the pod is being deleted (SIGTERM); ``drain`` -> the old
  world's last step;
* then the trainer's own phases (``trainscale_trainer_resize_phase_seconds``, read from the
  ``restart phases`` line each pod's local rank 0 logs; per phase the slowest pod's of the
  previous world, whose rendezvous starts after ``notice`` and ``stop``; the dashboard's max
  over all pods shows a new pod's longer view of the rendezvous): stop, rendezvous, process
  start, process group, setup, restore, first step;
* ``total``: patch -> the first step at the new size (from the sample audit log's times);
  ``other``: what the parts above do not explain;
* steps lost: the trainer's figure (max over the pods that know it) and the audit's (the old
  world's last step minus the step before the new world's first).

Run (as root; one process runtime per host): ``.venv/bin/python benchmarks/realloop_resize.py
--repeats 2`` (about 1 minute per repeat plus 30 s of set-up).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from trainscale.operator.controller.builders import LABEL_REPLICA_INDEX
from trainscale.testbed import procnode
from trainscale.testbed.cluster import Testbed
from trainscale.trainer.contract.audit import read_audit
from trainscale.trainer.contract.environment import ENV_AUDIT_LOG_DIR
from trainscale.trainer.contract.metric_names import RESIZE_PHASES

NAMESPACE = "resize-bench"
JOB = "resize"
CLAIM, CHECKPOINTS, AUDIT = "ckpt", "/checkpoints", "audit"  # the audit beside the checkpoints
DELAY_MS = 20  # per micro-batch: the step sleeps like an accelerator, the CPU stays free
PREFIX_PARTS = {"up": ("create", "pod start", "boot", "notice"), "down": ("delete", "drain")}
RESTART_LINE = re.compile(r"restart phases \(world (\d+)\): (.*)$", re.M)


def job_manifest() -> dict[str, Any]:
    """The job: synthetic task, 1 worker, its sample audit next to the checkpoints."""
    trainer = {
        "name": "trainer",
        "image": "ignored-by-the-process-runtime",
        "command": [
            "trainscale-train", "--task", "trainscale.trainer.examples.synthetic:task",
            "--epochs", "1000", "--micro-batch-size", "16", "--checkpoint-every-steps", "200",
        ],
        "env": [
            {"name": "TRAINSCALE_SYNTHETIC_DELAY_MS", "value": str(DELAY_MS)},
            {"name": ENV_AUDIT_LOG_DIR, "value": f"{CHECKPOINTS}/{AUDIT}"},
        ],
        "resources": {"requests": {"cpu": "100m"}},
    }  # fmt: skip
    pod = {"terminationGracePeriodSeconds": 30, "nodeSelector": {"type": "process"},
           "containers": [trainer]}  # fmt: skip
    return {
        "apiVersion": "trainscale.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": JOB, "namespace": NAMESPACE},
        "spec": {
            "replicas": 1, "minReplicas": 1, "maxReplicas": 2, "maxRestarts": 10,
            "autoscaling": {"enabled": False},
            "checkpoint": {"claimName": CLAIM, "path": CHECKPOINTS},
            "template": {"spec": pod},
        },
    }  # fmt: skip


def wait(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


class PodWatcher:
    """Polls the job's worker pods; remembers when each was first seen, Running, deleting."""

    def __init__(self, testbed: Testbed) -> None:
        self.testbed = testbed
        self.seen: dict[str, dict[str, float]] = {}  # pod uid -> event -> wall time
        self.names: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        path = f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector={LABEL_REPLICA_INDEX}"
        while not self._stop.is_set():
            try:
                pods = self.testbed.fetch_json(path)["items"]
            except (OSError, ValueError, KeyError):
                pods = []
            now = time.time()
            for pod in pods:
                uid = pod["metadata"]["uid"]
                self.names[uid] = pod["metadata"]["name"]
                events = self.seen.setdefault(uid, {"created": now})
                if (pod.get("status") or {}).get("phase") == "Running":
                    events.setdefault("running", now)
                if pod["metadata"].get("deletionTimestamp"):
                    events.setdefault("deleting", now)
            self._stop.wait(0.1)

    def first_after(self, event: str, since: float) -> float:
        times = [e[event] for e in self.seen.values() if e.get(event, 0.0) > since]
        return min(times) if times else math.nan

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def restart_lines(testbed: Testbed) -> dict[str, list[tuple[int, str]]]:
    """Each worker pod log's ``restart phases`` lines: (world size, the phases text)."""
    found: dict[str, list[tuple[int, str]]] = {}
    for index in range(2):
        pod = f"{JOB}-worker-{index}"
        log = procnode.container_log(testbed.paths.procnode, NAMESPACE, pod, "trainer")
        text = log.read_text(errors="replace") if log.exists() else ""
        found[pod] = [(int(m.group(1)), m.group(2)) for m in RESTART_LINE.finditer(text)]
    return found


def parse_phases(text: str) -> tuple[dict[str, float], int | None]:
    phases: dict[str, float] = {}
    lost: int | None = None
    for part in text.split(" | "):
        name, _, value = part.rpartition(" ")
        if name == "steps lost":
            lost = None if value == "?" else int(value)
        else:
            phases[name] = float(value.removesuffix("s"))
    return phases, lost


def trainer_phases(
    before: dict[str, list[tuple[int, str]]], after: dict[str, list[tuple[int, str]]], size: int
) -> tuple[dict[str, float], int | None, float]:
    """The new restart's phases: per phase the slowest pod's among those of the previous world
    (a new pod's rendezvous also spans the old world's noticing and stop: counted in
    ``notice`` and ``stop``); steps lost: the max known; and how long before its first step a
    pod new to the job started its rendezvous (0: none)."""
    survivors: dict[str, float] = {}
    newcomers: dict[str, float] = {}
    lost: list[int] = []
    joined = 0.0
    for pod, lines in after.items():
        for world, text in lines[len(before.get(pod, [])) :]:
            if world != size:
                continue
            pod_phases, pod_lost = parse_phases(text)
            if pod_lost is not None:
                lost.append(pod_lost)
            if "stop" not in pod_phases:  # not in the previous world: a new pod
                joined = max(joined, sum(pod_phases.values()))
            slowest = survivors if "stop" in pod_phases else newcomers
            for name, seconds in pod_phases.items():
                slowest[name] = max(slowest.get(name, 0.0), seconds)
    return survivors or newcomers, (max(lost) if lost else None), joined


def describe(testbed: Testbed) -> None:
    """Print the pods and the tail of each worker's log (why a wait timed out)."""
    print(testbed.kubectl("get", "pods", "-n", NAMESPACE, "-o", "wide", check=False).stdout)
    for index in range(2):
        pod = f"{JOB}-worker-{index}"
        log = procnode.container_log(testbed.paths.procnode, NAMESPACE, pod, "trainer")
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        marks = [line for line in lines if "restart phases" in line or "from step" in line]
        print(f"== {pod} ({log})", *marks[-10:], "...", *lines[-10:], sep="\n")


def scale(testbed: Testbed, replicas: int) -> float:
    """``kubectl scale`` through the TrainingJob's scale subresource; returns when it was sent."""
    sent = time.time()
    testbed.kubectl("scale", "-n", NAMESPACE, f"trainingjob/{JOB}", f"--replicas={replicas}")
    return sent


def measure(
    testbed: Testbed, watcher: PodWatcher, audit_dir: Path, old: int, new: int
) -> dict[str, Any]:
    lines_before = restart_lines(testbed)
    t0 = scale(testbed, new)

    def first_new_step() -> dict[str, Any] | None:
        entries = [e for e in read_audit(audit_dir) if e["time"] > t0 and e["world_size"] == new]
        return min(entries, key=lambda e: e["time"]) if entries else None

    first = wait(first_new_step, 240, f"the first step at world {new}")
    after = wait(
        lambda: (
            (lines := restart_lines(testbed))
            and sum(1 for p, ls in lines.items() for w, _ in ls[len(lines_before[p]) :] if w == new)
            >= new
            and lines
        ),
        60,
        f"every pod's restart line at world {new}",
    )
    entries = read_audit(audit_dir)
    old_steps = [e for e in entries if e["world_size"] == old and e["time"] < first["time"]]
    last_old = max(old_steps, key=lambda e: e["time"])
    phases, lost, joined_before_first_step = trainer_phases(lines_before, after, new)
    row: dict[str, Any] = {"resize": f"{old}->{new}", "phases": phases, "lost": lost}
    if new > old:
        created = watcher.first_after("created", t0)
        running = watcher.first_after("running", created)
        joined = first["time"] - joined_before_first_step  # the new agent's rendezvous began
        row["prefix"] = {
            "create": created - t0,
            "pod start": running - created,
            "boot": joined - running,  # python, torch imports, forkserver preload
            "notice": last_old["time"] - joined,  # the old agent sees it, its workers stop
        }
    else:
        deleting = watcher.first_after("deleting", t0)
        row["prefix"] = {"delete": deleting - t0, "drain": last_old["time"] - deleting}
    row["total"] = first["time"] - t0
    row["other"] = row["total"] - sum(row["prefix"].values()) - sum(phases.values())
    row["lost_audit"] = max(int(last_old["step"]) - (int(first["step"]) - 1), 0)
    return row


def format_table(rows: list[dict[str, Any]]) -> str:
    """One line per resize direction: the median over the repeats of every part (seconds)."""
    out = []
    for direction, prefix in (("up", PREFIX_PARTS["up"]), ("down", PREFIX_PARTS["down"])):
        mine = [r for r in rows if ("up" if r["resize"] == "1->2" else "down") == direction]
        if not mine:
            continue
        columns = [*prefix, *RESIZE_PHASES, "other", "total"]
        out.append(" | ".join(["resize", *columns, "steps lost (trainer/audit)"]))

        def median(values: list[float]) -> str:
            known = [v for v in values if not math.isnan(v)]
            return f"{statistics.median(known):.2f}" if known else "-"

        cells = [mine[0]["resize"]]
        for column in columns:
            if column in prefix:
                cells.append(median([r["prefix"][column] for r in mine]))
            elif column in ("other", "total"):
                cells.append(median([r[column] for r in mine]))
            else:
                cells.append(median([r["phases"].get(column, math.nan) for r in mine]))
        lost = ",".join(
            f"{'?' if r['lost'] is None else r['lost']}/{r['lost_audit']}" for r in mine
        )
        cells.append(lost)
        out.append(" | ".join(cells))
    return "\n".join(out)


def set_up(testbed: Testbed, work: Path) -> subprocess.Popen[bytes]:
    """CRD, namespace, claims, the operator (watching the namespace), the job at 1 worker."""
    testbed.kubectl("cordon", "gpu-node-0")  # every pod of the job on the process node
    testbed.apply_crd()
    testbed.kubectl("create", "namespace", NAMESPACE)
    for manifest in procnode.build_claim_manifests(NAMESPACE, CLAIM):
        testbed.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    log = (work / "operator.log").open("wb")
    operator = subprocess.Popen(
        [str(Path(sys.executable).with_name("trainscale")), "operator", "--namespace",
         NAMESPACE, "--metrics-port", "0", "--liveness-port", "0", "--log-level", "INFO"],
        env=testbed.env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    testbed.kubectl("apply", "-f", "-", input=json.dumps(job_manifest()))
    return operator


def run(repeats: int, work: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    procnode.check_host()
    with Testbed(nodes=1, gpus_per_node=8, process_nodes=1) as testbed:
        operator = set_up(testbed, work)
        watcher = PodWatcher(testbed)
        audit_dir = procnode.claim_dir(testbed.paths.procnode, NAMESPACE, CLAIM) / AUDIT
        try:
            wait(lambda: audit_dir.is_dir() and read_audit(audit_dir), 240, "the first step", 0.5)
            for repeat in range(repeats):
                for old, new in ((1, 2), (2, 1)):
                    time.sleep(3)  # steady training at the current size
                    row = measure(testbed, watcher, audit_dir, old, new)
                    rows.append(row)
                    print(f"repeat {repeat + 1} {row['resize']}: {json.dumps(row)}", flush=True)
        except Exception:
            describe(testbed)
            raise
        finally:
            watcher.stop()
            testbed.kubectl("delete", "trainingjob", JOB, "-n", NAMESPACE, "--wait=false",
                            check=False)  # fmt: skip
            operator.terminate()
            operator.wait(20)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="up/down pairs to measure")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    work = Path(tempfile.mkdtemp(prefix="trainscale-realloop-resize-"))
    rows = run(args.repeats, work)
    print(f"\nkubectl scale -> first step at the new size, seconds (median of {args.repeats}):")
    print(format_table(rows))
    print(f"operator log: {work / 'operator.log'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
