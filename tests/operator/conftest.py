"""Shared fixtures of the operator tests: a minimal valid TrainingJob, the kmock-backed
``cluster`` fixture of tests/support/kmock.py, and a fresh store of the jobs' pod listings
for every test (a listing is kept up to 1,800 s: one kept by an earlier test's job of the same
name would stand for this test's pods), and of when the watch last listed them."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.support.kmock import cluster  # noqa: F401 - a fixture, used by name
from trainscale.operator.daemons import autoscale as autoscale_daemon
from trainscale.operator.daemons import reconcile as reconcile_daemon
from trainscale.operator.daemons.common import WatchRelists, WorkerPodLists

BASE_SPEC: dict[str, Any] = {
    "replicas": 2,
    "minReplicas": 1,
    "maxReplicas": 4,
    "template": {
        "metadata": {"labels": {"team": "vision"}},
        "spec": {
            "containers": [
                {
                    "name": "trainer",
                    "image": "ghcr.io/example/train:1",
                    "command": ["torchrun", "train.py"],
                    "env": [{"name": "EPOCHS", "value": "3"}],
                    "resources": {"limits": {"nvidia.com/gpu": 2}},
                }
            ],
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
            "nodeSelector": {"gpu": "a100"},
        },
    },
}


@pytest.fixture
def spec_dict() -> dict[str, Any]:
    """A fresh, valid TrainingJob spec as the apiserver would hand it over (camelCase)."""
    return copy.deepcopy(BASE_SPEC)


@pytest.fixture(autouse=True)
def fresh_worker_pod_lists(monkeypatch: pytest.MonkeyPatch) -> WorkerPodLists:
    """The passes' store of pod listings, empty for this test."""
    lists = WorkerPodLists()
    for daemon in (reconcile_daemon, autoscale_daemon):
        monkeypatch.setattr(daemon, "WORKER_PODS", lists)
    return lists


@pytest.fixture(autouse=True)
def fresh_watch_relists(monkeypatch: pytest.MonkeyPatch) -> WatchRelists:
    """When the watch last listed the pods, never for this test: an earlier test's listing
    less than 10 s before would make this test's first listing the rest of that one."""
    relists = WatchRelists()
    monkeypatch.setattr(reconcile_daemon, "RELISTS", relists)
    return relists
