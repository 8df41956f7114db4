"""A job's worker pods are listed again only when the watch says they changed.

Every autoscale pass listed the job's pods: one LIST a job and interval (33.8 of the 37.2
requests a second of 1,000 running arbitrated jobs). ``WorkerPodLists`` keeps each job's
last listing until a watch event of its pods (``changed``) or ``max_age_seconds``; the
reconcile pass always lists (``fetch``), and keeps what it found. The apiserver is replaced
here by a counting stand-in for the adapter (``k8s.fetch_worker_pods``); the test-bed test
of the real passes is ``tests/testbed/test_testbed_worker_pod_lists.py``, and the e2e test
of the operator's requests ``tests/e2e/test_e2e_loops.py``.

Covers, as a table of steps: a listing reused until an event, until it is old, or until
the job is forgotten; ``fetch`` always lists and keeps; an event or a forget while a listing
is in flight keeps it from being kept (it is returned, once); an event of a job not held
creates no state (a deleted job's pods go after it); a failed listing keeps nothing new;
jobs are independent; a new listing of the watch (``relisted``) drops every job's listing,
kept or in flight.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from trainscale.operator.adapters import k8s
from trainscale.operator.daemons.common import IDLE_RESYNC_SECONDS, WorkerPodLists

NS = "ns"
CLIENTS: Any = object()  # never used: the adapter is replaced


class FakeApiserver:
    """``k8s.fetch_worker_pods`` answering a new list object each time (tagged by the LIST's
    number), counting LISTs per job; ``during`` runs inside the next LIST (an event or a
    forget arriving while it is in flight); ``fail`` makes the next LIST raise."""

    def __init__(self) -> None:
        self.lists: list[str] = []
        self.during: Callable[[], None] | None = None
        self.fail = False

    def __call__(self, clients: Any, namespace: str, name: str) -> list[dict[str, Any]]:
        assert clients is CLIENTS and namespace == NS
        if self.during is not None:
            during, self.during = self.during, None
            during()
        if self.fail:
            self.fail = False
            raise k8s.KubernetesError(500, "GET", "/api/v1/namespaces/ns/pods", "boom")
        self.lists.append(name)
        return [{"metadata": {"name": f"{name}-worker-0", "list": len(self.lists)}}]


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeApiserver:
    fake = FakeApiserver()
    monkeypatch.setattr(k8s, "fetch_worker_pods", fake)
    return fake


@pytest.fixture
def clock() -> list[float]:
    return [1000.0]


@pytest.fixture
def lists(clock: list[float]) -> WorkerPodLists:
    return WorkerPodLists(max_age_seconds=300.0, clock=lambda: clock[0], age_spread=0.0)


def listing(pods: list[dict[str, Any]]) -> int:
    """Which LIST (1, 2, ...) these pods came from."""
    return int(pods[0]["metadata"]["list"])


def test_the_default_age_is_the_idle_resync() -> None:
    assert WorkerPodLists().max_age_seconds == IDLE_RESYNC_SECONDS


def test_the_listings_of_a_burst_age_out_spread_over_half_the_age(
    api: FakeApiserver, clock: list[float]
) -> None:
    """1,000 jobs listed at once (a burst) are listed again over the second half of the
    age, not all within one interval, and the rounds after spread out further: each
    listing draws its own share. Passes every 30 s, 40 of them (20 minutes)."""
    lists = WorkerPodLists(max_age_seconds=300.0, clock=lambda: clock[0], rng=random.Random(7))
    jobs = [f"job-{i}" for i in range(1000)]
    for job in jobs:
        lists.get(CLIENTS, NS, job)
    listed = []
    for _ in range(40):
        before = len(api.lists)
        clock[0] += 30.0
        for job in jobs:
            lists.get(CLIENTS, NS, job)
        listed.append(len(api.lists) - before)
    assert listed[:4] == [0, 0, 0, 0]  # none before half the age (150 s) ...
    assert sum(listed[:10]) == len(jobs)  # ... every one by the age (300 s)
    assert max(listed[:10]) <= len(jobs) // 4, listed  # a fifth of them a pass, about
    # Later, about one in 7.5 a pass (the mean age, 225 s), none above one in 5.
    assert max(listed[20:]) <= len(jobs) // 5, listed
    assert abs(sum(listed[20:]) / 20 - len(jobs) / 7.5) < len(jobs) / 30, listed


# Each step: (action, job, seconds to advance first, the LIST the answer comes from or None
# for no answer, LISTs made so far). Actions: get, fetch, changed, forget.
Step = tuple[str, str, float, int | None, int]

CASES: dict[str, list[Step]] = {
    "reused until an event of the job's pods": [
        ("get", "a", 0, 1, 1),
        ("get", "a", 10, 1, 1),
        ("get", "a", 280, 1, 1),
        ("changed", "a", 0, None, 1),
        ("get", "a", 1, 2, 2),
        ("get", "a", 1, 2, 2),
    ],
    "listed again once old": [
        ("get", "a", 0, 1, 1),
        ("get", "a", 299, 1, 1),
        ("get", "a", 1, 2, 2),  # 300 s: as old as an idle loop trusts the watch
        ("get", "a", 299, 2, 2),
    ],
    "the reconcile pass lists always and keeps it": [
        ("fetch", "a", 0, 1, 1),
        ("fetch", "a", 0, 2, 2),
        ("get", "a", 5, 2, 2),
        ("changed", "a", 0, None, 2),
        ("fetch", "a", 0, 3, 3),
        ("get", "a", 0, 3, 3),
    ],
    "a forgotten job is listed again": [
        ("get", "a", 0, 1, 1),
        ("forget", "a", 0, None, 1),
        ("get", "a", 0, 2, 2),
    ],
    "jobs are independent": [
        ("get", "a", 0, 1, 1),
        ("get", "b", 0, 2, 2),
        ("changed", "a", 0, None, 2),
        ("get", "b", 0, 2, 2),
        ("get", "a", 0, 3, 3),
        ("get", "b", 0, 2, 3),
    ],
    "every job listed again after the watch listed the pods again": [
        ("get", "a", 0, 1, 1),
        ("fetch", "b", 0, 2, 2),
        ("relisted", "", 10, None, 2),
        ("get", "a", 0, 3, 3),
        ("get", "b", 0, 4, 4),
        ("get", "a", 0, 3, 4),
        ("get", "b", 0, 4, 4),
    ],
}


@pytest.mark.parametrize("steps", list(CASES.values()), ids=list(CASES))
def test_a_listing_is_reused_until_an_event_or_its_age(
    api: FakeApiserver, clock: list[float], lists: WorkerPodLists, steps: list[Step]
) -> None:
    for i, (action, job, advance, answer, made) in enumerate(steps):
        clock[0] += advance
        if action in ("get", "fetch"):
            pods = getattr(lists, action)(CLIENTS, NS, job)
            assert listing(pods) == answer, (i, action, job)
        elif action == "relisted":
            lists.relisted()
        else:
            getattr(lists, action)(NS, job)
        assert len(api.lists) == made, (i, action, job, api.lists)


@pytest.mark.parametrize("action", ["get", "fetch"])
@pytest.mark.parametrize("during", ["changed", "forget", "relisted"])
def test_an_event_while_listing_keeps_the_listing_from_being_kept(
    api: FakeApiserver, lists: WorkerPodLists, action: str, during: str
) -> None:
    """The listing may predate the change the event tells of: it is answered (the pass
    that asked sees pods as they were a moment ago, as a LIST a moment earlier would), but
    the next pass lists again."""
    api.during = lambda: (
        lists.relisted() if during == "relisted" else getattr(lists, during)(NS, "a")
    )
    assert listing(getattr(lists, action)(CLIENTS, NS, "a")) == 1
    assert lists.jobs() == 0
    assert listing(lists.get(CLIENTS, NS, "a")) == 2
    assert listing(lists.get(CLIENTS, NS, "a")) == 2


def test_an_event_of_a_job_not_held_creates_no_state(
    api: FakeApiserver, lists: WorkerPodLists
) -> None:
    """A deleted job's pods go after it: their events must not bring back what ``forget``
    dropped, for good (nothing would forget it again)."""
    lists.changed(NS, "gone")
    assert lists.jobs() == 0
    lists.get(CLIENTS, NS, "a")
    lists.forget(NS, "a")
    lists.changed(NS, "a")
    assert lists.jobs() == 0 and api.lists == ["a"]


def test_a_failed_listing_keeps_nothing_new(api: FakeApiserver, lists: WorkerPodLists) -> None:
    """An error reaches the pass; the listing kept before (from the reconcile pass) stays
    for the autoscale pass, and nothing is left in flight."""
    assert listing(lists.fetch(CLIENTS, NS, "a")) == 1
    api.fail = True
    with pytest.raises(k8s.KubernetesError):
        lists.fetch(CLIENTS, NS, "a")
    assert lists.jobs() == 1
    assert listing(lists.get(CLIENTS, NS, "a")) == 1
    lists.changed(NS, "a")
    api.fail = True
    with pytest.raises(k8s.KubernetesError):
        lists.get(CLIENTS, NS, "a")
    assert lists.jobs() == 0
    assert listing(lists.get(CLIENTS, NS, "a")) == 2


def test_jobs_counts_kept_and_in_flight_listings(api: FakeApiserver, lists: WorkerPodLists) -> None:
    seen: list[int] = []
    api.during = lambda: seen.append(lists.jobs())
    lists.get(CLIENTS, NS, "a")
    assert seen == [1]  # in flight
    lists.get(CLIENTS, NS, "b")
    assert lists.jobs() == 2
    lists.forget(NS, "a")
    assert lists.jobs() == 1
