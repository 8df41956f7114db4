"""The operator's cluster arbitration pass (``ClusterArbitration``) on the real apiserver of
the test-bed: no operator process runs; the pass lists the cluster, dry-runs new jobs' pods
and writes their status through the operator's own Kubernetes adapter.

Covers:
- a burst of new jobs whose autoscale loops all ask for a pass at once (each job without a
  result yet) is answered by one pass that lists them all, not by one pass per job run back
  to back: each job's admission is written, and its Event posted, once; the pass dry-runs
  each new job's worker once and writes each status once, several at a time (a job whose
  status lock is held keeps no other job's admission waiting) but never more than
  ``PASS_CONCURRENCY``; once answered, a job's loop does not wait for a pass another loop
  runs;
- ``NodeListing`` (what every job's autoscale pass reads the nodes from): callers at once
  share one LIST of the real nodes, later ones reuse it until it is ``max_age_seconds``
  old, and the arbitration pass's ``refresh`` lists afresh for the callers after it;
- the cluster's bound pods as the pass lists them (``fetch_bound_pods``) come trimmed to what
  their readers use, and the readers answer for them what they answer for the whole pods;
- the admitted pod specs of a burst of jobs, expiring together, are read again a bounded
  number a pass (``compute_refresh_budget``), the longest expired first, while every job
  keeps its admission and its own autoscale pass reads the spec as the pass left it; a new
  job's spec is read at once.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from prometheus_client import REGISTRY

from tests.support.testbed import foreign_gpu_pod, wait_for
from trainscale.operator import api
from trainscale.operator.adapters import k8s
from trainscale.operator.autoscaling.cluster import (
    build_capacity,
    build_node_free,
    compute_room,
    compute_worker_nodes,
)
from trainscale.operator.controller.builders import JobRef
from trainscale.operator.daemons import autoscale as autoscale_daemon
from trainscale.operator.daemons import cluster as cluster_daemon
from trainscale.operator.daemons.autoscale import JobLoop, autoscale_job
from trainscale.operator.daemons.cluster import PASS_CONCURRENCY, ClusterArbitration, job_key
from trainscale.operator.daemons.common import (
    AdmittedPodSpecs,
    NodeListing,
    compute_refresh_budget,
    get_metrics,
)
from trainscale.operator.observability.metric_names import ARBITRATION_PASSES_NAME
from trainscale.testbed.cluster import GPU_RESOURCE

pytestmark = [pytest.mark.testbed, pytest.mark.slow]

BURST = 12  # more than PASS_CONCURRENCY
# What the test-bed's admission (ExtendedResourceToleration) adds to a GPU worker's pod.
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}


def arbitrated(name: str) -> dict[str, Any]:
    """An autoscaled job of one one-GPU worker, held at one (min = max)."""
    container = {"name": "trainer", "image": "registry.example/none:1",
                 "resources": {"limits": {GPU_RESOURCE: 1}}}  # fmt: skip
    spec = {"replicas": 1, "minReplicas": 1, "maxReplicas": 1,
            "autoscaling": {"enabled": True},
            "template": {"spec": {"terminationGracePeriodSeconds": 0,
                                  "containers": [container]}}}  # fmt: skip
    return {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": name},
            "spec": spec}  # fmt: skip


def passes() -> float:
    """Arbitration passes this process ran, whatever their outcome."""
    get_metrics()  # registered in the default registry on first use
    return sum(
        REGISTRY.get_sample_value(ARBITRATION_PASSES_NAME, {"outcome": outcome}) or 0.0
        for outcome in ("ok", "error")
    )


class Overlapping:
    """A spy around one of the adapter's blocking calls: the jobs it was called for, and the
    most calls in flight at once (each made 0.2 s slower, as a loaded apiserver's admission
    chain, so that calls made together overlap)."""

    def __init__(self, real: Callable[..., Any], job_of: Callable[..., str]) -> None:
        self.real, self.job_of = real, job_of
        self.jobs: list[str] = []
        self.most = self._in_flight = 0
        self._lock = threading.Lock()

    def __call__(self, *args: Any) -> Any:
        with self._lock:
            self._in_flight += 1
            self.most = max(self.most, self._in_flight)
            self.jobs.append(self.job_of(*args))
        try:
            time.sleep(0.2)
            return self.real(*args)
        finally:
            with self._lock:
                self._in_flight -= 1


async def test_a_burst_of_new_jobs_is_answered_by_one_pass(
    crd: dict[str, Any],
    kubectl: Any,
    namespace: str,
    clients: k8s.KubernetesClients,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dry_runs = Overlapping(
        k8s.fetch_admitted_pod, lambda _, pod: pod["metadata"]["labels"][api.LABEL_JOB_NAME]
    )
    writes = Overlapping(k8s.patch_job_status, lambda _, namespace, name, patch: name)
    monkeypatch.setattr(k8s, "fetch_admitted_pod", dry_runs)
    monkeypatch.setattr(k8s, "patch_job_status", writes)
    # The operator's threads for blocking API calls (its start-up sets them), not asyncio's
    # default of CPUs + 4, which alone would bound the dry runs here.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=k8s.API_CONCURRENCY, thread_name_prefix="test-api")
    )
    items = [arbitrated(f"burst-{i}") for i in range(BURST)]
    kubectl("create", "-n", namespace, "-f", "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))  # fmt: skip
    events: list[tuple[str, str]] = []
    arbitration = ClusterArbitration(
        namespaces=(namespace,),
        post_event=lambda body, event: events.append((body["metadata"]["name"], event.reason)),
    )
    keys = [job_key(namespace, f"burst-{i}") for i in range(BURST)]
    before = passes()
    await asyncio.gather(*(arbitration.run_if_due(clients, for_key=key) for key in keys))
    assert passes() - before == 1, arbitration.error
    assert all(arbitration.result(key) is not None for key in keys)
    jobs = json.loads(kubectl("get", "tj", "-n", namespace, "-o", "json").stdout)["items"]
    assert all(j["status"]["arbitration"]["ceiling"] == 1 for j in jobs), jobs
    assert sorted(name for name, _ in events) == sorted(f"burst-{i}" for i in range(BURST))
    for spy in (dry_runs, writes):  # once per job, several at a time, never too many
        assert sorted(spy.jobs) == sorted(f"burst-{i}" for i in range(BURST))
        assert 1 < spy.most <= PASS_CONCURRENCY < BURST, spy.most
    # Not due, every job answered: no pass.
    await asyncio.gather(*(arbitration.run_if_due(clients, for_key=key) for key in keys))
    assert passes() - before == 1
    # Due while another loop runs a pass: a job with a result goes on without waiting for
    # it; a job without one waits.
    arbitration.last_run = -math.inf
    async with arbitration.lock:
        await asyncio.wait_for(arbitration.run_if_due(clients, for_key=keys[0]), timeout=5)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(arbitration.run_if_due(clients, for_key="x/new"), timeout=1)
    assert passes() - before == 1


def count_dry_runs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The jobs whose worker pod the adapter dry-runs from now on, in order."""
    dry_runs: list[str] = []
    real = k8s.fetch_admitted_pod

    def counted(clients_: k8s.KubernetesClients, pod: Any) -> Any:
        dry_runs.append(pod["metadata"]["labels"][api.LABEL_JOB_NAME])
        return real(clients_, pod)

    monkeypatch.setattr(k8s, "fetch_admitted_pod", counted)
    return dry_runs


@pytest.mark.usefixtures("crd")
async def test_expired_admitted_specs_are_read_again_a_bounded_number_a_pass(
    kubectl: Any, namespace: str, clients: k8s.KubernetesClients, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The admitted pod specs of a burst of jobs expire together; the passes after read
    them again ``compute_refresh_budget`` at a time, the longest expired first, every job
    keeping its admission meanwhile on the spec read before, and the job loops (``stale``)
    read none themselves. A new job's spec is read in the pass that finds it, whatever the
    budget."""
    clock = [1000.0]
    specs = AdmittedPodSpecs(ttl_seconds=600.0, clock=lambda: clock[0])
    monkeypatch.setattr(cluster_daemon, "ADMITTED", specs)
    dry_runs = count_dry_runs(monkeypatch)
    names = [f"burst-{i}" for i in range(BURST)]
    items = [arbitrated(name) for name in names]
    kubectl("create", "-n", namespace, "-f", "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))  # fmt: skip
    arbitration = ClusterArbitration(namespaces=(namespace,), post_event=lambda *_: None)
    budget = compute_refresh_budget(BURST, arbitration.interval_seconds, specs.ttl_seconds)
    assert budget < BURST  # what the passes below show

    async def run_pass() -> list[str]:
        del dry_runs[:]
        arbitration.last_run = -math.inf
        await arbitration.run_if_due(clients, for_key=job_key(namespace, names[0]))
        assert arbitration.error is None
        assert all(arbitration.ceiling(job_key(namespace, n)) == 1 for n in names[:BURST])
        return sorted(dry_runs)

    assert await run_pass() == sorted(names)  # new: every one read
    clock[0] += 300.0
    assert await run_pass() == []  # held
    # Expired, one a little before the others: it is read first.
    job0 = JobRef(name=names[0], namespace=namespace, uid="")
    spec0 = api.TrainingJobSpec.model_validate(items[0]["spec"])
    first = specs.stale(job0, spec0)
    assert first is not None
    specs.refresh(clients, job0, spec0, now=clock[0] - 300.0 - 1.0)  # expires 1 s earlier
    clock[0] += 400.0
    kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(arbitrated("late")))
    names.append("late")
    read = await run_pass()
    assert "late" in read  # new: outside the budget
    refreshed = [n for n in read if n != "late"]
    assert len(refreshed) == budget and names[0] in refreshed, read
    # A job loop after the pass reads the spec as the pass left it, refreshed or not.
    left = next(n for n in names[:BURST] if n not in refreshed)
    job = JobRef(name=left, namespace=namespace, uid="")
    spec = api.TrainingJobSpec.model_validate(items[names.index(left)]["spec"])
    del dry_runs[:]
    held = specs.pod_spec(clients, job, spec, clock[0], stale=True)
    assert held is specs.stale(job, spec) and dry_runs == []
    assert GPU_TOLERATION in held["tolerations"]
    # ... as the job's own autoscale pass does (the arbitration pass is not due: it reads
    # its ceiling from the last one, and no Prometheus answers).
    monkeypatch.setattr(autoscale_daemon, "ADMITTED", specs)
    await autoscale_job(namespace, left, JobLoop(), "http://127.0.0.1:9", arbitration=arbitration)
    assert dry_runs == []
    assert await run_pass() == sorted(set(names[:BURST]) - set(refreshed))  # the rest
    assert await run_pass() == []
    # Read unasked (no pass refreshes it: arbitration off or failing), it expires as before.
    clock[0] += 600.0
    specs.pod_spec(clients, job, spec, clock[0])
    assert dry_runs == [left]


async def test_one_listing_of_the_nodes_serves_every_caller_until_it_is_old(
    clients: k8s.KubernetesClients, monkeypatch: pytest.MonkeyPatch
) -> None:
    real, lists = k8s.fetch_nodes, []

    def counted(clients_: k8s.KubernetesClients) -> k8s.ListedNodes:
        lists.append(clients_)
        time.sleep(0.1)  # callers arrive while the LIST is in flight
        return real(clients_)

    monkeypatch.setattr(k8s, "fetch_nodes", counted)
    listing = NodeListing(max_age_seconds=10.0)
    answers = await asyncio.gather(*(listing.get(clients, 100.0) for _ in range(8)))
    assert len(lists) == 1
    assert all(answer is answers[0] for answer in answers)
    names = [n["metadata"]["name"] for n in answers[0].gpu]
    assert names and names == [n["metadata"]["name"] for n in real(clients).gpu]
    assert await listing.get(clients, 109.9) is answers[0] and len(lists) == 1
    aged = await listing.get(clients, 110.0)
    assert aged is not answers[0] and len(lists) == 2
    fresh = await listing.refresh(clients, 111.0)
    assert fresh is not aged and len(lists) == 3
    assert await listing.get(clients, 112.0) is fresh and len(lists) == 3


def test_the_bound_pods_come_trimmed_and_read_as_the_whole_ones(
    kubectl: Any, namespace: str, clients: k8s.KubernetesClients
) -> None:
    """What an arbitration pass lists of every bound pod: without managed fields, images,
    environments or status conditions (3,000 pods decoded whole were 103 MiB), and the same
    capacity, CPU and memory left, workers' nodes and room as the whole pods give."""
    pod = foreign_gpu_pod("with-sidecar", 1)
    main = pod["spec"]["containers"][0]
    main["resources"]["requests"] = {"cpu": "2", "memory": "4Gi"}
    main["env"] = [{"name": "MODE", "value": "serve"}]
    pod["spec"]["initContainers"] = [
        {
            "name": "proxy",
            "image": "registry.example/proxy:1",
            "restartPolicy": "Always",
            "resources": {"requests": {"cpu": "3", "memory": "1Gi"}},
        }
    ]
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pod))

    def whole() -> list[dict[str, Any]]:
        found = json.loads(kubectl("get", "pods", "-A", "-o", "json",
                                   "--show-managed-fields").stdout)["items"]  # fmt: skip
        return [p for p in found if p["spec"].get("nodeName")
                and p["status"].get("phase") not in ("Succeeded", "Failed")]  # fmt: skip

    pods = wait_for(lambda: (w := whole()) and any(p["metadata"]["name"] == "with-sidecar"
                                                   for p in w) and w,
                    timeout=60, what="the pod bound")  # fmt: skip
    # This namespace's only: another test's pods may still be going while the two lists run.
    pods = [p for p in pods if p["metadata"]["namespace"] == namespace]
    listed = [p for p in k8s.fetch_bound_pods(clients)
              if p["metadata"]["namespace"] == namespace]  # fmt: skip
    nodes = k8s.fetch_nodes(clients).gpu
    assert sorted(p["metadata"]["name"] for p in listed) == sorted(
        p["metadata"]["name"] for p in pods
    )
    assert all("managedFields" in p["metadata"] for p in pods)  # what there was to drop
    assert not any("managedFields" in p["metadata"] for p in listed)
    mine = next(p for p in listed if p["metadata"]["name"] == "with-sidecar")
    assert mine["spec"]["initContainers"][0] == {
        "name": "proxy", "restartPolicy": "Always",
        "resources": {"requests": {"cpu": "3", "memory": "1Gi"}},
    }  # fmt: skip
    assert "env" not in mine["spec"]["containers"][0] and set(mine["status"]) == {"phase"}
    worker = {
        "containers": [
            {"name": "w", "resources": {"requests": {"cpu": "1"}, "limits": {GPU_RESOURCE: "1"}}}
        ]
    }

    def read(pods: list[dict[str, Any]]) -> tuple[Any, ...]:
        return (build_capacity(nodes, pods), build_node_free(nodes, pods, placed=()),
                compute_worker_nodes(pods), compute_room(nodes, pods, 1, worker))  # fmt: skip

    assert read(listed) == read(pods)
    assert read(pods)[1] != build_node_free(nodes, [], placed=())  # the pod's CPU counted
