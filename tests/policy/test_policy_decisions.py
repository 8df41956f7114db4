"""Decision table of ``recommend``: one readable row per rule of the module docstring.

Reasons lead with the step that decided (``"confidence: ..."``).

Covers: bounds, unschedulable pods, budget overruns (forced, immediate); missing, stale and
settling metrics (hold); pending pods (never ask for more); each objective's choice on a
known curve; the trust region and exploration; the restart-cost gate; stabilization
windows; restart cost from the spec, learned from a restart, or remembered; readable
reasons; and clear errors on bad input.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from tests.support.policy_sim import amdahl, cliff, make_spec, moves, peaked, steady
from trainscale.operator.autoscaling.policy import (
    STEPS,
    DecisionContext,
    LimitedBy,
    ModelSource,
    Objective,
    Observation,
    RestartCostSource,
    compact_observations,
    recommend,
)
from trainscale.operator.autoscaling.simulation import Noise, named_curve, run_simulation

NOW = 10 * 30.0  # just after ten observations at 30 s


def decide(observations: list[Observation], current: int, **kw: Any):  # type: ignore[no-untyped-def]
    spec_kw = kw.pop("spec", {})
    return recommend(make_spec(replicas=current, **spec_kw), observations, current, NOW, **kw)


@pytest.mark.parametrize(
    ("spec", "observations", "current", "kw", "replicas", "limited_by", "reason_part"),
    [
        pytest.param({"hi": 8}, [], 8, {"unschedulable_replicas": 2, "pending_replicas": 2}, 6,
                     LimitedBy.UNSCHEDULABLE, "2 of 8 pods unschedulable; capping at the 6 that ran",
                     id="unschedulable-caps-at-what-ran"),
        pytest.param({"lo": 4}, [], 5, {"unschedulable_replicas": 3, "pending_replicas": 3}, 4,
                     LimitedBy.UNSCHEDULABLE, "capping at minReplicas 4", id="unschedulable-not-below-min"),
        pytest.param({"objective": "budget", "maxCostPerHour": 6, "costPerGpuHour": 1.5}, [], 8, {}, 4,
                     LimitedBy.BUDGET, "cost 12.00/h at 8 > budget 6.00/h; 4 fits", id="budget-overrun"),
        pytest.param({}, [], 4, {}, 4, None, "no metrics yet", id="no-observations"),
        pytest.param({}, [Observation(t, 4) for t in range(0, 300, 30)], 4, {}, 4, None,
                     "no metrics yet", id="observations-without-values"),
        pytest.param({}, steady(4, count=5), 4, {}, 4, None, "no fresh metrics for 180 s",
                     id="stale"),
        pytest.param({}, steady(4), 8, {}, 8, None, "waiting for 8 replicas to run (metrics show 4)",
                     id="waiting-for-new-count"),
        pytest.param({}, [*steady(2, count=8), *steady(4, start=240, count=2)], 4, {}, 4, None,
                     "measuring 4 replicas (2/3 settled samples)", id="measuring-after-change"),
        pytest.param({}, steady(4), 4, {"pending_replicas": 1}, 4, None,
                     "1 pods pending, not asking for more than 4", id="pending-never-asks-more"),
        pytest.param({"objective": "utilization"}, steady(4, util=False), 4, {}, 4, None,
                     "needs GPU utilization", id="utilization-needs-gpu-metrics"),
    ],
)  # fmt: skip
def test_decision_table(spec, observations, current, kw, replicas, limited_by, reason_part) -> None:  # type: ignore[no-untyped-def]
    rec = decide(observations, current, spec=spec, **kw)
    assert rec.replicas == replicas
    assert rec.limited_by == limited_by
    assert reason_part in rec.reason


def test_out_of_bounds_current_moves_inside_at_once() -> None:
    rec = recommend(make_spec(replicas=8, hi=8), steady(12), 12, NOW)
    assert (rec.replicas, rec.limited_by, rec.forced) == (8, LimitedBy.BOUND, True)
    assert "replicas 12 outside bounds; moving to maxReplicas 8" in rec.reason


def test_stale_and_missing_metrics_flag_it() -> None:
    assert decide([], 4).metrics_stale
    assert decide(steady(4, count=5), 4).metrics_stale
    assert not decide(steady(4), 4).metrics_stale


def test_efficiency_scales_a_linear_job_up_within_the_trust_region() -> None:
    rec = decide(steady(4), 4)
    assert rec.replicas == 8  # 2x the largest measured count
    assert rec.direction == "up"
    assert rec.model is not None and rec.model.level == 1
    # one count: the 5 % of the step the GPU is idle is taken for synchronisation (the prior
    # says overhead is small), so the prediction is conservative until 8 is measured
    assert rec.reason.startswith(
        "stabilization: efficiency 0.95 at 4 >= floor 0.70; 8 predicted 0.89"
    )
    assert "trust region ends at 8" in rec.reason


def test_efficiency_holds_where_the_next_count_falls_below_the_floor() -> None:
    tau = amdahl(0.05)  # E(n) = 1 / (1 + 0.05 (n - 1)): E(9) = 0.71, E(10) = 0.69
    obs = [*steady(6, tau=tau), *steady(8, start=300, tau=tau), *steady(9, start=600, tau=tau)]
    rec = recommend(make_spec(replicas=9), obs, 9, 900.0)
    assert rec.replicas == 9
    assert rec.reason == (
        "restart payback: efficiency 0.71 at 9 >= floor 0.70; 10 predicted 0.69; gain x1.05 "
        "does not pay a 60 s restart within 30 min; holding"
    ) or rec.reason.startswith(
        "stabilization: efficiency 0.71 at 9 >= floor 0.70; 10 predicted 0.69"
    )
    assert rec.model is not None and rec.model.sync_per_replica == pytest.approx(0.05, rel=0.05)


def test_budget_picks_the_peak_of_a_communication_bound_job() -> None:
    tau = peaked(0.01, 0.01)  # throughput peaks at n = 10
    obs = [*steady(4, tau=tau), *steady(8, start=300, tau=tau), *steady(16, start=600, tau=tau)]
    spec = make_spec(replicas=16, objective="budget", maxCostPerHour=24)
    rec = recommend(spec, obs, 16, 900.0, recent_targets=[(t, 10) for t in range(600, 900, 30)])
    assert rec.target == 10
    assert rec.replicas == 10
    assert rec.model is not None and rec.model.sync_quadratic > 0


def test_utilization_objective_finds_the_largest_count_above_target() -> None:
    tau = amdahl(0.02)  # U(n) = 0.95 / (1 + 0.02 (n - 1)) >= 0.8 up to n = 10
    spec = make_spec(replicas=8, objective="utilization")
    first = recommend(spec, steady(8, tau=tau), 8, NOW)
    assert first.replicas == 9  # one count: conservative (idle time taken for sync)
    assert "GPU utilization 0.83 at 8 >= target 0.80; 9 predicted 0.81" in first.reason
    obs = [*steady(8, tau=tau), *steady(9, start=300, tau=tau)]
    second = recommend(spec.model_copy(update={"replicas": 9}), obs, 9, 600.0)
    assert second.replicas == 10
    assert "GPU utilization 0.82 at 9 >= target 0.80; 10 predicted 0.81" in second.reason


def test_exploration_tries_a_neighbour_when_the_curve_is_unknown() -> None:
    rec = decide(steady(4, util=False), 4)  # throughput only, one count: beta unknown
    assert (rec.replicas, rec.exploring) == (5, True)
    assert "exploring 5" in rec.reason
    assert rec.model is not None and rec.model.level == 0


def test_exploration_from_the_top_goes_down_for_efficiency() -> None:
    rec = recommend(make_spec(replicas=8, hi=8, scaleDownStabilizationSeconds=0),
                    steady(8, util=False), 8, NOW)  # fmt: skip
    assert (rec.replicas, rec.exploring) == (7, True)


def test_gpu_utilization_alone_fits_the_same_curve() -> None:
    rec = decide(steady(4, throughput=False, tau=amdahl(0.05)), 4)
    assert rec.model is not None and rec.model.source is ModelSource.GPU_UTILIZATION
    assert rec.model.sync_per_replica == pytest.approx(0.05 / 0.95 + 0.05 / 3 / 0.95, rel=0.5)
    assert rec.throughput is None or rec.throughput > 0


def test_gain_that_does_not_pay_the_restart_holds() -> None:
    tau = amdahl(0.02)
    obs = [*steady(12, tau=tau), *steady(13, start=300, tau=tau), *steady(14, start=600, tau=tau)]
    spec = make_spec(replicas=14, hi=15, minEfficiency=0.5, restartCostSeconds=600)
    rec = recommend(spec, obs, 14, 900.0)
    assert rec.replicas == 14
    assert "does not pay a 600 s restart within 30 min" in rec.reason
    assert rec.restart_cost_source is RestartCostSource.SPEC


def test_scale_down_waits_for_its_stabilization_window() -> None:
    tau = amdahl(0.1)  # E(8) = 0.59 < 0.7; E(5) = 0.71
    obs = [*steady(4, tau=tau), *steady(8, start=300, tau=tau)]
    spec = make_spec(replicas=8)  # scaleDownStabilizationSeconds 300
    first = recommend(spec, obs, 8, 600.0)
    assert (first.replicas, first.target) == (8, 5)
    assert "scale-down to 5 waits for stabilization (0/300 s)" in first.reason
    history = [(t, 5) for t in range(300, 600, 30)]
    later = recommend(spec, obs, 8, 600.0, recent_targets=history)
    assert later.replicas == 5
    broken = [*history[:-3], (510.0, 8), *history[-2:]]
    assert recommend(spec, obs, 8, 600.0, recent_targets=broken).replicas == 8


def test_scale_up_stabilization_applies_the_smallest_recent_target() -> None:
    spec = make_spec(replicas=4, scaleUpStabilizationSeconds=60)
    history = [(240.0, 6), (270.0, 7)]
    rec = recommend(spec, steady(4), 4, NOW, recent_targets=history)
    assert rec.target == 8
    assert rec.replicas == 6


def test_restart_cost_is_learned_from_an_observed_restart() -> None:
    before = steady(4, count=10)
    during = [Observation(300.0 + 30 * i, 8, 0.0, 0.0) for i in range(2)]  # 60 s at zero
    after = steady(8, start=360.0, count=10)
    rec = recommend(make_spec(replicas=8), [*before, *during, *after], 8, 660.0)
    assert rec.restart_cost_source is RestartCostSource.LEARNED
    assert rec.learned_restart_cost_seconds == pytest.approx(60.0, abs=31)
    remembered = recommend(make_spec(replicas=4), steady(4), 4, NOW, restart_cost_seconds=42.0)
    assert (remembered.restart_cost_seconds, remembered.restart_cost_source) == (
        42.0, RestartCostSource.REMEMBERED,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("spec_cost", "dense", "measured", "remembered", "expected"),
    [
        (5.0, True, 30.0, 42.0, (5.0, RestartCostSource.SPEC)),
        (None, True, 30.0, 42.0, (None, RestartCostSource.LEARNED)),  # the dip: about 60 s
        (None, True, 200.0, 42.0, (200.0, RestartCostSource.MEASURED)),  # more than the dip
        (None, False, 30.0, 42.0, (30.0, RestartCostSource.MEASURED)),
        (None, False, None, 42.0, (42.0, RestartCostSource.REMEMBERED)),
        (None, False, None, None, (60.0, RestartCostSource.DEFAULT)),
    ],
    ids=[
        "spec",
        "learned-from-samples",
        "measured-more-than-learned",
        "measured-by-the-trainer",
        "remembered",
        "default",
    ],
)
def test_restart_cost_sources_in_order(
    spec_cost: float | None,
    dense: bool,
    measured: float | None,
    remembered: float | None,
    expected: tuple[float | None, RestartCostSource],
) -> None:
    """The spec's, then the larger of the one learned from the throughput missed across a
    rescale (it counts a slow start too) and the trainer's measure (exactly the pause), then
    the remembered, then 60 s."""
    before = steady(4, count=10)
    # samples through the rescale (60 s at zero), or the operator's quiet gap of 200 s
    during = [Observation(300.0 + 30 * i, 8, 0.0, 0.0) for i in range(2)] if dense else []
    after = steady(8, start=360.0 if dense else 500.0, count=10)
    extra = {} if spec_cost is None else {"restartCostSeconds": spec_cost}
    rec = recommend(
        make_spec(replicas=8, **extra), [*before, *during, *after], 8, 800.0,
        measured_restart_cost_seconds=measured, restart_cost_seconds=remembered,
    )  # fmt: skip
    cost, source = expected
    assert rec.restart_cost_source is source
    if cost is None:
        assert rec.restart_cost_seconds == pytest.approx(60.0, abs=31)
    else:
        assert rec.restart_cost_seconds == cost
    with pytest.raises(ValueError, match="measured_restart_cost_seconds"):
        recommend(make_spec(replicas=8), after, 8, 800.0, measured_restart_cost_seconds=-1.0)


def test_restart_samples_are_not_fitted() -> None:
    before = steady(4, count=10)
    during = [Observation(300.0 + 30 * i, 8, 0.1, 50.0) for i in range(3)]  # a slow ramp
    after = steady(8, start=390.0, count=10)
    rec = recommend(make_spec(replicas=8), [*before, *during, *after], 8, 690.0)
    assert rec.model is not None
    assert rec.model.sync_per_replica == pytest.approx(0.0, abs=0.01)


def test_compaction_keeps_every_count_and_the_recent_window() -> None:
    obs = [*steady(2, count=100), *steady(4, start=3000, count=100), *steady(8, start=6000)]
    kept = compact_observations(obs, 6300.0, keep_seconds=600, per_count=5)
    assert [o.replicas for o in kept] == [2] * 5 + [4] * 5 + [4] * 10 + [8] * 10
    assert kept == sorted(kept, key=lambda o: o.timestamp)


def test_compaction_keeps_each_node_span_of_a_count() -> None:
    packed = [replace(o, nodes=1) for o in steady(8, count=10)]
    spread = [replace(o, nodes=2) for o in steady(8, start=3000, count=10)]
    kept = compact_observations([*packed, *spread], 6300.0, keep_seconds=600, per_count=5)
    assert [(o.replicas, o.nodes) for o in kept] == [(8, 1)] * 5 + [(8, 2)] * 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"timestamp": float("nan"), "replicas": 1}, "Observation.timestamp", id="nan-time"),
        pytest.param({"timestamp": 0, "replicas": -1}, "Observation.replicas", id="negative-replicas"),
        pytest.param({"timestamp": 0, "replicas": 1.5}, "Observation.replicas", id="fractional-replicas"),
        pytest.param({"timestamp": 0, "replicas": 1, "gpu_utilization": 75.0},
                     "gpu_utilization must be within [0, 1], got 75.0", id="percent-not-ratio"),
        pytest.param({"timestamp": 0, "replicas": 1, "samples_per_second": -3.0},
                     "samples_per_second must be >= 0", id="negative-throughput"),
        pytest.param({"timestamp": 0, "replicas": 1, "samples_per_second": float("inf")},
                     "samples_per_second must be a finite number", id="infinite-throughput"),
        pytest.param({"timestamp": 0, "replicas": 1, "remaining_samples": -1.0},
                     "remaining_samples must be >= 0, got -1.0", id="negative-samples-left"),
        pytest.param({"timestamp": 0, "replicas": 1, "remaining_samples": float("nan")},
                     "remaining_samples must be a finite number", id="unknown-samples-left"),
    ],
)  # fmt: skip
def test_bad_observations_are_rejected_by_name(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Observation(**kwargs)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        pytest.param({"current_replicas": -1}, "current_replicas", id="negative-current"),
        pytest.param({"now": float("inf")}, "now must be a finite number", id="infinite-now"),
        pytest.param({"pending_replicas": 5}, r"pending_replicas \(5\) must be <= current_replicas",
                     id="more-pending-than-replicas"),
        pytest.param({"unschedulable_replicas": 1}, "unschedulable_replicas", id="unschedulable-not-pending"),
        pytest.param({"restart_cost_seconds": -1.0}, "restart_cost_seconds must be >= 0", id="negative-cost"),
        pytest.param({"horizon_seconds": 0.0}, "horizon_seconds must be > 0", id="zero-horizon"),
        pytest.param({"stale_after_seconds": -5.0}, "stale_after_seconds", id="negative-stale"),
    ],
)  # fmt: skip
def test_bad_arguments_are_rejected_by_name(kw: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"current_replicas": 4, "now": NOW, **kw}
    with pytest.raises(ValueError, match=message):
        recommend(make_spec(replicas=4), steady(4), **args)


def _jittered(replicas: int, *, start: float, count: int, tau: Any) -> list[Observation]:
    """Like ``steady`` but with a deterministic +-3 % zigzag, as real rates wobble."""
    return [
        Observation(
            o.timestamp,
            o.replicas,
            o.gpu_utilization,
            None if o.samples_per_second is None else o.samples_per_second * (1.03, 0.97)[i % 2],
        )
        for i, o in enumerate(steady(replicas, start=start, count=count, tau=tau))
    ]


def test_no_one_replica_creep_along_the_floor() -> None:
    # E(15) = 0.704 on this curve: the point estimate says 15 clears the floor, but by less
    # than the estimates can tell apart; a +1 step would be a restart for noise.
    tau = amdahl(0.03)
    obs = [
        *_jittered(4, start=0, count=6, tau=tau),
        *_jittered(8, start=300, count=6, tau=tau),
        *_jittered(14, start=600, count=20, tau=tau),
    ]
    rec = recommend(make_spec(replicas=14), obs, 14, 1200.0)
    assert (rec.replicas, rec.target) == (14, 14)
    assert "15 predicted 0.70; 15 not confidently better than 14 (efficiency 0.70 +-" in rec.reason


def test_a_large_move_still_follows_the_point_estimate() -> None:
    # From 8 with 4 and 8 measured, 15 is far: the move is taken on the estimate.
    tau = amdahl(0.03)
    obs = [*steady(4, count=6, tau=tau), *steady(8, start=300, count=6, tau=tau)]
    rec = recommend(make_spec(replicas=8), obs, 8, 480.0)
    assert (rec.replicas, rec.direction) == (15, "up")


def test_a_large_move_waits_for_enough_samples_first() -> None:
    # 8 -> 12 gains x1.36: not enough to skip measuring 8 a little longer (x1.5 would be,
    # see tests/policy/test_policy_steps.py::test_confidence_measures_before_a_large_move)
    tau = amdahl(0.03)
    obs = [*steady(4, count=6, tau=tau), *steady(8, start=300, count=4, tau=tau)]
    rec = recommend(make_spec(replicas=8, minEfficiency=0.75), obs, 8, 420.0)
    assert rec.replicas == 8
    assert "measuring 8 replicas before a move to 12 (4/6 settled samples)" in rec.reason


def test_measured_counts_override_a_curve_outside_the_model_family() -> None:
    # Two tiers: sync jumps when the job spills past 8 workers. No (a, beta, gamma) fits
    # 4, 8, 12 and 16 at once; what was measured at 16 is what the decision uses there.
    def tau(n: int) -> float:
        return 1.0 + 0.01 * (n - 1) + (0.25 if n > 8 else 0.0)

    obs = [
        *steady(4, count=6, tau=tau),
        *steady(8, start=300, count=6, tau=tau),
        *steady(12, start=600, count=6, tau=tau),
        *steady(16, start=900, count=10, tau=tau),
    ]
    rec = recommend(make_spec(replicas=16), obs, 16, 1200.0)
    assert rec.model is not None and rec.model.level == 2
    assert rec.throughput == pytest.approx(100.0 * 16 / tau(16), rel=0.01)
    assert rec.model.throughput(16) != pytest.approx(rec.throughput, rel=0.01)


def test_one_count_explores_the_next_when_the_prior_may_stop_it_short() -> None:
    # One count and GPU utilization: all idle time is read as synchronisation, so 5 looks
    # below the floor although it is not (E(5) = 0.73); the count above is tried instead.
    tau = amdahl(0.094)
    rec = decide(steady(4, tau=tau), 4)
    assert (rec.replicas, rec.exploring) == (5, True)
    assert "exploring 5 (curve not identified from one count)" in rec.reason


def test_going_back_up_to_a_count_it_left_needs_confidence() -> None:
    # 15 was run and left for 10; the estimate puts 15 right at the floor (E(15) = 0.704).
    # A move that far would otherwise follow the estimate; back to a count it left, the
    # job needs the floor to hold at the lower bound, or it would flap.
    tau = amdahl(0.03)
    obs = [
        *_jittered(4, start=0, count=6, tau=tau),
        *_jittered(15, start=300, count=10, tau=tau),
        *_jittered(10, start=900, count=20, tau=tau),
    ]
    rec = recommend(make_spec(replicas=10), obs, 10, 1500.0)
    assert rec.replicas == 10
    assert "not confidently better than 10" in rec.reason
    fresh = [*_jittered(4, start=0, count=6, tau=tau), *_jittered(10, start=300, count=20, tau=tau)]
    assert recommend(make_spec(replicas=10), fresh, 10, 900.0).replicas > 10


def test_going_back_up_to_a_count_it_left_needs_its_own_samples_to_keep_the_floor() -> None:
    # overlap-strong-8 under a 0.8 utilization target (a hinge the fit cannot describe),
    # the benchmark's 10 %-noise seed: 8 (truly 0.790) is filled, read under its target and
    # left for 6. The blend of 8's samples with a fit made from them reads 0.81 +- 0.01;
    # its own samples alone 0.81 +- 0.014: not one standard error clear of 0.80, so the job
    # must not go back (it did, and held 8 for hours: the run's target broken).
    spec = make_spec(replicas=4, objective="utilization", targetGpuUtilization=0.8)
    result = run_simulation(
        named_curve("overlap-strong-8"),
        spec,
        hours=1.0,
        noise=Noise(0.10, 0.02),
        restart_seconds=30.0,
        seed=2,
        rate_window=60,
    )
    counts = moves(result)
    assert counts[:2] == [8, 6], counts
    assert 8 not in counts[2:], counts
    refused = [
        d.recommendation.reason
        for d in result.decisions
        if "8 not confidently better than 6" in d.recommendation.reason
    ]
    assert refused, counts
    assert all(", its own samples 0.8" in r for r in refused), refused[0]


def test_a_measured_count_s_own_samples_read_its_floor_metric() -> None:
    tau = amdahl(0.03)
    obs = [*steady(4, count=6, tau=tau), *steady(8, start=300, count=6, tau=tau)]
    ctx = DecisionContext(make_spec(replicas=8), obs, 8, 480.0)
    for step_name, step in STEPS[:4]:  # up to the fit
        assert step(ctx) is None, step_name
    assert ctx.est is not None
    u = ctx.est.measured_floor(8, Objective.UTILIZATION)
    e = ctx.est.measured_floor(8, Objective.EFFICIENCY)
    assert u is not None and e is not None
    assert u[0] == pytest.approx(0.95 / tau(8), rel=1e-3)
    assert e[0] == pytest.approx(1.0 / tau(8), rel=0.02)
    assert 0.0 < u[1] < 0.02 and 0.0 < e[1] < 0.05
    assert ctx.est.measured_floor(6, Objective.UTILIZATION) is None  # never ran
    assert ctx.est.measured_floor(8, Objective.BUDGET) is None  # no floor


def test_a_count_just_below_its_floor_within_its_own_noise_is_held_not_probed_past() -> None:
    # U(7) = 0.797 against a target of 0.80: within what 20 samples at +-5 % can tell, so
    # not known to break it; and no probe above it (utilization only falls with more).
    tau = amdahl(0.032)

    def wobbly(n: int, start: float, count: int) -> list[Observation]:
        return [
            Observation(o.timestamp, n, o.gpu_utilization * f, o.samples_per_second * f)  # type: ignore[operator]
            for o, f in zip(
                steady(n, start=start, count=count, tau=tau), [1.05, 0.95] * count, strict=False
            )
        ]

    obs = [*wobbly(4, 0, 8), *wobbly(5, 240, 8), *wobbly(6, 480, 8), *wobbly(7, 720, 20)]
    spec = make_spec(replicas=7, objective="utilization", scaleDownStabilizationSeconds=0)
    rec = recommend(spec, obs, 7, 720 + 20 * 30.0)
    assert rec.replicas == 7, rec.reason


def _estimates(obs: list[Observation]) -> Any:
    """The estimates decisions see after ``obs`` (placement-blind fit)."""
    from trainscale.operator.autoscaling.policy import _analyse, _Estimates, fit_speedup_model

    analysis = _analyse(obs, None, 90.0)
    assert analysis.mode is not None
    model = fit_speedup_model(analysis.points, analysis.compute, analysis.mode)
    assert model is not None
    return _Estimates(model, analysis.points, 32)


def test_a_measured_count_is_judged_by_no_less_doubt_than_its_own_samples() -> None:
    # The model is fitted from the same samples: its blend with them counts them twice.
    tau = amdahl(0.03)
    est = _estimates(
        [
            *_jittered(4, start=0, count=30, tau=tau),
            *_jittered(6, start=900, count=30, tau=tau),
            *_jittered(8, start=1800, count=30, tau=tau),
        ]
    )
    assert est.floor_doubt(8) > est.relative_error(8)
    assert est.floor_doubt(12) == est.relative_error(12)  # not measured: the model's


@pytest.mark.parametrize("spilled", [10, 12])
def test_a_count_the_model_cannot_describe_is_read_from_its_own_samples(spilled: int) -> None:
    # A step past 8 (outside the model family): with 4 and 8 measured long, the fit
    # misses the newly measured count by ~7 %, twenty times its own samples' doubt. The
    # miss is a doubt about the model there, so the estimate follows the measurement
    # (blended as before it claimed 1.07 of the truth at 10 with a 1 % error).
    tau = cliff(0.01, 0.25, 8)
    est = _estimates(
        [
            *_jittered(4, start=0, count=30, tau=tau),
            *_jittered(8, start=1000, count=30, tau=tau),
            *_jittered(spilled, start=2000, count=4, tau=tau),
        ]
    )
    truth = 100.0 * spilled / tau(spilled)
    assert abs(est.throughput(spilled) / truth - 1.0) < est.relative_error(spilled)


@pytest.mark.parametrize(
    ("levels", "unsettled"),
    [
        pytest.param([0.2, 0.5] + [1.0] * 18, {0, 1}, id="restart-ramp"),
        pytest.param([0.2, 0.9, 0.5] + [1.0] * 17, {0, 1, 2}, id="a-good-sample-inside-the-ramp"),
        pytest.param(
            [0.3, 1.0, 1.0, 0.5] + [1.0] * 16, {0, 1, 2, 3}, id="not-settled-before-a-dip"
        ),
        # a checkpoint stall early in a stay: the samples before it were settled, and stay so
        pytest.param(
            [0.3] + [1.0] * 5 + [0.5, 0.5] + [1.0] * 12, {0, 6, 7}, id="stall-after-settling"
        ),
        pytest.param([1.0] * 17 + [0.5, 0.5, 1.0], {17, 18}, id="stall-late"),
        pytest.param([1.0] * 18 + [0.5, 0.5], {18, 19}, id="dip-in-progress"),
    ],
)
def test_the_restart_ramp_ends_where_the_count_settled(
    levels: list[float], unsettled: set[int]
) -> None:
    """A stay's leading samples under ``RECOVERED_FRACTION`` of its level are its restart
    ramp, up to the first ``MIN_SETTLED_SAMPLES`` good ones in a row; a dip after that (a
    checkpoint write stalls training for a window or two) is left out on its own, it does
    not make every sample before it part of the ramp."""
    from trainscale.operator.autoscaling.policy import _analyse

    obs = [Observation(30.0 * i, 4, None, 100.0 * v) for i, v in enumerate(levels)]
    analysis = _analyse(obs, None, 90.0)
    settled = {round(o.timestamp / 30.0) for o in analysis.settled[(4, 1)]}
    assert settled == set(range(len(levels))) - unsettled
