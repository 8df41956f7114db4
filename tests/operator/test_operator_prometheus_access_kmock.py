"""The autoscale pass on kmock with the operator's Prometheus access: what the user sees.

Covers: one autoscale pass of the daemon (``autoscale_job``, as its kopf loop runs it) sends
the operator's bearer token and headers to its Prometheus; when that Prometheus refuses them
(HTTP 401, echoing the token as a careless proxy might), the job's ``MetricsUnavailable``
condition says ``HTTP 401`` and what was sent, and neither the job's status nor any log record
holds the token. The Prometheus here is the header-recording server of
tests/prometheus/test_prometheus_access.py (the real Prometheus behind TLS and basic auth is
in tests/prometheus/test_prometheus_auth.py).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kmock
import pytest

from tests.operator.test_operator_kmock import JOB as BASE_JOB
from tests.prometheus.test_prometheus_access import Recorder, _serve
from tests.support.kmock import RealisticEmulator, api_call, create_job, job, set_pod_state
from trainscale.operator import api
from trainscale.operator.adapters.prometheus_access import PrometheusAccess
from trainscale.operator.controller import builders
from trainscale.operator.daemons.autoscale import JobLoop, autoscale_job

pytestmark = [pytest.mark.slow, pytest.mark.kmock(cls=RealisticEmulator)]

TOKEN = "sa-token-that-must-never-show"
JOB: dict[str, Any] = copy.deepcopy(BASE_JOB)
JOB["metadata"]["name"] = "watched"
JOB["spec"].update(
    replicas=1, autoscaling={"enabled": True, "settleSeconds": 0, "intervalSeconds": 5}
)


@pytest.fixture
def prometheus() -> Iterator[Recorder]:
    yield from _serve()


async def start_with_a_running_worker(
    kmock: kmock.KubernetesEmulator, cluster: Any, body: dict[str, Any]
) -> None:
    """Create the job (in ``default``) and its worker 0, Running and ready."""
    await create_job(cluster, copy.deepcopy(body))
    created = job(kmock)
    ref = builders.JobRef(created["metadata"]["name"], "default", created["metadata"]["uid"])
    spec = api.TrainingJobSpec.model_validate(created["spec"])
    worker = builders.build_worker_pod(ref, spec, 0)
    await api_call(cluster, "POST", "/api/v1/namespaces/default/pods", worker,
                   content_type="application/json")  # fmt: skip
    await set_pod_state(cluster, worker["metadata"]["name"], "Running", ready=True)


async def test_a_refused_token_shows_in_the_condition_and_nowhere_else(
    kmock: kmock.KubernetesEmulator,
    cluster: Any,
    prometheus: Recorder,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    await start_with_a_running_worker(kmock, cluster, JOB)
    (tmp_path / "token").write_text(TOKEN)
    access = PrometheusAccess(
        bearer_token_file=str(tmp_path / "token"), headers=(("X-Scope-OrgID", "ml"),)
    )

    await autoscale_job("default", "watched", JobLoop(), prometheus.url + "/echo401",
                        access=access)  # fmt: skip

    assert prometheus.seen, "the pass queried Prometheus"
    for _, headers in prometheus.seen:
        assert headers["authorization"] == f"Bearer {TOKEN}"
        assert headers["x-scope-orgid"] == "ml"
    status = job(kmock)["status"]
    (metrics,) = [c for c in status["conditions"] if c["type"] == "MetricsUnavailable"]
    assert (metrics["status"], metrics["reason"]) == ("True", "PrometheusError")
    assert "HTTP 401 Unauthorized" in metrics["message"]
    assert f"sent: a bearer token from {tmp_path / 'token'}" in metrics["message"]
    assert TOKEN not in str(job(kmock))
    assert TOKEN not in caplog.text
