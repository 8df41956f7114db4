"""The autoscale pass hands the job's time left to cluster arbitration, on kmock.

Covers: the glue of the autoscale daemon (``autoscale_job``, as its kopf loop runs it) between
a decision and arbitration: the time left a pass decided (samples left over samples per second,
where the trainer says) is kept on the job's loop with when it was decided, and the next pass
offers both to the cluster pass, which ages it from then. Its Prometheus is the recording
server of tests/prometheus/test_prometheus_access.py, answering every query with 0.5 (so the
job has 0.5 samples left at 0.5 samples per second: a second); the decisions are the policy's,
the time-left arithmetic has its own tests (tests/policy, tests/arbiter). The cluster pass
each pass runs for a job with no share yet fails here, outside kopf (no kopf settings), and
keeps its last shares (none): the offer is made before it, and this test reads only the offer.
"""

from __future__ import annotations

import copy
from typing import Any

import kmock
import pytest

from tests.operator.test_operator_prometheus_access_kmock import JOB as WATCHED
from tests.operator.test_operator_prometheus_access_kmock import (
    prometheus,  # noqa: F401  (the fixture)
    start_with_a_running_worker,
)
from tests.prometheus.test_prometheus_access import Recorder
from tests.support.kmock import RealisticEmulator
from trainscale.operator.daemons.autoscale import JobLoop, autoscale_job
from trainscale.operator.daemons.cluster import ClusterArbitration
from trainscale.trainer.contract.metric_names import REMAINING_SAMPLES

pytestmark = [pytest.mark.slow, pytest.mark.kmock(cls=RealisticEmulator)]

JOB: dict[str, Any] = copy.deepcopy(WATCHED)  # autoscaled, one worker, 5 s passes
JOB["metadata"]["name"] = "ending"


async def test_a_passes_time_left_reaches_arbitration_with_when_it_was_decided(
    kmock: kmock.KubernetesEmulator,
    cluster: Any,
    prometheus: Recorder,  # noqa: F811
) -> None:
    await start_with_a_running_worker(kmock, cluster, JOB)
    clock = [5000.0]
    arbitration = ClusterArbitration(clock=lambda: clock[0])
    loop = JobLoop()
    url = prometheus.url + "/ok"

    await autoscale_job("default", "ending", loop, url, arbitration=arbitration)
    assert any(REMAINING_SAMPLES in path for path, _ in prometheus.seen), "samples left asked"
    decided, at = loop.time_left_seconds, loop.time_left_at
    assert decided is not None and 0.0 < decided <= 1.0
    assert "default/ending" not in arbitration.times_left  # offered by the next pass

    clock[0] = at + 0.25  # the next pass comes a quarter of a second after that decision
    await autoscale_job("default", "ending", loop, url, arbitration=arbitration)
    assert arbitration.times_left["default/ending"] == (decided, at)
    assert arbitration.time_left("default/ending") == pytest.approx(max(0.0, decided - 0.25))
