"""The autoscaler runs a job only at the counts ``spec.allowedReplicas`` allows.

Covers: the objective chooses among allowed counts only (a curve whose best count is not
allowed gets the best allowed one); a cap (cluster ceiling, unschedulable pods) between
allowed counts goes down to the allowed one below it, saying so; an exploration or probe to
a count that is not allowed goes to the allowed count past it (held when a cap stands
there); and, closed-loop on noisy curves with node boundaries, every count the job is ever
asked to run is allowed.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.policy_sim import amdahl, cliff, make_spec, simulate, steady
from trainscale.operator.api import is_allowed
from trainscale.operator.autoscaling.policy import recommend

MULTIPLE_OF_4 = {"multipleOf": 4}
CURVE = amdahl(0.02)


def _measured(*counts: int) -> list[Any]:
    obs: list[Any] = []
    for i, n in enumerate(counts):
        obs += steady(n, start=300.0 * i, count=10, tau=CURVE)
    return obs


def test_the_objective_chooses_the_best_allowed_count() -> None:
    # amdahl(0.02) with a 0.7 floor: 22 keeps it (0.70), the best count, not a multiple of 4
    obs = _measured(4, 8, 16)
    now = obs[-1].timestamp + 30.0
    free = recommend(make_spec(replicas=16, hi=32), obs, 16, now)
    spec = make_spec(replicas=16, lo=4, hi=32, allowed=MULTIPLE_OF_4)
    rec = recommend(spec, obs, 16, now)
    assert free.target % 4 != 0  # the unrestricted choice is not allowed here
    assert rec.target % 4 == 0 and rec.target <= free.target
    assert free.target - rec.target < 4  # the best allowed one, not any allowed one


@pytest.mark.parametrize(
    ("kw", "replicas", "says"),
    [
        pytest.param({"ceiling": 6}, 4, "moving to 6 (6 is not an allowed size: 4)", id="ceiling"),
        pytest.param({"unschedulable_replicas": 3, "pending_replicas": 3}, 4,
                     "capping at the 5 that ran (5 is not an allowed size: 4)", id="unschedulable"),
    ],
)  # fmt: skip
def test_a_cap_between_allowed_counts_goes_to_the_one_below(
    kw: Any, replicas: int, says: str
) -> None:
    spec = make_spec(replicas=8, lo=4, hi=16, allowed=MULTIPLE_OF_4)
    obs = _measured(8)
    rec = recommend(spec, obs, 8, obs[-1].timestamp + 30.0, **kw)
    assert rec.replicas == replicas
    assert says in rec.reason


@pytest.mark.parametrize(
    ("allowed", "hi", "kw", "replicas"),
    [
        pytest.param(None, 7, {}, 3, id="no-full-node-explores-below"),
        pytest.param({"values": [1, 2, 4, 7]}, 7, {}, 2, id="below-not-allowed-goes-further-down"),
        pytest.param(None, 12, {}, 8, id="explores-the-next-node-filled"),
        pytest.param({"values": [1, 2, 4, 12]}, 12, {}, 12, id="not-allowed-goes-past-it"),
        pytest.param({"values": [1, 2, 4, 12]}, 12, {"ceiling": 10}, 4, id="a-cap-past-it-holds"),
    ],
)  # fmt: skip
def test_an_exploration_goes_to_an_allowed_count(
    allowed: Any, hi: int, kw: Any, replicas: int
) -> None:
    # utilization 0.88 at 4 (one full 4-GPU node) against a 0.8 target: the one-count fit
    # cannot tell what lies past the node boundary, so an exploration decides
    spec = make_spec(replicas=4, hi=hi, allowed=allowed, objective="utilization",
                     targetGpuUtilization=0.8, scaleDownStabilizationSeconds=0)  # fmt: skip
    obs = steady(4, count=4, tau=lambda n: 1.08)
    rec = recommend(spec, obs, 4, obs[-1].timestamp + 30.0, workers_per_node=4, **kw)
    assert rec.replicas == replicas, rec.reason
    assert rec.exploring
    assert is_allowed(spec, rec.replicas)


@pytest.mark.slow  # closed-loop runs, ~3 s: in make test, not make unit
@pytest.mark.parametrize(
    ("allowed", "objective", "tau", "per_node"),
    [
        pytest.param(MULTIPLE_OF_4, {"minEfficiency": 0.7}, amdahl(0.02), None, id="mult4-efficiency"),
        pytest.param({"powersOfTwo": True}, {"minEfficiency": 0.6}, cliff(0.01, 0.3, 4), 4,
                     id="pow2-efficiency-cliff"),
        pytest.param({"values": [4, 6, 12, 24]}, {"objective": "utilization"},
                     cliff(0.005, 0.2, 8), 8, id="values-utilization-cliff"),
        pytest.param(MULTIPLE_OF_4, {"objective": "budget", "maxCostPerHour": 22, "costPerGpuHour": 1},
                     amdahl(0.01), None, id="mult4-budget"),
    ],
)  # fmt: skip
def test_every_count_a_job_is_asked_to_run_is_allowed(
    allowed: Any, objective: Any, tau: Any, per_node: int | None
) -> None:
    lo = 1 if allowed.get("powersOfTwo") else 4
    hi = 24 if "values" in allowed else 32
    spec = make_spec(replicas=4, lo=lo, hi=hi, allowed=allowed, **objective)
    for seed in range(3):
        trace = simulate(spec, tau, hours=2.0, noise=0.05, seed=seed, workers_per_node=per_node)
        assert all(is_allowed(spec, n) for n in trace.replicas), trace.replicas
        assert len(set(trace.replicas)) > 1  # it did move: the check is not vacuous
