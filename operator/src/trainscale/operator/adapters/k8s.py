"""The Kubernetes API adapter: every read and write the operator makes goes through here.

Why this module exists: the handlers must stay "observe, decide, apply", and the decision
code must never see a client. This adapter turns the official ``kubernetes`` client into a
handful of plain-dict functions (``fetch_*``, ``apply_*``, ``patch_*``) that are idempotent:
creating what already exists and deleting what is already gone are not errors, because a
level-triggered operator may repeat any step after a crash.

It uses the official client only for what it does well — loading kubeconfig or the
in-cluster service account, TLS and auth — and sends plain JSON itself. The client is
synchronous; the async handlers call these functions through ``asyncio.to_thread`` so a
slow apiserver never blocks the event loop.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kubernetes

from trainscale.operator import api
from trainscale.operator.autoscaling.cluster import trim_bound_pod
from trainscale.operator.autoscaling.observed_placement import node_gpus
from trainscale.operator.controller.builders import (
    LABEL_COMPONENT,
    LABEL_JOB_NAME,
    build_selector_string,
    build_worker_selector,
)
from trainscale.operator.controller.reconcile import trim_worker_pod

log = logging.getLogger(__name__)


class KubernetesError(Exception):
    """The apiserver answered a request with an error status."""

    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {body[:500]}")
        self.status = status
        # The apiserver answers errors with a metav1.Status: its reason (Forbidden, Invalid,
        # BadRequest, ...) and message (e.g. the quota that refused a pod) are what users see.
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        parsed = parsed if isinstance(parsed, dict) else {}
        self.reason = str(parsed.get("reason") or "")
        self.message = str(parsed.get("message") or body[:500])


class KubernetesClients:
    """A configured connection to the apiserver (host, TLS, credentials)."""

    def __init__(self, api_client: kubernetes.client.ApiClient) -> None:
        self.api_client = api_client


_clients: dict[str | None, KubernetesClients] = {}


API_CONCURRENCY = 32
"""Blocking API calls in flight at once: the threads the operator's loops call the API from
(asyncio's default pool has CPUs + 4: 6 on a 2-core node, so a burst of new jobs' first passes
queued behind one another) and the client's pooled connections to the apiserver."""


def load_clients() -> KubernetesClients:
    """The connection for the in-cluster service account, else for $KUBECONFIG (read now).

    Built once per kubeconfig path; $KUBECONFIG is read at call time, not at import time
    as the kubernetes package's default does.
    """
    kubeconfig = os.environ.get("KUBECONFIG") or None
    if kubeconfig not in _clients:
        configuration = kubernetes.client.Configuration()
        try:
            kubernetes.config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, client_configuration=configuration
            )
        configuration.connection_pool_maxsize = API_CONCURRENCY
        _clients[kubeconfig] = KubernetesClients(kubernetes.client.ApiClient(configuration))
    return _clients[kubeconfig]


def drop_managed_fields(obj: dict[str, Any]) -> dict[str, Any]:
    """An object's metadata without its ``managedFields`` (server-side apply's record of who
    set which field, which nothing here reads and which was half of a listed job's or pod's
    decoded size); any other dict as it is. A ``json.loads`` object hook: the fields are
    dropped as each object is decoded, so a LIST never holds them all at once."""
    if isinstance(obj.get("managedFields"), list) and ("name" in obj or "generateName" in obj):
        del obj["managedFields"]
    return obj


def _pods_trimmed(
    trim: Callable[[dict[str, Any]], dict[str, Any]],
) -> Callable[[dict[str, Any]], Any]:
    """A ``json.loads`` object hook: each pod of a list trimmed by ``trim`` as it is decoded
    (a whole pod is never held), any other dict without managed fields."""

    def hook(obj: dict[str, Any]) -> Any:
        spec = obj.get("spec")
        if "metadata" in obj and isinstance(spec, dict) and "containers" in spec:
            return trim(obj)
        return drop_managed_fields(obj)

    return hook


_bound_pod = _pods_trimmed(trim_bound_pod)
"""The cluster's bound pods, trimmed to what the arbitration pass reads
(:func:`~trainscale.operator.autoscaling.cluster.trim_bound_pod`)."""
_worker_pod = _pods_trimmed(trim_worker_pod)
"""A job's worker pods, trimmed to what their readers use
(:func:`~trainscale.operator.controller.reconcile.trim_worker_pod`)."""


def _request(
    clients: KubernetesClients,
    method: str,
    path: str,
    body: Mapping[str, Any] | None = None,
    query: Mapping[str, str] | None = None,
    content_type: str = "application/json",
    object_hook: Callable[[dict[str, Any]], Any] = drop_managed_fields,
) -> dict[str, Any] | None:
    """One API call with a plain-dict body; None on 404, KubernetesError on other errors.

    Objects go over the wire as the user wrote them: the generated client's models would
    re-validate pod specs against their own (older or newer) schema, reject valid quantities
    such as ``nvidia.com/gpu: 1`` and drop fields they do not know. What comes back is
    decoded through ``object_hook`` (by default, without managed fields).
    """
    api_client = clients.api_client
    method_, url, headers, _, _ = api_client.param_serialize(
        method,
        path,
        query_params=list((query or {}).items()) or None,
        header_params={"Content-Type": content_type, "Accept": "application/json"},
        auth_settings=["BearerToken"],
    )
    # The REST layer JSON-encodes a dict body for any JSON content type.
    body_ = dict(body) if body is not None else None
    response = api_client.call_api(method_, url, header_params=headers, body=body_)
    data: bytes = response.read()  # type: ignore[no-untyped-call]
    if response.status == 404:
        return None
    if response.status >= 400:
        raise KubernetesError(response.status, method, path, data.decode(errors="replace"))
    parsed: dict[str, Any] = json.loads(data, object_hook=object_hook) if data else {}
    return parsed


def _job_path(namespace: str, name: str = "") -> str:
    base = f"/apis/{api.GROUP}/{api.VERSION}/namespaces/{namespace}/{api.PLURAL}"
    return f"{base}/{name}" if name else base


def _core_path(kind: str, namespace: str, name: str = "") -> str:
    plural = {"Pod": "pods", "Service": "services"}[kind]
    base = f"/api/v1/namespaces/{namespace}/{plural}"
    return f"{base}/{name}" if name else base


def fetch_job(clients: KubernetesClients, namespace: str, name: str) -> dict[str, Any] | None:
    """The TrainingJob as a dict, or None when it no longer exists."""
    return _request(clients, "GET", _job_path(namespace, name))


def _matches(obj: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    have = (obj.get("metadata") or {}).get("labels") or {}
    return all(have.get(k) == v for k, v in labels.items())


def fetch_worker_pods(
    clients: KubernetesClients, namespace: str, job_name: str
) -> list[dict[str, Any]]:
    """The job's worker pods (any phase, terminating ones included), each trimmed to what
    their readers use as it is decoded (:data:`_worker_pod`)."""
    selector = build_worker_selector(job_name)
    pods = (
        _request(
            clients,
            "GET",
            _core_path("Pod", namespace),
            query={"labelSelector": build_selector_string(selector)},
            object_hook=_worker_pod,
        )
        or {}
    )
    # Filter again client-side: the selector is the contract, not an optimisation.
    return [p for p in pods.get("items") or [] if _matches(p, selector)]


_nodes_forbidden_logged = False


@dataclass(frozen=True)
class ListedNodes:
    """The cluster's nodes from one LIST: those that advertise ``nvidia.com/gpu``
    (``gpu``), and the rest (``other``: a system or CPU pool), which no worker fits on but
    which a topology spread constraint counts all the same."""

    gpu: list[dict[str, Any]] = field(default_factory=list)
    other: list[dict[str, Any]] = field(default_factory=list)


def fetch_nodes(clients: KubernetesClients) -> ListedNodes:
    """The cluster's nodes, trimmed to what placement needs, GPU nodes apart from the rest.

    One LIST per call, served from the apiserver's watch cache (``resourceVersion=0``: cheap,
    possibly a moment old, which is fine for node sizes). Each GPU node is returned as
    ``{"metadata": {"name": ..., "labels": ...}, "spec": {"unschedulable": ..., "taints":
    ...}, "status": {"allocatable": {"nvidia.com/gpu": ..., "cpu": ..., "memory": ...}}}``
    (CPU and memory where the node lists them), the shape :func:`trainscale.operator.
    autoscaling.observed_placement.build_placement`, cluster arbitration (the CPU and
    memory workers may use) and the node filters
    (:mod:`trainscale.operator.autoscaling.node_filters`) read; a node without GPUs with
    its name, labels, taints and cordon only (what a spread constraint counts it by).
    Needs ``list`` on ``nodes`` (cluster-scoped). Without it (HTTP 403) this logs a warning
    once and returns no nodes: placement is then known from the pods alone, without GPUs per
    node.
    """
    global _nodes_forbidden_logged  # noqa: PLW0603 - warn once per process
    try:
        listed = _request(clients, "GET", "/api/v1/nodes", query={"resourceVersion": "0"}) or {}
    except KubernetesError as exc:
        if exc.status != 403:
            raise
        if not _nodes_forbidden_logged:
            log.warning("cannot list nodes (%s): GPUs per node unknown; grant list on nodes", exc)
            _nodes_forbidden_logged = True
        return ListedNodes()
    nodes = ListedNodes()
    for node in listed.get("items") or []:
        meta = node.get("metadata") or {}
        spec = node.get("spec") or {}
        trimmed: dict[str, Any] = {
            "metadata": {"name": meta.get("name"), "labels": meta.get("labels") or {}},
            "spec": {
                "unschedulable": bool(spec.get("unschedulable")),
                "taints": spec.get("taints") or [],
            },
        }
        gpus = node_gpus(node)
        if gpus > 0:
            nodes.gpu.append({**trimmed, "status": {"allocatable": _trim_allocatable(node, gpus)}})
        else:
            nodes.other.append(trimmed)
    return nodes


def _trim_allocatable(node: Mapping[str, Any], gpus: int) -> dict[str, Any]:
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    out: dict[str, Any] = {api.GPU_RESOURCE: str(gpus)}
    for resource in ("cpu", "memory"):
        if resource in allocatable:
            out[resource] = allocatable[resource]
    return out


def fetch_admitted_pod(clients: KubernetesClients, pod: Mapping[str, Any]) -> dict[str, Any] | None:
    """``pod`` as the apiserver would store it, without storing it: a server-side dry-run
    create (``dryRun=All``), so the mutating admission plugins and webhooks run on it, e.g.
    ``ExtendedResourceToleration`` (GKE's: a toleration for each extended resource the pod
    requests), a namespace's default node selector, a policy engine's tolerations. The
    scheduler filters the pod admission leaves, not the template. Sent under a
    ``generateName`` (the pod's own name may exist already). None where the dry run is
    refused (a webhook or a quota rejects it, a webhook with side effects refuses dry runs,
    no permission: logged at INFO once per HTTP status), and the caller reads the pod as
    built."""
    meta = dict(pod.get("metadata") or {})
    namespace = str(meta.get("namespace") or "")
    name = str(meta.pop("name", "") or "pod")
    meta["generateName"] = f"{name[:GENERATE_NAME_PREFIX]}-dry-run-"
    try:
        return _request(clients, "POST", _core_path("Pod", namespace),
                        {**pod, "metadata": meta}, query={"dryRun": "All"})  # fmt: skip
    except KubernetesError as exc:
        if exc.status not in _dry_run_refused:
            _dry_run_refused.add(exc.status)
            log.info("dry-run create of a worker pod refused (%s): the node filters read "
                     "the worker pod as built", exc)  # fmt: skip
        return None


#: The longest prefix of a pod name kept in a dry run's ``generateName`` (63 in all).
GENERATE_NAME_PREFIX = 45
_dry_run_refused: set[int] = set()


def fetch_object_exists(clients: KubernetesClients, kind: str, namespace: str, name: str) -> bool:
    """Whether the Pod or Service ``name`` exists (terminating counts as existing)."""
    return _request(clients, "GET", _core_path(kind, namespace, name)) is not None


def apply_create(clients: KubernetesClients, obj: Mapping[str, Any]) -> bool:
    """Create a Pod or Service; False (no error) when it already exists.

    Created with server-side field validation ``Strict``: a field the apiserver does not know
    (``resource:`` for ``resources:`` in the user's template) is refused (HTTP 400 naming the
    field) instead of silently dropped.

    Raises:
        KubernetesError: the apiserver refused the object (quota, admission, invalid spec).
    """
    path = _core_path(obj["kind"], obj["metadata"]["namespace"])
    try:
        _request(clients, "POST", path, body=obj, query={"fieldValidation": "Strict"})
    except KubernetesError as exc:
        if exc.status == 409:
            return False
        raise
    return True


def apply_delete_pod(clients: KubernetesClients, namespace: str, name: str) -> bool:
    """Delete a pod gracefully (its own grace period); False when it is already gone."""
    return _request(clients, "DELETE", _core_path("Pod", namespace, name)) is not None


def patch_job_status(
    clients: KubernetesClients, namespace: str, name: str, status: Mapping[str, Any]
) -> None:
    """Merge-patch the job's status subresource."""
    _request(
        clients,
        "PATCH",
        _job_path(namespace, name) + "/status",
        body={"status": dict(status)},
        content_type="application/merge-patch+json",
    )


def patch_job_replicas(
    clients: KubernetesClients, namespace: str, name: str, replicas: int
) -> None:
    """Set ``spec.replicas`` (the autoscaler's one write to the spec)."""
    _request(
        clients,
        "PATCH",
        _job_path(namespace, name),
        body={"spec": {"replicas": replicas}},
        content_type="application/merge-patch+json",
    )


def apply_peering(clients: KubernetesClients, name: str, namespace: str | None) -> bool:
    """Create kopf's peering object (ClusterKopfPeering, or KopfPeering in ``namespace``).

    kopf only coordinates replicas through an existing peering object; without one every
    replica acts. Returns False when it already exists.

    Raises:
        KubernetesError: with a hint when the kopf.dev peering CRDs are not installed.
    """
    if namespace is None:
        path, kind = "/apis/kopf.dev/v1/clusterkopfpeerings", "ClusterKopfPeering"
    else:
        path, kind = f"/apis/kopf.dev/v1/namespaces/{namespace}/kopfpeerings", "KopfPeering"
    body = {"apiVersion": "kopf.dev/v1", "kind": kind, "metadata": {"name": name}}
    try:
        if _request(clients, "POST", path, body=body) is None:
            raise KubernetesError(
                404,
                "POST",
                path,
                f"the {kind} CRD (kopf.dev) is not installed; install the chart with "
                "operator.peering.enabled=true or apply its files/crds/kopf-peerings.yaml",
            )
    except KubernetesError as exc:
        if exc.status == 409:
            return False
        raise
    return True


def job_name_of(labels: Mapping[str, str] | None) -> str | None:
    """The job a pod or Service belongs to, from its labels (None when it is not one of a
    TrainingJob's)."""
    if not labels:
        return None
    return labels.get(LABEL_JOB_NAME) if LABEL_COMPONENT in labels else None


# -- the cluster view of arbitration: one list of each per pass, for every job at once --------


def fetch_bound_pods(clients: KubernetesClients) -> list[dict[str, Any]]:
    """Every pod bound to a node and not finished, in all namespaces (what holds GPUs), each
    trimmed to what its readers use as it is decoded (:data:`_bound_pod`)."""
    selector = "spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed"
    query = {"fieldSelector": selector}
    found = _request(clients, "GET", "/api/v1/pods", query=query, object_hook=_bound_pod) or {}
    return list(found.get("items") or [])


def fetch_all_jobs(clients: KubernetesClients) -> list[dict[str, Any]]:
    """Every TrainingJob in the cluster."""
    path = f"/apis/{api.GROUP}/{api.VERSION}/{api.PLURAL}"
    found = _request(clients, "GET", path) or {}
    return list(found.get("items") or [])


def fetch_priority_classes(clients: KubernetesClients) -> dict[str, tuple[int, bool]]:
    """PriorityClass name -> (value, whether it preempts): what the scheduler orders pods
    by, and its ``preemptionPolicy`` (``PreemptLowerPriority``, the default, or ``Never``)."""
    found = _request(clients, "GET", "/apis/scheduling.k8s.io/v1/priorityclasses") or {}
    return {
        (item.get("metadata") or {}).get("name", ""): (
            int(item.get("value") or 0),
            item.get("preemptionPolicy", "PreemptLowerPriority") != "Never",
        )
        for item in found.get("items") or []
    }
