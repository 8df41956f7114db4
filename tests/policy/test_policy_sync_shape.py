"""The sync times' shape picks the sync term's form when two step times cannot.

Why: with two counts measured a linear and a quadratic sync term both fit the step times
exactly, and the fit kept the linear one, which predicts ever more throughput: a
budget job on comm-peak went 4 -> 24 and held 24, 4 % slower than its peak at 18
(benchmark worst seed 0.944). The trainer's sync share gives each count's synchronising
time; a trainer may under-read it by a factor, alike at every count, so only the ratio
between counts is used: it tells the forms apart, and the quadratic is fitted in its shape.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.policy.test_policy_sync_share import _observe, _under_read
from tests.support.policy_sim import make_spec
from trainscale.operator.autoscaling.policy import (
    Observation,
    SpeedupModel,
    _analyse,
    _sync_shape,
    fit_speedup_model,
    recommend,
)
from trainscale.operator.autoscaling.simulation import named_curve


def _model(observations: list[Observation], per_node: int | None, *, synced: bool) -> SpeedupModel:
    analysis = _analyse(observations, None, 90.0, per_node)
    assert analysis.mode is not None
    model = fit_speedup_model(
        analysis.points,
        analysis.compute,
        analysis.mode,
        per_node,
        analysis.synced if synced else None,
    )
    assert model is not None
    return model


def _peak(model: SpeedupModel, top: int = 32) -> int:
    return max(range(1, top + 1), key=model.throughput)


def test_two_counts_sync_times_find_a_peak_the_step_times_cannot() -> None:
    curve = named_curve("comm-peak")  # tau = 1 + 0.01 k + 0.003 k^2: peak at 18
    obs = _observe(curve, [4, 24], sync=True)
    blind = _model(obs, None, synced=False)
    seen = _model(obs, None, synced=True)
    assert _peak(blind) == 32  # linear sync: more replicas are always faster
    assert blind.sync_quadratic == 0.0
    assert _peak(seen) in (17, 18, 19)
    assert seen.throughput(18) > seen.throughput(24) * 1.02
    assert seen.sync_quadratic == pytest.approx(0.003, rel=0.1)
    assert seen.sync_per_replica == pytest.approx(0.01, rel=0.2)


@pytest.mark.parametrize("seen_share", [0.6, 0.8])
def test_an_under_read_share_gives_the_same_shape(seen_share: float) -> None:
    curve = named_curve("comm-peak")
    obs = _observe(curve, [4, 24], sync=True)
    full = _model(obs, None, synced=True)
    under = _model(_under_read(obs, seen_share), None, synced=True)
    for n in (8, 12, 18, 24, 32):
        assert under.throughput(n) == pytest.approx(full.throughput(n), rel=1e-6)


def test_a_linear_sync_keeps_the_linear_fit() -> None:
    # amdahl's sync is linear in the count: the quadratic's extra parameter buys nothing
    curve = named_curve("amdahl")
    obs = _observe(curve, [4, 24], sync=True)
    blind = _model(obs, None, synced=False)
    seen = _model(obs, None, synced=True)
    assert seen.sync_quadratic < 0.05 * seen.sync_per_replica
    for n in (2, 8, 16, 32):
        assert seen.throughput(n) == pytest.approx(blind.throughput(n), rel=0.01)


def test_the_misfit_is_relative_to_the_measured_shape() -> None:
    rows = _observe(named_curve("comm-peak"), [4, 24], sync=True, noise=0.02, samples=20)
    analysis = _analyse(rows, None, 90.0, None)
    medians = {k: sorted(v)[len(v) // 2] for k, v in analysis.points.items()}
    shape = _sync_shape(analysis.synced, medians)
    assert shape is not None and shape.identifies(False) and not shape.identifies(True)
    linear, quadratic = (True, True, False, False), (True, True, False, True)
    # 2 % noise on 20 samples: the linear form's ratio (23/3 against 32) is far outside it
    assert shape.misfit(linear) > 100.0
    assert shape.misfit(quadratic) < 1.0
    # one count, or no sync share, gives no shape
    assert _sync_shape(analysis.synced, {k: v for k, v in medians.items() if k[0] == 4}) is None
    assert _sync_shape({}, medians) is None


def test_across_nodes_the_fit_is_unchanged() -> None:
    # A node-boundary term in the sync times (recover-4: per node) is not a quadratic:
    # with the inter-node term fitted, two counts' sync times do not shape the fit.
    curve = named_curve("recover-4")
    obs = _observe(curve, [4, 8], sync=True)
    blind = _model(obs, 4, synced=False)
    seen = _model(obs, 4, synced=True)
    for n in (4, 8, 12, 16, 32):
        assert seen.throughput(n) == pytest.approx(blind.throughput(n), rel=1e-9)


def test_a_budget_job_leaves_the_budgets_count_for_the_peak() -> None:
    curve = named_curve("comm-peak")
    obs = _observe(curve, [4, 24], sync=True, noise=0.02, samples=20)
    spec = make_spec(
        replicas=24,
        hi=32,
        objective="budget",
        costPerGpuHour=1.0,
        maxCostPerHour=24.0,
        scaleDownStabilizationSeconds=0,
    )
    rec = recommend(spec, obs, 24, obs[-1].timestamp + 1.0)
    assert rec.replicas in (17, 18, 19), rec.reason
    blind = [replace(o, sync_fraction=None) for o in obs]
    assert recommend(spec, blind, 24, obs[-1].timestamp + 1.0).replicas == 24


def test_where_both_forms_fit_the_step_times_the_sync_times_decide() -> None:
    # 30 % of comm-peak's unsynchronised step off the GPU (input pipeline, framework): a
    # linear sync term then fits the two step times with a positive overhead, as exactly as
    # the quadratic; only the sync times' ratio (32 against the linear form's 23/3) says
    # which, and the linear one's misfit weighs it out of the average.
    curve = replace(named_curve("comm-peak"), compute_fraction=0.7)
    obs = _observe(curve, [4, 24], sync=True, noise=0.02)
    blind = _model(obs, None, synced=False)
    seen = _model(obs, None, synced=True)
    assert _peak(blind) == 32
    assert _peak(seen) in (17, 18, 19)
    assert seen.sync_quadratic == pytest.approx(0.003, rel=0.1)
