"""Placement through the operator: a TrainingJob's workers, created by ``trainscale operator``
on the 2 x 8-GPU test-bed, fill one node before the next.

Covers:
- ``kubectl apply`` of a 4-worker job (one GPU, 6 CPUs and 48Gi each) puts all 4 on one node;
- ``kubectl scale`` to 10 adds workers to that node until it is full, then 2 on the other.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from tests.e2e.test_e2e_trainingjob import apply, job_manifest, wait_running, workers

pytestmark = [pytest.mark.testbed, pytest.mark.slow]


def nodes_used(kubectl: Any, namespace: str, job: str) -> list[int]:
    """Workers per node, most first."""
    pods = workers(kubectl, namespace, job)
    return sorted(Counter(p["spec"]["nodeName"] for p in pods).values(), reverse=True)


def test_operator_workers_fill_one_node_before_the_next(kubectl: Any, job_namespace: str) -> None:
    ns, job = job_namespace, "packed"
    manifest = job_manifest(job, replicas=4, max_replicas=16, gpus=1)
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    container["resources"]["requests"] = {"cpu": "6", "memory": "48Gi"}
    apply(kubectl, ns, manifest)
    wait_running(kubectl, ns, job, list(range(4)))
    assert nodes_used(kubectl, ns, job) == [4]

    kubectl("scale", "-n", ns, f"tj/{job}", "--replicas=10")
    wait_running(kubectl, ns, job, list(range(10)))
    assert nodes_used(kubectl, ns, job) == [8, 2]
