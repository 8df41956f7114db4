"""The Kubernetes API adapter: every read and write the operator makes goes through here.

Why this module exists: the handlers must stay "observe, decide, apply", and the decision
code must never see a client. This adapter turns the official ``kubernetes`` client into a
handful of plain-dict functions (``fetch_*``, ``apply_*``, ``patch_*``) that are idempotent:
creating what already exists and deleting what is already gone are not errors, because a
level-triggered operator may repeat any step after a crash.

The client is synchronous; the async handlers call these functions through
``asyncio.to_thread`` so a slow apiserver never blocks the event loop.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from trainscale.operator import api
from trainscale.operator.builders import (
    LABEL_COMPONENT,
    LABEL_JOB_NAME,
    build_selector_string,
    build_worker_selector,
)

log = logging.getLogger(__name__)


class KubernetesClients:
    """The API objects the operator uses, built once from a loaded configuration."""

    def __init__(self, api_client: kubernetes.client.ApiClient | None = None) -> None:
        self.api_client = api_client or kubernetes.client.ApiClient()
        self.core = kubernetes.client.CoreV1Api(self.api_client)
        self.custom = kubernetes.client.CustomObjectsApi(self.api_client)


_clients: KubernetesClients | None = None


def load_clients() -> KubernetesClients:
    """Load in-cluster config or the kubeconfig (KUBECONFIG) once, and return the clients."""
    global _clients  # noqa: PLW0603 - one process-wide client pool, built lazily
    if _clients is None:
        try:
            kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
        _clients = KubernetesClients()
    return _clients


def _json(response: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(response.data)
    return data


def fetch_job(clients: KubernetesClients, namespace: str, name: str) -> dict[str, Any] | None:
    """The TrainingJob as a dict, or None when it no longer exists."""
    try:
        return _json(
            clients.custom.get_namespaced_custom_object(
                api.GROUP, api.VERSION, namespace, api.PLURAL, name, _preload_content=False
            )
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _matches(obj: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    have = (obj.get("metadata") or {}).get("labels") or {}
    return all(have.get(k) == v for k, v in labels.items())


def fetch_worker_pods(
    clients: KubernetesClients, namespace: str, job_name: str
) -> list[dict[str, Any]]:
    """The job's worker pods (any phase, terminating ones included)."""
    selector = build_worker_selector(job_name)
    pods = _json(
        clients.core.list_namespaced_pod(
            namespace, label_selector=build_selector_string(selector), _preload_content=False
        )
    )
    # Filter again client-side: the selector is the contract, not an optimisation.
    return [p for p in pods.get("items") or [] if _matches(p, selector)]


def fetch_object_exists(clients: KubernetesClients, kind: str, namespace: str, name: str) -> bool:
    """Whether the Pod or Service ``name`` exists (terminating counts as existing)."""
    reader = (
        clients.core.read_namespaced_pod if kind == "Pod" else clients.core.read_namespaced_service
    )
    try:
        reader(name, namespace, _preload_content=False)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def apply_create(clients: KubernetesClients, obj: Mapping[str, Any]) -> bool:
    """Create a Pod or Service; False (no error) when it already exists."""
    namespace = obj["metadata"]["namespace"]
    creator: Any = (
        clients.core.create_namespaced_pod
        if obj["kind"] == "Pod"
        else clients.core.create_namespaced_service
    )
    try:
        creator(namespace, obj, _preload_content=False)
    except ApiException as exc:
        if exc.status == 409:
            return False
        raise
    return True


def apply_delete_pod(clients: KubernetesClients, namespace: str, name: str) -> bool:
    """Delete a pod gracefully (its own grace period); False when it is already gone."""
    try:
        clients.core.delete_namespaced_pod(name, namespace, _preload_content=False)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def patch_job_status(
    clients: KubernetesClients, namespace: str, name: str, status: Mapping[str, Any]
) -> None:
    """Merge-patch the job's status subresource."""
    clients.custom.patch_namespaced_custom_object_status(
        api.GROUP,
        api.VERSION,
        namespace,
        api.PLURAL,
        name,
        {"status": dict(status)},
        _preload_content=False,
    )


def patch_job_replicas(
    clients: KubernetesClients, namespace: str, name: str, replicas: int
) -> None:
    """Set ``spec.replicas`` (the autoscaler's one write to the spec)."""
    clients.custom.patch_namespaced_custom_object(
        api.GROUP,
        api.VERSION,
        namespace,
        api.PLURAL,
        name,
        {"spec": {"replicas": replicas}},
        _preload_content=False,
    )


def job_name_of_pod(labels: Mapping[str, str] | None) -> str | None:
    """The job a pod belongs to, from its labels (None when it is not a trainscale pod)."""
    if not labels:
        return None
    return labels.get(LABEL_JOB_NAME) if LABEL_COMPONENT in labels else None
