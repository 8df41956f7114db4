"""The test-bed's simulated exporter takes its curve from the simulation module.

Covers:
- the ``sync`` step-time model keeps its numbers (``compute + sync * (n - 1)`` seconds per
  step, ``batch`` samples per worker per step, GPU busy ``compute / step``);
- a job given a named curve serves that curve's throughput (split over its pods) and GPU
  utilization, so the test-bed can show a node-boundary cliff.
"""

from __future__ import annotations

import pytest

from trainscale.operator.autoscaling.simulation import named_curve
from trainscale.testbed.simjob import DCGM_ENGINE_ACTIVE, SimulatedJob


def busy(job: SimulatedJob) -> list[float]:
    families = {f.name: f for f in job.collect()}
    return [s.value for s in families[DCGM_ENGINE_ACTIVE].samples]


def test_sync_model_keeps_its_numbers() -> None:
    job = SimulatedJob("default", "j", sync=0.05, compute=0.5, batch=64)
    assert job.step_seconds(4) == pytest.approx(0.65)
    assert job.throughput(4) == pytest.approx(4 * 64 / 0.65)
    job.advance(10.0, ["j-worker-0", "j-worker-1"])
    assert job.samples["j-worker-0"] == pytest.approx(64 * 10 / 0.55)
    assert busy(job) == pytest.approx([0.5 / 0.55] * 2)


def test_a_named_curve_drives_the_series() -> None:
    curve = named_curve("cliff-4")
    job = SimulatedJob("default", "j", sync=0.0, curve=curve)
    pods = [f"j-worker-{i}" for i in range(5)]
    job.advance(2.0, pods)
    five = curve.point(5)
    assert sum(job.samples.values()) == pytest.approx(2.0 * five.samples_per_second)
    assert busy(job) == pytest.approx([five.gpu_utilization] * 5)
    assert job.throughput(5) < job.throughput(4)  # the cliff at the second node
