"""A job under a budget goes to what the budget pays for in one move, not in steps of 3x.

Why: the budget objective has no floor to break, so a count slower than the fit predicted
costs a move back, never a broken constraint; each intermediate step costs a restart. With
the trust region at 3x, a 4-worker job under a 24/h budget went 4 -> 12 -> 24 on nine of the
benchmark's curves (0.952-0.958 of hindsight at 250 s restarts) and strong-8 went
4 -> 12 -> 24 -> 8 (0.933); `benchmarks/policy.py`: 43 -> 44 of 57 cases meet the goal.
"""

from __future__ import annotations

import pytest

from tests.support.policy_sim import make_spec, moves, run_slow_restart_seed
from trainscale.operator.autoscaling.simulation import named_curve


@pytest.mark.parametrize(
    ("curve", "expected"),
    [
        pytest.param("linear", [24], id="linear-goes-there-at-once"),
        pytest.param("cliff-4", [24], id="past-a-cliff-still-fastest"),
        pytest.param("strong-8", [24, 8], id="slower-than-predicted-one-move-back"),
    ],
)
def test_a_budget_job_goes_to_what_its_budget_pays_for(curve: str, expected: list[int]) -> None:
    spec = make_spec(
        replicas=4, objective="budget", costPerGpuHour=1.0, maxCostPerHour=24.0, intervalSeconds=30
    )
    result = run_slow_restart_seed(named_curve(curve), spec)
    assert moves(result) == expected, result.decisions[-1].recommendation.reason
    assert result.score.constraint_met, result.score
    assert result.score.samples_ratio >= 0.95, result.score
