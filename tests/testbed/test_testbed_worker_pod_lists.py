"""A job's autoscale pass lists the job's pods only after the watch told of a change, on the
real apiserver of the test-bed: no operator process runs; the test runs the job's real
reconcile and autoscale passes (``reconcile_job``, ``autoscale_job``) and delivers the pod
events kopf would (``trainingjob_child_event``, with the pod's labels).

Every autoscale pass listed its job's pods: one LIST a job and interval, 33.8 of the 37.2
requests a second that 1,000 running arbitrated jobs made. Covers:

- the reconcile pass lists (it creates and deletes by what it finds) and keeps the listing;
  the autoscale passes after it read that listing and make no LIST of their own, and count
  the job's running workers from it;
- a worker deleted, its event delivered: the next autoscale pass lists again and counts one
  worker fewer;
- a worker deleted whose event is lost (a watch reconnecting): the passes count it on for at
  most ``max_age_seconds`` (a fake clock), then list again and see it gone;
- the job deleted: nothing is kept for it, and its pods' late events keep nothing either.

The e2e test of the operator's requests (kopf delivering the events) is
``tests/e2e/test_e2e_loops.py::test_an_autoscale_pass_writes_only_a_change_and_its_writes_wake_no_reconcile_pass``.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from trainscale.operator import api
from trainscale.operator.adapters import k8s
from trainscale.operator.daemons import autoscale as autoscale_daemon
from trainscale.operator.daemons import reconcile as reconcile_daemon
from trainscale.operator.daemons.autoscale import JobLoop, autoscale_job
from trainscale.operator.daemons.common import WorkerPodLists
from trainscale.operator.daemons.reconcile import (
    reconcile_job,
    trainingjob_child_event,
    trainingjob_event,
)
from trainscale.testbed.cluster import GPU_RESOURCE

pytestmark = [pytest.mark.testbed, pytest.mark.slow]

WORKERS = 3
NOWHERE = "http://127.0.0.1:9"  # no Prometheus: the pass holds, "metrics unavailable"


def job_manifest(name: str) -> dict[str, Any]:
    """An autoscaled job of ``WORKERS`` one-GPU workers, not arbitrated (its own size)."""
    container = {"name": "trainer", "image": "registry.example/none:1",
                 "resources": {"limits": {GPU_RESOURCE: 1}}}  # fmt: skip
    spec = {"replicas": WORKERS, "minReplicas": 1, "maxReplicas": WORKERS,
            "autoscaling": {"enabled": True, "settleSeconds": 0,
                            "prometheus": {"url": NOWHERE}},
            "template": {"spec": {"terminationGracePeriodSeconds": 0,
                                  "containers": [container]}}}  # fmt: skip
    return {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": name},
            "spec": spec}  # fmt: skip


class Counted:
    """The passes' ``WorkerPodLists`` on a fake clock, and the jobs whose pods the adapter
    listed (one LIST each)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.clock = [1000.0]
        self.lists = WorkerPodLists(
            max_age_seconds=300.0, clock=lambda: self.clock[0], age_spread=0.0
        )
        self.listed: list[str] = []
        real = k8s.fetch_worker_pods

        def counted(clients_: k8s.KubernetesClients, ns: str, name: str) -> list[dict[str, Any]]:
            self.listed.append(name)
            return real(clients_, ns, name)

        monkeypatch.setattr(k8s, "fetch_worker_pods", counted)
        for daemon in (reconcile_daemon, autoscale_daemon):
            monkeypatch.setattr(daemon, "WORKER_PODS", self.lists)
            monkeypatch.setattr(daemon, "post_event", lambda *_: None)  # kopf's queue: in kopf


@pytest.mark.usefixtures("crd", "clients")
async def test_the_autoscale_pass_lists_the_pods_again_only_after_an_event_or_its_age(
    kubectl: Any, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted = Counted(monkeypatch)
    clock, lists, listed = counted.clock, counted.lists, counted.listed
    name = "lists"
    kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(job_manifest(name)))

    def pods() -> list[dict[str, Any]]:
        out = kubectl("get", "pods", "-n", namespace, "-l",
                      f"{api.LABEL_JOB_NAME}={name},{api.LABEL_COMPONENT}={api.COMPONENT_WORKER}",
                      "-o", "json")  # fmt: skip
        items: list[dict[str, Any]] = json.loads(out.stdout)["items"]
        return items

    def running() -> int:
        return sum(
            1
            for p in pods()
            if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
        )

    # The reconcile passes create the rendezvous, then the workers, as the loop would.
    deadline = time.monotonic() + 60
    while running() < WORKERS:
        assert time.monotonic() < deadline, pods()
        await reconcile_job(namespace, name, arbitration=False)
        await asyncio.sleep(0.5)
    loop = JobLoop()

    async def autoscale_pass() -> int:
        """LISTs of the job's pods the pass made (it counts the running workers in loop)."""
        del listed[:]
        await autoscale_job(namespace, name, loop, NOWHERE)
        return len(listed)

    del listed[:]
    await reconcile_job(namespace, name, arbitration=False)
    assert listed == [name]  # the reconcile pass lists always ...
    assert await autoscale_pass() == 0  # ... and the autoscale pass reads what it found
    assert loop.running == WORKERS
    clock[0] += 60.0
    assert await autoscale_pass() == 0
    assert loop.running == WORKERS

    # A worker deleted; its event (as kopf delivers it) makes the next pass list again.
    victim = pods()[0]
    kubectl("delete", "pod", victim["metadata"]["name"], "-n", namespace, "--wait=true")
    await trainingjob_child_event(labels=victim["metadata"]["labels"], namespace=namespace)
    assert await autoscale_pass() == 1
    assert loop.running == WORKERS - 1
    assert await autoscale_pass() == 0

    # A worker deleted whose event is lost: counted on until the listing is old.
    victim = next(p for p in pods() if p["metadata"]["name"] != victim["metadata"]["name"])
    kubectl("delete", "pod", victim["metadata"]["name"], "-n", namespace, "--wait=true")
    clock[0] += 200.0
    assert await autoscale_pass() == 0
    assert loop.running == WORKERS - 1  # stale, as the watch left it
    clock[0] += 100.0
    assert await autoscale_pass() == 1
    assert loop.running == WORKERS - 2

    # The job deleted: nothing kept for it, and its pods' late events keep nothing.
    assert lists.jobs() == 1
    job = json.loads(kubectl("get", "tj", name, "-n", namespace, "-o", "json").stdout)
    await trainingjob_event(type="DELETED", name=name, namespace=namespace, body=job, memo=None)
    assert lists.jobs() == 0
    await trainingjob_child_event(labels=victim["metadata"]["labels"], namespace=namespace)
    assert lists.jobs() == 0
