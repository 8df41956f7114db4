"""The operator and the trainer agree through trainscale.trainer.contract.

Covers: a worker pod the operator builds and an agent of a local job (``trainscale-train
--local``) carry the same rendezvous settings for the same timeouts; the metrics port the
operator declares is the one the trainer serves by default; the worker pod pattern used by
the PromQL and the dashboard matches exactly the names the operator gives worker pods.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from trainscale.operator.adapters.promql import escape_regex
from trainscale.operator.api import TrainingJobSpec
from trainscale.operator.controller import builders
from trainscale.trainer.contract import environment as env_names
from trainscale.trainer.contract.naming import worker_pod_name, worker_pod_pattern
from trainscale.trainer.launch.local import LocalClusterConfig, build_agent_env
from trainscale.trainer.runtime.settings import metrics_settings_from_env

JOB = builders.JobRef(name="resnet", namespace="vision", uid="u-1")


def worker_env(spec_dict: dict[str, Any]) -> dict[str, Any]:
    pod = builders.build_worker_pod(JOB, TrainingJobSpec.model_validate(spec_dict), 0)
    return {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}


@pytest.mark.parametrize("last_call", [1, 7])
def test_cluster_and_local_jobs_share_the_rendezvous_settings(
    spec_dict: dict[str, Any], last_call: int
) -> None:
    spec_dict["rendezvous"] = {"lastCallTimeoutSeconds": last_call}
    pod = worker_env(spec_dict)
    local = build_agent_env(
        LocalClusterConfig(worker_args=("--task", "m:f"), last_call_timeout=last_call),
        "127.0.0.1:1",
        "run",
        0,
    )
    for name in (env_names.PET_RDZV_BACKEND, env_names.PET_RDZV_CONF,
                 env_names.TORCH_DISABLE_SHARE_RDZV_TCP_STORE):  # fmt: skip
        assert pod[name] == local[name], name
    assert f"last_call_timeout={last_call}" in pod[env_names.PET_RDZV_CONF]


def test_the_declared_metrics_port_is_the_served_one(spec_dict: dict[str, Any]) -> None:
    env = worker_env(spec_dict)
    assert metrics_settings_from_env(env).port == builders.METRICS_PORT
    assert metrics_settings_from_env({}).port == builders.METRICS_PORT


@pytest.mark.parametrize(
    ("pod", "matches"),
    [
        (worker_pod_name("a.b", 0), True),
        (worker_pod_name("a.b", 12), True),
        ("axb-worker-0", False),  # "." is literal
        ("a.bx-worker-0", False),  # a job whose name extends a.b
        (worker_pod_name("a.b", 0) + "-debug", False),
        ("a.b-rdzv", False),
    ],
)
def test_the_worker_pattern_matches_exactly_the_workers(pod: str, matches: bool) -> None:
    # PromQL's =~ is anchored at both ends, as re.fullmatch is.
    assert bool(re.fullmatch(worker_pod_pattern(escape_regex("a.b")), pod)) is matches
