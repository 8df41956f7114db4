"""``spec.suspend`` with the real operator (kopf's KopfRunner, our handlers) on kmock.

Covers: suspending a running job deletes its workers and then its rendezvous pod, keeps the
job and its Service, and reports phase Suspended with a condition and events; nothing is
recreated while suspended; un-suspending recreates spec.replicas workers and the rendezvous
pod and the job runs again (``Suspended=False/JobResumed``, a ``Resumed`` event). The
autoscale pass of a suspended job decides and writes nothing and keeps its autoscaler; once
resumed it decides again.

kmock has no kubelet: deleted pods disappear at once (the graceful SIGTERM and checkpoint are
the real test-bed's and the trainer's tests).
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import kmock
import pytest

from tests.operator.test_operator_kmock import JOB as BASE_JOB
from tests.support.kmock import (
    GROUP,
    PLURAL,
    VERSION,
    RealisticEmulator,
    api_call,
    create_job,
    events,
    eventually,
    job,
    objects,
    pods,
    run_operator,
    set_pod_state,
    workers,
)
from trainscale.operator import api
from trainscale.operator.autoscaling import JobAutoscaler
from trainscale.operator.daemons.autoscale import JobLoop, autoscale_job

pytestmark = [pytest.mark.slow, pytest.mark.kmock(cls=RealisticEmulator)]

JOB: dict[str, Any] = copy.deepcopy(BASE_JOB)
JOB["metadata"]["name"] = "paused"


async def set_suspend(server: kmock.KubernetesEmulator, name: str, suspend: bool) -> None:
    """What `kubectl patch tj NAME --type merge -p '{"spec":{"suspend":true}}'` sends."""
    path = f"/apis/{GROUP}/{VERSION}/namespaces/default/{PLURAL}/{name}"
    await api_call(server, "PATCH", path, {"spec": {"suspend": suspend}})


def status(server: kmock.KubernetesEmulator) -> dict[str, Any]:
    return dict(job(server).get("status") or {})


def condition(server: kmock.KubernetesEmulator, type_: str) -> tuple[str, str] | None:
    found = [c for c in status(server).get("conditions") or [] if c["type"] == type_]
    return (found[0]["status"], found[0]["reason"]) if found else None


async def run_all_workers(server: kmock.KubernetesEmulator) -> None:
    for name in workers(server):
        await set_pod_state(server, name, "Running", ready=True)


async def test_suspend_stops_the_job_and_resume_brings_it_back(
    kmock: kmock.KubernetesEmulator, cluster: Any
) -> None:
    async with run_operator() as runner:
        await create_job(cluster, copy.deepcopy(JOB))
        await eventually(lambda: len(workers(kmock)) == 2, what="2 workers")
        await run_all_workers(cluster)
        await eventually(lambda: status(kmock).get("phase") == "Running", what="Running")

        # -- suspend: the workers go, then the rendezvous pod; the job and Service stay --
        await set_suspend(cluster, "paused", True)
        await eventually(lambda: workers(kmock) == [], what="no workers")
        await eventually(lambda: "paused-rdzv" not in pods(kmock), what="rendezvous pod gone")
        await eventually(lambda: status(kmock).get("phase") == "Suspended", what="Suspended")
        assert condition(kmock, "Suspended") == ("True", "JobSuspended")
        assert condition(kmock, "Ready") == ("False", "Suspended")
        assert status(kmock)["replicas"] == 0
        assert "paused-rdzv" in {s["metadata"]["name"] for s in objects(kmock, "v1/services")}
        reasons = [reason for _, reason, _ in events(kmock)]
        assert "Suspending" in reasons and "PhaseSuspended" in reasons
        await asyncio.sleep(1.5)
        assert pods(kmock) == {}, "nothing is recreated while suspended"

        # -- resume: spec.replicas workers and the rendezvous pod come back --
        await set_suspend(cluster, "paused", False)
        await eventually(lambda: len(workers(kmock)) == 2, what="2 workers again")
        assert "paused-rdzv" in pods(kmock)
        await run_all_workers(cluster)
        await eventually(lambda: status(kmock).get("phase") == "Running", what="Running again")
        assert condition(kmock, "Suspended") == ("False", "JobResumed")
        assert "Resumed" in [reason for _, reason, _ in events(kmock)]
    assert runner.exception is None, runner.output


async def test_the_autoscaler_pauses_while_suspended_and_keeps_its_memory(
    kmock: kmock.KubernetesEmulator, cluster: Any
) -> None:
    """One autoscale pass, as the daemon runs it, without kopf (a suspended pass posts nothing)."""
    body = copy.deepcopy(JOB)
    body["spec"].update(suspend=True, autoscaling={"enabled": True, "intervalSeconds": 7})
    await create_job(cluster, body)
    kept = JobAutoscaler(api.TrainingJobSpec.model_validate(body["spec"]))
    loop = JobLoop(autoscaler=kept)
    nowhere = "http://127.0.0.1:9"  # never asked: a suspended job is not observed
    delay = await autoscale_job("default", "paused", loop, nowhere)
    assert delay == 7
    assert loop.autoscaler is kept, "the autoscaler and its memory are kept"
    assert "autoscaling" not in status(kmock), "no decision is written while suspended"
    assert job(kmock)["spec"]["replicas"] == 2

    # Resumed (nothing running yet): the same pass decides and writes again.
    await set_suspend(cluster, "paused", False)
    loop = JobLoop()
    await autoscale_job("default", "paused", loop, nowhere)
    assert "autoscaling" in status(kmock)
