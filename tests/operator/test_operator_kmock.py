"""The real operator (kopf's KopfRunner, our handlers) against the kmock API server.

Covers: a TrainingJob creates the rendezvous Service + Pod and N workers carrying the
PET_* settings; a change through the scale subresource reconciles workers up and down
(highest index removed first); a failed worker is replaced and counted; completion makes
the job Succeeded; status (replicas, ready, selector, conditions) and Events are written;
an invalid spec yields a Degraded/InvalidSpec condition and a Warning Event, not a crash loop.

kmock has no kubelet, scheduler or garbage collector: the tests play the kubelet by patching
pod status, and check deletion by the operator's own cleanup on the job's DELETED event is
not relied on (owner references are asserted instead; the real-apiserver tests cover GC).
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import pytest
import yaml
from kopf.testing import KopfRunner

# -- a thin realistic layer over kmock ------------------------------------------------------
# kmock 0.8 stores objects exactly as POSTed. The apiserver does more on every write, and the
# operator and kopf rely on some of it: a name from metadata.generateName (kopf posts Events
# that way; kmock would store them all under the name None and answer 409 from the second
# on), metadata.namespace from the URL, uid (owner references, rendezvous ids),
# resourceVersion, creationTimestamp, and a generation that moves when the spec changes
# (observedGeneration). RealisticEmulator adds just that, and nothing else. kmock also
# answers GET /api/v1/namespaces with a 500; kopf never asks for it with --all-namespaces.

_versions = itertools.count(1)


class RealisticEmulator(kmock.KubernetesEmulator):
    """kmock's emulator plus the metadata the apiserver fills in on create and update."""

    async def _handle(self, request: kmock.Request) -> Any:
        data = request.data
        if request.resource is not None and isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            if request.action == kmock.action.CREATE:
                if not meta.get("name") and meta.get("generateName"):
                    meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
                if request.namespace and not meta.get("namespace"):
                    meta["namespace"] = request.namespace
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", "2026-11-21T00:00:00Z")
                meta.setdefault("generation", 1)
            elif request.action == kmock.action.UPDATE and "spec" in data and request.name:
                key = (request.resource, request.namespace, request.name)
                current = self._objects[key].raw if key in self._objects else {}
                meta["generation"] = int(current.get("metadata", {}).get("generation", 1)) + 1
            if request.action in (kmock.action.CREATE, kmock.action.UPDATE):
                meta["resourceVersion"] = str(next(_versions))
        return await super()._handle(request)


pytestmark = [pytest.mark.slow, pytest.mark.kmock(cls=RealisticEmulator)]

RESOURCES: dict[str, kmock.ResourceInfo] = {
    "trainscale.dev/v1alpha1/trainingjobs": kmock.ResourceInfo(
        kind="TrainingJob",
        singular="trainingjob",
        namespaced=True,
        shortnames={"tj"},
        verbs={"get", "list", "watch", "create", "patch", "update", "delete"},
        subresources={"status", "scale"},
    ),
    # kopf waits for the CRD resource to be discoverable before it watches anything.
    "apiextensions.k8s.io/v1/customresourcedefinitions": kmock.ResourceInfo(
        kind="CustomResourceDefinition",
        singular="customresourcedefinition",
        namespaced=False,
        verbs={"get", "list", "watch"},
    ),
    # ... and for namespaces to be discoverable. With --all-namespaces it never lists them,
    # which matters: kmock 0.8 answers GET /api/v1/namespaces with a 500.
    "v1/namespaces": kmock.ResourceInfo(
        kind="Namespace",
        singular="namespace",
        namespaced=False,
        verbs={"get", "list", "watch"},
    ),
    "v1/pods": kmock.ResourceInfo(
        kind="Pod",
        singular="pod",
        namespaced=True,
        verbs={"get", "list", "watch", "create", "patch", "update", "delete"},
    ),
    "v1/services": kmock.ResourceInfo(
        kind="Service",
        singular="service",
        namespaced=True,
        verbs={"get", "list", "watch", "create", "patch", "update", "delete"},
    ),
    "v1/events": kmock.ResourceInfo(
        kind="Event",
        singular="event",
        namespaced=True,
        verbs={"create", "list", "get"},
    ),
    "events.k8s.io/v1/events": kmock.ResourceInfo(
        kind="Event",
        singular="event",
        namespaced=True,
        verbs={"create", "list", "get"},
    ),
}


def install_resources(server: kmock.KubernetesEmulator) -> None:
    """Make the resources discoverable, as a cluster with our CRD installed would."""
    for key, info in RESOURCES.items():
        server.resources[key] = info


def write_kubeconfig(server: kmock.KubernetesEmulator, directory: Path) -> Path:
    """A kubeconfig whose only cluster is the kmock server (plain HTTP on 127.0.0.1)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kmock", "cluster": {"server": str(server.url).rstrip("/")}}],
        "users": [{"name": "kmock", "user": {"token": "kmock-token"}}],
        "contexts": [
            {
                "name": "kmock",
                "context": {"cluster": "kmock", "user": "kmock", "namespace": "default"},
            }
        ],
        "current-context": "kmock",
    }
    path = directory / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


def objects(
    server: kmock.KubernetesEmulator, resource: str, namespace: str = "default"
) -> Iterator[dict[str, Any]]:
    """Live objects of one resource ('v1/pods', 'trainscale.dev/v1alpha1/trainingjobs', ...)."""
    for (res, ns, _name), obj in list(server.objects.items()):
        if _resource_key(res) == resource and ns == namespace and not obj.deleted:
            yield dict(obj.raw)


def _resource_key(res: Any) -> str:
    group = getattr(res, "group", "") or ""
    version = getattr(res, "version", "")
    plural = getattr(res, "plural", "")
    return f"{group}/{version}/{plural}" if group else f"{version}/{plural}"


async def api_call(
    server: kmock.KubernetesEmulator,
    method: str,
    path: str,
    body: dict[str, Any],
    content_type: str = "application/merge-patch+json",
) -> dict[str, Any]:
    """The test's own API calls, as a client would make them (plain HTTP to kmock)."""
    url = str(server.url).rstrip("/") + path
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, json=body, headers={"Content-Type": content_type}) as response,
    ):
        assert response.status < 400, await response.text()
        result: dict[str, Any] = await response.json()
        return result


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


@pytest.fixture
async def cluster(
    kmock: kmock.KubernetesEmulator, tmp_path: Path
) -> AsyncIterator[kmock.KubernetesEmulator]:
    """kmock with our resources, and $KUBECONFIG pointing the operator at it."""
    install_resources(kmock)
    kubeconfig = write_kubeconfig(kmock, tmp_path)
    old = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(kubeconfig)
    try:
        yield kmock
    finally:
        if old is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = old


def _runner() -> KopfRunner:
    return KopfRunner(
        [
            "run",
            "--standalone",
            "--all-namespaces",
            "--verbose",
            "-m",
            "trainscale.operator.handlers",
        ],
        timeout=30,
    )


async def eventually(check: Callable[[], Any], within: float = 20.0, what: str = "") -> Any:
    """Poll ``check`` (letting kmock serve meanwhile) until it returns something truthy."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what or check}; last={last!r}")


def pods(server: kmock.KubernetesEmulator) -> dict[str, dict[str, Any]]:
    return {p["metadata"]["name"]: p for p in objects(server, "v1/pods")}


def workers(server: kmock.KubernetesEmulator) -> list[str]:
    return sorted(n for n in pods(server) if "-worker-" in n)


def job(server: kmock.KubernetesEmulator) -> dict[str, Any]:
    (found,) = [j for j in objects(server, f"{GROUP}/{VERSION}/{PLURAL}")]
    return found


def events(server: kmock.KubernetesEmulator) -> list[tuple[str, str, str]]:
    found = list(objects(server, "v1/events")) + list(objects(server, "events.k8s.io/v1/events"))
    return [
        (e.get("type", ""), e.get("reason", ""), e.get("message", e.get("note", ""))) for e in found
    ]


async def create_job(server: kmock.KubernetesEmulator, body: dict[str, Any]) -> None:
    path = f"/apis/{GROUP}/{VERSION}/namespaces/default/{PLURAL}"
    await api_call(server, "POST", path, body, content_type="application/json")


async def scale_job(server: kmock.KubernetesEmulator, name: str, replicas: int) -> None:
    """What `kubectl scale tj/NAME --replicas=N` sends: a patch of the scale subresource."""
    path = f"/apis/{GROUP}/{VERSION}/namespaces/default/{PLURAL}/{name}/scale"
    await api_call(server, "PATCH", path, {"spec": {"replicas": replicas}})


async def set_pod_state(
    server: kmock.KubernetesEmulator,
    name: str,
    phase: str,
    ready: bool = False,
    exit_code: int | None = None,
) -> None:
    """Play the kubelet: report a pod's phase (and readiness / exit code)."""
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    if exit_code is not None:
        status["containerStatuses"] = [
            {"name": "trainer", "state": {"terminated": {"exitCode": exit_code, "reason": "Error"}}}
        ]
    await api_call(
        server, "PATCH", f"/api/v1/namespaces/default/pods/{name}/status", {"status": status}
    )


async def test_job_lifecycle_create_scale_fail_succeed(
    kmock: kmock.KubernetesEmulator, cluster: Any
) -> None:
    with _runner() as runner:
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


async def test_invalid_spec_sets_a_condition_and_an_event(
    kmock: kmock.KubernetesEmulator, cluster: Any
) -> None:
    body = copy.deepcopy(JOB)
    body["metadata"]["name"] = "broken"
    body["spec"]["autoscaling"] = {"minEfficiency": 1.5}
    with _runner() as runner:
        await create_job(cluster, body)
        status = await eventually(
            lambda: (job(kmock).get("status") or {}).get("conditions") and job(kmock)["status"],
            what="a condition",
        )
        (degraded,) = [c for c in status["conditions"] if c["type"] == "Degraded"]
        assert degraded["status"] == "True" and degraded["reason"] == "InvalidSpec"
        assert (
            "spec.autoscaling.minEfficiency" in degraded["message"] and "1.5" in degraded["message"]
        )
        await eventually(
            lambda: any(r == "InvalidSpec" and "minEfficiency" in m for _, r, m in events(kmock)),
            what="event",
        )
        await asyncio.sleep(1.0)
        assert workers(kmock) == [], "nothing is built from an invalid spec"
        # Not a crash loop: one event for one bad generation, however many passes ran.
        assert sum(r == "InvalidSpec" for _, r, _ in events(kmock)) == 1
    assert runner.exception is None
    assert "reconcile of default/broken failed" not in runner.output, runner.output
