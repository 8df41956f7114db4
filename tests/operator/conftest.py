"""Shared fixtures of the operator tests: a minimal valid TrainingJob, and the kmock-backed
``cluster`` fixture of tests/support/kmock.py."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.support.kmock import cluster  # noqa: F401 - a fixture, used by name

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
