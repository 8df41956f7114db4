"""A privileged template in a namespace that enforces the ``restricted`` Pod Security Standard,
on the real control plane (the apiserver's PodSecurity admission plugin is on by default).

Covers: the apiserver refuses the worker pods; the job shows condition ReplicaFailure=True
(FailedCreate) whose message carries the Pod Security violation, exactly one FailedCreate
Warning event after several refusals, the refusals spaced by the create backoff (2 s, 4 s,
8 s, ...: no hot retry loop), no worker pod, and no reconcile traceback in the operator log.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.conftest import OperatorProcess
from tests.e2e.test_e2e_create_failures import condition, warnings
from tests.e2e.test_e2e_trainingjob import apply, job_manifest, status_of, workers
from tests.support.testbed import get_json, wait_for
from trainscale.operator.api.reporting import parse_time
from trainscale.operator.controller.reconcile import compute_create_backoff_seconds

pytestmark = [pytest.mark.testbed, pytest.mark.slow]

REFUSALS = 4
VIOLATION = 'violates PodSecurity "restricted:latest"'


def privileged_job(name: str) -> dict[str, Any]:
    """A job whose pod-level context satisfies ``restricted`` (so its rendezvous pod, which
    takes that context, is admitted) but whose trainer container is privileged."""
    manifest = job_manifest(name, replicas=1, gpus=1)
    pod = manifest["spec"]["template"]["spec"]
    pod["securityContext"] = {"runAsNonRoot": True, "runAsUser": 1000,
                              "seccompProfile": {"type": "RuntimeDefault"}}  # fmt: skip
    pod["containers"][0]["securityContext"] = {"privileged": True}
    return manifest


def test_a_privileged_template_in_a_restricted_namespace_is_a_condition(
    kubectl: Any, job_namespace: str, operator: OperatorProcess
) -> None:
    ns, job = job_namespace, "privileged"
    kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted")
    apply(kubectl, ns, privileged_job(job))

    status = wait_for(lambda: (s := status_of(kubectl, ns, job)).get("createFailures", 0)
                      >= REFUSALS and s, timeout=90,
                      what=f"{REFUSALS} refused creations")  # fmt: skip
    failure = condition(status, "ReplicaFailure")
    assert (failure.get("status"), failure.get("reason")) == ("True", "FailedCreate"), status
    assert f"{job}-worker-0" in failure["message"], failure
    assert VIOLATION in failure["message"] and "privileged" in failure["message"], failure
    assert workers(kubectl, ns, job) == []

    # Backoff, not a loop: the n-th refusal comes at least 2 + 4 + ... s after the job was made.
    created = parse_time(get_json(kubectl, f"tj/{job}", "-n", ns)["metadata"]["creationTimestamp"])
    last = parse_time(status["lastCreateFailureTime"])
    assert created is not None and last is not None
    least = sum(compute_create_backoff_seconds(n) for n in range(1, status["createFailures"]))
    assert (last - created).total_seconds() >= least - 1, (created, last, status)  # 1 s: rounding

    found = wait_for(lambda: warnings(kubectl, ns, job, "FailedCreate"), timeout=15,
                     what="a FailedCreate Warning")  # fmt: skip
    assert len(found) == 1 and found[0].get("count", 1) == 1, found
    assert VIOLATION in found[0]["message"], found
    log = operator.log_path.read_text(errors="replace")
    assert f"reconcile of {ns}/{job} failed" not in log, operator.log_tail()
    assert "Traceback" not in "\n".join(line for line in log.splitlines() if job in line)
