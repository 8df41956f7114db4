"""Node pools on the real control plane: which nodes a job may use, as the scheduler decides.

The test-bed's two GPU nodes become two pools: ``gpu-node-0`` is pool ``a`` (with a
``PreferNoSchedule`` taint, which keeps nothing off), ``gpu-node-1`` is pool ``b`` and tainted
``NoSchedule`` for a dedicated team. Covers:

- the node filters trainscale reads from a worker template
  (:mod:`trainscale.operator.autoscaling.node_filters`) agree with the real kube-scheduler,
  pod by pod: node selectors, required node affinity (In, NotIn, Gt, matchFields), taints
  and tolerations (values, effects, a toleration of everything); a pod we say fits nowhere
  stays Unschedulable, one we say fits is bound to a node we named;
- arbitration divides each pool between the jobs that may use it (``trainscale operator``
  as a process): two plain jobs share pool a's 8 GPUs, a job tolerating pool b's taint
  gets all of pool b, no worker is left Pending for a GPU it was granted on a node it may
  not use, and a job whose node selector matches no node is Queued with the selector named
  in its status and Event;
- new workers go to the node arbitration planned for them, not where the scheduler would
  spread them: a small job fills the last GPUs of a busy node, and a job needing a whole node
  then runs on the other (it stayed Queued when the scheduler chose); the arbiter plans
  workers where their CPU requests fit; a job whose template keeps its own workers one per
  node (a required pod anti-affinity) is planned one per node and granted what that leaves,
  none Pending, and one whose topology spread constraint counts a tainted node it never runs
  on is planned within its maxSkew per node, as is one that may run on every node, against
  the emptiest (a node another team fills), none Pending; a worker the scheduler still puts
  elsewhere (a pod anti-affinity to other pods, which the arbiter does not read) is counted
  by the ``workers_off_plan`` gauge;
- a job across both pools gives up GPUs where the operator deletes its workers (the highest
  indexes): an arrival that may use only pool a runs, where it used to stay Pending while
  the job lost workers on pool b (with the arbiter before index order: ``pool-a`` 4 Pending,
  ``wide`` 12 Running, for the whole 120 s).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.e2e.conftest import OperatorProcess, arbitrated_job
from tests.support.testbed import (
    Kubectl,
    describe_pods,
    foreign_gpu_pod,
    node_without_gpus,
    operator_samples,
    wait_for,
    wait_for_every_gpu,
)
from trainscale.operator.autoscaling.node_filters import compute_eligible_nodes
from trainscale.operator.observability.metric_names import WORKERS_OFF_PLAN_NAME
from trainscale.testbed.cluster import Testbed
from trainscale.trainer.launch.local import find_free_port

pytestmark = [pytest.mark.testbed, pytest.mark.slow]

POOL = "trainscale-e2e/pool"
DEDICATED = "trainscale-e2e/dedicated"
SOFT = "trainscale-e2e/soft"
JOB_LABEL = "trainscale.dev/job-name"


@pytest.fixture
def labelled_pools(kubectl: Kubectl, testbed: Testbed) -> Iterator[tuple[str, str]]:
    """Label the two GPU nodes pool a and pool b, no taints (a plain job may use both)."""
    a, b = testbed.node_names[:2]
    kubectl("label", "node", a, f"{POOL}=a", "--overwrite")
    kubectl("label", "node", b, f"{POOL}=b", "--overwrite")
    try:
        yield a, b
    finally:
        for node in (a, b):
            kubectl("label", "node", node, f"{POOL}-", check=False)


@pytest.fixture
def pools(kubectl: Kubectl, labelled_pools: tuple[str, str]) -> Iterator[tuple[str, str]]:
    """Pools a and b, with pool a tainted ``PreferNoSchedule`` (which keeps nothing off) and
    pool b ``NoSchedule`` for a dedicated team; undone afterwards."""
    a, b = labelled_pools
    kubectl("taint", "node", a, f"{SOFT}=x:PreferNoSchedule", "--overwrite")
    kubectl("taint", "node", b, f"{DEDICATED}=b:NoSchedule", "--overwrite")
    try:
        yield a, b
    finally:
        kubectl("taint", "node", a, f"{SOFT}-", check=False)
        kubectl("taint", "node", b, f"{DEDICATED}-", check=False)


def _nodes(kubectl: Kubectl, names: tuple[str, str]) -> list[dict[str, Any]]:
    found = json.loads(kubectl("get", "nodes", "-o", "json").stdout)["items"]
    return [n for n in found if n["metadata"]["name"] in names]


def _expr(key: str, operator: str, *values: str) -> dict[str, Any]:
    out: dict[str, Any] = {"key": key, "operator": operator}
    if values:
        out["values"] = list(values)
    return out


def _required(*terms: dict[str, Any]) -> dict[str, Any]:
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": list(terms)}
        }
    }


TOLERATE_B = {"key": DEDICATED, "operator": "Equal", "value": "b", "effect": "NoSchedule"}

# name -> the pod spec's scheduling fields (node names are filled in by the test: {b})
CASES: dict[str, dict[str, Any]] = {
    "plain": {},
    "selector-b": {"nodeSelector": {POOL: "b"}},
    "selector-b-tolerated": {"nodeSelector": {POOL: "b"}, "tolerations": [TOLERATE_B]},
    "selector-b-wrong-value": {
        "nodeSelector": {POOL: "b"},
        "tolerations": [{"key": DEDICATED, "operator": "Equal", "value": "c"}],
    },
    "selector-b-wrong-effect": {
        "nodeSelector": {POOL: "b"},
        "tolerations": [{"key": DEDICATED, "operator": "Exists", "effect": "NoExecute"}],
    },
    "affinity-in-tolerated": {
        "affinity": _required({"matchExpressions": [_expr(POOL, "In", "a", "b")]}),
        "tolerations": [TOLERATE_B],
    },
    "affinity-not-in-a": {"affinity": _required({"matchExpressions": [_expr(POOL, "NotIn", "a")]})},
    "gt-4-gpus": {
        "affinity": _required({"matchExpressions": [_expr("nvidia.com/gpu.count", "Gt", "4")]})
    },
    "gt-8-gpus": {
        "affinity": _required({"matchExpressions": [_expr("nvidia.com/gpu.count", "Gt", "8")]})
    },
    "field-b-tolerate-all": {
        "affinity": _required({"matchFields": [_expr("metadata.name", "In", "{b}")]}),
        "tolerations": [{"operator": "Exists"}],
    },
}


def _fill(value: Any, b: str) -> Any:
    return json.loads(json.dumps(value).replace("{b}", b))


def _pod(name: str, scheduling: dict[str, Any]) -> dict[str, Any]:
    """A one-GPU pod (not trainscale's) with these scheduling fields."""
    pod = foreign_gpu_pod(name, 1)
    pod["spec"].update(scheduling)
    return pod


def test_the_node_filters_agree_with_the_scheduler(
    kubectl: Kubectl, namespace: str, pools: tuple[str, str]
) -> None:
    a, b = pools
    wait_for_every_gpu(kubectl, namespace)
    nodes = _nodes(kubectl, pools)
    predicted = {}
    for name, scheduling in CASES.items():
        spec = _fill(scheduling, b)
        predicted[name] = compute_eligible_nodes(spec, nodes)
        kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(_pod(name, spec)))
    # What we predict, so that a rule read wrongly in both places cannot pass unnoticed.
    assert predicted["plain"] == {a}
    assert predicted["selector-b-tolerated"] == {b}
    assert predicted["affinity-in-tolerated"] == {a, b}
    assert predicted["field-b-tolerate-all"] == {b}

    def pods() -> dict[str, dict[str, Any]]:
        found = json.loads(kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)
        return {p["metadata"]["name"]: p for p in found["items"]}

    def settled(pod: dict[str, Any]) -> bool:
        if pod["spec"].get("nodeName"):
            return True
        return any(
            c.get("type") == "PodScheduled" and c.get("reason") == "Unschedulable"
            for c in pod.get("status", {}).get("conditions") or []
        )

    wait_for(lambda: len(found := pods()) == len(CASES) and all(map(settled, found.values())),
             timeout=60, what="every probe pod bound or Unschedulable",
             describe=lambda: describe_pods(kubectl, namespace))  # fmt: skip
    for name, pod in pods().items():
        bound = pod["spec"].get("nodeName")
        if predicted[name]:
            assert bound in predicted[name], (name, bound, predicted[name])
        else:
            assert bound is None, (name, bound)


def _workers(kubectl: Kubectl, namespace: str) -> dict[str, dict[str, int]]:
    """Per job, its worker pods (not being deleted) by phase."""
    found = json.loads(kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)
    out: dict[str, dict[str, int]] = {}
    for pod in found["items"]:
        labels = pod["metadata"].get("labels") or {}
        if labels.get("app.kubernetes.io/component") != "worker" or pod["metadata"].get(
            "deletionTimestamp"
        ):
            continue
        phases = out.setdefault(labels[JOB_LABEL], {})
        phase = pod["status"].get("phase", "Pending")
        phases[phase] = phases.get(phase, 0) + 1
    return out


def _describe(kubectl: Kubectl, namespace: str, operator: OperatorProcess) -> str:
    """What a failed wait shows: the workers by phase, the jobs, the pods, the operator."""
    jobs = kubectl("get", "tj", "-n", namespace, check=False).stdout
    return (f"workers: {_workers(kubectl, namespace)}\n{jobs}\n"
            f"{describe_pods(kubectl, namespace)}\n{operator.log_tail()}")  # fmt: skip


def test_arbitration_shares_each_pool_between_the_jobs_that_may_use_it(
    kubectl: Kubectl,
    private_operator: tuple[str, Callable[..., OperatorProcess]],
    pools: tuple[str, str],
) -> None:
    a, b = pools
    namespace, start = private_operator
    operator = start("--arbitration-interval", "1")

    def status(job: str) -> dict[str, Any]:
        found = json.loads(kubectl("get", f"tj/{job}", "-n", namespace, "-o", "json").stdout)
        return dict(found.get("status") or {})

    def workers() -> dict[str, dict[str, int]]:
        return _workers(kubectl, namespace)

    def describe() -> str:
        return _describe(kubectl, namespace, operator)

    wait_for_every_gpu(kubectl, namespace)
    for job in (
        arbitrated_job("plain-1", 8, 2, 8),
        arbitrated_job("plain-2", 8, 2, 8),
        arbitrated_job(
            "team-b", 8, 2, 8, scheduling={"nodeSelector": {POOL: "b"}, "tolerations": [TOLERATE_B]}
        ),
        arbitrated_job("lost", 2, 1, 2, scheduling={"nodeSelector": {POOL: "h100"}}),
    ):
        kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(job))

    def shared() -> bool:
        ceilings = {j: (status(j).get("arbitration") or {}).get("ceiling")
                    for j in ("plain-1", "plain-2", "team-b")}  # fmt: skip
        if None in ceilings.values():
            return False
        plain = ceilings["plain-1"] + ceilings["plain-2"]
        return (
            plain <= 8
            and min(ceilings["plain-1"], ceilings["plain-2"]) >= 2
            and (ceilings["team-b"] == 8)
        )

    wait_for(shared, timeout=90, what="pool a shared by the plain jobs, pool b team-b's",
             describe=describe)  # fmt: skip
    preferred = {j: set(status(j)["arbitration"]["preferredNodes"])
                 for j in ("plain-1", "plain-2", "team-b")}  # fmt: skip
    assert preferred == {"plain-1": {a}, "plain-2": {a}, "team-b": {b}}

    def all_running() -> bool:
        """team-b runs its 8 on pool b, each plain job at least its minimum on pool a, and
        no worker is Pending. The plain jobs may hold 7 of pool a's 8 for a while: arriving
        together, one of them can find a worker unschedulable while the other's first
        workers still hold the GPUs, and then waits before asking again (autoscaling step
        1; pods rejected while the cluster shows GPUs for them now get a 30 s grace, meant
        for exactly that), which is not what this test is about."""
        now = workers()
        running = {job: phases.get("Running", 0) for job, phases in now.items()}
        pending = sum(phases.get("Pending", 0) for phases in now.values())
        plain = (running.get("plain-1", 0), running.get("plain-2", 0))
        return pending == 0 and running.get("team-b") == 8 and min(plain) >= 2 and sum(plain) <= 8

    wait_for(all_running, timeout=90, what="every granted worker Running, none Pending",
             describe=describe)  # fmt: skip

    lost = status("lost")
    assert lost.get("phase") == "Queued", describe()
    reason = lost["arbitration"]["reason"]
    assert reason.startswith("queued: no GPU node may run its workers"), reason
    assert f"nodeSelector {POOL}=h100 excludes 2 nodes" in reason, reason
    assert "lost" not in workers()
    events = json.loads(kubectl("get", "events", "-n", namespace, "--field-selector",
                                "involvedObject.name=lost", "-o", "json").stdout)["items"]  # fmt: skip
    assert any(e.get("reason") == "Queued" and "h100" in e.get("message", "") for e in events)


def _worker_nodes(kubectl: Kubectl, namespace: str, job: str) -> dict[int, str | None]:
    """The job's live worker pods: replica index -> node (None while not bound)."""
    found = json.loads(
        kubectl("get", "pods", "-n", namespace, "-l", f"{JOB_LABEL}={job}", "-o", "json").stdout
    )
    return {
        int(pod["metadata"]["labels"]["trainscale.dev/replica-index"]): pod["spec"].get("nodeName")
        for pod in found["items"]
        if pod["metadata"]["labels"].get("app.kubernetes.io/component") == "worker"
        and not pod["metadata"].get("deletionTimestamp")
    }


def test_a_job_across_both_pools_gives_up_gpus_where_its_workers_are_deleted(
    kubectl: Kubectl,
    private_operator: tuple[str, Callable[..., OperatorProcess]],
    labelled_pools: tuple[str, str],
) -> None:
    """A plain job runs 16 workers, 0-7 on pool a and 8-15 on pool b; a job of the same
    priority that may use only pool a arrives and needs 4. The operator shrinks a job by
    deleting its highest indexes, so the GPUs on pool a come free only when ``wide`` drops
    below 8. The arbiter used to grant the arrival 4 GPUs on pool a while cutting ``wide``
    to 12, which deleted workers 12-15 on pool b: the arrival's workers stayed Pending for
    good. Now ``wide`` goes to 4 (keeping 0-3 on pool a), the arrival runs, and ``wide``
    grows back onto pool b."""
    a, b = labelled_pools
    namespace, start = private_operator
    operator = start("--arbitration-interval", "1")

    def workers() -> dict[str, dict[str, int]]:
        return _workers(kubectl, namespace)

    def describe() -> str:
        return _describe(kubectl, namespace, operator)

    wait_for_every_gpu(kubectl, namespace)
    prefer_a = {
        "affinity": {
            "nodeAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 100, "preference": {"matchExpressions": [_expr(POOL, "In", "a")]}}
                ]
            }
        }
    }
    wide = arbitrated_job("wide", 16, 2, 16, scheduling=prefer_a)
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(wide))
    wait_for(lambda: workers().get("wide", {}).get("Running") == 16, timeout=90,
             what="wide's 16 workers Running", describe=describe)  # fmt: skip
    where = _worker_nodes(kubectl, namespace, "wide")
    # The precondition, not the behaviour under test: the scheduler filled pool a first.
    assert {i: where[i] for i in range(16)} == {i: a if i < 8 else b for i in range(16)}, where

    pool_a = arbitrated_job("pool-a", 4, 4, 4, scheduling={"nodeSelector": {POOL: "a"}})
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pool_a))

    def arrival_runs() -> bool:
        now = workers()
        pending = sum(phases.get("Pending", 0) for phases in now.values())
        return now.get("pool-a", {}).get("Running") == 4 and pending == 0

    wait_for(arrival_runs, timeout=120, what="pool-a's 4 workers Running, none Pending",
             describe=describe)  # fmt: skip
    where = _worker_nodes(kubectl, namespace, "wide")
    assert where, describe()
    assert sum(1 for node in where.values() if node == a) <= 4, where
    assert all(where[i] == a for i in range(min(4, len(where)))), where


def test_new_workers_go_where_arbitration_planned_them(
    kubectl: Kubectl,
    private_operator: tuple[str, Callable[..., OperatorProcess]],
    testbed: Testbed,
) -> None:
    """Another team's pod holds 6 GPUs (and 48 CPUs) of node a. A 2-worker job arrives: the
    arbiter plans it onto a's last 2 GPUs (best fit), keeping node b whole; the default
    scheduler, scoring CPU and memory, would spread it onto b. Its workers prefer the planned
    node by name, so they run on a, and a job whose one worker needs all 8 GPUs of a node
    then runs on b. Without the preference the small job took b and the whole-node job stayed
    Queued ("no node holds 8 GPUs") beside 2 + 6 free GPUs."""
    a, b = testbed.node_names[:2]
    namespace, start = private_operator
    operator = start("--arbitration-interval", "1")

    def describe() -> str:
        return _describe(kubectl, namespace, operator)

    wait_for_every_gpu(kubectl, namespace)
    other = foreign_gpu_pod("other-team", 6, node=a)
    other["spec"]["containers"][0]["resources"]["requests"] = {"cpu": "48", "memory": "64Gi"}
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(other))
    small = arbitrated_job("small", 2, 2, 2)
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(small))

    def small_bound() -> bool:
        where = _worker_nodes(kubectl, namespace, "small")
        return len(where) == 2 and None not in where.values()

    wait_for(small_bound, timeout=90, what="small's 2 workers bound", describe=describe)
    assert sorted(_worker_nodes(kubectl, namespace, "small").values()) == [a, a], describe()

    whole = arbitrated_job("whole", 1, 1, 1)
    whole["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] = {
        "nvidia.com/gpu": 8
    }
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(whole))
    wait_for(lambda: _workers(kubectl, namespace).get("whole", {}).get("Running") == 1,
             timeout=90, what="the whole-node job's worker Running", describe=describe)  # fmt: skip
    assert _worker_nodes(kubectl, namespace, "whole") == {0: b}, describe()
    assert sorted(_worker_nodes(kubectl, namespace, "small").values()) == [a, a], describe()


def _off_plan(port: int, namespace: str, job: str) -> float | None:
    """The operator's ``workers_off_plan`` gauge for ``job``; None until it shows one."""
    for sample in operator_samples(port):
        labels = sample.labels
        if (sample.name, labels.get("namespace"), labels.get("trainingjob")) == (
            WORKERS_OFF_PLAN_NAME, namespace, job,
        ):  # fmt: skip
            return float(sample.value)
    return None


def _metrics_operator(
    kubectl: Kubectl,
    private_operator: tuple[str, Callable[..., OperatorProcess]],
) -> tuple[str, int, Callable[[], str]]:
    """Start an operator with metrics and wait for every GPU; return the namespace, the
    metrics port and a describe function for failures."""
    namespace, start = private_operator
    port = find_free_port()
    operator = start("--arbitration-interval", "1", "--metrics-port", str(port),
                     "--metrics-address", "127.0.0.1")  # fmt: skip

    def describe() -> str:
        return _describe(kubectl, namespace, operator)

    wait_for_every_gpu(kubectl, namespace)
    return namespace, port, describe


def _runs_as_planned(
    kubectl: Kubectl,
    namespace: str,
    port: int,
    job: str,
    describe: Callable[[], str],
    *,
    plan: dict[str, int],
    nodes: list[str],
    off_plan: float,
) -> dict[str, Any]:
    """Wait for ``job``'s workers on ``nodes`` Running and no other worker of it (one
    created and then deleted for a ceiling is not read as placed), check its status plans
    ``plan`` and they run on ``nodes`` (sorted), and wait for the operator's gauge to read
    ``off_plan`` of them off their planned node; return its status.arbitration."""
    wait_for(lambda: _workers(kubectl, namespace).get(job) == {"Running": len(nodes)},
             timeout=90, what=f"{job}'s {len(nodes)} workers Running, no other",
             describe=describe)  # fmt: skip
    found = json.loads(kubectl("get", f"tj/{job}", "-n", namespace, "-o", "json").stdout)
    arbitration = found["status"]["arbitration"]
    assert arbitration["preferredNodes"] == plan, found["status"]
    assert sorted(_worker_nodes(kubectl, namespace, job).values()) == nodes, describe()
    wait_for(lambda: _off_plan(port, namespace, job) == off_plan, timeout=30,
             what=f"workers_off_plan {off_plan:g} for {job}",
             describe=lambda: f"gauge {_off_plan(port, namespace, job)}\n{describe()}")  # fmt: skip
    return dict(arbitration)


def _beside_another_team(
    kubectl: Kubectl,
    private_operator: tuple[str, Callable[..., OperatorProcess]],
    gpus: int,
    node: str,
) -> tuple[str, int, Callable[[], str]]:
    """:func:`_metrics_operator`, and another team's pod holding ``gpus`` GPUs on
    ``node``."""
    namespace, port, describe = _metrics_operator(kubectl, private_operator)
    kubectl("apply", "-n", namespace, "-f", "-",
            input=json.dumps(foreign_gpu_pod("other-team", gpus, node=node)))  # fmt: skip
    return namespace, port, describe


def _one_per_node(job: str) -> dict[str, Any]:
    """Template fields keeping ``job``'s workers one per node: a required pod anti-affinity
    on the hostname selecting them by the job-name label."""
    return {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
        "labelSelector": {"matchLabels": {JOB_LABEL: job,
                                          "app.kubernetes.io/component": "worker"}},
        "topologyKey": "kubernetes.io/hostname"}]}}}  # fmt: skip


def _apply_job(
    kubectl: Kubectl,
    namespace: str,
    name: str,
    workers: int,
    scheduling: dict[str, Any] | None = None,
    min_r: int = 1,
) -> None:
    """Apply an arbitrated job of up to ``workers`` one-GPU workers (at least ``min_r``),
    asking for all of them, with ``scheduling`` in its template (:func:`arbitrated_job`)."""
    body = arbitrated_job(name, workers, min_r, workers, scheduling=scheduling)
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))


def _granted_as_planned(
    kubectl: Kubectl,
    namespace: str,
    port: int,
    job: str,
    describe: Callable[[], str],
    *,
    plan: dict[str, int],
    reason: tuple[str, ...],
) -> None:
    """:func:`_runs_as_planned` where ``plan`` puts the workers (gauge 0), for a job granted
    just those: its ceiling is their count, its reason holds each of ``reason``, and a few
    more passes later they still run, none Pending."""
    count = sum(plan.values())
    nodes = sorted(node for node, workers in plan.items() for _ in range(workers))
    status = _runs_as_planned(kubectl, namespace, port, job, describe,
                              plan=plan, nodes=nodes, off_plan=0.0)  # fmt: skip
    assert status["ceiling"] == count, status
    assert all(words in status["reason"] for words in reason), status
    time.sleep(3)  # a few more passes: still so many, none Pending
    assert _workers(kubectl, namespace).get(job) == {"Running": count}, describe()


def _spread_over_nodes(job: str, skew: int) -> dict[str, Any]:
    """Template fields spreading ``job``'s workers over nodes: a topology spread
    constraint on the hostname, ``maxSkew`` ``skew``, that must hold."""
    return {"topologySpreadConstraints": [{
        "maxSkew": skew, "topologyKey": "kubernetes.io/hostname",
        "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": {JOB_LABEL: job,
                                          "app.kubernetes.io/component": "worker"}}}]}  # fmt: skip


def test_the_arbiter_plans_workers_where_their_cpu_fits(
    kubectl: Kubectl,
    private_operator: tuple[str, Callable[..., OperatorProcess]],
    testbed: Testbed,
) -> None:
    """Another team's pod leaves node a 2 GPUs and 16 CPUs. A job asking 10 CPUs per worker
    is planned both on b, the one node whose CPU holds both (the arbiter reads the workers'
    CPU requests and what foreign pods leave); both run where planned, and the operator's
    gauge reads 0. Reading GPUs only, the arbiter planned both on a: the second ran on b
    anyway, off its plan; counting the CPU but placing by free GPUs alone, it planned them
    1 on a and 1 on b, across two nodes."""
    a, b = testbed.node_names[:2]
    namespace, port, describe = _metrics_operator(kubectl, private_operator)
    other = foreign_gpu_pod("other-team", 6, node=a)
    other["spec"]["containers"][0]["resources"]["requests"] = {"cpu": "48"}
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(other))
    job = arbitrated_job("cpu-heavy", 2, 2, 2)
    job["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"] = {"cpu": "10"}
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(job))
    _runs_as_planned(kubectl, namespace, port, "cpu-heavy", describe,
                     plan={b: 2}, nodes=[b, b], off_plan=0.0)  # fmt: skip


def test_two_jobs_are_not_planned_on_the_same_cpu(
    kubectl: Kubectl,
    private_operator: tuple[str, Callable[..., OperatorProcess]],
    testbed: Testbed,
) -> None:
    """Another team's pod leaves node a 4 GPUs and 40 CPUs. Job x's two workers asking 16
    CPUs each are planned and run on a; job y's, asking the same, are planned on b, since x
    took a's CPU, and run there, on their plan. Counting each job's room on a alone, the
    arbiter planned y on a too, and the scheduler put both its workers on b, off their plan."""
    a, b = testbed.node_names[:2]
    namespace, port, describe = _metrics_operator(kubectl, private_operator)

    def running(name: str) -> bool:
        return _workers(kubectl, namespace).get(name, {}).get("Running") == 2

    other = foreign_gpu_pod("other-team", 4, node=a)
    other["spec"]["containers"][0]["resources"]["requests"] = {"cpu": "24"}
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(other))
    for name in ("x", "y"):
        job = arbitrated_job(name, 2, 2, 2)
        job["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"] = {"cpu": "16"}
        kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(job))
        wait_for(lambda n=name: running(n), timeout=90, what=f"{name}'s 2 workers Running",
                 describe=describe)  # fmt: skip
    for name, node in (("x", a), ("y", b)):
        found = json.loads(kubectl("get", f"tj/{name}", "-n", namespace, "-o", "json").stdout)
        assert found["status"]["arbitration"]["preferredNodes"] == {node: 2}, found["status"]
        assert sorted(_worker_nodes(kubectl, namespace, name).values()) == [node, node], describe()
    wait_for(lambda: _off_plan(port, namespace, "y") == 0.0, timeout=30,
             what="workers_off_plan 0 for y",
             describe=lambda: f"gauge {_off_plan(port, namespace, 'y')}\n{describe()}")  # fmt: skip


def test_a_worker_the_scheduler_puts_off_its_plan_is_counted(
    kubectl: Kubectl,
    private_operator: tuple[str, Callable[..., OperatorProcess]],
    testbed: Testbed,
) -> None:
    """The arbiter does not read a pod anti-affinity to other jobs' pods: a job whose
    template keeps its workers off the nodes of another team's inference pods (required
    podAntiAffinity on the hostname) is planned on node a's last 2 GPUs, beside such a pod;
    the scheduler runs both on b, and the operator's gauge counts the 2 workers off their
    plan, as a platform whose scheduler does not follow the plans would see it (and the
    chart's alert TrainScaleWorkersOffPlan after 30 minutes)."""
    a, b = testbed.node_names[:2]
    namespace, port, describe = _metrics_operator(kubectl, private_operator)
    inference = foreign_gpu_pod("other-team", 6, node=a)
    inference["metadata"]["labels"] = {"app": "inference"}
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(inference))
    away = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
        "labelSelector": {"matchLabels": {"app": "inference"}},
        "topologyKey": "kubernetes.io/hostname"}]}}  # fmt: skip
    _apply_job(kubectl, namespace, "away", 2, {"affinity": away}, min_r=2)
    _runs_as_planned(kubectl, namespace, port, "away", describe,
                     plan={a: 2}, nodes=[b, b], off_plan=2.0)  # fmt: skip


def test_a_job_whose_workers_may_not_share_a_node_is_planned_one_per_node(
    kubectl: Kubectl,
    private_operator: tuple[str, Callable[..., OperatorProcess]],
    testbed: Testbed,
) -> None:
    """A job whose template keeps its own workers one per node (required podAntiAffinity on
    the hostname, selecting its workers by the job-name label) asks for 4 workers on the
    test-bed's 2 nodes, node a holding 2 free GPUs beside another team's pod. The arbiter
    reads that rule: it grants 2 workers, planned one on each node, tells the job why in
    its status, and both run where planned (gauge 0), none Pending. Not reading it, the
    arbiter planned 2 on a's last 2 GPUs: the scheduler put the second on b, off its plan,
    and a ceiling of 4 left workers Pending for GPUs the job can never use."""
    a, b = testbed.node_names[:2]
    namespace, port, describe = _beside_another_team(kubectl, private_operator, 6, a)
    _apply_job(kubectl, namespace, "apart", 4, _one_per_node("apart"))
    _granted_as_planned(kubectl, namespace, port, "apart", describe,
                        plan={a: 1, b: 1}, reason=("may not share a node",))  # fmt: skip


def test_no_worker_is_created_past_the_ceiling_before_the_autoscaler_resizes(
    kubectl: Kubectl,
    private_operator: tuple[str, Callable[..., OperatorProcess]],
    testbed: Testbed,
) -> None:
    """Reconcile rule 5 with a ceiling: a job kept to one worker per node runs 2 on the 2
    nodes, its ceiling 2, and its autoscaler passes once in 10 minutes. Scaled to 4 by hand
    (as a user, a script, or the race at a job's admission, before its autoscaler lowers
    spec.replicas to the ceiling), it creates no worker past the ceiling: 2 Running, none
    Pending, while spec.replicas still says 4. Creating up to spec.replicas, the operator
    made 2 more that stayed Pending (they may share no node) until the autoscaler's pass."""
    namespace, _, describe = _beside_another_team(
        kubectl, private_operator, 6, testbed.node_names[0]
    )
    job = arbitrated_job("capped", 2, 1, 4, scheduling=_one_per_node("capped"))
    job["spec"]["autoscaling"]["intervalSeconds"] = 600
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(job))
    wait_for(lambda: _workers(kubectl, namespace).get("capped") == {"Running": 2},
             timeout=90, what="capped's 2 workers Running", describe=describe)  # fmt: skip
    found = json.loads(kubectl("get", "tj/capped", "-n", namespace, "-o", "json").stdout)
    assert found["status"]["arbitration"]["ceiling"] == 2, found["status"]
    kubectl("scale", "tj/capped", "-n", namespace, "--replicas=4")
    time.sleep(5)  # several reconcile passes
    found = json.loads(kubectl("get", "tj/capped", "-n", namespace, "-o", "json").stdout)
    assert found["spec"]["replicas"] == 4, found["spec"]
    assert _workers(kubectl, namespace).get("capped") == {"Running": 2}, describe()


def test_a_spread_constraint_beside_a_tainted_pool_is_planned_within_its_skew(
    kubectl: Kubectl,
    private_operator: tuple[str, Callable[..., OperatorProcess]],
    pools: tuple[str, str],
) -> None:
    """A job on pool a whose template spreads its workers over nodes (a topology spread
    constraint, maxSkew 2 on the hostname, DoNotSchedule, selecting its workers) asks for
    4. The scheduler counts pool b's node, tainted for another team (nodeTaintsPolicy
    Ignore, the default), where the job never runs: a's node may run 2 of its workers. The
    arbiter reads that: it grants 2, planned on a, names the rule in the job's status, and
    both run there (gauge 0), none Pending. Not reading it, the arbiter planned 4 on a's 8
    free GPUs, and the scheduler left 2 of them Pending for as long as the job ran."""
    a, _ = pools
    namespace, port, describe = _metrics_operator(kubectl, private_operator)
    spread = _spread_over_nodes("spread", 2)
    _apply_job(kubectl, namespace, "spread", 4, spread)
    _granted_as_planned(kubectl, namespace, port, "spread", describe, plan={a: 2},
                        reason=("at most 2 of its workers may share a node",
                                "topologySpreadConstraints"))  # fmt: skip


def test_a_spread_constraint_over_every_node_is_planned_against_the_emptiest(
    kubectl: Kubectl,
    private_operator: tuple[str, Callable[..., OperatorProcess]],
    testbed: Testbed,
) -> None:
    """A job spread over nodes (maxSkew 1 on the hostname, DoNotSchedule) may have workers on
    both of the test-bed's nodes, so its bound moves with its placement. Another team holds
    all of node b: the job can hold none there, and the scheduler lets a run 1 of its
    workers (1 more than b's 0). The arbiter reads that: it grants 1, planned on a, names
    the rule, and it runs there, none Pending. Reading the constraint only where a node it
    counts never holds a worker (or not at all), the arbiter planned 4 on a's 8 free GPUs,
    and 3 stayed Pending."""
    a, b = testbed.node_names[:2]
    namespace, port, describe = _beside_another_team(kubectl, private_operator, 8, b)
    even = _spread_over_nodes("even", 1)
    _apply_job(kubectl, namespace, "even", 4, even)
    _granted_as_planned(kubectl, namespace, port, "even", describe, plan={a: 1},
                        reason=("a node may run at most 1 more of its workers than another",))  # fmt: skip


def test_a_spread_constraint_beside_a_node_without_gpus_is_planned_within_its_skew(
    kubectl: Kubectl,
    private_operator: tuple[str, Callable[..., OperatorProcess]],
    testbed: Testbed,
) -> None:
    """A cluster's system node, without GPUs, beside the test-bed's two GPU nodes, and a job
    of 6 whose workers spread over nodes (maxSkew 2 on the hostname, DoNotSchedule) with
    nothing in its template that keeps the system node out. The scheduler counts that node
    by its labels, not by whether a worker fits, and it never holds one: each GPU node may
    run 2 of the job's workers. The arbiter reads that from the nodes without GPUs it now
    lists: it grants 4, planned 2 + 2, names the node, and all 4 run as planned, none
    Pending. Listing only the GPU nodes, the bound moved with the placement over a and b,
    the arbiter granted all 6, and the scheduler left 2 Pending."""
    a, b = testbed.node_names[:2]
    with node_without_gpus(kubectl, "system-node", {"kubernetes.io/hostname": "system-node"}):
        namespace, port, describe = _metrics_operator(kubectl, private_operator)
        spread = _spread_over_nodes("beside", 2)
        _apply_job(kubectl, namespace, "beside", 6, spread)
        _granted_as_planned(kubectl, namespace, port, "beside", describe, plan={a: 2, b: 2},
                            reason=("at most 2 of its workers may share a node",
                                    "node system-node (no GPU) is counted"))  # fmt: skip


def test_a_job_whose_pool_advertises_no_gpu_is_queued_naming_that_pool(
    kubectl: Kubectl,
    private_operator: tuple[str, Callable[..., OperatorProcess]],
    labelled_pools: tuple[str, str],
) -> None:
    """A job whose nodeSelector picks a pool whose nodes advertise no nvidia.com/gpu (its
    NVIDIA device plugin not installed, or not running yet: a first-day mistake) is queued,
    and its status and Queued event name that node and the likely cause, beside the GPU
    nodes the selector excludes. Listing only the GPU nodes, the reason named the two it
    excludes and said nothing of the node the user meant."""
    namespace, _, describe = _metrics_operator(kubectl, private_operator)
    with node_without_gpus(kubectl, "train-node", {POOL: "train"}):
        select = {"nodeSelector": {POOL: "train"}}
        _apply_job(kubectl, namespace, "untrained", 2, select)

        def reason() -> str:
            found = json.loads(kubectl("get", "tj/untrained", "-n", namespace, "-o", "json").stdout)
            return str(((found.get("status") or {}).get("arbitration") or {}).get("reason") or "")

        wait_for(lambda: "advertises no nvidia.com/gpu" in reason(), timeout=60,
                 what="the queued reason naming the node without GPUs",
                 describe=lambda: f"reason {reason()!r}\n{describe()}")  # fmt: skip
        assert reason() == (
            f"queued: no GPU node may run its workers (nodeSelector {POOL}=train excludes 2 "
            "nodes; the 1 node it may run on (train-node) advertises no nvidia.com/gpu: is the "
            "NVIDIA device plugin running there?)"
        )
        events = json.loads(kubectl("get", "events", "-n", namespace, "--field-selector",
                                    "involvedObject.name=untrained", "-o", "json").stdout)["items"]  # fmt: skip
        assert any("train-node" in e.get("message", "") for e in events), events
        assert "untrained" not in _workers(kubectl, namespace)


@pytest.fixture
def gke_gpu_taint(kubectl: Kubectl, testbed: Testbed) -> Iterator[tuple[str, str]]:
    """Both GPU nodes tainted as GKE taints every GPU node (``nvidia.com/gpu=present:
    NoSchedule``); the test-bed's apiserver runs ExtendedResourceToleration, as GKE's does.
    Undone afterwards."""
    nodes = tuple(testbed.node_names[:2])
    for name in nodes:
        kubectl("taint", "node", name, "nvidia.com/gpu=present:NoSchedule", "--overwrite")
    try:
        yield nodes[0], nodes[1]
    finally:
        for name in nodes:
            kubectl("taint", "node", name, "nvidia.com/gpu-", check=False)


def test_a_job_is_planned_on_nodes_its_pods_tolerate_once_admitted(
    kubectl: Kubectl,
    private_operator: tuple[str, Callable[..., OperatorProcess]],
    gke_gpu_taint: tuple[str, str],
) -> None:
    """On GKE every GPU node is tainted ``nvidia.com/gpu=present:NoSchedule`` and a pod
    requesting a GPU is given the toleration at admission (ExtendedResourceToleration): a
    template never carries it. The operator reads the pod spec admission makes of the
    template (a dry-run create), so a job of 3 is granted 3 and they run, none Pending.
    Reading the template alone, the arbiter queued it for good ("taint nvidia.com/gpu=
    present:NoSchedule excludes 2 nodes") while the scheduler would have run it."""
    a, _ = gke_gpu_taint
    namespace, port, describe = _metrics_operator(kubectl, private_operator)
    _apply_job(kubectl, namespace, "admitted", 3)
    _granted_as_planned(kubectl, namespace, port, "admitted", describe, plan={a: 3},
                        reason=("granted 3 GPUs",))  # fmt: skip


def test_a_resized_job_moves_its_workers_to_the_node_its_plan_holds_them_on(
    kubectl: Kubectl,
    private_operator: tuple[str, Callable[..., OperatorProcess]],
    testbed: Testbed,
) -> None:
    """Reconcile rule 11 with the real scheduler: a 2-worker job started where the GPUs were,
    one worker on each node (another team held 7 of each). Node a frees up, the plan
    (``status.arbitration.preferredNodes``, written here as arbitration's step 8 writes it
    for a job that spans nodes one could hold) puts all 3 on a, and the job grows to 3: the
    worker on b is deleted and recreated on a beside the new one, once, and stays."""
    a, b = testbed.node_names[:2]
    namespace, start = private_operator
    operator = start("--no-arbitration")  # the plan is written here, not by the arbiter

    def describe() -> str:
        return _describe(kubectl, namespace, operator)

    wait_for_every_gpu(kubectl, namespace)
    for node, name in ((a, "busy-a"), (b, "busy-b")):
        kubectl("apply", "-n", namespace, "-f", "-",
                input=json.dumps(foreign_gpu_pod(name, 7, node=node)))  # fmt: skip
    job = arbitrated_job("spread", 2, 1, 4)
    del job["spec"]["autoscaling"]  # nothing but this test resizes it
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(job))

    def bound(count: int) -> dict[int, str | None] | None:
        where = _worker_nodes(kubectl, namespace, "spread")
        return where if len(where) == count and None not in where.values() else None

    wait_for(lambda: bound(2), timeout=90, what="2 workers bound", describe=describe)
    assert sorted(_worker_nodes(kubectl, namespace, "spread").values()) == [a, b], describe()
    kubectl("delete", "pod", "busy-a", "-n", namespace, "--wait=true")
    plan = {"status": {"arbitration": {"ceiling": 3, "preferredNodes": {a: 3}}}}
    kubectl("patch", "tj", "spread", "-n", namespace, "--subresource=status", "--type=merge",
            "-p", json.dumps(plan))  # fmt: skip
    kubectl("patch", "tj", "spread", "-n", namespace, "--type=merge",
            "-p", json.dumps({"spec": {"replicas": 3}}))  # fmt: skip

    def all_on_a() -> bool:
        where = bound(3)
        return where is not None and set(where.values()) == {a}

    wait_for(all_on_a, timeout=90, what="3 workers, all on node a", describe=describe)
    uids = kubectl("get", "pods", "-n", namespace, "-l", f"{JOB_LABEL}=spread",
                   "-o", "jsonpath={.items[*].metadata.uid}").stdout.split()  # fmt: skip
    events = kubectl("get", "events", "-n", namespace, "--field-selector",
                     "reason=Consolidating", "-o", "json").stdout  # fmt: skip
    messages = [e["message"] for e in json.loads(events)["items"]]
    assert len(messages) == 1 and f"(on {b})" in messages[0], messages
    time.sleep(5)  # a few more passes: nothing moves again
    again = kubectl("get", "pods", "-n", namespace, "-l", f"{JOB_LABEL}=spread",
                    "-o", "jsonpath={.items[*].metadata.uid}").stdout.split()  # fmt: skip
    assert again == uids and set(bound(3).values()) == {a}, describe()  # type: ignore[union-attr]
