"""Creations the apiserver refuses, on the real control plane: a ResourceQuota and a typo in
the pod template.

Covers:
- a ResourceQuota (``pods: 2``) that refuses the second worker: ``kubectl get tj`` still shows
  the phase and the one worker that exists, the job has condition ReplicaFailure=True
  (FailedCreate) with the quota's message and exactly one FailedCreate Warning event after
  several refused retries, and the operator logs no traceback for it and one warning (the
  retries are info lines); raising the quota lets the job recover and the condition clears;
- ``resource:`` instead of ``resources:`` in the template is refused by strict server-side
  field validation: Degraded=True/InvalidSpec naming the field, one InvalidSpec Warning, no
  worker created.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.conftest import OperatorProcess
from tests.e2e.test_e2e_trainingjob import apply, job_manifest, status_of, wait_running, workers
from tests.support.testbed import get_json, wait_for

pytestmark = [pytest.mark.testbed, pytest.mark.slow]


def quota(pods: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "pods"},
            "spec": {"hard": {"pods": str(pods)}}}  # fmt: skip


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def warnings(kubectl: Any, namespace: str, job: str, reason: str) -> list[dict[str, Any]]:
    events = get_json(kubectl, "events", "-n", namespace, "--field-selector",
                      f"involvedObject.kind=TrainingJob,involvedObject.name={job},"
                      f"reason={reason}")["items"]  # fmt: skip
    return [e for e in events if e["type"] == "Warning"]


def test_a_quota_refusal_shows_and_clears(kubectl: Any, job_namespace: str,
                                          operator: OperatorProcess) -> None:  # fmt: skip
    ns, job = job_namespace, "quota"
    apply(kubectl, ns, quota(2))  # the rendezvous pod and one worker fit
    wait_for(lambda: get_json(kubectl, "resourcequota/pods", "-n", ns).get("status", {})
             .get("hard"), timeout=30, what="the quota's status")  # fmt: skip
    apply(kubectl, ns, job_manifest(job, replicas=2, gpus=1))

    status = wait_for(lambda: (s := status_of(kubectl, ns, job)).get("createFailures", 0) >= 3
                      and s, timeout=60, what="three refused creations")  # fmt: skip
    failure = condition(status, "ReplicaFailure")
    assert (failure.get("status"), failure.get("reason")) == ("True", "FailedCreate"), status
    assert f"{job}-worker-1" in failure["message"] and "exceeded quota: pods" in failure["message"]
    assert status["replicas"] == 1 and status["phase"] in ("Pending", "Scaling"), status
    table = kubectl("get", f"tj/{job}", "-n", ns).stdout.splitlines()
    assert table[1].split()[1] == "1" and status["phase"] in table[1], table
    found = wait_for(lambda: warnings(kubectl, ns, job, "FailedCreate"), timeout=15,
                     what="a FailedCreate Warning")  # fmt: skip
    assert len(found) == 1 and found[0].get("count", 1) == 1, found
    assert "exceeded quota: pods" in found[0]["message"]
    log = operator.log_path.read_text(errors="replace")
    assert f"reconcile of {ns}/{job} failed" not in log, operator.log_tail()
    refused = [line for line in log.splitlines() if f"{ns}/{job}: the apiserver refused" in line]
    assert len(refused) >= 3 and sum("WARNING" in line for line in refused) == 1, refused

    apply(kubectl, ns, quota(10))
    wait_running(kubectl, ns, job, [0, 1], timeout=120)
    cleared = wait_for(lambda: (c := condition(status_of(kubectl, ns, job), "ReplicaFailure"))
                       .get("status") == "False" and c, timeout=30,
                       what="ReplicaFailure cleared")  # fmt: skip
    assert cleared["reason"] == "Created"
    assert "createFailures" not in status_of(kubectl, ns, job)
    assert len(warnings(kubectl, ns, job, "FailedCreate")) == 1


def test_an_unknown_template_field_is_invalid_spec(kubectl: Any, job_namespace: str) -> None:
    ns, job = job_namespace, "typo"
    manifest = job_manifest(job, replicas=1, gpus=1)
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    container["resource"] = container.pop("resources")
    apply(kubectl, ns, manifest)

    status = wait_for(lambda: (s := status_of(kubectl, ns, job)) and
                      condition(s, "Degraded").get("status") == "True" and s, timeout=60,
                      what="Degraded=True")  # fmt: skip
    degraded = condition(status, "Degraded")
    assert degraded["reason"] == "InvalidSpec", degraded
    assert 'unknown field "spec.containers[0].resource"' in degraded["message"], degraded
    found = wait_for(lambda: warnings(kubectl, ns, job, "InvalidSpec"), timeout=15,
                     what="an InvalidSpec Warning")  # fmt: skip
    assert len(found) == 1 and found[0].get("count", 1) == 1, found
    assert workers(kubectl, ns, job) == []
    assert (
        json.loads(kubectl("get", f"tj/{job}", "-n", ns, "-o", "json").stdout)["status"][
            "createFailures"
        ]
        == 1
    )
