"""Shared fixtures of the operator tests: a minimal valid TrainingJob, the kmock-backed
``cluster`` fixture of tests/support/kmock.py, and a fresh store of the jobs' pod listings
for every test (a listing is kept up to 300 s: one kept by an earlier test's job of the same
name would stand for this test's pods)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.support.kmock import cluster  # noqa: F401 - a fixture, used by name
from trainscale.operator.daemons import autoscale as autoscale_daemon
from trainscale.operator.daemons import reconcile as reconcile_daemon
from trainscale.operator.daemons.common import WorkerPodLists

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
