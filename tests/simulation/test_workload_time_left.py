"""Jobs that say the samples they have left, in the multi-job simulator (``--told-length``
of ``benchmarks/cluster.py``): what the operator offers its autoscalers and the arbiter.

Covers: a job's observation carries its samples left only where jobs say; the arbiter is
told its samples left over its last step's throughput, and nothing for a job not running,
not yet measured, or that does not say; a job whose configured length is wrong
(``told_length_factor``: it stops early, or runs longer than it says) says that wrong
remainder, never a negative one.
"""

from __future__ import annotations

import pytest

from trainscale.operator.autoscaling.workload import Cluster, Running, _time_left, generate, observe


def running(samples_done: float, rate: float, replicas: int = 2) -> Running:
    job = generate(seed=1, jobs=1, hours=1.0, gpus_per_node=4)[0]
    return Running(job, replicas=replicas, done=samples_done, last_rate=rate)


@pytest.mark.parametrize("told", [True, False])
def test_an_observation_carries_the_samples_left_where_jobs_say(told: bool) -> None:
    cluster = Cluster(nodes=2, gpus_per_node=4, interval=60.0, seed=1, tell_time_left=told)
    s = running(1000.0, 50.0)
    left = observe(s, cluster, 600.0).remaining_samples
    assert left == (s.job.samples - 1000.0 if told else None)


def test_the_arbiter_is_told_the_time_left_at_the_last_steps_throughput() -> None:
    told = Cluster(nodes=2, gpus_per_node=4, interval=60.0, seed=1, tell_time_left=True)
    s = running(1000.0, 50.0)
    assert _time_left(s, told) == pytest.approx((s.job.samples - 1000.0) / 50.0)
    assert _time_left(running(1000.0, 0.0), told) is None  # restarting: no rate yet
    assert _time_left(running(0.0, 50.0, replicas=0), told) is None  # waiting
    untold = Cluster(nodes=2, gpus_per_node=4, interval=60.0, seed=1)
    assert _time_left(s, untold) is None


@pytest.mark.parametrize(
    ("factor", "done_share", "left_share"),
    [
        pytest.param(2.0, 0.5, 1.5, id="stops-early-says-too-much"),
        pytest.param(0.5, 0.25, 0.25, id="runs-longer-says-too-little"),
        pytest.param(0.5, 0.75, 0.0, id="past-what-it-says-says-nothing-left"),
    ],
)
def test_a_wrong_length_is_said_as_it_is(
    factor: float, done_share: float, left_share: float
) -> None:
    cluster = Cluster(nodes=2, gpus_per_node=4, interval=60.0, seed=1, tell_time_left=True,
                      told_length_factor=factor)  # fmt: skip
    job = generate(seed=1, jobs=1, hours=1.0, gpus_per_node=4)[0]
    s = Running(job, replicas=2, done=job.samples * done_share, last_rate=50.0)
    assert observe(s, cluster, 600.0).remaining_samples == pytest.approx(job.samples * left_share)
    assert _time_left(s, cluster) == pytest.approx(job.samples * left_share / 50.0)
