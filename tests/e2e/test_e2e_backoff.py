"""A failed worker on the real control plane: the backoff clock survives the apiserver and the
replacement waits for it.

A real apiserver prunes every status field the CRD's structural schema does not declare
(kmock keeps them), so this is where an undeclared ``status.lastFailureTime`` shows: the
operator forgets when the worker failed and recreates it at once.

Covers:
- a worker pod that fails (its status set to Failed through the API, as the kubelet or kwok
  would) is deleted and counted in ``status.restarts``, and ``status.lastFailureTime`` is there
  when the job is read back, and still there after later reconcile passes;
- the replacement pod of that index is created only after the backoff from that time
  (its ``creationTimestamp`` >= ``lastFailureTime`` + the backoff for one restart).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from tests.e2e.test_e2e_trainingjob import apply, job_manifest, status_of, wait_running, workers
from tests.support.testbed import get_json, wait_for
from trainscale.operator.api.reporting import parse_time
from trainscale.operator.controller.reconcile import compute_backoff_seconds

pytestmark = [pytest.mark.testbed, pytest.mark.slow]


def test_failed_worker_is_recreated_only_after_its_backoff(kubectl: Any,
                                                           job_namespace: str) -> None:  # fmt: skip
    ns, job = job_namespace, "flaky"
    apply(kubectl, ns, job_manifest(job, replicas=2, gpus=1))
    wait_running(kubectl, ns, job, [0, 1])
    victim = f"{job}-worker-1"
    old_uid = get_json(kubectl, f"pod/{victim}", "-n", ns)["metadata"]["uid"]

    failure = {"status": {"phase": "Failed", "reason": "Evicted",
                          "message": "The node was low on resource: memory."}}  # fmt: skip
    kubectl("patch", f"pod/{victim}", "-n", ns, "--subresource=status", "--type=merge",
            "-p", json.dumps(failure))  # fmt: skip

    status = wait_for(lambda: (s := status_of(kubectl, ns, job)).get("restarts") == 1 and s,
                      timeout=60, what="the failure counted in status.restarts")  # fmt: skip
    assert "lastFailureTime" in status, f"the apiserver pruned status.lastFailureTime: {status}"
    failed_at = parse_time(status["lastFailureTime"])
    assert failed_at is not None

    def replacement() -> dict[str, Any] | None:
        return next((p for p in workers(kubectl, ns, job)
                     if p["metadata"]["name"] == victim and p["metadata"]["uid"] != old_uid),
                    None)  # fmt: skip

    new = wait_for(replacement, timeout=60, what=f"a new {victim}")
    created = parse_time(new["metadata"]["creationTimestamp"])
    assert created is not None
    backoff = dt.timedelta(seconds=compute_backoff_seconds(1))
    assert created >= failed_at + backoff, (
        f"{victim} recreated at {created}, before the backoff of {backoff} from {failed_at}"
    )

    wait_running(kubectl, ns, job, [0, 1])
    later = status_of(kubectl, ns, job)
    assert (later["restarts"], later.get("lastFailureTime")) == (1, status["lastFailureTime"])
