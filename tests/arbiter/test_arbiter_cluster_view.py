"""The cluster as the arbiter sees it (trainscale.operator.autoscaling.cluster), pure.

Covers:
- capacity: allocatable GPUs minus what foreign pods hold; our own pods, finished pods,
  cordoned nodes and nodes without GPUs;
- which jobs are arbitrated and which are pinned (autoscaling off, opted out, no GPUs,
  finished, arbitration off);
- reconcile rule 7's input: a new arbitrated job waits for admission, a queued one runs
  nothing, an admitted or pinned one runs;
- decide_arbitration: shares within capacity, the queued job's status and Event, Events only
  when a share changes, and "not arbitrated" when no GPU is visible;
- node pools: room and shares counted on the nodes a job's template lets it use (node
  selector, taints), the nodes it runs on kept, and a job no node admits queued with the
  field named;
- CPU and memory: what foreign pods leave of each GPU node's allocatable (ours, finished and
  unparseable ones not counted; nodes without the figure unknown), each job's workers per
  node from its template's requests (pinned jobs' workers and rendezvous pods counted,
  arbitrated jobs' workers not), and a job granted only the workers that room holds;
  without arbitration, the room a waiting job reads counts CPU too (every pod counted);
- a job whose template's required pod anti-affinity keeps its workers apart is read with
  that bound, carries no figures across nodes, and is planned one worker per node.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest

from tests.support.policy_sim import cliff, steady
from trainscale.operator import api
from trainscale.operator.autoscaling.arbiter import ArbiterSettings, Capacity
from trainscale.operator.autoscaling.autoscaler import JobAutoscaler
from trainscale.operator.autoscaling.cluster import (
    NO_CAPACITY_REASON,
    ManagedJob,
    build_capacity,
    build_demand,
    build_node_free,
    compute_largest_node_gpus,
    compute_room,
    compute_worker_nodes,
    compute_worker_requests,
    decide_arbitration,
    decide_ceiling,
    decide_queued,
)
from trainscale.operator.autoscaling.placement import Placement
from trainscale.operator.autoscaling.policy import Observation
from trainscale.operator.controller.builders import (
    COMPONENT_WORKER,
    LABEL_COMPONENT,
    LABEL_JOB_NAME,
    LABEL_REPLICA_INDEX,
    JobRef,
    build_rendezvous_pod,
    build_worker_pod,
)
from trainscale.operator.daemons.cluster import (
    ClusterArbitration,
    compute_asked_replicas,
    compute_prior_throughput,
)

NOW = dt.datetime(2026, 12, 1, 12, 0, 0, tzinfo=dt.UTC)


def node(
    name: str,
    gpus: int | None,
    *,
    cordoned: bool = False,
    labels: dict[str, str] | None = None,
    taints: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    allocatable = {} if gpus is None else {"nvidia.com/gpu": str(gpus)}
    return {
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"unschedulable": cordoned, "taints": taints or []},
        "status": {"allocatable": allocatable},
    }


def pod(
    node_name: str | None,
    gpus: int,
    *,
    ours: bool = False,
    job: str = "",
    namespace: str = "default",
    phase: str = "Running",
    terminating: bool = False,
    index: int = 0,
) -> dict[str, Any]:
    labels = (
        {
            "app.kubernetes.io/managed-by": "trainscale",
            LABEL_JOB_NAME: job,
            LABEL_COMPONENT: COMPONENT_WORKER,
            LABEL_REPLICA_INDEX: str(index),
        }
        if ours
        else {}
    )
    meta: dict[str, Any] = {"namespace": namespace, "labels": labels}
    if terminating:
        meta["deletionTimestamp"] = "2026-12-01T11:59:00Z"
    return {
        "metadata": meta,
        "spec": {
            "nodeName": node_name,
            "containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": gpus}}}],
        },
        "status": {"phase": phase},
    }


def spec(**changes: Any) -> api.TrainingJobSpec:
    autoscaling = {"enabled": True, **changes.pop("autoscaling", {})}
    body = {
        "replicas": 1,
        "minReplicas": 1,
        "maxReplicas": 8,
        "autoscaling": autoscaling,
        "template": {
            "spec": {
                "containers": [
                    {
                        "name": "trainer",
                        "image": "example/train:1",
                        "resources": {"limits": {"nvidia.com/gpu": changes.pop("gpus", 1)}},
                    }
                ],
                **changes.pop("pod", {}),
            }
        },
        **changes,
    }
    return api.TrainingJobSpec.model_validate(body)


@pytest.mark.parametrize(
    ("nodes", "pods", "expected"),
    [
        pytest.param([node("a", 8)], [], {"a": 8}, id="empty-node"),
        pytest.param([node("a", 8)], [pod("a", 3)], {"a": 5}, id="foreign-pod-subtracted"),
        pytest.param([node("a", 8)], [pod("a", 3, ours=True, job="j")], {"a": 8}, id="ours-not"),
        pytest.param([node("a", 8)], [pod("a", 3, phase="Succeeded")], {"a": 8}, id="finished"),
        pytest.param([node("a", 8)], [pod(None, 3)], {"a": 8}, id="unbound-pod"),
        pytest.param([node("a", 2)], [pod("a", 3)], {"a": 0}, id="never-negative"),
        pytest.param([node("a", 8, cordoned=True)], [], {}, id="cordoned-offers-nothing"),
        pytest.param([node("a", None), node("b", 0)], [], {}, id="no-gpus"),
    ],
)
def test_capacity(
    nodes: list[dict[str, Any]], pods: list[dict[str, Any]], expected: dict[str, int]
) -> None:
    assert dict(build_capacity(nodes, pods).free_gpus) == expected


@pytest.mark.parametrize(
    ("nodes", "pods", "per_worker", "expected"),
    [
        pytest.param([node("a", 8)], [], 2, 4, id="empty-node"),
        pytest.param([node("a", 8)], [pod("a", 8, ours=True, job="j")], 1, 0, id="ours-count-too"),
        pytest.param([node("a", 8), node("b", 8)], [pod("a", 7), pod("b", 5)], 2, 1,
                     id="whole-workers-per-node"),
        pytest.param([node("a", 8)], [pod("a", 8, phase="Failed")], 4, 2, id="finished-frees"),
        pytest.param([node("a", 8)], [pod(None, 8)], 8, 1, id="pending-holds-nothing"),
        pytest.param([node("a", 8), node("c", 8, cordoned=True)], [pod("a", 8)], 1, 0,
                     id="cordoned-offers-nothing"),
        pytest.param([node("a", 2)], [pod("a", 3)], 1, 0, id="never-negative"),
        pytest.param([], [], 1, None, id="no-nodes-unknown"),
        pytest.param([node("a", 8)], [], 0, None, id="cpu-workers-unknown"),
    ],
)  # fmt: skip
def test_room_counts_whole_workers_in_free_gpus(
    nodes: list[dict[str, Any]], pods: list[dict[str, Any]], per_worker: int, expected: int | None
) -> None:
    assert compute_room(nodes, pods, per_worker) == expected


def test_room_for_workers_that_may_not_share_a_node_is_a_node_each() -> None:
    """a, b and c have 7, 6 and 1 free GPUs; the job runs one worker on a. Bound to one
    worker per node, its room is one on b and one on c (none on a, where it runs), not the
    14 workers the GPUs hold; 2-GPU workers fit on b only."""
    nodes = [node("a", 8), node("b", 8), node("c", 8)]
    pods = [pod("a", 1, ours=True, job="j"), pod("b", 2), pod("c", 7)]
    assert compute_room(nodes, pods, 1) == 7 + 6 + 1
    assert compute_room(nodes, pods, 1, max_workers_per_node=1, own_nodes=["a"]) == 2
    assert compute_room(nodes, pods, 2, max_workers_per_node=1, own_nodes=["a"]) == 1
    assert compute_room(nodes, pods, 1, {}, max_workers_per_node=1, own_nodes=[]) == 3


def test_room_under_a_spread_constraint_fills_the_nodes_it_counts_evenly() -> None:
    """Free: a 7 (the job runs 1 there), b 6, c 1. Under maxSkew 1 over a, b and c, c ends
    with at most 1, so no node may pass 2: a takes 1 more, b 2, c 1 (4); counting a node
    outside the list (another team's pool, holding none of the job's workers), every node
    stays at 1: b and c (2)."""
    nodes = [node("a", 8), node("b", 8), node("c", 8)]
    pods = [pod("a", 1, ours=True, job="j"), pod("b", 2), pod("c", 7)]
    abc = frozenset("abc")
    moving = {"max_workers_per_node": 1, "own_nodes": ["a"]}
    assert compute_room(nodes, pods, 1, spread_domains=abc, **moving) == 4
    assert compute_room(nodes, pods, 1, spread_domains=abc | {"z"}, **moving) == 2


def test_worker_nodes_are_our_live_bound_workers_by_replica_index() -> None:
    pods = [
        pod("b", 1, ours=True, job="j", index=10),
        pod("a", 1, ours=True, job="j", index=2),
        pod("a", 1, ours=True, job="j", index=0),
        pod("b", 1, ours=True, job="j", index=1),
        pod("b", 1, ours=True, job="j", terminating=True, index=3),
        pod("b", 1, ours=True, job="j", phase="Failed", index=4),
        pod(None, 1, ours=True, job="j", index=5),
        pod("a", 1, ours=True, job="k", namespace="other"),
        pod("a", 1),
    ]
    # Index 10 after 2, not before: the order is numeric (the operator deletes index 10 first).
    assert compute_worker_nodes(pods) == {
        ("default", "j"): ("a", "b", "a", "b"),
        ("other", "k"): ("a",),
    }


def bound(pod_body: dict[str, Any], node_name: str) -> dict[str, Any]:
    """``pod_body`` as the apiserver returns it once the scheduler bound it to a node."""
    return {
        **pod_body,
        "spec": {**pod_body["spec"], "nodeName": node_name},
        "status": {"phase": "Running"},
    }


def test_running_nodes_count_workers_not_the_rendezvous_pod() -> None:
    """The operator's own pods as it builds them: the rendezvous pod carries the job's
    label too, holds no GPU and is no worker (counted, it made the arbiter hold a GPU the
    job did not have and charge a restart for the size the job runs at)."""
    ref = JobRef(name="j", namespace="default", uid="u1")
    job_spec = spec(replicas=3)
    pods = [bound(build_worker_pod(ref, job_spec, i), "a") for i in range(3)]
    pods.append(bound(build_rendezvous_pod(ref, job_spec), "a"))
    assert compute_worker_nodes(pods) == {("default", "j"): ("a", "a", "a")}
    demand = build_demand(ManagedJob("default/j", job_spec, worker_nodes=("a", "a", "a")))
    assert demand.current_replicas == 3


@pytest.mark.parametrize(
    ("job", "arbitrated"),
    [
        pytest.param(ManagedJob("d/a", spec()), True, id="autoscaled-gpu-job"),
        pytest.param(
            ManagedJob("d/a", spec(autoscaling={"enabled": False})), False, id="manual-size"
        ),
        pytest.param(
            ManagedJob("d/a", spec(autoscaling={"clusterArbitration": False})), False, id="opt-out"
        ),
        pytest.param(ManagedJob("d/a", spec(gpus=0)), False, id="cpu-only"),
        pytest.param(ManagedJob("d/a", spec(), phase="Succeeded"), False, id="finished"),
        pytest.param(ManagedJob("d/a", spec(), arbitration_enabled=False), False, id="off"),
    ],
)
def test_which_jobs_are_arbitrated(job: ManagedJob, arbitrated: bool) -> None:
    assert job.arbitrated is arbitrated
    assert build_demand(job).pinned is (not arbitrated)


def test_a_pinned_job_holds_what_it_runs() -> None:
    demand = build_demand(
        ManagedJob("d/a", spec(replicas=2, autoscaling={"enabled": False}), worker_nodes=("a",) * 3)
    )
    assert (demand.pinned, demand.current_replicas, dict(demand.current_nodes)) == (
        True,
        3,
        {"a": 3},
    )


@pytest.mark.parametrize(
    ("allowed", "sizes"),
    [
        pytest.param(None, None, id="every-count"),
        pytest.param({"multipleOf": 4}, (4, 8), id="multiple-of"),
        pytest.param({"powersOfTwo": True}, (1, 2, 4, 8), id="powers-of-two"),
    ],
)
def test_a_demand_carries_the_allowed_sizes(allowed: Any, sizes: Any) -> None:
    """The arbiter grants only counts the job may run at (``spec.allowedReplicas``)."""
    extra = {} if allowed is None else {"allowedReplicas": allowed, "replicas": 4, "minReplicas": 4}
    if allowed == {"powersOfTwo": True}:
        extra.update(replicas=1, minReplicas=1)
    demand = build_demand(ManagedJob("d/a", spec(**extra)))
    assert demand.allowed_sizes == sizes


@pytest.mark.parametrize(
    ("status", "enabled", "expected"),
    [
        pytest.param({}, True, "waiting for cluster arbitration to admit the job", id="new"),
        pytest.param(
            {"arbitration": {"queued": True, "reason": "queued: needs 4 GPUs, 2 free"}},
            True,
            "queued: needs 4 GPUs, 2 free",
            id="queued",
        ),
        pytest.param({"arbitration": {"queued": False, "ceiling": 3}}, True, None, id="admitted"),
        pytest.param({}, False, None, id="arbitration-off"),
    ],
)
def test_decide_queued(status: dict[str, Any], enabled: bool, expected: str | None) -> None:
    assert decide_queued(spec(), status, enabled) == expected


@pytest.mark.parametrize(
    ("status", "enabled", "pinned", "expected"),
    [
        pytest.param({"arbitration": {"ceiling": 3}}, True, False, 3, id="admitted"),
        pytest.param({"arbitration": {"ceiling": 0, "queued": True}}, True, False, 0, id="zero"),
        pytest.param({}, True, False, None, id="none-yet"),
        pytest.param({"arbitration": {"ceiling": 3}}, False, False, None, id="arbitration-off"),
        pytest.param({"arbitration": {"ceiling": 3}}, True, True, None, id="pinned"),
        pytest.param({"arbitration": {"ceiling": "3"}}, True, False, None, id="not-a-number"),
        pytest.param({"arbitration": {"ceiling": True}}, True, False, None, id="not-a-count"),
        pytest.param({"arbitration": {"ceiling": -1}}, True, False, None, id="negative"),
    ],
)
def test_decide_ceiling(
    status: dict[str, Any], enabled: bool, pinned: bool, expected: int | None
) -> None:
    job_spec = spec(autoscaling={"enabled": False}) if pinned else spec()
    assert decide_ceiling(job_spec, status, enabled) == expected


def test_a_pinned_job_never_waits() -> None:
    assert decide_queued(spec(autoscaling={"enabled": False}), {}, True) is None


def test_shares_fit_the_cluster_and_the_late_job_queues() -> None:
    big = ManagedJob(
        "d/big",
        spec(replicas=4, minReplicas=4, maxReplicas=8),
        created=1.0,
        worker_nodes=("a",) * 4,
        throughput={n: float(n) for n in range(1, 9)},
    )
    late = ManagedJob("d/late", spec(replicas=6, minReplicas=6, maxReplicas=8), created=2.0)
    results = decide_arbitration([big, late], Capacity({"a": 8}), {}, NOW)
    assert results["d/big"].status.ceiling is not None
    assert 4 <= results["d/big"].status.ceiling <= 8
    assert results["d/late"].status.queued
    assert results["d/late"].status.ceiling == 0
    assert results["d/late"].event is not None and results["d/late"].event.reason == "Queued"
    assert results["d/late"].status.waiting_jobs == 1
    # Unchanged on the next pass: no second Event.
    previous = {key: r.status for key, r in results.items()}
    again = decide_arbitration([big, late], Capacity({"a": 8}), previous, NOW)
    assert all(r.event is None for r in again.values())


def test_a_pinned_job_is_not_in_the_results_but_holds_its_gpus() -> None:
    pinned = ManagedJob(
        "d/fixed",
        spec(replicas=6, maxReplicas=6, autoscaling={"enabled": False}),
        worker_nodes=("a",) * 6,
    )
    wants = ManagedJob("d/auto", spec(replicas=4, minReplicas=4), created=1.0)
    results = decide_arbitration([pinned, wants], Capacity({"a": 8}), {}, NOW)
    assert set(results) == {"d/auto"}
    assert results["d/auto"].status.queued  # 8 - 6 = 2 free < minReplicas 4


def test_no_visible_gpus_admits_without_a_ceiling() -> None:
    results = decide_arbitration([ManagedJob("d/a", spec())], Capacity({}), {}, NOW)
    status = results["d/a"].status
    assert (status.ceiling, status.queued, status.reason) == (None, False, NO_CAPACITY_REASON)


def test_nodes_listed_and_none_with_a_gpu_suggest_the_device_plugin() -> None:
    """A cluster whose nodes advertise no nvidia.com/gpu at all (the NVIDIA device plugin
    not installed yet) says so in the reason; a GPU node listed but cordoned does not."""
    others = [{"metadata": {"name": n, "labels": {}}, "spec": {"taints": []}} for n in "xy"]
    job = ManagedJob("d/a", spec())
    status = decide_arbitration([job], Capacity({}), {}, NOW, other_nodes=others)["d/a"].status
    assert status.reason == NO_CAPACITY_REASON + (
        " (2 nodes listed without it: is the NVIDIA device plugin running?)"
    )
    assert not status.queued and status.ceiling is None
    cordoned = [node("g", 8, cordoned=True)]
    status = decide_arbitration([job], build_capacity(cordoned, []), {}, NOW, cordoned,
                                other_nodes=others)["d/a"].status  # fmt: skip
    assert status.reason == NO_CAPACITY_REASON


# ---------------------------------------------------------------------------- node pools

TAINT_B = {"key": "dedicated", "value": "b", "effect": "NoSchedule"}
TOLERATE_B = {"tolerations": [{"key": "dedicated", "operator": "Exists"}]}
POOLS = [
    node("a1", 8, labels={"pool": "a"}),
    node("a2", 8, labels={"pool": "a"}),
    node("b1", 8, labels={"pool": "b"}, taints=[TAINT_B]),
]


@pytest.mark.parametrize(
    ("pod_spec", "pods", "expected"),
    [
        pytest.param({}, [], 16, id="the-tainted-node-is-not-room"),
        pytest.param(TOLERATE_B, [], 24, id="tolerated-it-is"),
        pytest.param({"nodeSelector": {"pool": "b"}, **TOLERATE_B}, [], 8, id="one-pool"),
        pytest.param({"nodeSelector": {"pool": "c"}}, [], 0, id="no-node-admits-it"),
        pytest.param({"nodeSelector": {"pool": "a"}}, [pod("b1", 8)], 16, id="other-pool-busy"),
    ],
)
def test_room_counts_only_the_nodes_the_workers_may_use(
    pod_spec: dict[str, Any], pods: list[dict[str, Any]], expected: int
) -> None:
    assert compute_room(POOLS, pods, 1, pod_spec) == expected


def test_jobs_are_shared_out_on_the_pools_they_may_use() -> None:
    """Pool b is tainted: a plain job cannot use it, so two plain jobs share pool a (16) and
    the tolerating job alone takes pool b; before pools were read, the arbiter spread 24
    GPUs over the three, and 8 of the plain jobs' workers would have stayed Pending."""
    wide = {n: float(n) for n in range(1, 17)}
    jobs = [
        ManagedJob("d/p1", spec(maxReplicas=16), created=1.0, throughput=wide),
        ManagedJob("d/p2", spec(maxReplicas=16), created=2.0, throughput=wide),
        ManagedJob("d/b", spec(maxReplicas=16, pod=TOLERATE_B), created=3.0, throughput=wide),
    ]
    results = decide_arbitration(jobs, build_capacity(POOLS, []), {}, NOW, POOLS)
    ceilings = {key: r.status.ceiling for key, r in results.items()}
    assert ceilings["d/p1"] is not None and ceilings["d/p2"] is not None
    assert ceilings["d/p1"] + ceilings["d/p2"] == 16
    for key in ("d/p1", "d/p2"):
        assert set(results[key].status.preferred_nodes) <= {"a1", "a2"}
    assert ceilings["d/b"] == 8
    assert set(results["d/b"].status.preferred_nodes) == {"b1"}


def test_a_job_no_node_admits_is_queued_with_the_field_named() -> None:
    job = ManagedJob("d/lost", spec(pod={"nodeSelector": {"pool": "h100"}}), created=1.0)
    other = ManagedJob("d/ok", spec(), created=2.0)
    results = decide_arbitration([job, other], build_capacity(POOLS, []), {}, NOW, POOLS)
    status = results["d/lost"].status
    assert status.queued
    assert status.reason == (
        "queued: no GPU node may run its workers (nodeSelector pool=h100 excludes 3 nodes)"
    )
    assert results["d/lost"].event is not None and results["d/lost"].event.message == status.reason
    assert not results["d/ok"].status.queued  # a job that can never start blocks nobody


def test_a_job_whose_pool_advertises_no_gpu_is_told_so() -> None:
    """The nodes its selector picks are listed without GPUs (no device plugin there): the
    reason names them beside the GPU nodes it excludes."""
    train = [{"metadata": {"name": "t1", "labels": {"pool": "train"}},
              "spec": {"unschedulable": False, "taints": []}}]  # fmt: skip
    job = ManagedJob("d/t", spec(pod={"nodeSelector": {"pool": "train"}}), created=1.0)
    results = decide_arbitration([job], build_capacity(POOLS, []), {}, NOW, POOLS,
                                 other_nodes=train)  # fmt: skip
    assert results["d/t"].status.reason == (
        "queued: no GPU node may run its workers (nodeSelector pool=train excludes 3 nodes; "
        "the 1 node it may run on (t1) advertises no nvidia.com/gpu: is the NVIDIA device "
        "plugin running there?)"
    )


def test_a_job_whose_only_pool_is_cordoned_is_told_so() -> None:
    drained = [*POOLS, node("c1", 8, labels={"pool": "c"}, cordoned=True)]
    job = ManagedJob("d/c", spec(pod={"nodeSelector": {"pool": "c"}}), created=1.0)
    results = decide_arbitration([job], build_capacity(drained, []), {}, NOW, drained)
    assert results["d/c"].status.reason == (
        "queued: no GPU node may run its workers "
        "(nodeSelector pool=c excludes 3 nodes; cordoned excludes 1 node)"
    )


def test_workers_running_on_a_node_their_template_no_longer_admits_keep_it() -> None:
    """The pool's taint came after the job's workers were bound (NoSchedule does not evict
    them): their node stays the job's, in the arbiter's view as in the cluster."""
    job = ManagedJob(
        "d/old",
        spec(replicas=8, minReplicas=8, maxReplicas=8),
        created=1.0,
        worker_nodes=("b1",) * 8,
        throughput={n: float(n) for n in range(1, 9)},
    )
    demand = build_demand(job, frozenset({"a1", "a2"}))
    assert demand.nodes == {"a1", "a2", "b1"}
    results = decide_arbitration([job], build_capacity(POOLS, []), {}, NOW, POOLS)
    assert results["d/old"].status.ceiling == 8
    assert results["d/old"].status.preferred_nodes == {"b1": 8}


def test_without_nodes_every_job_may_use_every_node() -> None:
    assert build_demand(ManagedJob("d/j", spec())).nodes is None


def _sized(name: str, gpus: int, cpu: str | None, memory: str | None) -> dict[str, Any]:
    found = node(name, gpus)
    if cpu is not None:
        found["status"]["allocatable"]["cpu"] = cpu
    if memory is not None:
        found["status"]["allocatable"]["memory"] = memory
    return found


def _asking(found: dict[str, Any], cpu: str | None = None, memory: str | None = None) -> dict:
    requests = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v is not None}
    found["spec"]["containers"][0]["resources"]["requests"] = requests
    return found


def test_node_free_is_allocatable_less_what_foreign_pods_request() -> None:
    nodes = [
        _sized("a", 8, "64", "512Gi"),
        _sized("b", 8, "32000m", None),  # memory not listed: unknown
        _sized("c", 8, "lots", "1Ti"),  # CPU not a quantity: unknown
        _sized("d", 0, "64", "512Gi"),  # no GPUs: not a node arbitration places on
        {**_sized("e", 8, "64", "64Gi"), "spec": {"unschedulable": True}},
    ]
    pods = [
        _asking(pod("a", 6), cpu="40", memory="100Gi"),  # another team's
        _asking(pod("a", 0), cpu="500m"),  # a DaemonSet's
        _asking(pod("a", 1, ours=True, job="j"), cpu="10"),  # ours: placed by the arbiter
        _asking(pod("a", 1, phase="Succeeded"), cpu="10"),  # finished
        _asking(pod("b", 1), cpu="40"),  # more than b has: none left, never negative
        _asking(pod("a", 1), cpu="two"),  # unparseable: counts nothing
    ]
    free = build_node_free(nodes, pods)
    assert free.cpu_millis == {"a": 23_500, "b": 0}
    assert free.memory_bytes == {"a": 412 * 2**30, "c": 2**40}


@pytest.mark.parametrize(
    ("requests", "expected"),
    [
        pytest.param({"cpu": "10"}, (10_000, 0), id="cpu"),
        pytest.param({"memory": "100Gi"}, (0, 100 * 2**30), id="memory"),
        pytest.param({"cpu": "500m", "memory": "2G"}, (500, 2 * 10**9), id="both"),
        pytest.param({}, (0, 0), id="nothing-asked"),
        pytest.param({"cpu": "many"}, (0, 0), id="unparseable"),
    ],
)
def test_a_workers_requests_are_its_templates(
    requests: dict[str, str], expected: tuple[int, int]
) -> None:
    job_spec = spec(pod={"containers": [{"name": "t", "image": "x", "resources": {
        "limits": {"nvidia.com/gpu": 1}, "requests": requests}}]})  # fmt: skip
    asked = compute_worker_requests(job_spec)
    assert (asked.cpu_millis, asked.memory_bytes) == expected
    job = ManagedJob("d/j", job_spec, created=1.0)
    demand = build_demand(job)
    assert (demand.cpu_millis_per_worker, demand.memory_bytes_per_worker) == expected
    assert not demand.preempts
    assert build_demand(dataclasses.replace(job, preempts=True)).preempts  # its PriorityClass


def test_a_job_is_granted_only_the_workers_its_cpu_leaves_room_for() -> None:
    """Another team's pod holds 40 of node a's 64 CPUs; workers asking 12 CPUs fit 2 on a
    and 5 on b, so the job's ceiling is 7 of its 8, and its placement follows that room
    (it was granted 8 before, with the eighth worker left Pending)."""
    heavy = spec(replicas=8, minReplicas=1, maxReplicas=8, pod={"containers": [{
        "name": "t", "image": "x",
        "resources": {"limits": {"nvidia.com/gpu": 1}, "requests": {"cpu": "12"}}}]})  # fmt: skip
    job = ManagedJob("d/heavy", heavy, created=1.0, throughput={n: float(n) for n in range(1, 9)})
    nodes = [_sized("a", 8, "64", "512Gi"), _sized("b", 8, "64", "512Gi")]
    pods = [_asking(pod("a", 2), cpu="40")]
    capacity = build_capacity(nodes, pods)
    results = decide_arbitration([job], capacity, {}, NOW, nodes, build_node_free(nodes, pods))
    status = results["d/heavy"].status
    assert status.ceiling == 7
    assert status.preferred_nodes == {"a": 2, "b": 5}
    blind = decide_arbitration([job], capacity, {}, NOW, nodes)
    assert blind["d/heavy"].status.ceiling == 8
    assert build_demand(job).cpu_millis_per_worker == 12_000


def test_two_jobs_are_not_both_planned_on_the_same_cpu() -> None:
    """Two arbitrated jobs whose workers ask 16 of the node's 64 CPUs: 4 workers in all
    on its 8 GPUs (each job's room counted alone planned 4 each, and 4 stayed Pending);
    read from the Node and Pod objects as the operator reads them."""
    worker = {"containers": [{"name": "t", "image": "x", "resources": {
        "limits": {"nvidia.com/gpu": 1}, "requests": {"cpu": "16"}}}]}  # fmt: skip
    jobs = [
        ManagedJob(f"d/{k}", spec(replicas=4, minReplicas=1, maxReplicas=8, pod=worker),
                   created=float(i), throughput={n: float(n) for n in range(1, 9)})
        for i, k in enumerate("ab")
    ]  # fmt: skip
    nodes = [_sized("a", 8, "64", "512Gi")]
    capacity = build_capacity(nodes, [])
    results = decide_arbitration(jobs, capacity, {}, NOW, nodes, build_node_free(nodes, []))
    ceilings = [results[j.key].status.ceiling for j in jobs]
    assert sum(c or 0 for c in ceilings) == 4 and min(c or 0 for c in ceilings) >= 1
    blind = decide_arbitration(jobs, capacity, {}, NOW, nodes)
    assert sum(blind[j.key].status.ceiling or 0 for j in jobs) == 8


def test_room_for_a_job_without_arbitration_counts_cpu_too() -> None:
    """Without arbitration every bound pod is where it is, trainscale's too: node a has 6
    GPUs and 4 CPUs left, b 8 GPUs and 60 CPUs; workers asking 10 CPUs fit none on a and 6
    on b, not 14."""
    nodes = [_sized("a", 8, "64", "512Gi"), _sized("b", 8, "64", "512Gi")]
    pods = [
        _asking(pod("a", 2), cpu="40"),
        _asking(pod("a", 0, ours=True, job="j"), cpu="20"),  # ours count here
        _asking(pod("b", 0), cpu="4"),
    ]
    worker = {"containers": [{"name": "t", "resources": {"requests": {"cpu": "10"}}}]}
    assert compute_room(nodes, pods, 1, worker) == 0 + 6
    assert compute_room(nodes, pods, 1, {"containers": [{"name": "t"}]}) == 6 + 8
    assert compute_room(nodes, pods, 1) == 6 + 8  # no template: GPUs only


def test_node_free_counts_every_pod_the_arbiter_does_not_place() -> None:
    """The operator's own pods as it builds them: an arbitrated job's workers are placed by
    the arbiter (not counted); a pinned job's workers and every rendezvous pod stay where
    they are (counted)."""
    worker = {"containers": [{"name": "t", "image": "x", "resources": {
        "limits": {"nvidia.com/gpu": 1}, "requests": {"cpu": "8"}}}]}  # fmt: skip
    arbitrated = JobRef(name="j", namespace="default", uid="u1")
    pinned = JobRef(name="k", namespace="default", uid="u2")
    job_spec = spec(replicas=2, pod=worker)
    pods = [bound(build_worker_pod(arbitrated, job_spec, i), "a") for i in range(2)]
    pods += [bound(build_worker_pod(pinned, job_spec, 0), "a")]
    pods += [bound(build_rendezvous_pod(ref, job_spec), "a") for ref in (arbitrated, pinned)]
    nodes = [_sized("a", 8, "64", "512Gi")]
    free = build_node_free(nodes, pods, placed={"default/j"})
    assert free.cpu_millis == {"a": 64_000 - 8_000 - 2 * 50}  # k's worker, two rendezvous
    assert free.memory_bytes == {"a": 512 * 2**30 - 2 * 256 * 2**20}
    assert build_node_free(nodes, pods).cpu_millis == {"a": 64_000}  # none of ours
    assert build_node_free(nodes, pods, placed=()).cpu_millis == {"a": 64_000 - 3 * 8_000 - 100}


def test_an_urgent_job_grows_into_a_lower_priority_one_unless_told_only_to_start() -> None:
    """The operator's ``--arbitration-preemption``: with ``grow`` (the default) an urgent
    job running 4 of its 8 takes the node of a job of priority 0 at its minimum; with
    ``start`` (``preempt_to_grow`` off) it stays at 4 beside it."""
    linear = {n: float(n) for n in range(1, 9)}
    urgent = ManagedJob(
        "d/urgent",
        spec(replicas=4, minReplicas=1, maxReplicas=8),
        created=2.0,
        worker_nodes=("a",) * 4,
        priority=10,
        preempts=True,
        throughput=linear,
    )
    low = ManagedJob("d/low", spec(replicas=4, minReplicas=4, maxReplicas=4), created=1.0,
                     worker_nodes=("b",) * 4, throughput=linear)  # fmt: skip
    capacity = Capacity({"a": 4, "b": 4})
    grown = decide_arbitration([urgent, low], capacity, {}, NOW)
    assert (grown["d/urgent"].status.ceiling, grown["d/low"].status.queued) == (8, True)
    assert grown["d/low"].status.reason.startswith("preempted by d/urgent (priority 10 over 0)")
    assert (grown["d/low"].status.preempted_by, grown["d/urgent"].status.preempted_by) == (
        "d/urgent",
        None,
    )
    assert not grown["d/low"].preempted  # no status before: not known to have run
    running = {
        "d/low": api.ArbitrationStatus(ceiling=4),
        "d/urgent": api.ArbitrationStatus(ceiling=4),
    }
    again = decide_arbitration([urgent, low], capacity, running, NOW)
    assert again["d/low"].preempted and not again["d/urgent"].preempted
    event = again["d/low"].event
    assert event is not None and (event.reason, event.message) == (
        "Preempted",
        again["d/low"].status.reason,
    )
    waiting = {**running, "d/low": again["d/low"].status}
    assert decide_arbitration([urgent, low], capacity, waiting, NOW)["d/low"].event is None
    # A pass later its workers are gone and the urgent job runs 8 (now its minimum: none of
    # them to claim): it still says who took its place while it waits, not once it runs.
    grown = dataclasses.replace(
        urgent,
        spec=spec(replicas=8, minReplicas=8, maxReplicas=8),
        worker_nodes=("a",) * 4 + ("b",) * 4,
    )
    stopped = dataclasses.replace(low, worker_nodes=())
    later = decide_arbitration([grown, stopped], capacity, waiting, NOW)["d/low"].status
    assert later.queued and later.reason == (
        "preempted by d/urgent (priority 10 over 0); queued: needs 4 GPUs, 0 free"
    )
    assert later.preempted_by == "d/urgent"
    # a status written before preemptedBy existed: the reason alone names the preemptor
    older = later.model_copy(update={"preempted_by": None})
    upgraded = decide_arbitration([grown, stopped], capacity, {**waiting, "d/low": older}, NOW)
    assert upgraded["d/low"].status == later
    admitted = decide_arbitration([stopped], capacity, {"d/low": later}, NOW)["d/low"]
    gone = admitted.status
    assert not gone.queued and not gone.reason.startswith("preempted by")
    # admitted, it no longer names one: the merge patch deletes the field
    assert admitted.status_patch["arbitration"]["preemptedBy"] is None
    start = ArbiterSettings(preempt_to_grow=False)
    kept = decide_arbitration([urgent, low], capacity, {}, NOW, settings=start)
    assert (kept["d/urgent"].status.ceiling, kept["d/low"].status.ceiling) == (4, 4)


@pytest.mark.parametrize(
    ("replicas", "forced_from", "asked"),
    [
        pytest.param(6, [], 6, id="its-spec"),
        pytest.param(6, [8], 8, id="a-count-it-was-forced-off"),
        pytest.param(6, [4, 7], 7, id="the-largest"),
        pytest.param(6, [3], 6, id="never-below-its-spec"),
        pytest.param(6, [12], 8, id="within-maxReplicas"),
    ],
)
def test_a_job_without_measurements_is_assumed_to_want_what_it_was_forced_off(
    replicas: int, forced_from: list[int], asked: int
) -> None:
    """The prior of a job with no model is linear up to the size it asked for: its
    ``spec.replicas``, which its autoscaler lowers to a ceiling, or the larger count it was
    forced off (``status.autoscaling.memory.forcedFrom``), so it grows back when GPUs free."""
    job = spec(replicas=replicas, minReplicas=2, maxReplicas=8)
    assert compute_asked_replicas(job, forced_from) == asked
    prior = compute_prior_throughput(job, asked)
    assert max(prior, key=lambda n: (prior[n], -n)) == asked  # gains up to it, none past


def test_the_time_a_job_has_left_reaches_its_demand_as_its_loop_offered_it() -> None:
    """What the job's autoscale loop offers with its model (its last decision's time left,
    where its trainer says) is what the pass's demand carries, less the time since that
    decision (a pass may come an interval after it), never below 0; offered as unknown, it
    is forgotten; a job gone keeps nothing."""
    job_spec = spec(replicas=4, maxReplicas=16)
    clock = [1000.0]
    arbitration = ClusterArbitration(clock=lambda: clock[0])
    body = {"metadata": {"namespace": "d", "name": "j"}, "spec": job_spec.model_dump(by_alias=True)}

    def time_left() -> float | None:
        return build_demand(arbitration._managed_job(body, {}, {})).time_left_seconds

    arbitration.register("d/j", JobAutoscaler(job_spec), 60.0, 1234.5)
    assert time_left() == 1234.5
    clock[0] += 30.0
    assert time_left() == 1204.5  # aged by the 30 s since it was offered
    # offered again by the loop's next pass, as decided 20 s ago (before this pass)
    arbitration.register("d/j", JobAutoscaler(job_spec), 60.0, 1100.0, told_at=clock[0] - 20.0)
    assert time_left() == 1080.0
    clock[0] += 2000.0
    assert time_left() == 0.0  # its end has passed: no time left, not a negative one
    arbitration.register("d/j", JobAutoscaler(job_spec), 60.0, None)
    assert time_left() is None
    arbitration.register("d/j", JobAutoscaler(job_spec), 60.0, 99.0)
    arbitration.forget("d/j")
    assert time_left() is None


def test_a_jobs_throughput_across_nodes_comes_from_its_model_for_the_counts_one_node_holds() -> (
    None
):
    """The job's own autoscaler, having measured 2 and 4 workers on one node and 8 on two,
    predicts what its workers lose across nodes; the pass asks it for the counts one node of
    the cluster's holds (4 GPUs, workers of 1 GPU: 2 to 4, of 2 GPUs: 2) and the demand
    carries them. Before the job has a model, or on a cluster without GPU nodes: nothing."""
    tau = cliff(0.01, 0.3, 4)
    job_spec = spec(replicas=4, maxReplicas=16)
    autoscaler = JobAutoscaler(job_spec)
    arbitration = ClusterArbitration()
    arbitration.register("d/j", autoscaler)
    body = {"metadata": {"namespace": "d", "name": "j"}, "spec": job_spec.model_dump(by_alias=True)}
    assert arbitration._managed_job(body, {}, {}, node_gpus=4).throughput_across_nodes == {}
    t = 0.0
    for n, spans in ((2, 1), (4, 1), (8, 2)):
        for o in steady(n, start=t, count=8, tau=tau):
            seen = Observation(o.timestamp, n, o.gpu_utilization, o.samples_per_second, spans)
            autoscaler.decide([seen], current_replicas=n, now=o.timestamp,
                              placement=Placement((4,), gpus_per_node=4))  # fmt: skip
        t += 8 * 30.0 + 3600.0  # steady()'s scrapes are 30 s apart
    job = arbitration._managed_job(body, {}, {}, node_gpus=4)
    across = job.throughput_across_nodes
    assert sorted(across) == [2, 3, 4]
    for n in across:
        packed = autoscaler.predict_throughput(n)
        assert packed is not None and across[n] < 0.9 * packed
    assert build_demand(job).throughput_across_nodes == across
    unpacked = spec(replicas=4, maxReplicas=16, placement={"packWorkers": False})
    assert build_demand(dataclasses.replace(job, spec=unpacked)).throughput_across_nodes == {}
    assert arbitration._managed_job(body, {}, {}, node_gpus=0).throughput_across_nodes == {}
    two_gpus = {**body, "spec": spec(replicas=4, maxReplicas=16, gpus=2).model_dump(by_alias=True)}
    assert sorted(
        arbitration._managed_job(two_gpus, {}, {}, node_gpus=4).throughput_across_nodes
    ) == [2]


def test_the_largest_node_counts_schedulable_gpu_nodes_only() -> None:
    cordoned = node("c", 16, cordoned=True)
    assert compute_largest_node_gpus([node("a", 4), node("b", 8), cordoned, node("d", None)]) == 8
    assert compute_largest_node_gpus([]) == 0


def test_a_job_whose_workers_may_not_share_a_node_is_placed_one_per_node() -> None:
    """The template's required pod anti-affinity to the job's own workers (by the job-name
    label the operator puts on them) is read from the spec by the pass; the demand carries
    the bound and no figures across nodes (there is no one node to consolidate it on), and
    the arbiter plans its workers one per node. A term selecting other pods binds nothing."""
    own = {"labelSelector": {"matchLabels": {LABEL_JOB_NAME: "j"}},
           "topologyKey": "kubernetes.io/hostname"}  # fmt: skip
    pod = {
        "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [own]}}
    }
    job_spec = spec(replicas=3, maxReplicas=3, pod=pod)
    body = {"metadata": {"namespace": "d", "name": "j"}, "spec": job_spec.model_dump(by_alias=True)}
    arbitration = ClusterArbitration()
    job = arbitration._managed_job(body, {}, {}, node_gpus=4)
    assert job is not None and job.max_workers_per_node == 1
    demand = build_demand(dataclasses.replace(job, throughput_across_nodes={2: 1.0, 3: 1.5}))
    assert demand.max_workers_per_node == 1 and demand.throughput_across_nodes == {}
    results = decide_arbitration([job], Capacity({"a": 4, "b": 4, "c": 4}), {}, NOW)
    assert results["d/j"].status.preferred_nodes == {"a": 1, "b": 1, "c": 1}
    other = {**own, "labelSelector": {"matchLabels": {"app": "inference"}}}
    pod = {
        "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [other]}}
    }
    body = {**body, "spec": spec(replicas=3, maxReplicas=3, pod=pod).model_dump(by_alias=True)}
    assert arbitration._managed_job(body, {}, {}, node_gpus=4).max_workers_per_node is None


def test_a_spread_constraint_beside_a_tainted_pool_bounds_its_workers_per_node() -> None:
    """A template's topology spread constraint (maxSkew 2 on the hostname, DoNotSchedule,
    selecting its workers by the job-name label) with another team's tainted node in the
    cluster: the scheduler counts that node (nodeTaintsPolicy Ignore, the default) and it
    never holds a worker, so a node runs at most 2 of them. The pass reads it from the spec
    and the nodes, the demand carries the bound and names its rule, and the arbiter plans 2
    per node on a and b (6 wanted). Tolerating the taint, the job could have a worker on
    every node: its bound moves with its placement."""
    constraint = {"maxSkew": 2, "topologyKey": "kubernetes.io/hostname",
                  "whenUnsatisfiable": "DoNotSchedule",
                  "labelSelector": {"matchLabels": {LABEL_JOB_NAME: "j"}}}  # fmt: skip
    pod_spec = {"topologySpreadConstraints": [constraint]}
    body = {"metadata": {"namespace": "d", "name": "j"},
            "spec": spec(replicas=6, maxReplicas=6, pod=pod_spec).model_dump(by_alias=True)}  # fmt: skip
    dedicated = [{"key": "dedicated", "value": "infer", "effect": "NoSchedule"}]
    listed = [node(n, 8, labels={"kubernetes.io/hostname": n}) for n in ("a", "b")]
    listed.append(node("c", 8, labels={"kubernetes.io/hostname": "c"}, taints=dedicated))
    arbitration = ClusterArbitration()
    job = arbitration._managed_job(body, {}, {}, listed, node_gpus=8)
    assert job is not None and job.max_workers_per_node == 2
    demand = build_demand(job)
    assert demand.max_workers_per_node == 2 and "node c is counted" in demand.per_node_rule
    results = decide_arbitration([job], Capacity({"a": 8, "b": 8}), {}, NOW)
    assert results["d/j"].status.preferred_nodes == {"a": 2, "b": 2}
    assert "at most 2 of its workers may share a node" in results["d/j"].status.reason
    tolerant = {**pod_spec, "tolerations": [{"key": "dedicated", "operator": "Exists"}]}
    body = {**body, "spec": spec(replicas=6, maxReplicas=6, pod=tolerant).model_dump(by_alias=True)}
    moving = arbitration._managed_job(body, {}, {}, listed, node_gpus=8).node_bound
    assert moving is not None and moving.domains == frozenset("abc")


def test_a_spread_constraint_over_every_node_bounds_its_workers_by_the_emptiest() -> None:
    """Tolerating every node, the job may have a worker on each node its constraint
    (maxSkew 1) counts: the demand carries a bound that moves, with those nodes. With c
    full of another team's pods it holds none there, so a and b run 1 each; with every
    node free its 6 workers spread 2 + 2 + 2."""
    constraint = {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                  "whenUnsatisfiable": "DoNotSchedule",
                  "labelSelector": {"matchLabels": {LABEL_JOB_NAME: "j"}}}  # fmt: skip
    body = {"metadata": {"namespace": "d", "name": "j"},
            "spec": spec(replicas=6, maxReplicas=6,
                         pod={"topologySpreadConstraints": [constraint]}).model_dump(by_alias=True)}  # fmt: skip
    listed = [node(n, 8, labels={"kubernetes.io/hostname": n}) for n in ("a", "b", "c")]
    job = ClusterArbitration()._managed_job(body, {}, {}, listed, node_gpus=8)
    assert job is not None and job.node_bound is not None
    assert job.node_bound.domains == frozenset("abc")
    assert build_demand(job).spread_domains == frozenset("abc")
    busy = decide_arbitration([job], Capacity({"a": 8, "b": 8, "c": 0}), {}, NOW)
    assert busy["d/j"].status.preferred_nodes == {"a": 1, "b": 1}
    assert "a node may run at most 1 more of its workers than another" in busy["d/j"].status.reason
    free = decide_arbitration([job], Capacity({"a": 8, "b": 8, "c": 8}), {}, NOW)
    assert free["d/j"].status.preferred_nodes == {"a": 2, "b": 2, "c": 2}


def test_a_spread_constraint_counts_the_nodes_without_gpus() -> None:
    """The same job with the cluster's system node beside the GPU nodes: the scheduler
    counts it (the template keeps no pool out) and it never holds a worker, so every GPU
    node runs at most 1 (maxSkew), 3 of the 6 wanted, and the reason names that node. A
    nodeSelector on the GPU pool keeps it out of the count: the bound moves again."""
    constraint = {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                  "whenUnsatisfiable": "DoNotSchedule",
                  "labelSelector": {"matchLabels": {LABEL_JOB_NAME: "j"}}}  # fmt: skip
    pod_spec: dict[str, Any] = {"topologySpreadConstraints": [constraint]}
    body = {"metadata": {"namespace": "d", "name": "j"},
            "spec": spec(replicas=6, maxReplicas=6, pod=pod_spec).model_dump(by_alias=True)}  # fmt: skip
    listed = [node(n, 8, labels={"kubernetes.io/hostname": n, "pool": "gpu"}) for n in "abc"]
    system = [{"metadata": {"name": "sys", "labels": {"kubernetes.io/hostname": "sys"}},
               "spec": {"unschedulable": False, "taints": []}}]  # fmt: skip
    arbitration = ClusterArbitration()
    job = arbitration._managed_job(body, {}, {}, listed, 8, system)
    assert job is not None and job.node_bound is not None and job.node_bound.domains is None
    assert "node sys (no GPU) is counted" in build_demand(job).per_node_rule
    results = decide_arbitration([job], Capacity({"a": 8, "b": 8, "c": 8}), {}, NOW)
    assert results["d/j"].status.preferred_nodes == {"a": 1, "b": 1, "c": 1}
    assert "node sys (no GPU) is counted" in results["d/j"].status.reason
    pooled = {**pod_spec, "nodeSelector": {"pool": "gpu"}}
    body = {**body, "spec": spec(replicas=6, maxReplicas=6, pod=pooled).model_dump(by_alias=True)}
    moving = arbitration._managed_job(body, {}, {}, listed, 8, system).node_bound
    assert moving is not None and moving.domains == frozenset("abc")


#: GKE's GPU nodes: every one tainted so, and pods requesting GPUs tolerate it once admitted.
GKE_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
GKE_NODES = [node(n, 8, taints=[GKE_TAINT]) for n in ("g1", "g2")]


def test_the_admitted_pod_spec_is_what_the_filters_and_requests_read() -> None:
    """A template without the toleration of GKE's GPU taint: read alone, every GPU node
    excludes it and it is queued; with the pod spec admission makes of it (the toleration
    ExtendedResourceToleration adds, a LimitRange's default CPU request), it is planned on
    those nodes and its workers' CPU is the admitted request."""
    body_spec = spec(replicas=1, maxReplicas=2)
    capacity = build_capacity(GKE_NODES, [])
    template_only = ManagedJob("d/j", body_spec, created=1.0)
    queued = decide_arbitration([template_only], capacity, {}, NOW, GKE_NODES)["d/j"].status
    assert queued.queued and "taint nvidia.com/gpu=present:NoSchedule excludes 2" in queued.reason
    container = {**body_spec.template["spec"]["containers"][0], "resources": {
        "limits": {"nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "1", "cpu": "4"}}}  # fmt: skip
    admitted = {"containers": [container], "tolerations": [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}  # fmt: skip
    job = ManagedJob("d/j", body_spec, created=1.0, pod_spec=admitted)
    status = decide_arbitration([job], capacity, {}, NOW, GKE_NODES)["d/j"].status
    assert not status.queued and status.preferred_nodes == {"g1": 1}, status
    assert build_demand(job).cpu_millis_per_worker == 4000
    assert build_demand(template_only).cpu_millis_per_worker == 0
