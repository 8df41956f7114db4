"""A watch that lists the operator's pods again wakes every job: what lets an idle job sleep.

kopf watches from the last resource version it saw, so a reconnect loses nothing; but when
the apiserver no longer has that version (410 Gone) or the connection fails, kopf lists the
pods afresh and delivers each as an event of type None. A pod deleted in between is in no
listing: a job whose every pod and Service went during the gap hears nothing. Each job's
reconcile loop had polled every 300 s for that (4 requests a job, 13.3 a second at 1,000
jobs); now the first object of a new listing wakes every job's reconcile loop and drops
every kept pod listing, and an idle loop sleeps ``IDLE_RESYNC_SECONDS`` (1,800 s).

Covers: ``WatchRelists`` tells the first event of a listing from the rest of its burst (a
table over time); ``Wakeups.wake_all`` wakes every running job's reconcile loop and nothing
else; the handler (``trainingjob_child_event``) wakes every job on the first event of a
listing, and only the pod's own job on the rest and on a change, and counts the listings
(``trainscale_operator_watch_relists_total``); a job listed afresh (``trainingjob_event``,
``type`` None) gets a reconcile pass and a fresh pod listing, for when no pod is left to
list (then the pods' listing is empty and delivers nothing); and, with kopf for real
(``KopfRunner``) against kmock: two jobs run, every pod and the Service of one of them are
deleted without a watch event (as during a watch's gap), the pods' watch is ended by a 410
Gone, kopf lists the pods again (only the other job's are there), and the first job's pods
and Service are made again within seconds, not after the idle resync.
"""

from __future__ import annotations

import asyncio
import copy
import time
from typing import Any

import kmock
import pytest
from prometheus_client import REGISTRY, CollectorRegistry

from tests.support.kmock import (
    RealisticEmulator,
    create_job,
    eventually,
    objects,
    pods,
    run_operator,
)
from trainscale.operator import api
from trainscale.operator.daemons import reconcile as reconcile_daemon
from trainscale.operator.daemons.common import (
    IDLE_RESYNC_SECONDS,
    RESYNC_SECONDS,
    Wakeups,
    WatchRelists,
    WorkerPodLists,
)
from trainscale.operator.daemons.reconcile import trainingjob_child_event
from trainscale.operator.observability.metric_names import (
    AUTOSCALE_LOOP,
    RECONCILE_LOOP,
    WATCH_RELISTS_NAME,
)
from trainscale.operator.observability.metrics import OperatorMetrics

NS = "ns"

# Each step: seconds since the last event, whether the event begins a new listing.
RELIST_CASES: dict[str, list[tuple[float, bool]]] = {
    "the first event ever begins one": [(0, True)],
    "a burst is one listing": [(0, True), (0.01, False), (2, False), (9.9, False)],
    "a burst longer than the quiet time is still one": [(0, True)] + [(5, False)] * 10,
    "quiet for longer than 10 s: a new listing": [(0, True), (1, False), (10.5, True), (1, False)],
    "exactly 10 s apart is the same burst": [(0, True), (10, False)],
}


@pytest.mark.parametrize("steps", list(RELIST_CASES.values()), ids=list(RELIST_CASES))
def test_the_first_event_of_a_listing_is_told_from_the_rest_of_its_burst(
    steps: list[tuple[float, bool]],
) -> None:
    clock = [100.0]
    relists = WatchRelists(quiet_seconds=10.0, clock=lambda: clock[0])
    for i, (advance, new) in enumerate(steps):
        clock[0] += advance
        assert relists.seen() is new, (i, advance)


def test_the_idle_resync_is_half_an_hour() -> None:
    """What the wake on a listing buys: an idle job's loop sleeps 30 minutes, not 5."""
    assert IDLE_RESYNC_SECONDS == 1800.0
    assert RESYNC_SECONDS < IDLE_RESYNC_SECONDS


async def test_wake_all_wakes_every_running_reconcile_loop_and_nothing_else() -> None:
    wakeups = Wakeups()
    a, b = wakeups.get(NS, "a"), wakeups.get("other", "b")
    a_autoscale = wakeups.get(NS, "a", AUTOSCALE_LOOP)
    wakeups.get(NS, "gone")
    wakeups.forget(NS, "gone")
    assert wakeups.wake_all() == 2
    assert a.is_set() and b.is_set() and not a_autoscale.is_set()
    assert wakeups.jobs() == 2  # forgotten stays forgotten
    a.clear()
    assert wakeups.wake_all(AUTOSCALE_LOOP) == 1
    assert a_autoscale.is_set() and not a.is_set()


def _labels(job: str) -> dict[str, str]:
    return {
        api.LABEL_MANAGED_BY: api.MANAGED_BY,
        api.LABEL_JOB_NAME: job,
        api.LABEL_COMPONENT: api.COMPONENT_WORKER,
    }


class Kept:
    """A ``WorkerPodLists`` whose listings are set by hand: which jobs have one kept."""

    def __init__(self, lists: WorkerPodLists, jobs: list[str]) -> None:
        self.lists = lists
        for job in jobs:
            lists._lists[(NS, job)] = (float("inf"), [])

    def jobs(self) -> set[str]:
        return {name for _, name in self.lists._lists}


async def test_the_first_event_of_a_listing_wakes_every_job_the_rest_only_their_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [100.0]
    wakeups, lists = Wakeups(), WorkerPodLists()
    monkeypatch.setattr(reconcile_daemon, "WAKEUPS", wakeups)
    monkeypatch.setattr(reconcile_daemon, "WORKER_PODS", lists)
    monkeypatch.setattr(reconcile_daemon, "RELISTS", WatchRelists(clock=lambda: clock[0]))
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    monkeypatch.setattr(reconcile_daemon, "get_metrics", lambda: metrics)

    def relists() -> float:
        return registry.get_sample_value(WATCH_RELISTS_NAME) or 0.0

    loops = {job: wakeups.get(NS, job, RECONCILE_LOOP) for job in ("a", "b", "c")}
    kept = Kept(lists, ["a", "b", "c"])

    def woken() -> set[str]:
        found = {job for job, event in loops.items() if event.is_set()}
        for event in loops.values():
            event.clear()
        return found

    # A change of one pod: its own job only.
    await trainingjob_child_event(labels=_labels("a"), namespace=NS, type="MODIFIED")
    assert woken() == {"a"} and kept.jobs() == {"b", "c"} and relists() == 0

    # The first pod of a listing (c has no pod left in it): every job.
    await trainingjob_child_event(labels=_labels("b"), namespace=NS, type=None)
    assert woken() == {"a", "b", "c"} and kept.jobs() == set() and relists() == 1

    # The rest of that listing: each pod's own job.
    Kept(lists, ["a", "b", "c"])
    clock[0] += 1.0
    await trainingjob_child_event(labels=_labels("a"), namespace=NS, type=None)
    assert woken() == {"a"} and kept.jobs() == {"b", "c"} and relists() == 1

    # A listing after a quiet spell (a second gap): every job again.
    clock[0] += 60.0
    await trainingjob_child_event(labels={}, namespace=NS, type=None)
    assert woken() == {"a", "b", "c"} and kept.jobs() == set() and relists() == 2


async def test_a_job_listed_again_gets_a_reconcile_pass_and_a_fresh_pod_listing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where every pod and Service went during the gap, the pods' new listing is empty and
    wakes nothing; the jobs' own listing (their watch broke too) wakes each job listed. A
    change of a job wakes its reconcile loop only when what a pass reads changed."""
    wakeups, lists = Wakeups(), WorkerPodLists()
    monkeypatch.setattr(reconcile_daemon, "WAKEUPS", wakeups)
    monkeypatch.setattr(reconcile_daemon, "WORKER_PODS", lists)
    loops = {job: wakeups.get(NS, job, RECONCILE_LOOP) for job in ("a", "b")}
    kept = Kept(lists, ["a", "b"])
    body = {"metadata": {"name": "a", "namespace": NS}, "spec": {"replicas": 2}, "status": {}}

    def woken() -> set[str]:
        found = {job for job, event in loops.items() if event.is_set()}
        for event in loops.values():
            event.clear()
        return found

    async def event(type: str | None, job: dict[str, Any]) -> None:
        await reconcile_daemon.trainingjob_event(
            type=type, name="a", namespace=NS, body=job, memo=None
        )

    await event("MODIFIED", body)  # the first inputs seen: a pass (a job's change keeps pods')
    assert woken() == {"a"} and kept.jobs() == {"a", "b"}
    await event("MODIFIED", body)  # nothing a pass reads changed
    assert woken() == set() and kept.jobs() == {"a", "b"}
    await event(None, body)  # listed again, unchanged: a pass and a fresh listing all the same
    assert woken() == {"a"} and kept.jobs() == {"b"}
    await event("MODIFIED", body)  # the listing recorded its inputs: no second pass
    assert woken() == set()


# -- kopf for real, against kmock -----------------------------------------------------------

JOB: dict[str, Any] = {
    "apiVersion": "trainscale.dev/v1alpha1",
    "kind": "TrainingJob",
    "metadata": {"namespace": "default"},
    "spec": {
        "replicas": 2,
        "minReplicas": 1,
        "maxReplicas": 2,
        "template": {
            "spec": {
                "containers": [
                    {
                        "name": "trainer",
                        "image": "ghcr.io/example/train:1",
                        "resources": {"limits": {"nvidia.com/gpu": 1}},
                    }
                ]
            }
        },
    },
}


def _children(server: kmock.KubernetesEmulator, job: str) -> set[str]:
    found = {
        f"{kind}/{o['metadata']['name']}"
        for kind, resource in (("pod", "v1/pods"), ("service", "v1/services"))
        for o in objects(server, resource)
        if (o["metadata"].get("labels") or {}).get(api.LABEL_JOB_NAME) == job
    }
    return found


def _delete_without_an_event(server: kmock.KubernetesEmulator, job: str) -> None:
    """Gone as during a watch's gap: deleted in the store, no DELETED event on any stream."""
    for _key, obj in list(server.objects.items()):
        labels = (obj.raw.get("metadata") or {}).get("labels") or {}
        if labels.get(api.LABEL_JOB_NAME) == job and not obj.deleted:
            obj.delete()


async def _end_the_pods_watch_with_410(server: kmock.KubernetesEmulator) -> None:
    """The apiserver no longer has the watch's resource version: kopf lists the pods again."""
    buses = server._buses  # kmock's per-resource event streams
    (pods_bus,) = [bus for res, bus in buses.items() if getattr(res, "plural", "") == "pods"]
    gone = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}
    await pods_bus.put({"type": "ERROR", "object": gone})


def _relists_counted() -> float:
    """The operator's (kopf's thread shares this process's registry)."""
    return REGISTRY.get_sample_value(WATCH_RELISTS_NAME) or 0.0


@pytest.mark.slow
@pytest.mark.kmock(cls=RealisticEmulator)
async def test_a_job_whose_every_pod_went_during_a_watch_gap_is_made_again_after_the_relisting(
    kmock: kmock.KubernetesEmulator, cluster: Any
) -> None:
    async with run_operator():
        for name in ("gone", "stays"):
            job = copy.deepcopy(JOB)
            job["metadata"]["name"] = name
            await create_job(cluster, job)
        expected = {"pod/gone-rdzv", "service/gone-rdzv", "pod/gone-worker-0", "pod/gone-worker-1"}
        await eventually(lambda: _children(kmock, "gone") == expected, what="gone's pods")
        await eventually(lambda: len(_children(kmock, "stays")) == 4, what="stays's pods")
        # Every pass that acted looks again after RESYNC_SECONDS; past that the loops are idle
        # (the next pass IDLE_RESYNC_SECONDS away, unless woken).
        await asyncio.sleep(RESYNC_SECONDS + 3)

        _delete_without_an_event(kmock, "gone")
        assert _children(kmock, "gone") == set() and "stays-worker-0" in pods(kmock)
        before = _relists_counted()
        started = time.monotonic()
        await _end_the_pods_watch_with_410(kmock)
        await eventually(
            lambda: _children(kmock, "gone") == expected,
            within=RESYNC_SECONDS,
            what="gone's pods and Service made again after the relisting",
        )
        assert time.monotonic() - started < RESYNC_SECONDS
        assert _relists_counted() == before + 1  # one listing, of the pods
