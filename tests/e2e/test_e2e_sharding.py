"""Sharding by namespace: two operators with disjoint namespaces each manage only their own jobs.

docs/sharding.md splits the jobs of a cluster between operator deployments ("shards"), each
given its own namespaces with ``--namespace`` and its own peering. This test runs two shards
against the test-bed, each one replica with ``--peering trainscale`` — the same peering name
on purpose: a namespaced operator keeps its KopfPeering object in its own namespaces, so
shards never pause one another — and jobs of the same names in both namespaces. Then:

- every job gets its workers (both shards act: neither paused the other);
- each operator runs one reconcile and one autoscale loop per job of its own namespace and
  none for the other's (``trainscale_operator_job_loops``), and its per-job series
  (``trainscale_operator_managed_pods``) name only its own namespace's jobs;
- each shard's peering object is in its own namespace.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.e2e.conftest import OperatorProcess
from tests.e2e.test_e2e_loops import LOOPS, create_jobs, jobs_with_a_worker, loops, operator_samples
from tests.e2e.test_e2e_peering import PEERING_CRDS
from tests.support.testbed import cleanup_namespace, make_namespace, wait_for
from trainscale.operator.observability.metric_names import (
    JOB_LABEL,
    MANAGED_PODS_NAME,
    NAMESPACE_LABEL,
)
from trainscale.trainer.launch.local import find_free_port

pytestmark = [pytest.mark.testbed, pytest.mark.slow]

JOBS = ["train-0", "train-1"]  # the same names in both shards
PEERING = "trainscale"


def managed_jobs(port: int) -> set[tuple[str, str]]:
    """(namespace, job) of every job an operator's per-job series name."""
    return {
        (s.labels[NAMESPACE_LABEL], s.labels[JOB_LABEL])
        for s in operator_samples(port)
        if s.name == MANAGED_PODS_NAME
    }


def peering_namespaces(kubectl: Any) -> set[str]:
    out = kubectl("get", "kopfpeerings", "-A", "-o", "json").stdout
    return {p["metadata"]["namespace"] for p in json.loads(out)["items"]
            if p["metadata"]["name"] == PEERING}  # fmt: skip


@pytest.fixture
def shards(
    kubectl: Any, crd: Any, operator_factory: Callable[..., OperatorProcess]
) -> Iterator[list[tuple[str, int, OperatorProcess]]]:
    """Two shards: (namespace, metrics port, operator), the operator watching that namespace
    alone. At teardown the namespaces are cleaned while the operators run (they lift the jobs'
    finalizers), then the operators stop."""
    kubectl("apply", "-f", str(PEERING_CRDS))
    kubectl("wait", "--for", "condition=established", "crd/kopfpeerings.kopf.dev", "--timeout=30s")
    started = []
    for prefix in ("shard-a-", "shard-b-"):
        namespace, port = make_namespace(kubectl, prefix), find_free_port()
        op = operator_factory(namespace, "--peering", PEERING, "--metrics-port", str(port),
                              "--metrics-address", "127.0.0.1")  # fmt: skip
        started.append((namespace, port, op))
    yield started
    for namespace, _, _ in started:
        cleanup_namespace(kubectl, namespace)
    for _, _, op in started:
        op.stop()


def wait_for_own_jobs(kubectl: Any, namespace: str, port: int, describe: Callable[[], str]) -> None:
    """The shard's jobs have their workers, and its operator runs loops and series for them
    alone."""
    wait_for(lambda: jobs_with_a_worker(kubectl, namespace) >= set(JOBS), timeout=120,
             interval=1.0, what=f"a worker for each job in {namespace}", describe=describe)  # fmt: skip
    wait_for(lambda: loops(port) == dict.fromkeys(LOOPS, len(JOBS)), timeout=60,
             what=f"the loops of {namespace}'s jobs alone", describe=describe)  # fmt: skip
    mine = {(namespace, job) for job in JOBS}
    wait_for(lambda: managed_jobs(port) == mine, timeout=30,
             what=f"per-job series of {namespace}'s jobs alone", describe=describe)  # fmt: skip


def test_two_operators_with_disjoint_namespaces_each_manage_only_their_own_jobs(
    kubectl: Any, shards: list[tuple[str, int, OperatorProcess]]
) -> None:
    def describe() -> str:
        return "\n".join(f"{ns}: loops {loops(port)}, jobs {managed_jobs(port)}\n{op.log_tail(15)}"
                         for ns, port, op in shards)  # fmt: skip

    for namespace, _, _ in shards:
        create_jobs(kubectl, namespace, JOBS)
    for namespace, port, _ in shards:
        wait_for_own_jobs(kubectl, namespace, port, describe)
    assert peering_namespaces(kubectl) >= {ns for ns, _, _ in shards}
