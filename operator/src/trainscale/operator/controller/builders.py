"""Pure builders of the Kubernetes objects a TrainingJob owns.

Why this module exists: what a worker pod or the rendezvous service looks like is a pure
function of the job (name, namespace, uid) and its spec. Keeping it here — dicts in, dicts
out, no client, no clock — lets the unit tests pin every field, and lets the handlers stay a
few lines of "observe, decide, apply".

Objects built here:

* ``{job}-worker-{i}``: worker pods from ``spec.template`` with torchrun's elastic settings in
  the standard ``PET_*`` environment variables, so an unmodified ``torchrun train.py``
  container joins the job, and a preferred affinity to the job's other workers' nodes, so the
  scheduler packs them (all-reduce inside a node is far cheaper than across nodes), and,
  when cluster arbitration planned a node for it, a preferred affinity to that node;
* ``{job}-rdzv``: a small pod running a standalone c10d ``TCPStore`` and a Service in front of
  it. Workers join with ``is_host=false``, so removing *any* worker never kills the store.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trainscale.operator import api
from trainscale.trainer.contract import environment as env_names
from trainscale.trainer.contract import rendezvous
from trainscale.trainer.contract.environment import DEFAULT_METRICS_PORT as METRICS_PORT
from trainscale.trainer.contract.naming import worker_pod_name

LABEL_JOB_NAME = api.LABEL_JOB_NAME
LABEL_REPLICA_INDEX = api.LABEL_REPLICA_INDEX
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = api.LABEL_COMPONENT
LABEL_MANAGED_BY = api.LABEL_MANAGED_BY
LABEL_PART_OF = "app.kubernetes.io/part-of"

COMPONENT_WORKER = api.COMPONENT_WORKER
COMPONENT_RENDEZVOUS = api.COMPONENT_RENDEZVOUS
MANAGED_BY = api.MANAGED_BY

HOSTNAME_TOPOLOGY_KEY = "kubernetes.io/hostname"
# The strongest preference a pod may state. The default scheduler's InterPodAffinity score
# (plugin weight 2) then outweighs its spreading scores (NodeResourcesFit LeastAllocated and
# BalancedAllocation, weight 1 each), so a job's workers fill one node before the next.
PACKING_WEIGHT = 100

METRICS_PORT_NAME = "metrics"
CHECKPOINT_VOLUME = "trainscale-checkpoints"

MAX_JOB_NAME_LENGTH = api.MAX_JOB_NAME_LENGTH
_DNS_1035 = re.compile(api.JOB_NAME_PATTERN)

# torchrun spends one restart of its budget on every membership change that loses a node
# (each scale-down), so a long-lived agent needs a large budget; the job's own failure budget
# is spec.maxRestarts, counted by the operator in pods replaced.
TORCHRUN_MAX_RESTARTS = 1000


@dataclass(frozen=True)
class JobRef:
    """Identity of a TrainingJob: what every owned object must point back to."""

    name: str
    namespace: str
    uid: str


class InvalidJobError(ValueError):
    """The job's name or spec cannot be turned into Kubernetes objects."""


def validate_job_name(name: str) -> None:
    """Raise :class:`InvalidJobError` when ``name`` cannot name the job's children."""
    if len(name) > MAX_JOB_NAME_LENGTH:
        raise InvalidJobError(
            f"metadata.name {name!r} is {len(name)} characters; at most {MAX_JOB_NAME_LENGTH} "
            "fit the rendezvous Service and worker pod names"
        )
    if not _DNS_1035.match(name):
        raise InvalidJobError(
            f"metadata.name {name!r} must be a DNS-1035 label (lowercase letters, digits, '-', "
            "starting with a letter)"
        )


def rendezvous_name(job_name: str) -> str:
    """Name of the rendezvous pod and of the Service in front of it."""
    return f"{job_name}-rdzv"


def build_common_labels(job_name: str, component: str) -> dict[str, str]:
    """Labels every object owned by the job carries."""
    return {
        LABEL_NAME: "trainingjob",
        LABEL_INSTANCE: job_name,
        LABEL_COMPONENT: component,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_PART_OF: "trainscale",
        LABEL_JOB_NAME: job_name,
    }


def build_worker_labels(job_name: str, template: Mapping[str, Any], index: int) -> dict[str, str]:
    """The labels of the job's worker ``index``: the template's, then the job's own
    (:func:`build_common_labels`) and its replica index over them."""
    labels = dict((template.get("metadata") or {}).get("labels") or {})
    labels.update(build_common_labels(job_name, COMPONENT_WORKER))
    labels[LABEL_REPLICA_INDEX] = str(index)
    return labels


def build_worker_selector(job_name: str) -> dict[str, str]:
    """The label selector matching exactly the job's worker pods."""
    return {LABEL_JOB_NAME: job_name, LABEL_COMPONENT: COMPONENT_WORKER}


def build_selector_string(selector: dict[str, str]) -> str:
    """Render a matchLabels selector as the string form ``status.selector`` needs."""
    return ",".join(f"{key}={value}" for key, value in sorted(selector.items()))


def build_owner_reference(job: JobRef) -> dict[str, Any]:
    """A controller owner reference to the job, so deleting the job garbage-collects children."""
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "name": job.name,
        "uid": job.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def build_rendezvous_endpoint(job: JobRef, spec: api.TrainingJobSpec) -> str:
    """host:port of the job's rendezvous store, as workers reach it through its Service."""
    return f"{rendezvous_name(job.name)}:{spec.rendezvous.port}"


def build_rendezvous_id(job: JobRef) -> str:
    """Rendezvous id: unique per job object, so a re-created job never meets stale state."""
    return f"{job.namespace}-{job.name}-{job.uid}"


def build_torchrun_env(job: JobRef, spec: api.TrainingJobSpec) -> list[dict[str, Any]]:
    """The PET_* variables (torchrun's own flags as environment) for elastic c10d rendezvous."""
    rdzv = spec.rendezvous
    rdzv_conf = rendezvous.build_rdzv_conf(
        rdzv.last_call_timeout_seconds, rdzv.join_timeout_seconds
    )
    return [
        {"name": env_names.PET_NNODES, "value": f"{spec.min_replicas}:{spec.max_replicas}"},
        {"name": env_names.PET_RDZV_BACKEND, "value": rendezvous.BACKEND},
        {"name": env_names.PET_RDZV_ENDPOINT, "value": build_rendezvous_endpoint(job, spec)},
        {"name": env_names.PET_RDZV_ID, "value": build_rendezvous_id(job)},
        {"name": env_names.PET_RDZV_CONF, "value": rdzv_conf},
        {"name": env_names.PET_MAX_RESTARTS, "value": str(TORCHRUN_MAX_RESTARTS)},
        # Advertise the pod IP: other pods cannot resolve this pod's hostname.
        {
            "name": env_names.PET_LOCAL_ADDR,
            "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
        },
        # Joining a running job hangs when the agent shares the rendezvous TCP store.
        {"name": env_names.TORCH_DISABLE_SHARE_RDZV_TCP_STORE, "value": "1"},
        # The workers' time to checkpoint after SIGTERM: the pod's grace period, not
        # torchrun's fixed 30 s (a user's own value in the template wins).
        {
            "name": env_names.PET_SHUTDOWN_TIMEOUT,
            "value": str(env_names.shutdown_timeout_for_grace(_grace_seconds(spec))),
        },
    ]


def _grace_seconds(spec: api.TrainingJobSpec) -> int:
    """The workers' terminationGracePeriodSeconds (the template's, else the kubelet's)."""
    grace = spec.template["spec"].get("terminationGracePeriodSeconds")
    return env_names.DEFAULT_TERMINATION_GRACE_SECONDS if grace is None else int(grace)


def build_trainscale_env(
    job: JobRef, spec: api.TrainingJobSpec, index: int
) -> list[dict[str, Any]]:
    """The TRAINSCALE_* variables read by :mod:`trainscale.trainer`."""
    ckpt = spec.checkpoint
    return [
        {"name": env_names.ENV_JOB_NAME, "value": job.name},
        {"name": env_names.ENV_NAMESPACE, "value": job.namespace},
        {"name": env_names.ENV_REPLICA_INDEX, "value": str(index)},
        {"name": env_names.ENV_POD_NAME, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": env_names.ENV_CHECKPOINT_DIR, "value": ckpt.path},
        {"name": env_names.ENV_CHECKPOINT_INTERVAL_SECONDS, "value": str(ckpt.interval_seconds)},
        {"name": env_names.ENV_CHECKPOINT_KEEP, "value": str(ckpt.keep)},
        {"name": env_names.ENV_METRICS_PORT, "value": str(METRICS_PORT)},
    ]


# Variables the operator owns: a value the user set for one of these is replaced, because a
# wrong rendezvous setting silently splits or hangs the job.
_OWNED_ENV = frozenset(
    {
        env_names.PET_NNODES,
        env_names.PET_RDZV_BACKEND,
        env_names.PET_RDZV_ENDPOINT,
        env_names.PET_RDZV_ID,
        env_names.PET_RDZV_CONF,
        env_names.PET_LOCAL_ADDR,
    }
)


def _merge_env(user_env: list[dict[str, Any]], ours: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Our variables first; the user's override ours except for the rendezvous settings."""
    user_names = {item.get("name") for item in user_env}
    merged = [item for item in ours if item["name"] in _OWNED_ENV or item["name"] not in user_names]
    merged += [item for item in user_env if item.get("name") not in _OWNED_ENV]
    return merged


def build_packing_term(job_name: str) -> dict[str, Any]:
    """The preferred podAffinity term that draws a worker to the nodes of the job's workers."""
    return {
        "weight": PACKING_WEIGHT,
        "podAffinityTerm": {
            "labelSelector": {"matchLabels": build_worker_selector(job_name)},
            "topologyKey": HOSTNAME_TOPOLOGY_KEY,
        },
    }


def build_planned_node_term(node: str) -> dict[str, Any]:
    """The preferred nodeAffinity term that draws a worker to the node arbitration planned
    for it, by the Node's name (``matchFields``: a node's hostname label need not be its
    name)."""
    return {
        "weight": PACKING_WEIGHT,
        "preference": {
            "matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]
        },
    }


def _append_preferred(section: dict[str, Any], term: dict[str, Any]) -> dict[str, Any]:
    key = "preferredDuringSchedulingIgnoredDuringExecution"
    out = dict(section)
    preferred = list(out.get(key) or [])
    if term not in preferred:
        preferred.append(term)
    out[key] = preferred
    return out


def build_worker_affinity(
    user_affinity: dict[str, Any] | None,
    job_name: str,
    *,
    pack: bool,
    planned_node: str | None = None,
) -> dict[str, Any] | None:
    """The worker pod's affinity: the template's, plus the packing preference when ``pack``,
    and the preference for ``planned_node`` (the node cluster arbitration counted the worker
    on) when ``pack`` and one is given.

    Nothing the user wrote is replaced or removed: their nodeAffinity, podAntiAffinity and
    podAffinity terms (required and preferred) stay as they are, and the packing term is
    appended to ``podAffinity.preferredDuringSchedulingIgnoredDuringExecution`` unless an
    identical term is already there. A required rule of the user's always wins over this
    preference (e.g. a required podAntiAffinity that spreads one worker per node); to drop the
    preference altogether set ``spec.placement.packWorkers: false``.

    Returns None when there is no affinity at all (no template affinity and ``pack`` false).
    """
    affinity = copy.deepcopy(user_affinity) if user_affinity else None
    if not pack:
        return affinity
    affinity = affinity or {}
    affinity["podAffinity"] = _append_preferred(
        affinity.get("podAffinity") or {}, build_packing_term(job_name)
    )
    if planned_node is not None:
        # The default scheduler weighs NodeAffinity like InterPodAffinity (2 each, against
        # 1 for each resource score), so the planned node wins over a node the scheduler
        # would rather spread to; where both terms point elsewhere, both still count.
        affinity["nodeAffinity"] = _append_preferred(
            affinity.get("nodeAffinity") or {}, build_planned_node_term(planned_node)
        )
    return affinity


def build_worker_pod(
    job: JobRef, spec: api.TrainingJobSpec, index: int, *, planned_node: str | None = None
) -> dict[str, Any]:
    """Return the worker pod with replica index ``index`` for the job.

    The pod is ``spec.template`` with: its name, namespace, the job's labels and a controller
    owner reference; ``restartPolicy: Never`` (the operator replaces failed workers and counts
    them against ``maxRestarts``); the torchrun and trainscale environment on the first
    container; a ``metrics`` port; the checkpoint claim mounted at ``checkpoint.path``
    when ``checkpoint.claimName`` is set; and, unless ``placement.packWorkers`` is false, a
    preferred affinity to the nodes of the job's other workers and, given ``planned_node``
    (the node cluster arbitration planned for this worker), a preferred affinity to that node
    and the annotation ``trainscale.dev/planned-node`` naming it
    (:func:`build_worker_affinity`).
    """
    template = copy.deepcopy(spec.template)
    meta = template.get("metadata") or {}
    pod_spec = template["spec"]

    labels = build_worker_labels(job.name, spec.template, index)
    annotations = dict(meta.get("annotations") or {})
    annotations.setdefault("prometheus.io/scrape", "true")
    annotations.setdefault("prometheus.io/port", str(METRICS_PORT))
    if not spec.placement.pack_workers:
        planned_node = None
    if planned_node is not None:
        annotations[api.ANNOTATION_PLANNED_NODE] = planned_node

    pod_spec["restartPolicy"] = "Never"
    affinity = build_worker_affinity(
        pod_spec.get("affinity"),
        job.name,
        pack=spec.placement.pack_workers,
        planned_node=planned_node,
    )
    if affinity is not None:
        pod_spec["affinity"] = affinity
    containers = pod_spec["containers"]
    first = containers[0]
    nproc = spec.gpus_per_replica
    ours = build_torchrun_env(job, spec) + build_trainscale_env(job, spec, index)
    if nproc > 0:
        ours.append({"name": env_names.PET_NPROC_PER_NODE, "value": str(nproc)})
    first["env"] = _merge_env(list(first.get("env") or []), ours)
    ports = list(first.get("ports") or [])
    if not any(
        p.get("name") == METRICS_PORT_NAME or p.get("containerPort") == METRICS_PORT for p in ports
    ):
        ports.append({"name": METRICS_PORT_NAME, "containerPort": METRICS_PORT, "protocol": "TCP"})
    first["ports"] = ports

    if spec.checkpoint.claim_name:
        volumes = [v for v in pod_spec.get("volumes") or [] if v.get("name") != CHECKPOINT_VOLUME]
        volumes.append(
            {
                "name": CHECKPOINT_VOLUME,
                "persistentVolumeClaim": {"claimName": spec.checkpoint.claim_name},
            }
        )
        pod_spec["volumes"] = volumes
        mounts = [m for m in first.get("volumeMounts") or [] if m.get("name") != CHECKPOINT_VOLUME]
        mounts.append({"name": CHECKPOINT_VOLUME, "mountPath": spec.checkpoint.path})
        first["volumeMounts"] = mounts

    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": worker_pod_name(job.name, index),
            "namespace": job.namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [build_owner_reference(job)],
        },
        "spec": pod_spec,
    }


def build_rendezvous_pod(job: JobRef, spec: api.TrainingJobSpec) -> dict[str, Any]:
    """Return the pod running the job's standalone c10d TCPStore.

    It uses ``rendezvous.image`` or the workers' image (which has torch), the template's
    imagePullSecrets, pod securityContext and tolerations, asks for no GPU, and restarts on
    its own (``restartPolicy: Always``).
    """
    template_spec = spec.template["spec"]
    image = spec.rendezvous.image or template_spec["containers"][0]["image"]
    port = spec.rendezvous.port
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 5,
        "containers": [
            {
                "name": "rendezvous",
                "image": image,
                "command": rendezvous.build_store_command(),
                "env": [{"name": env_names.ENV_RDZV_PORT, "value": str(port)}],
                "ports": [{"name": "rendezvous", "containerPort": port, "protocol": "TCP"}],
                "readinessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 2},
                "resources": {
                    "requests": {"cpu": "50m", "memory": "256Mi"},
                    "limits": {"memory": "1Gi"},
                },
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                },
            }
        ],
    }
    for key in ("imagePullSecrets", "securityContext", "tolerations", "priorityClassName"):
        if key in template_spec:
            pod_spec[key] = copy.deepcopy(template_spec[key])
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": rendezvous_name(job.name),
            "namespace": job.namespace,
            "labels": build_common_labels(job.name, COMPONENT_RENDEZVOUS),
            "ownerReferences": [build_owner_reference(job)],
        },
        "spec": pod_spec,
    }


def build_rendezvous_service(job: JobRef, spec: api.TrainingJobSpec) -> dict[str, Any]:
    """Return the ClusterIP Service through which workers reach the rendezvous store."""
    port = spec.rendezvous.port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": rendezvous_name(job.name),
            "namespace": job.namespace,
            "labels": build_common_labels(job.name, COMPONENT_RENDEZVOUS),
            "ownerReferences": [build_owner_reference(job)],
        },
        "spec": {
            "type": "ClusterIP",
            "selector": {LABEL_JOB_NAME: job.name, LABEL_COMPONENT: COMPONENT_RENDEZVOUS},
            "ports": [{"name": "rendezvous", "port": port, "targetPort": port, "protocol": "TCP"}],
            "publishNotReadyAddresses": True,
        },
    }
