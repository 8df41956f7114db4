"""``spec.suspend`` on the real control plane (kube-apiserver, scheduler, kwok GPU nodes).

Covers: ``kubectl patch`` of ``spec.suspend: true`` (the field the apiserver accepts from the
generated CRD) makes every pod of the job go, workers and rendezvous pod, while the job and
its Service stay; ``kubectl get tj`` shows phase Suspended, the status keeps
``Suspended=True`` through the apiserver (the status schema declares the phase); setting it
back to false brings ``spec.replicas`` workers and the rendezvous pod back and the job is
Running again, with ``Suspended=False/JobResumed``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.test_e2e_trainingjob import JOB_LABEL, apply, job_manifest, status_of, wait_running
from tests.support.testbed import wait_for

pytestmark = [pytest.mark.testbed, pytest.mark.slow]


def job_pods(kubectl: Any, namespace: str, job: str) -> list[str]:
    """Every pod of the job, terminating ones included."""
    out = kubectl("get", "pods", "-n", namespace, "-l", f"{JOB_LABEL}={job}", "-o", "json").stdout
    return sorted(p["metadata"]["name"] for p in json.loads(out)["items"])


def suspend(kubectl: Any, namespace: str, job: str, value: bool) -> None:
    kubectl("patch", f"tj/{job}", "-n", namespace, "--type=merge",
            "-p", json.dumps({"spec": {"suspend": value}}))  # fmt: skip


def conditions(kubectl: Any, namespace: str, job: str) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"])
            for c in status_of(kubectl, namespace, job).get("conditions") or []}  # fmt: skip


def test_suspend_removes_every_pod_and_resume_runs_the_job_again(
    kubectl: Any, job_namespace: str
) -> None:
    ns, job = job_namespace, "pausable"
    apply(kubectl, ns, job_manifest(job, replicas=2, gpus=1))
    wait_running(kubectl, ns, job, [0, 1])
    assert f"{job}-rdzv" in job_pods(kubectl, ns, job)

    suspend(kubectl, ns, job, True)
    wait_for(lambda: job_pods(kubectl, ns, job) == [], timeout=90,
             what="every pod of the suspended job gone")  # fmt: skip
    wait_for(lambda: status_of(kubectl, ns, job).get("phase") == "Suspended", timeout=30,
             what="phase Suspended")  # fmt: skip
    assert conditions(kubectl, ns, job)["Suspended"] == ("True", "JobSuspended")
    assert status_of(kubectl, ns, job)["replicas"] == 0
    shown = kubectl("get", f"tj/{job}", "-n", ns).stdout
    assert "Suspended" in shown, shown
    kubectl("get", f"service/{job}-rdzv", "-n", ns)  # the Service stays
    reasons = kubectl("get", "events", "-n", ns, "-o", "jsonpath={.items[*].reason}").stdout
    assert "Suspending" in reasons.split()

    suspend(kubectl, ns, job, False)
    wait_running(kubectl, ns, job, [0, 1])
    wait_for(lambda: status_of(kubectl, ns, job).get("phase") == "Running", timeout=30,
             what="phase Running again")  # fmt: skip
    assert f"{job}-rdzv" in job_pods(kubectl, ns, job)
    assert conditions(kubectl, ns, job)["Suspended"] == ("False", "JobResumed")
