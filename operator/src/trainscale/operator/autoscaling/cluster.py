"""The cluster as the arbiter sees it, and its answer as each job shows it.

Why this module exists: :func:`~trainscale.operator.autoscaling.arbiter.allocate` divides
GPUs between demands and node capacities given as plain numbers. Something must turn what the
operator reads from Kubernetes (nodes, every pod, every TrainingJob and what its autoscaler
has learned) into those numbers, and turn the allocation back into what a user sees
(``status.arbitration``, an Event when a job's share changes). Both directions are pure, so
they are table-tested here and the daemon that runs them only fetches and patches.

Rules:

* **Capacity** per node is its allocatable ``nvidia.com/gpu`` minus the GPUs requested by
  pods trainscale does not manage that are bound to it and not finished. Unschedulable or
  cordoned nodes offer nothing. Arbitration never touches pods trainscale does not own.
* **CPU and memory.** What the pods the arbiter does not place (foreign pods, pinned jobs'
  workers, every job's rendezvous pod) leave of each GPU node's allocatable CPU and memory
  (:func:`build_node_free`) is the capacity the arbiter places workers in, with the GPUs:
  each worker takes the requests of its job's template
  (:mod:`~trainscale.operator.api.quantities`, :func:`compute_worker_requests`) on its
  node, so the workers it plans on a node, of every arbitrated job, fit its CPU and memory
  together. A job whose workers ask a third of a node's CPU is granted 2 workers per node,
  not 8 of which 6 would stay Pending while other jobs could use those GPUs, and two such
  jobs are not both planned on one node's CPU. A worker that still finds no room (pod
  affinities, topology spread) is Pending, and the operator counts workers that ran off
  their planned node.
* **Which jobs are arbitrated**: autoscaled jobs (``spec.autoscaling.enabled``) whose workers
  ask for GPUs and that did not opt out (``spec.autoscaling.clusterArbitration: false``).
  Every other managed job is *pinned*: it keeps its size and its GPUs are subtracted.
  Finished jobs (Succeeded, Failed) hold nothing; a suspended job (``spec.suspend``) is not
  arbitrated and holds only the workers that still exist while they stop.
* **Node pools.** A job is arbitrated on the nodes its worker template lets the scheduler
  use (``nodeSelector``, required node affinity, tolerations of ``NoSchedule``/``NoExecute``
  taints; :mod:`~trainscale.operator.autoscaling.node_filters`) and those its workers run
  on now, so pools kept apart by labels or taints are divided between the jobs that may use
  them, and a job no GPU node admits is queued with the field that excludes them named.
* **Priority** is the value of the PriorityClass the worker template names (0 without one, or
  when the class is unknown), as the scheduler itself would order them. **Preemption** is the
  class's ``preemptionPolicy``, as the scheduler reads it: a waiting job that outranks running
  ones and does not fit queues the fewest of them (the lowest priority, then the newest;
  their workers checkpoint and stop), unless its class says ``Never``. Without this, a job
  the arbiter queues creates no pod, so the scheduler's own preemption could never act.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import sys
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trainscale.operator import api
from trainscale.operator.api import quantities
from trainscale.operator.api.reporting import EventSpec, format_time, parse_time, replace_map
from trainscale.operator.autoscaling.arbiter import (
    PREEMPTED_BY,
    Allocation,
    ArbiterSettings,
    Capacity,
    JobAllocation,
    JobDemand,
    allocate,
    compute_bounded_room,
)
from trainscale.operator.autoscaling.node_filters import (
    NodeBound,
    compute_eligible_nodes,
    explain_no_node,
    scheduling_key,
    template_pod_spec,
)
from trainscale.operator.autoscaling.observed_placement import FINISHED_POD_PHASES, node_of_pod

FINISHED_JOB_PHASES = frozenset({api.Phase.SUCCEEDED.value, api.Phase.FAILED.value})


def _gpu_quantity(value: Any) -> int:
    """An ``nvidia.com/gpu`` quantity as a whole number (extended resources are integers)."""
    try:
        return max(0, int(str(value)))
    except ValueError:
        return 0


def compute_pod_gpus(pod: Mapping[str, Any]) -> int:
    """GPUs a pod requests, counted as for a template (:func:`api.count_gpus`); init
    containers run before the others and are ignored; a malformed quantity counts 0."""
    try:
        return api.count_gpus((pod.get("spec") or {}).get("containers") or [])
    except (TypeError, ValueError):
        return 0


BOUND_POD_SPEC_FIELDS = ("nodeName", "overhead")
"""What the readers of bound pods here take from a pod's spec besides its containers."""
BOUND_POD_CONTAINER_FIELDS = ("name", "resources", "restartPolicy")
"""... and from each of its containers and init containers (a sidecar, an init container
that restarts ``Always``, counts beside the others)."""


def trim_bound_pod(pod: Mapping[str, Any]) -> dict[str, Any]:
    """A bound pod as the readers of the cluster's pods here see it (:func:`build_capacity`,
    :func:`build_node_free`, :func:`compute_room`, :func:`compute_worker_nodes`): its
    metadata without ``managedFields``, its spec's :data:`BOUND_POD_SPEC_FIELDS` and its
    containers' and init containers' :data:`BOUND_POD_CONTAINER_FIELDS`, its phase.

    Every arbitration pass lists every bound pod of the cluster. Decoded whole, 3,000 pods
    of 1,000 jobs were 103 MiB of Python objects (35 KiB a pod: managed fields, images,
    environments, volumes, status conditions), freed a moment later; the allocator kept that
    peak, and the operator's resident memory with it. Trimmed as they are decoded
    (:func:`~trainscale.operator.adapters.k8s.fetch_bound_pods`), 11 MiB."""
    meta = pod.get("metadata") or {}
    out: dict[str, Any] = {
        "metadata": {k: v for k, v in meta.items() if k != "managedFields"},
        "spec": _trim_spec(pod.get("spec") or {}, BOUND_POD_SPEC_FIELDS),
    }
    phase = (pod.get("status") or {}).get("phase")
    if phase is not None:
        out["status"] = {"phase": phase}
    return out


SCHEDULING_SPEC_FIELDS = (
    "nodeSelector",
    "affinity",
    "tolerations",
    "topologySpreadConstraints",
    "overhead",
)
"""What the node filters and the requests here take from a worker's pod spec besides its
containers (:mod:`~trainscale.operator.autoscaling.node_filters`,
:func:`~trainscale.operator.api.quantities.compute_pod_requests`)."""


def trim_scheduling_spec(pod_spec: Mapping[str, Any]) -> dict[str, Any]:
    """A worker's pod spec as the node filters and the requests read it: its
    :data:`SCHEDULING_SPEC_FIELDS`, and its containers' and init containers'
    :data:`BOUND_POD_CONTAINER_FIELDS`.

    The operator holds each job's admitted pod spec (a dry-run create's) between passes:
    whole, with the trainer's command, environment and volumes, it was about 15 KiB a job
    (15 MiB of the operator's live objects at 1,000 jobs), of which the readers use the
    scheduling fields."""
    return _trim_spec(pod_spec, SCHEDULING_SPEC_FIELDS)


def _trim_spec(spec: Mapping[str, Any], fields: Sequence[str]) -> dict[str, Any]:
    trimmed: dict[str, Any] = {k: spec[k] for k in fields if k in spec}
    for key in ("containers", "initContainers"):
        if key in spec:
            trimmed[key] = [
                {k: c[k] for k in BOUND_POD_CONTAINER_FIELDS if k in c}
                for c in spec[key] or []
                if isinstance(c, Mapping)
            ]
    return trimmed


def is_managed_pod(pod: Mapping[str, Any]) -> bool:
    """Whether trainscale created this pod (and so the arbiter may account for it)."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return labels.get(api.LABEL_MANAGED_BY) == api.MANAGED_BY


def _schedulable_gpus(nodes: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Allocatable GPUs of each node that has some and takes pods (not cordoned)."""
    gpus: dict[str, int] = {}
    for node in nodes:
        name = (node.get("metadata") or {}).get("name")
        if not name or (node.get("spec") or {}).get("unschedulable"):
            continue
        allocatable = ((node.get("status") or {}).get("allocatable") or {}).get(api.GPU_RESOURCE)
        count = _gpu_quantity(allocatable) if allocatable is not None else 0
        if count > 0:
            gpus[name] = count
    return gpus


def compute_largest_node_gpus(nodes: Iterable[Mapping[str, Any]]) -> int:
    """The most allocatable GPUs of one schedulable node (0: no GPU node): the counts up to
    it may fit one node, so a job's throughput across nodes matters for them."""
    return max(_schedulable_gpus(nodes).values(), default=0)


def build_capacity(
    nodes: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]]
) -> Capacity:
    """Free GPUs per node for trainscale: allocatable minus what foreign pods hold."""
    return Capacity(free_gpus=_less_held(_schedulable_gpus(nodes), pods, placed=None))


def _less_held(
    free: dict[str, int], pods: Iterable[Mapping[str, Any]], *, placed: Collection[str] | None
) -> dict[str, int]:
    """``free`` less the GPUs the bound pods that hold their node request there
    (:func:`_holds`; ``placed`` as there), never below zero; updated in place and
    returned."""
    for pod in pods:
        node_name = (pod.get("spec") or {}).get("nodeName")
        if node_name in free and _holds(pod, placed):
            free[node_name] = max(0, free[node_name] - compute_pod_gpus(pod))
    return free


@dataclass(frozen=True)
class NodeFree:
    """CPU (millicores) and memory (bytes) of each GPU node left by the pods trainscale does
    not manage; a node missing from a map: unknown there (its allocatable not listed)."""

    cpu_millis: Mapping[str, int] = field(default_factory=dict)
    memory_bytes: Mapping[str, int] = field(default_factory=dict)


def _allocatable(node: Mapping[str, Any], resource: str) -> float | None:
    value = ((node.get("status") or {}).get("allocatable") or {}).get(resource)
    if value is None:
        return None
    try:
        return quantities.parse_quantity(value)
    except ValueError:
        return None


def _placed_by_arbiter(pod: Mapping[str, Any], placed: Collection[str] | None) -> bool:
    """Whether ``pod`` is a worker the arbiter places itself: a worker of a job in
    ``placed`` (``namespace/name`` keys), or any trainscale pod when ``placed`` is None."""
    if not is_managed_pod(pod):
        return False
    if placed is None:
        return True
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    key = f"{meta.get('namespace', '')}/{labels.get(api.LABEL_JOB_NAME, '')}"
    return labels.get(api.LABEL_COMPONENT) == api.COMPONENT_WORKER and key in placed


def _holds(pod: Mapping[str, Any], placed: Collection[str] | None) -> bool:
    """Whether a bound pod holds what it requests of its node for the count at hand: not
    finished, and not a worker the arbiter places itself (:func:`_placed_by_arbiter`:
    ``placed`` None leaves out every trainscale pod, ``()`` none of them)."""
    if (pod.get("status") or {}).get("phase") in FINISHED_POD_PHASES:
        return False
    return not _placed_by_arbiter(pod, placed)


def _held_requests(
    pod: Mapping[str, Any], placed: Collection[str] | None
) -> quantities.Requests | None:
    """What a bound pod holds of its node's CPU and memory (None: nothing counted: it does
    not hold its node, :func:`_holds`, or its quantities do not parse)."""
    if not _holds(pod, placed):
        return None
    try:
        return quantities.compute_pod_requests(pod.get("spec") or {})
    except (TypeError, ValueError):
        return None


def build_node_free(
    nodes: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
    *,
    placed: Collection[str] | None = None,
) -> NodeFree:
    """Allocatable CPU and memory of each schedulable GPU node, less what the bound,
    unfinished pods request there, but for the workers the arbiter places itself: those of
    the jobs ``placed`` (``namespace/name``; the arbitrated ones), every trainscale pod when
    None, none when empty (a job without arbitration: every pod stays where it is). Pinned
    jobs' workers and every job's rendezvous pod stay where they are, so they count. Never
    below zero; a pod whose quantities do not parse counts nothing."""
    cpu: dict[str, float] = {}
    memory: dict[str, float] = {}
    listed = list(nodes)
    gpu_nodes = _schedulable_gpus(listed)
    for node in listed:
        name = (node.get("metadata") or {}).get("name")
        if name not in gpu_nodes:
            continue
        if (value := _allocatable(node, quantities.CPU)) is not None:
            cpu[name] = value * 1000
        if (value := _allocatable(node, quantities.MEMORY)) is not None:
            memory[name] = value
    for pod in pods:
        node_name = (pod.get("spec") or {}).get("nodeName")
        asked = _held_requests(pod, placed) if node_name in gpu_nodes else None
        if asked is None:
            continue
        if node_name in cpu:
            cpu[node_name] -= asked.cpu_millis
        if node_name in memory:
            memory[node_name] -= asked.memory_bytes
    return NodeFree(
        cpu_millis={n: max(0, int(v)) for n, v in cpu.items()},
        memory_bytes={n: max(0, int(v)) for n, v in memory.items()},
    )


def compute_worker_requests(spec: api.TrainingJobSpec) -> quantities.Requests:
    """The CPU and memory one worker of ``spec``'s template requests (:func:`_requests`)."""
    return _requests(template_pod_spec(spec.template))


def _requests(pod_spec: Mapping[str, Any]) -> quantities.Requests:
    """The CPU and memory a pod spec requests; nothing when a quantity does not parse (the
    API server refuses such pods anyway)."""
    try:
        return quantities.compute_pod_requests(pod_spec)
    except (TypeError, ValueError):
        return quantities.Requests()


def _pod_room(pod_spec: Mapping[str, Any], free: NodeFree) -> dict[str, int] | None:
    asked = _requests(pod_spec)
    if asked.cpu_millis <= 0 and asked.memory_bytes <= 0:
        return None
    room: dict[str, int] = {}
    for need, left in (
        (asked.cpu_millis, free.cpu_millis),
        (asked.memory_bytes, free.memory_bytes),
    ):
        if need <= 0:
            continue
        for node, amount in left.items():
            fit = amount // need
            room[node] = min(room.get(node, fit), fit)
    return room or None


def compute_room(
    nodes: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
    gpus_per_worker: int,
    pod_spec: Mapping[str, Any] | None = None,
    *,
    max_workers_per_node: int | None = None,
    spread_domains: Collection[str] | None = None,
    own_nodes: Iterable[str] = (),
) -> int | None:
    """Workers of ``gpus_per_worker`` GPUs the cluster has free GPUs for now: per schedulable
    node a worker of ``pod_spec`` may run on (its node selector, required node affinity and
    tolerations, :mod:`~trainscale.operator.autoscaling.node_filters`; every node when
    None), its allocatable GPUs less what every bound, unfinished pod requests
    (trainscale's too), in whole workers, and no more than the node's CPU and memory left
    hold of ``pod_spec``'s requests; for a job whose nodes run at most
    ``max_workers_per_node`` of its workers (its template's required pod anti-affinity to
    them, or a topology spread constraint, :func:`~trainscale.operator.autoscaling.
    node_filters.compute_max_workers_per_node`; with ``spread_domains``, that many more than
    the node it counts holding the fewest), no more than that less its workers there
    (``own_nodes``: the node of each). None when it cannot be known (no GPU nodes listed, a
    worker without GPUs). Other pod affinities and topology spread constraints are not read:
    the count is an upper bound, which is why a job compares it with what it was when its
    try failed
    (:meth:`~trainscale.operator.autoscaling.autoscaler.SchedulableCap.room_appeared`)."""
    listed = list(nodes)
    held = list(pods)
    free = _schedulable_gpus(listed)
    if gpus_per_worker <= 0 or not free:
        return None
    room: Mapping[str, int] = {}
    if pod_spec is not None:
        eligible = compute_eligible_nodes(pod_spec, listed)
        free = {name: gpus for name, gpus in free.items() if name in eligible}
        room = _pod_room(pod_spec, build_node_free(listed, held, placed=())) or {}
    fits = {
        name: min(gpus // gpus_per_worker, room.get(name, gpus))
        for name, gpus in _less_held(free, held, placed=()).items()
    }
    return compute_bounded_room(max_workers_per_node, spread_domains, Counter(own_nodes), fits)


@dataclass(frozen=True)
class ManagedJob:
    """One TrainingJob as the cluster pass sees it.

    Attributes:
        key: ``namespace/name``.
        spec: the validated spec.
        phase: ``status.phase`` (empty when none yet).
        created: creation time, seconds since the epoch.
        worker_nodes: the node of each of its workers bound and not finished, by replica
            index (:func:`compute_worker_nodes`).
        priority: the template's PriorityClass value (0 when none).
        preempts: its PriorityClass lets it preempt lower priorities (``preemptionPolicy``
            ``PreemptLowerPriority``, the Kubernetes default, also without a class); false
            for ``Never``. The arbiter then queues running jobs of lower priority for it.
        throughput: predicted samples/s per worker count, from the job's autoscaler.
        throughput_across_nodes: predicted samples/s at the counts that fit one node when
            the workers span two or more (``predict_throughput(n, nodes=2)``); empty
            before the autoscaler has a model.
        restart_cost_seconds: what a resize costs the job, as its autoscaler learned it.
        time_left_seconds: how long the job has left, where its trainer says (as of its
            autoscaler's last decision); None: not known.
        arbitration_enabled: the operator arbitrates (``--arbitration``, the default).
        node_bound: how many of its workers one node may run by its template's own rules,
            and which rule (a required pod anti-affinity to its own workers: 1; a topology
            spread constraint: its ``maxSkew``, more than the emptiest node it counts where
            that bound moves); None: no bound.
        pod_spec: its workers' pod spec as admission leaves it (a dry-run create: the
            tolerations, node selector and requests admission adds are the scheduler's to
            read too); None: its template's.
    """

    key: str
    spec: api.TrainingJobSpec
    phase: str = ""
    created: float = 0.0
    worker_nodes: tuple[str, ...] = ()
    priority: int = 0
    preempts: bool = False
    throughput: Mapping[int, float] = field(default_factory=dict)
    restart_cost_seconds: float = 0.0
    time_left_seconds: float | None = None
    arbitration_enabled: bool = True
    throughput_across_nodes: Mapping[int, float] = field(default_factory=dict)
    node_bound: NodeBound | None = None
    pod_spec: Mapping[str, Any] | None = None

    @property
    def scheduling_spec(self) -> Mapping[str, Any]:
        """The pod spec the scheduler filters its workers by: ``pod_spec``, else its
        template's."""
        return self.pod_spec if self.pod_spec is not None else template_pod_spec(self.spec.template)

    @property
    def max_workers_per_node(self) -> int | None:
        """Most of its workers one node may run (``node_bound``); None: no bound."""
        return self.node_bound.workers if self.node_bound is not None else None

    @property
    def finished(self) -> bool:
        return self.phase in FINISHED_JOB_PHASES

    @property
    def arbitrated(self) -> bool:
        """Whether the arbiter sets this job's size (else it is pinned)."""
        return (
            is_arbitrated(self.spec, self.arbitration_enabled)
            and not self.finished
            and not self.spec.suspend
        )


def is_arbitrated(spec: api.TrainingJobSpec, arbitration_enabled: bool) -> bool:
    """Autoscaled, asks for GPUs, did not opt out, and the operator arbitrates at all."""
    autoscaling = spec.autoscaling
    return (
        arbitration_enabled
        and autoscaling.enabled
        and autoscaling.cluster_arbitration
        and spec.gpus_per_replica > 0
    )


def decide_queued(
    spec: api.TrainingJobSpec, status: Mapping[str, Any], arbitration_enabled: bool
) -> str | None:
    """Why the job must run nothing now (reconcile rule 7), or None when it may run.

    An arbitrated job waits for its first admission (so it never leaves Pending pods behind
    on a full cluster) and while arbitration keeps it queued.
    """
    if not is_arbitrated(spec, arbitration_enabled):
        return None
    raw = status.get("arbitration")
    if not raw:
        return "waiting for cluster arbitration to admit the job"
    if raw.get("queued"):
        return str(raw.get("reason") or "queued by cluster arbitration")
    return None


def decide_ceiling(
    spec: api.TrainingJobSpec, status: Mapping[str, Any], arbitration_enabled: bool
) -> int | None:
    """The most workers cluster arbitration grants the job now (``status.arbitration.
    ceiling``; reconcile rule 5 creates none past it), or None: not arbitrated, or no
    ceiling written yet."""
    if not is_arbitrated(spec, arbitration_enabled):
        return None
    ceiling = (status.get("arbitration") or {}).get("ceiling")
    if isinstance(ceiling, bool) or not isinstance(ceiling, int) or ceiling < 0:
        return None
    return ceiling


def build_demand(job: ManagedJob, eligible: frozenset[str] | None = None) -> JobDemand:
    """The arbiter's view of one job (module docstring for what is pinned).

    ``eligible``: the nodes its template lets its workers run on (None: every node); the
    nodes its workers run on now are added (a rule changed while they ran does not move
    them: the scheduler's rules hold at scheduling, ``IgnoredDuringExecution``). A worker's
    CPU and memory requests are its pod spec's as admitted (:attr:`ManagedJob.
    scheduling_spec`: a LimitRange's default requests count)."""
    spec = job.spec
    autoscaling = spec.autoscaling
    running = len(job.worker_nodes)
    nodes = None if eligible is None else eligible | frozenset(job.worker_nodes)
    if not job.arbitrated:
        if job.finished:
            size = 0
        elif spec.suspend:
            size = running  # its workers are stopping: they hold their GPUs until gone
        else:
            size = max(running, spec.replicas)
        return JobDemand(
            key=job.key,
            gpus_per_worker=max(1, spec.gpus_per_replica),
            min_replicas=0,
            max_replicas=size,
            current_replicas=size,
            worker_nodes=job.worker_nodes,
            pinned=True,
            nodes=nodes,
        )
    floor = (
        autoscaling.min_efficiency if autoscaling.objective is api.Objective.EFFICIENCY else None
    )
    asked = _requests(job.scheduling_spec)
    return JobDemand(
        key=job.key,
        throughput=dict(job.throughput),
        gpus_per_worker=spec.gpus_per_replica,
        min_replicas=spec.min_replicas,
        max_replicas=spec.max_replicas,
        allowed_sizes=(
            api.allowed_sizes(spec) if spec.allowed_replicas != api.AllowedReplicas() else None
        ),
        min_efficiency=floor,
        max_cost_per_hour=(
            autoscaling.max_cost_per_hour if autoscaling.objective is api.Objective.BUDGET else None
        ),
        cost_per_gpu_hour=autoscaling.cost_per_gpu_hour,
        priority=job.priority,
        preempts=job.preempts,
        created=job.created,
        current_replicas=running,
        worker_nodes=job.worker_nodes,
        restart_cost_seconds=job.restart_cost_seconds,
        time_left_seconds=job.time_left_seconds,
        nodes=nodes,
        cpu_millis_per_worker=asked.cpu_millis,
        memory_bytes_per_worker=asked.memory_bytes,
        # a job that opted out of packing is placed by the scheduler alone: the arbiter's
        # plan, and the moves of its step 8, would not be followed; one with a bound on its
        # workers per node has packed figures that are already those of its placement (its
        # autoscaler is told the bound): nothing to consolidate past it
        throughput_across_nodes=(
            dict(job.throughput_across_nodes)
            if spec.placement.pack_workers and job.max_workers_per_node is None
            else {}
        ),
        max_workers_per_node=job.max_workers_per_node,
        per_node_rule=job.node_bound.rule if job.node_bound is not None else "",
        spread_domains=job.node_bound.domains if job.node_bound is not None else None,
    )


def parse_timestamp(value: str | None) -> float:
    """A Kubernetes timestamp as seconds since the epoch (0 when missing)."""
    moment = parse_time(value)
    return moment.timestamp() if moment is not None else 0.0


def compute_worker_nodes(
    pods: Iterable[Mapping[str, Any]],
) -> dict[tuple[str, str], tuple[str, ...]]:
    """Per job (namespace, name): the node of each of its workers that is bound, not
    finished and not terminating, by replica index (the reconcile loop deletes the highest
    indexes first when a job shrinks, so this order is the order its workers leave in).
    Only workers: the job's rendezvous pod carries its label too, and holds no GPU."""
    found: dict[tuple[str, str], list[tuple[int, str, str]]] = {}
    for pod in pods:
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        job_name = labels.get(api.LABEL_JOB_NAME)
        node_name = node_of_pod(pod)  # bound, not terminating, not finished
        if (
            not job_name
            or node_name is None
            or not is_managed_pod(pod)
            or labels.get(api.LABEL_COMPONENT) != api.COMPONENT_WORKER
        ):
            continue
        index = labels.get(api.LABEL_REPLICA_INDEX, "")
        order = int(index) if index.isdigit() else sys.maxsize
        key = (meta.get("namespace", ""), job_name)
        found.setdefault(key, []).append((order, meta.get("name", ""), node_name))
    return {key: tuple(node for _, _, node in sorted(workers)) for key, workers in found.items()}


@dataclass(frozen=True)
class ArbitrationResult:
    """What the cluster pass writes for one arbitrated job: the status block, and an Event
    when the job's share or queueing changed since the status it had."""

    key: str
    status: api.ArbitrationStatus
    event: EventSpec | None = None

    @property
    def ceiling(self) -> int | None:
        return self.status.ceiling

    @property
    def preempted(self) -> bool:
        """This pass stopped the job for a job of higher priority (its ``Preempted``
        Event)."""
        return self.event is not None and self.event.reason == PREEMPTED_EVENT

    @property
    def status_patch(self) -> dict[str, Any]:
        """The merge patch of ``status.arbitration`` (the only status field the pass owns)."""
        return api.TrainingJobStatus(arbitration=self.status).to_merge_patch()

    def patch_over(self, status: Mapping[str, Any]) -> dict[str, Any]:
        """:attr:`status_patch` over the job's current ``status``: the nodes the plan no
        longer holds leave ``preferredNodes``. (Merged key by key, they stayed: a job the
        plan moved kept both nodes, the reconcile pass read a plan the arbiter never made,
        and every later pass found the status changed and wrote it again: at 1,000 jobs
        half of them, every pass, each write waking the job's reconcile pass.)"""
        return replace_map(self.status_patch, status, ("arbitration", "preferredNodes"))


PREEMPTED_EVENT = "Preempted"  # the Event reason of a job arbitration stops for another


def _event(previous: api.ArbitrationStatus | None, new: api.ArbitrationStatus) -> EventSpec | None:
    """The Event of a change of the job's share: ``Preempted`` when a job that was admitted
    is stopped for one of higher priority, ``Queued``, ``Admitted`` or ``Arbitrated``."""
    if previous is not None and (previous.ceiling, previous.queued) == (new.ceiling, new.queued):
        return None
    stopped = previous is not None and not previous.queued
    if new.queued and stopped and new.preempted_by is not None:
        return EventSpec("Normal", PREEMPTED_EVENT, new.reason)
    if new.queued:
        return EventSpec("Normal", "Queued", new.reason)
    if previous is not None and previous.queued:
        return EventSpec("Normal", "Admitted", new.reason)
    if previous is None or previous.ceiling is None or new.ceiling != previous.ceiling:
        return EventSpec("Normal", "Arbitrated", new.reason)
    return None


def build_arbitration_status(
    allocation: JobAllocation, waiting: int, now: dt.datetime
) -> api.ArbitrationStatus:
    """``status.arbitration`` of one arbitrated job from the arbiter's answer."""
    return api.ArbitrationStatus(
        ceiling=allocation.replicas,
        queued=allocation.queued,
        wanted=allocation.wanted,
        reason=allocation.reason,
        preempted_by=allocation.preempted_by,
        preferred_nodes={name: workers for name, workers in allocation.placement},
        waiting_jobs=waiting,
        last_update_time=format_time(now),
    )


NO_CAPACITY_REASON = "not arbitrated: no schedulable node with nvidia.com/gpu is visible"


def _with_free(capacity: Capacity, free: NodeFree | None) -> Capacity:
    """``capacity`` with the nodes' CPU and memory left (None: not read)."""
    if free is None:
        return capacity
    return dataclasses.replace(
        capacity, free_cpu_millis=free.cpu_millis, free_memory_bytes=free.memory_bytes
    )


def _no_capacity_reason(
    nodes: Sequence[Mapping[str, Any]], other_nodes: Sequence[Mapping[str, Any]]
) -> str:
    """Why no job is arbitrated: no GPU visible; where nodes are listed and not one of them
    advertises a GPU (a cluster whose NVIDIA device plugin is not installed yet), it says so."""
    if nodes or not other_nodes:
        return NO_CAPACITY_REASON
    many = len(other_nodes) != 1
    return (
        f"{NO_CAPACITY_REASON} ({len(other_nodes)} node{'s' if many else ''} listed without "
        "it: is the NVIDIA device plugin running?)"
    )


def decide_arbitration(
    jobs: Sequence[ManagedJob],
    capacity: Capacity,
    previous: Mapping[str, api.ArbitrationStatus | None],
    now: dt.datetime,
    nodes: Sequence[Mapping[str, Any]] = (),
    free: NodeFree | None = None,
    settings: ArbiterSettings | None = None,
    other_nodes: Sequence[Mapping[str, Any]] = (),
) -> dict[str, ArbitrationResult]:
    """Run the arbiter over every managed job; results for the arbitrated ones only.

    With no GPU capacity visible at all (no GPU node, or the operator may not list nodes)
    there is nothing to divide: every arbitrated job is admitted without a ceiling, says so,
    and autoscales on its own, rather than wait for GPUs that may never be listed.

    With ``nodes`` given, each job is arbitrated on the nodes its template lets its workers
    run on (:mod:`~trainscale.operator.autoscaling.node_filters`): node pools kept apart by
    labels or taints are shared only by the jobs that may use them, and a job that may use
    no GPU node is queued with a reason that names the selector, affinity or taint.

    Args:
        jobs: every TrainingJob the operator manages (pinned ones too: they hold GPUs).
        capacity: :func:`build_capacity` of the nodes and every pod.
        previous: each job's ``status.arbitration`` as it is now (None when it has none).
        now: the wall clock, for the status timestamp and the arbiter.
        nodes: the GPU Node objects, with their labels and taints (``()``: every job may
            use every node); cordoned ones too, so a queued job's reason can say so.
        free: :func:`build_node_free` of the nodes and every pod, placed as the arbitrated
            jobs' (None: CPU and memory not read, no job's workers per node limited by
            them).
        settings: the arbiter's (:class:`ArbiterSettings`; its defaults when None).
        other_nodes: the nodes without GPUs, for a queued job's reason where its template
            admits only such nodes (:func:`~trainscale.operator.autoscaling.node_filters.
            explain_no_node`), and for the reason where no node advertises a GPU at all.
    """
    out: dict[str, ArbitrationResult] = {}
    if capacity.total == 0 and not any(job.worker_nodes for job in jobs):
        reason = _no_capacity_reason(nodes, other_nodes)
        for job in jobs:
            if job.arbitrated:
                status = api.ArbitrationStatus(reason=reason, last_update_time=format_time(now))
                out[job.key] = ArbitrationResult(
                    job.key, status, _event(previous.get(job.key), status)
                )
        return out
    listed = [n for n in nodes if (n.get("metadata") or {}).get("name") in capacity.free_gpus]
    by_key: dict[str, frozenset[str]] = {}  # jobs with the same scheduling fields share it
    eligible: dict[str, frozenset[str] | None] = {}
    for job in jobs:
        pod_spec = job.scheduling_spec
        if not listed:
            eligible[job.key] = None
            continue
        key = scheduling_key(pod_spec)
        if key not in by_key:
            by_key[key] = compute_eligible_nodes(pod_spec, listed)
        eligible[job.key] = by_key[key]
    demands = [build_demand(job, eligible[job.key]) for job in jobs if not job.finished]
    allocation: Allocation = allocate(
        demands, _with_free(capacity, free), now=now.timestamp(), settings=settings
    )
    for job in jobs:
        if not job.arbitrated or job.key not in allocation.jobs:
            continue
        status = build_arbitration_status(allocation.jobs[job.key], allocation.waiting, now)
        if status.queued and eligible[job.key] == frozenset() and not job.worker_nodes:
            why = explain_no_node(job.scheduling_spec, nodes, other_nodes)
            status = status.model_copy(
                update={"reason": f"queued: no GPU node may run its workers ({why})"}
            )
        before = previous.get(job.key)
        status = _still_preempted(before, status)
        out[job.key] = ArbitrationResult(job.key, status, _event(before, status))
    return out


def _still_preempted(
    previous: api.ArbitrationStatus | None, new: api.ArbitrationStatus
) -> api.ArbitrationStatus:
    """A preempted job keeps saying who preempted it while it waits (``preemptedBy``, and
    its reason's head): the arbiter names the preemptor only in the pass that stopped the
    job, and a reader a pass later would see a bare ``queued: ...`` with no hint why a job
    that ran stopped (the Preempted Event fades after an hour)."""
    if not (new.queued and previous is not None and previous.queued):
        return new
    head = previous.reason.split("; ", 1)[0] if previous.reason.startswith(PREEMPTED_BY) else ""
    # a status an operator before preemptedBy wrote names the preemptor in its reason only
    by = previous.preempted_by or head.removeprefix(PREEMPTED_BY).split(" ", 1)[0] or None
    if new.preempted_by is not None or by is None:
        return new
    update: dict[str, object] = {"preempted_by": by}
    if head:
        update["reason"] = f"{head}; {new.reason}"
    return new.model_copy(update=update)
