"""What the operator holds per job between passes, whole and trimmed: the admitted pod spec
and the listing of the job's worker pods.

Why this script exists: the operator holds each arbitrated job's admitted pod spec (a
dry-run create's answer) between passes, and at 1,000 jobs the whole specs were about 15 MiB
of its live objects. ``trim_scheduling_spec`` keeps what the node filters and the requests
read. It also keeps each job's last listing of its worker pods (``WorkerPodLists``), each
pod trimmed as it is decoded by ``trim_worker_pod`` to what ``parse_worker_pod`` and
``node_of_pod`` read. This decodes the worker pod spec of each example job 1,000 times, as
the adapter decodes a dry run's answer, keeps the copies, and reads ``tracemalloc``'s bytes
per copy, whole and trimmed; then the same for one worker pod as a LIST returns it once it
runs (the apiserver's metadata, a kubelet's status). (A dry run's answer, and a listed pod,
also carry admission's and the apiserver's defaults: a security context, default
tolerations; the whole figures here are a lower bound.)

Run:  .venv/bin/python benchmarks/held_pod_size.py [--copies 1000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from trainscale.operator import api
from trainscale.operator.adapters.k8s import drop_managed_fields
from trainscale.operator.autoscaling.cluster import trim_scheduling_spec
from trainscale.operator.controller.builders import JobRef, build_worker_pod
from trainscale.operator.controller.reconcile import trim_worker_pod

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def held_bytes(text: str, keep: Callable[[dict[str, Any]], Any], copies: int) -> float:
    """Bytes per copy of ``keep(json.loads(text))`` (decoded without managed fields, as the
    adapter decodes), the copies all alive."""
    tracemalloc.start()
    held = [keep(json.loads(text, object_hook=drop_managed_fields)) for _ in range(copies)]
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del held
    return current / copies


def listed_pod(job: JobRef, spec: api.TrainingJobSpec) -> dict[str, Any]:
    """Worker 0 as a LIST returns it once it runs: what the operator created, the
    apiserver's metadata and the kubelet's status (a Running pod's conditions, one container
    status each)."""
    pod = build_worker_pod(job, spec, 0)
    stamp = "2026-12-06T10:00:00Z"
    pod["metadata"].update(uid="0" * 36, resourceVersion="123456", creationTimestamp=stamp,
                           managedFields=[{"manager": "trainscale-operator",
                                           "operation": "Update", "time": stamp,
                                           "fieldsV1": {"f:metadata": {}, "f:spec": {}}}])  # fmt: skip
    pod["spec"]["nodeName"] = "gpu-node-1"
    conditions = [{"type": t, "status": "True", "lastProbeTime": None,
                   "lastTransitionTime": stamp}
                  for t in ("PodReadyToStartContainers", "Initialized", "Ready",
                            "ContainersReady", "PodScheduled")]  # fmt: skip
    statuses = [{"name": c["name"], "state": {"running": {"startedAt": stamp}},
                 "lastState": {}, "ready": True, "restartCount": 0, "started": True,
                 "image": c.get("image", ""), "imageID": "sha256:" + "0" * 64,
                 "containerID": "containerd://" + "1" * 64}
                for c in pod["spec"].get("containers") or []]  # fmt: skip
    pod["status"] = {"phase": "Running", "conditions": conditions, "hostIP": "10.0.0.1",
                     "hostIPs": [{"ip": "10.0.0.1"}], "podIP": "10.1.0.1",
                     "podIPs": [{"ip": "10.1.0.1"}], "startTime": stamp,
                     "qosClass": "Burstable", "containerStatuses": statuses}  # fmt: skip
    return pod


def example_jobs() -> list[tuple[str, JobRef, api.TrainingJobSpec]]:
    """(file, job, spec) of every TrainingJob in examples/."""
    found = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for body in yaml.safe_load_all(path.read_text()):
            if not body or body.get("kind") != api.KIND:
                continue
            spec = api.TrainingJobSpec.model_validate(body["spec"])
            job = JobRef(name=body["metadata"]["name"], namespace="team", uid="uid")
            found.append((path.name, job, spec))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=1000)
    args = parser.parse_args(argv)
    jobs = example_jobs()
    for title, held in (
        ("admitted pod spec", lambda job, spec: build_worker_pod(job, spec, 0)["spec"]),
        ("listed worker pod", listed_pod),
    ):
        trim = trim_scheduling_spec if title == "admitted pod spec" else trim_worker_pod
        print(f"\n| example job | {title}, JSON bytes | held whole, KiB | held trimmed, KiB |")
        print("|---|---|---|---|")
        for name, job, spec in jobs:
            text = json.dumps(held(job, spec))
            whole = held_bytes(text, lambda s: s, args.copies)
            trimmed = held_bytes(text, trim, args.copies)
            print(f"| {name} ({job.name}) | {len(text):,} | {whole / 1024:.1f} | "
                  f"{trimmed / 1024:.1f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
