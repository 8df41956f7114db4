"""Pods deleted while the operator's watches were broken are made again at once, on the real
kube-apiserver: the watches resume with 410 Gone, kopf lists afresh, and the listings wake the
jobs' reconcile loops, which otherwise trust the watch for ``IDLE_RESYNC_SECONDS`` (30
minutes).

kopf resumes a broken watch from the last resource version it saw, so it loses no event
while the apiserver keeps its history. An apiserver that restarts keeps none: its watch cache
starts at the current version, and a watch resuming from an older one is answered 410 Gone.
Whatever changed in between arrives as a listing (events of type None), and what went in
between (a pod deleted) is in no listing at all.

The test runs its own control plane (it kills the apiserver, the scheduler and the
controller-manager, as a crash or an upgrade does; the session's test-bed is shared): two
idle jobs of two workers; with the control plane down, every pod and the rendezvous Service
of one job (``one-job``), or of both (``every-job``), are deleted straight in etcd (no
apiserver sees it, so no watch event tells of it); the control plane is started again. The
lost pods and Services are made again (new UIDs) within ``RECREATED_WITHIN`` seconds, and a
job that lost nothing keeps its pods. Where pods are left, their listing wakes every job
(``daemons.common.WatchRelists``, counted in ``trainscale_operator_watch_relists_total``);
where none is, that listing is empty and kopf delivers nothing, and each job's own listing
wakes it (``trainingjob_event``).

With the wake on a job's listing taken out, ``every-job`` waits for the idle resync and
fails; ``one-job`` then still passes on the pods' listing (the kmock test in
``tests/operator/test_operator_watch_relists.py`` ends the pods' watch alone).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import OperatorProcess
from tests.e2e.test_e2e_loops import job_manifest as idle_job
from tests.support.testbed import operator_samples, wait_for
from trainscale.operator import api
from trainscale.operator.controller.builders import rendezvous_name
from trainscale.operator.daemons.common import IDLE_RESYNC_SECONDS
from trainscale.operator.observability.metric_names import WATCH_RELISTS_NAME
from trainscale.testbed.cluster import Testbed
from trainscale.trainer.launch.local import find_free_port

pytestmark = [pytest.mark.testbed, pytest.mark.slow]

NAMESPACE = "relist"
JOBS = ("gone", "kept")  # the first loses its pods and Service in the gap
WORKERS = 2
RECREATED_WITHIN = 60.0  # seconds after the apiserver is back; the idle resync is 1,800


def job_manifest(name: str) -> dict[str, Any]:
    """``WORKERS`` workers, no GPU (kwok nodes take any number), autoscaling off."""
    manifest = idle_job(name)
    manifest["spec"].update(replicas=WORKERS, minReplicas=WORKERS, maxReplicas=WORKERS)
    return manifest


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    """A control plane of this test's own: its apiserver is killed."""
    with Testbed(nodes=1, gpus_per_node=8) as testbed:
        testbed.apply_crd()
        yield testbed


def pod_uids(bed: Testbed, namespace: str, job: str) -> dict[str, str]:
    """The job's pods (workers and rendezvous pod), name -> UID."""
    out = bed.kubectl(
        "get", "pods", "-n", namespace, "-l", f"{api.LABEL_JOB_NAME}={job}", "-o", "json"
    )
    return {p["metadata"]["name"]: p["metadata"]["uid"] for p in json.loads(out.stdout)["items"]}


def services(bed: Testbed, namespace: str) -> set[str]:
    out = bed.kubectl("get", "services", "-n", namespace, "-o", "name").stdout
    return {line.removeprefix("service/") for line in out.split()}


def relists(port: int) -> float:
    return sum(s.value for s in operator_samples(port) if s.name == WATCH_RELISTS_NAME)


@pytest.mark.parametrize("lost", [JOBS[:1], JOBS], ids=["one-job", "every-job"])
def test_pods_deleted_while_the_watch_was_broken_are_made_again_at_once(
    bed: Testbed, tmp_path: Path, lost: tuple[str, ...]
) -> None:
    """``lost``: the jobs whose every pod and Service go in the gap. Where some pods are
    left, their listing wakes every job; where none is, the listing is empty (kopf delivers
    nothing), and the jobs' own listing wakes each job."""
    assert RECREATED_WITHIN < IDLE_RESYNC_SECONDS / 10  # only a wake can make it in time
    namespace = f"{NAMESPACE}-{len(lost)}"
    bed.kubectl("create", "namespace", namespace)
    port = find_free_port()
    op = OperatorProcess(bed, namespace, tmp_path / "operator.log",
                         ("--no-arbitration", "--metrics-port", str(port),
                          "--metrics-address", "127.0.0.1")).start()  # fmt: skip
    try:
        for job in JOBS:
            bed.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(job_manifest(job)))

        def describe() -> str:
            pods = {job: sorted(pod_uids(bed, namespace, job)) for job in JOBS}
            return f"pods {pods}, services {sorted(services(bed, namespace))}\n{op.log_tail()}"

        # The job's workers and its rendezvous pod, and its rendezvous Service.
        wait_for(lambda: all(len(pod_uids(bed, namespace, job)) == WORKERS + 1 for job in JOBS)
                 and services(bed, namespace) >= {rendezvous_name(job) for job in JOBS},
                 timeout=60, what="every job's pods and Service", describe=describe)  # fmt: skip
        before = {job: pod_uids(bed, namespace, job) for job in JOBS}
        wait_for(lambda: operator_samples(port), timeout=30, what="/metrics")
        relists_before = relists(port)

        with bed.control_plane_down():
            gone = 0
            for job in lost:
                gone += bed.etcd_delete_prefix(f"/registry/pods/{namespace}/{job}-")
                gone += bed.etcd_delete_prefix(f"/registry/services/specs/{namespace}/{job}-")
        assert gone == len(lost) * (WORKERS + 2), f"deleted {gone} keys in etcd"
        back = time.monotonic()

        def made_again(job: str) -> bool:
            uids = pod_uids(bed, namespace, job)
            return (len(uids) == WORKERS + 1 and not set(uids.values()) & set(before[job].values())
                    and rendezvous_name(job) in services(bed, namespace))  # fmt: skip

        wait_for(lambda: all(made_again(job) for job in lost), timeout=RECREATED_WITHIN,
                 interval=0.5, what=f"the pods and Service of {lost} made again",
                 describe=describe)  # fmt: skip
        took = time.monotonic() - back
        for job in set(JOBS) - set(lost):
            assert pod_uids(bed, namespace, job) == before[job], describe()
        counted = relists(port) - relists_before
        if len(lost) < len(JOBS):  # pods were left to list
            assert counted >= 1, describe()
        print(f"{lost} made again {took:.1f} s after the apiserver was back; relistings of "
              f"pods counted: {counted:g}")  # fmt: skip
    finally:
        op.stop()
