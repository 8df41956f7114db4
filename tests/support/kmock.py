"""kmock for the operator tests: a thin realistic layer, helpers and fixtures.

Imported by the operator test modules (``from tests.support.kmock import ...``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.web
import kmock
import pytest
import yaml
from kopf.testing import KopfRunner

GROUP, VERSION, PLURAL = "trainscale.dev", "v1alpha1", "trainingjobs"


# -- a thin realistic layer over kmock ------------------------------------------------------
# kmock 0.8 stores objects exactly as POSTed. The apiserver does more on every write, and the
# operator and kopf rely on some of it: a name from metadata.generateName (kopf posts Events
# that way; kmock would store them all under the name None and answer 409 from the second
# on), metadata.namespace from the URL, uid (owner references, rendezvous ids),
# resourceVersion, creationTimestamp, and a generation that moves when the spec changes
# (observedGeneration). RealisticEmulator adds just that, and one more thing the operator
# relies on: a create with ``dryRun=All`` (the operator's read of the pod admission makes of
# a template) is answered with the object and not stored, where kmock stored it, a stray
# "worker" the operator then reconciled. kmock also answers GET /api/v1/namespaces with a
# 500; kopf never asks for it with --all-namespaces.

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
                if request.params.get("dryRun") == "All":
                    return aiohttp.web.json_response(data, status=201)  # not stored
            elif request.action == kmock.action.UPDATE and "spec" in data and request.name:
                key = (request.resource, request.namespace, request.name)
                current = self._objects[key].raw if key in self._objects else {}
                meta["generation"] = int(current.get("metadata", {}).get("generation", 1)) + 1
            if request.action in (kmock.action.CREATE, kmock.action.UPDATE):
                meta["resourceVersion"] = str(next(_versions))
        return await super()._handle(request)


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
            "trainscale.operator.daemons.handlers",
        ],
        timeout=30,
    )


@contextlib.asynccontextmanager
async def run_operator() -> AsyncIterator[KopfRunner]:
    """The operator in a thread (``KopfRunner``), stopped without blocking this event loop.

    kmock serves from the test's own event loop. ``KopfRunner.__exit__`` joins the operator's
    thread, so called on that loop it starves kmock: a daemon's API call in flight at shutdown
    then never returns, and the join waits out the runner's whole timeout ("The operator
    didn't stop", seen once in CI's rehearsal). The join runs in a worker thread instead.
    """
    runner = _runner()
    runner.__enter__()
    try:
        yield runner
    except BaseException as err:
        await asyncio.to_thread(runner.__exit__, type(err), err, err.__traceback__)
        raise
    await asyncio.to_thread(runner.__exit__, None, None, None)


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
