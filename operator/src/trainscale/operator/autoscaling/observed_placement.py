"""The placement a job has now, read from its worker pods and the cluster's nodes.

Why this module exists: the autoscaler's model needs to know how many nodes the running
workers span and how many GPUs a node holds; Kubernetes says so in each pod's
``spec.nodeName`` and each node's ``status.allocatable``. Turning those objects into a
:class:`~trainscale.operator.autoscaling.placement.Placement` is pure (dicts in, a value out),
so it lives here with a table test, and the autoscale daemon only fetches the objects
(:func:`trainscale.operator.adapters.k8s.fetch_worker_pods`,
:func:`trainscale.operator.adapters.k8s.fetch_nodes`) and calls :func:`build_placement`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from trainscale.operator import api
from trainscale.operator.autoscaling.node_filters import compute_eligible_nodes
from trainscale.operator.autoscaling.placement import Placement

# Pods in these phases hold no GPU any more: they are not part of the placement.
FINISHED_POD_PHASES = frozenset({"Succeeded", "Failed"})


def node_gpus(node: Mapping[str, Any]) -> int:
    """Allocatable ``nvidia.com/gpu`` of a Node object; 0 when it has none or says nonsense.

    Extended resources are whole numbers, written as a string ("8") or a number.
    """
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    value = allocatable.get(api.GPU_RESOURCE)
    try:
        gpus = int(str(value))
    except ValueError:
        return 0
    return max(gpus, 0)


def node_of_pod(pod: Mapping[str, Any]) -> str | None:
    """The node a worker pod holds GPUs on: its ``spec.nodeName`` while it is bound, not
    terminating and not finished; None otherwise (Pending unscheduled, deleting, done)."""
    node = (pod.get("spec") or {}).get("nodeName")
    if not node:
        return None
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return None
    if (pod.get("status") or {}).get("phase") in FINISHED_POD_PHASES:
        return None
    return str(node)


def build_placement(
    pods: Iterable[Mapping[str, Any]],
    nodes: Iterable[Mapping[str, Any]],
    pod_spec: Mapping[str, Any] | None = None,
    *,
    gpus_per_worker: int = 0,
    max_workers_per_node: int | None = None,
) -> Placement:
    """How the job's workers sit on nodes now.

    Args:
        pods: the job's worker Pod objects (as the API returns them). Only bound pods count
            (:func:`node_of_pod`): an unscheduled Pending pod has no node yet.
        nodes: Node objects (full, or trimmed to ``metadata.name``, labels, taints and
            ``status.allocatable`` as :func:`~trainscale.operator.adapters.k8s.fetch_nodes`
            returns the GPU nodes). Nodes without GPUs are ignored.
        pod_spec: the worker template's pod spec; before any worker is bound, only the nodes
            it admits (:mod:`~trainscale.operator.autoscaling.node_filters`) say the node
            size, so a job held to a pool of 4-GPU nodes is not sized by the 8-GPU ones.
        gpus_per_worker, max_workers_per_node: with both, a node holds at most that many of
            the job's workers (its template's required pod anti-affinity to its own
            workers, :func:`~trainscale.operator.autoscaling.node_filters.
            compute_max_workers_per_node`), and ``gpus_per_node`` counts only the GPUs
            they can take there: the autoscaler predicts every count on as many nodes as
            the scheduler will use.

    Returns:
        ``workers_per_node`` sorted descending, one entry per node used (empty when no
        worker is bound); ``gpus_per_node`` the largest allocatable GPU count among the nodes
        the workers use (they are equal in a homogeneous pool), or, before any worker is
        bound, among the GPU nodes given that ``pod_spec`` admits (all of them without
        one, or when it admits none), at most ``max_workers_per_node`` workers' GPUs;
        None when no GPU node is known.
    """
    listed = list(nodes)
    counts = Counter(node for node in map(node_of_pod, pods) if node is not None)
    gpus = {str((n.get("metadata") or {}).get("name")): node_gpus(n) for n in listed}
    gpus = {name: count for name, count in gpus.items() if count > 0}
    used = [gpus[name] for name in counts if name in gpus]
    if counts:
        known = used
    else:
        admitted = compute_eligible_nodes(pod_spec, listed) if pod_spec is not None else None
        known = [g for name, g in gpus.items() if admitted is None or name in admitted]
        known = known or list(gpus.values())
    size = max(known) if known else None
    if size is not None and max_workers_per_node is not None and gpus_per_worker > 0:
        size = min(size, max_workers_per_node * gpus_per_worker)
    return Placement(
        workers_per_node=tuple(sorted(counts.values(), reverse=True)),
        gpus_per_node=size,
    )
