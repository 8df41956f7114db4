"""The real operator (kopf's KopfRunner, our handlers) against the kmock API server.

Covers: a TrainingJob creates the rendezvous Service + Pod and N workers carrying the
PET_* settings; a change through the scale subresource reconciles workers up and down
(highest index removed first); a failed worker is replaced and counted; completion makes
the job Succeeded; status (replicas, ready, selector, conditions) and Events are written;
an invalid spec yields a Degraded/InvalidSpec condition and a Warning Event, not a crash loop;
deleting a job stops its loops and lifts kopf's finalizer, and nothing is recreated.

kmock has no kubelet, scheduler or garbage collector: the tests play the kubelet by patching
pod status, and assert owner references where a cluster would garbage-collect (the
real-apiserver tests in tests/e2e check the collection itself).
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import kmock
import pytest

from tests.support.kmock import (
    RealisticEmulator,
    api_call,
    create_job,
    events,
    eventually,
    job,
    objects,
    pods,
    run_operator,
    scale_job,
    set_pod_state,
    workers,
)

pytestmark = [pytest.mark.slow, pytest.mark.kmock(cls=RealisticEmulator)]

JOB: dict[str, Any] = {
    "apiVersion": "trainscale.dev/v1alpha1",
    "kind": "TrainingJob",
    "metadata": {"name": "mnist", "namespace": "default"},
    "spec": {
        "replicas": 2,
        "minReplicas": 1,
        "maxReplicas": 4,
        "maxRestarts": 2,
        "template": {
            "spec": {
                "containers": [
                    {
                        "name": "trainer",
                        "image": "ghcr.io/example/train:1",
                        "command": ["torchrun", "train.py"],
                        "resources": {"limits": {"nvidia.com/gpu": 1}},
                    }
                ]
            }
        },
    },
}
GROUP, VERSION, PLURAL = "trainscale.dev", "v1alpha1", "trainingjobs"


async def test_the_emulator_answers_a_dry_run_create_without_storing_it(
    kmock: kmock.KubernetesEmulator,
) -> None:
    """As the apiserver does (the operator dry-runs a worker to read the pod admission makes
    of its template): the object comes back named from its generateName, and no pod is
    stored. kmock alone stored it, a stray pod labelled as the job's worker 0."""
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"generateName": "mnist-worker-0-dry-run-",
                        "labels": {"trainscale.dev/job-name": "mnist"}},
           "spec": {"containers": [{"name": "trainer", "image": "x:1"}]}}  # fmt: skip
    answered = await api_call(kmock, "POST", "/api/v1/namespaces/default/pods?dryRun=All", pod,
                              content_type="application/json")  # fmt: skip
    assert answered["metadata"]["name"].startswith("mnist-worker-0-dry-run-")
    assert pods(kmock) == {}


async def test_job_lifecycle_create_scale_fail_succeed(
    kmock: kmock.KubernetesEmulator, cluster: Any
) -> None:
    async with run_operator() as runner:
        await create_job(cluster, JOB)

        # -- creation: rendezvous service + pod, then two workers with torchrun settings --
        await eventually(
            lambda: workers(kmock) == ["mnist-worker-0", "mnist-worker-1"], what="2 workers"
        )
        assert "mnist-rdzv" in pods(kmock)
        services = {s["metadata"]["name"]: s for s in objects(kmock, "v1/services")}
        assert services["mnist-rdzv"]["spec"]["ports"][0]["port"] == 29400
        worker = pods(kmock)["mnist-worker-1"]
        env = {e["name"]: e.get("value") for e in worker["spec"]["containers"][0]["env"]}
        uid = job(kmock)["metadata"]["uid"]
        assert env["PET_NNODES"] == "1:4"
        assert env["PET_RDZV_ENDPOINT"] == "mnist-rdzv:29400"
        assert env["PET_RDZV_ID"] == f"default-mnist-{uid}"
        assert worker["metadata"]["ownerReferences"][0]["uid"] == uid
        assert worker["metadata"]["labels"]["trainscale.dev/replica-index"] == "1"

        # -- the kubelet reports them running: status follows --
        for name in workers(kmock):
            await set_pod_state(cluster, name, "Running", ready=True)
        status = await eventually(
            lambda: (s := job(kmock).get("status") or {}).get("phase") == "Running" and s,
            what="phase Running",
        )
        assert status["replicas"] == 2 and status["readyReplicas"] == 2
        assert (
            status["selector"] == "app.kubernetes.io/component=worker,trainscale.dev/job-name=mnist"
        )
        assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"

        # -- scale up through the scale subresource --
        await scale_job(cluster, "mnist", 4)
        await eventually(lambda: len(workers(kmock)) == 4, what="4 workers")
        for name in workers(kmock):
            await set_pod_state(cluster, name, "Running", ready=True)

        # -- scale down: highest indices go --
        await scale_job(cluster, "mnist", 1)
        await eventually(lambda: workers(kmock) == ["mnist-worker-0"], what="only worker 0 left")
        await eventually(
            lambda: (job(kmock).get("status") or {}).get("replicas") == 1, what="status.replicas 1"
        )

        # -- a worker fails: it is counted, deleted and (after backoff) replaced --
        await set_pod_state(cluster, "mnist-worker-0", "Failed", exit_code=1)
        await eventually(
            lambda: (job(kmock).get("status") or {}).get("restarts") == 1, what="restarts 1"
        )
        await eventually(
            lambda: (
                (p := pods(kmock).get("mnist-worker-0"))
                and (p.get("status") or {}).get("phase") != "Failed"
            ),
            within=20,
            what="worker 0 replaced",
        )

        # -- completion: Succeeded, and nothing recreated afterwards --
        await set_pod_state(cluster, "mnist-worker-0", "Succeeded")
        await eventually(
            lambda: (job(kmock).get("status") or {}).get("phase") == "Succeeded", what="Succeeded"
        )
        await asyncio.sleep(1.0)
        assert workers(kmock) == ["mnist-worker-0"]
        assert "mnist-rdzv" not in pods(kmock), "a finished job frees its rendezvous pod"

        reasons = {reason for _, reason, _ in events(kmock)}
        assert {
            "CreatedRendezvous",
            "CreatedWorker",
            "DeletedWorker",
            "WorkerFailed",
            "JobSucceeded",
        } <= reasons

    assert runner.exception is None, runner.output


@pytest.mark.parametrize(
    ("patch", "field", "detail"),
    [
        pytest.param({"autoscaling": {"minEfficiency": 1.5}}, "spec.autoscaling.minEfficiency",
                     "1.5", id="min-efficiency"),
        # Only reachable past an older CRD without the allowedReplicas CEL rules.
        pytest.param({"allowedReplicas": {"multipleOf": 4}, "replicas": 6, "minReplicas": 4,
                      "maxReplicas": 8},
                     "replicas (6) is not one of the counts allowedReplicas allows",
                     "(multipleOf 4)", id="replicas-not-allowed"),
    ],
)  # fmt: skip
async def test_invalid_spec_sets_a_condition_and_an_event(
    kmock: kmock.KubernetesEmulator, cluster: Any, patch: dict[str, Any], field: str, detail: str
) -> None:
    body = copy.deepcopy(JOB)
    body["metadata"]["name"] = "broken"
    body["spec"].update(patch)
    async with run_operator() as runner:
        await create_job(cluster, body)
        status = await eventually(
            lambda: (job(kmock).get("status") or {}).get("conditions") and job(kmock)["status"],
            what="a condition",
        )
        (degraded,) = [c for c in status["conditions"] if c["type"] == "Degraded"]
        assert degraded["status"] == "True" and degraded["reason"] == "InvalidSpec"
        assert field in degraded["message"] and detail in degraded["message"]
        await eventually(
            lambda: any(r == "InvalidSpec" and field in m for _, r, m in events(kmock)),
            what="event",
        )
        await asyncio.sleep(1.0)
        assert workers(kmock) == [], "nothing is built from an invalid spec"
        # Not a crash loop: one event for one bad generation, however many passes ran.
        assert sum(r == "InvalidSpec" for _, r, _ in events(kmock)) == 1
    assert runner.exception is None
    assert "reconcile of default/broken failed" not in runner.output, runner.output


async def test_deleting_a_job_stops_its_loops_and_lifts_the_finalizer(
    kmock: kmock.KubernetesEmulator, cluster: Any
) -> None:
    body = copy.deepcopy(JOB)
    body["metadata"]["name"] = "gone"
    async with run_operator() as runner:
        await create_job(cluster, body)
        await eventually(lambda: len(workers(kmock)) == 2, what="2 workers")
        finalizers = job(kmock)["metadata"].get("finalizers") or []
        assert "trainscale.dev/finalizer" in finalizers, "kopf guards the job's loops"
        uid = job(kmock)["metadata"]["uid"]
        assert all(p["metadata"]["ownerReferences"][0]["uid"] == uid for p in pods(kmock).values())

        path = "/apis/trainscale.dev/v1alpha1/namespaces/default/trainingjobs/gone"
        await api_call(cluster, "DELETE", path, {}, content_type="application/json")

        # kopf lifts the finalizer once both loops have stopped: at once when they see the
        # stop flag, at worst after cancellation_backoff + cancellation_timeout (7 s) and a
        # few processing cycles, each slower on a loaded machine.
        def jobs_left() -> list[Any]:
            return [o["metadata"] for o in objects(kmock, "trainscale.dev/v1alpha1/trainingjobs")]

        try:
            await eventually(lambda: not jobs_left(), within=60.0, what="the job gone")
        except AssertionError as err:
            raise AssertionError(
                f"finalizer not lifted; the job's metadata: {jobs_left()}"
            ) from err
        # Its children go by owner-reference GC (kmock has none; the real-apiserver tests
        # check it); what matters here is that no loop of the deleted job recreates anything.
        for name in workers(kmock):
            await api_call(
                cluster,
                "DELETE",
                f"/api/v1/namespaces/default/pods/{name}",
                {},
                content_type="application/json",
            )
        await asyncio.sleep(2.0)
        assert workers(kmock) == []
    assert runner.exception is None
