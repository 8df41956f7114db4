"""The trainer's sync share caps the efficiency reference the fit extrapolates.

Why: efficiency is relative to one replica's step, which a job that never ran at one replica
only knows by extrapolating its fit, and a ring all-reduce's bandwidth term (``2 (n-1)/n``)
makes synchronisation concave in the count, so the extrapolated reference errs high and a
count below the efficiency floor looks above it (benchmark: weak-8 held 16 GPUs at 0.65
under a 0.7 floor). The part of a step that does not synchronise is measured at every
count (``n / X * (1 - sync_fraction)``) and one replica's step is no longer than it.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest

from tests.support.policy_sim import make_spec
from trainscale.operator.autoscaling.placement import Placement
from trainscale.operator.autoscaling.policy import (
    Observation,
    _analyse,
    _Estimates,
    fit_speedup_model,
    recommend,
)
from trainscale.operator.autoscaling.simulation import (
    Noise,
    StepTimeCurve,
    named_curve,
    run_simulation,
)


def _observe(
    curve: StepTimeCurve,
    counts: list[int],
    *,
    sync: bool,
    noise: float = 0.0,
    seed: int = 0,
    samples: int = 20,
) -> list[Observation]:
    """Settled observations of ``curve`` at each count in turn (packed, 30 s apart)."""
    rng = random.Random(seed)
    out: list[Observation] = []
    t = 0.0
    for n in counts:
        where = curve.placement(n)
        x, u = curve.measure(where)
        share = curve.sync_fraction(where)
        for _ in range(samples):
            t += 30.0
            out.append(
                Observation(
                    t,
                    n,
                    min(1.0, u * (1 + rng.gauss(0, noise))),
                    x * (1 + rng.gauss(0, noise)),
                    where.nodes,
                    share * (1 + rng.gauss(0, noise)) if sync and share is not None else None,
                )
            )
        t += 3600.0  # no restart is learned across counts
    return out


def _estimates(observations: list[Observation], per_node: int | None) -> _Estimates:
    analysis = _analyse(observations, None, 90.0, per_node)
    assert analysis.mode is not None
    model = fit_speedup_model(analysis.points, analysis.compute, analysis.mode, per_node)
    assert model is not None
    return _Estimates(model, analysis.points, 32, analysis.unsynced, analysis.busy)


def _under_read(observations: list[Observation], seen: float) -> list[Observation]:
    """The same samples from a trainer whose timer sees only ``seen`` of the sync."""
    return [
        replace(o, sync_fraction=None if o.sync_fraction is None else seen * o.sync_fraction)
        for o in observations
    ]


def _true_efficiency(curve: StepTimeCurve, n: int) -> float:
    one, _ = curve.measure(curve.placement(1))
    x, _ = curve.measure(curve.placement(n))
    return x / n / one


@pytest.mark.parametrize("bad", [1.0, -0.01, 1.5, math.nan, math.inf])
def test_a_sync_share_outside_zero_to_one_is_rejected_by_name(bad: float) -> None:
    with pytest.raises(ValueError, match="sync_fraction"):
        Observation(0.0, 4, None, 400.0, 1, bad)


def test_the_sync_share_corrects_a_reference_extrapolated_high() -> None:
    curve = named_curve("weak-8")  # ring all-reduce: sync concave in the count
    truth = _true_efficiency(curve, 8)
    blind = _estimates(_observe(curve, [4, 8], sync=False), 8)
    seen = _estimates(_observe(curve, [4, 8], sync=True), 8)
    # Without the share the fit's intercept errs high: efficiency at 8 read 4+ points high.
    assert blind.efficiency(8) > truth + 0.04
    assert not blind.reference_capped
    # With it the reference is the measured non-synchronising step (one standard error up).
    assert seen.reference_capped
    assert seen.efficiency(8) == pytest.approx(truth, abs=0.015)
    # Throughput and utilization predictions do not depend on the reference.
    for n in (4, 8, 12, 16):
        assert seen.throughput(n) == pytest.approx(blind.throughput(n), rel=1e-9)


def test_a_strong_scaling_reference_is_extrapolated_down_the_count() -> None:
    curve = named_curve("strong-8")  # per-sample time that does not sync grows with n
    truth = _true_efficiency(curve, 8)
    seen = _estimates(_observe(curve, [4, 6, 8], sync=True), 8)
    # The non-synchronising time at 8 is 1.08, at one replica 1.01: read flat it would
    # put the reference 5 % high; the line through 4, 6 and 8 finds the slope.
    assert seen.efficiency(8) == pytest.approx(truth, abs=0.02)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_noise_alone_does_not_lower_the_reference(seed: int) -> None:
    # Noisy shares (10 %) must not pull the reference under the truth by more than the
    # error the estimate states (the cap counts from one standard error above its reading).
    curve = named_curve("amdahl")
    seen = _estimates(_observe(curve, [4, 8, 12], sync=True, noise=0.1, seed=seed), None)
    for n in (4, 8, 12):
        truth = _true_efficiency(curve, n)
        assert seen.efficiency(n) >= truth - 1.5 * seen.efficiency_error(n), n


def test_one_replica_measured_is_the_reference_whatever_the_share_says() -> None:
    # A share over-reported (the trainer counted some compute as waiting) would put the
    # reference below one replica's own step: measured, one replica is the reference.
    curve = StepTimeCurve("over-reported", lambda p: 1.0 + 0.02 * (p.replicas - 1))
    obs = _observe(curve, [1, 4, 8], sync=False)
    obs = [replace(o, sync_fraction=0.3) for o in obs]
    est = _estimates(obs, None)
    assert not est.reference_capped
    assert est.efficiency(1) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("name", "counts", "per_node"),
    [
        pytest.param("cliff-8", [8, 12], 8, id="cliff-8"),
        pytest.param("cliff-4", [4, 8], 4, id="cliff-4"),
        pytest.param("recover-8", [8, 16], 8, id="recover-8"),
    ],
)
def test_an_under_read_share_never_puts_the_reference_below_the_compute(
    name: str, counts: list[int], per_node: int
) -> None:
    # A timer that misses a fifth of the sync (overlap hidden in compute) misses most
    # where the job synchronises most, across nodes: the non-synchronising time looks
    # like it grows with the count, and its line, extrapolated to one replica, fell
    # under one replica's GPU compute (cliff-8: efficiency at 8 read 0.735, truly 0.935;
    # measured yolov3 strong scaling held 8 and went down to 1 at a 0.7 floor). One
    # replica's step is at least its compute: efficiency never reads below utilization.
    curve = named_curve(name)
    est = _estimates(_under_read(_observe(curve, counts, sync=True), 0.8), per_node)
    for n in counts:
        _, utilization = curve.measure(curve.placement(n))
        assert est.efficiency(n) >= utilization - 1e-3, n
        assert est.efficiency(n) <= _true_efficiency(curve, n) + 1e-3, n


def test_a_capped_reference_is_one_replicas_step() -> None:
    # The cap says one replica's step is at most the extrapolated line: one replica then
    # runs at it, efficiency 1 by definition (a capped reference with the model's own
    # step at one replica read "even minReplicas 1 predicted 0.68" in a reason).
    curve = named_curve("weak-8")
    est = _estimates(_observe(curve, [4, 8], sync=True), 8)
    assert est.reference_capped
    assert est.efficiency(1) == pytest.approx(1.0)
    assert est.throughput(1) == pytest.approx(est.throughput(4) / 4 / est.efficiency(4))


@pytest.mark.parametrize(
    ("seed", "condition"),
    [
        pytest.param(0, Noise(0.05, 0.0), id="5%"),
        pytest.param(1, Noise(0.02, 0.0, sync_seen=0.8), id="2%-sync-under-read"),
        pytest.param(2, Noise(0.10, 0.02), id="10%-missing"),
    ],
)
def test_a_job_with_concave_sync_keeps_its_efficiency_floor(seed: int, condition: Noise) -> None:
    # The benchmark's weak-8 case: the best count within the 0.7 floor is 8 (0.905); 9-16
    # are under it (0.65-0.67). The fit alone, extrapolating one replica's step, read 16
    # above the floor and held it for hours.
    spec = make_spec(replicas=4, objective="efficiency", minEfficiency=0.7, intervalSeconds=30)
    result = run_simulation(
        named_curve("weak-8"), spec, hours=4.0, noise=condition, restart_seconds=60.0, seed=seed
    )
    assert result.score.constraint_met, result.score
    assert result.final_replicas == 8
    assert result.score.samples_ratio >= 0.95


def test_the_simulated_trainer_exports_the_share_the_curve_knows() -> None:
    weak = named_curve("weak-8")
    where = weak.placement(16)
    tau = 16 * 100.0 / weak.measure(where)[0]
    assert weak.sync_fraction(where) == pytest.approx(1.0 - 1.0 / tau)
    strong = named_curve("strong-8")
    at8 = Placement.packed(8, workers_per_node_max=8)
    tau8 = 8 * 100.0 / strong.measure(at8)[0]
    assert strong.sync_fraction(at8) == pytest.approx(1.0 - (1.0 + 0.01 * 8) / tau8)


@pytest.mark.parametrize(
    ("below", "capped"),
    [pytest.param(0.002, False, id="within-its-error"), pytest.param(0.05, True, id="beyond-it")],
)
def test_the_cap_counts_from_one_standard_error_above_its_reading(
    below: float, capped: bool
) -> None:
    # Shares that put the non-synchronising step a hair under the fit's reference are
    # noise, not evidence: the reference moves only when the reading is clearly lower.
    curve = named_curve("amdahl")
    blind = _estimates(_observe(curve, [4, 8, 12], sync=False), None)
    a = blind.model.seconds_per_sample
    obs = []
    for o in _observe(curve, [4, 8, 12], sync=False):
        assert o.samples_per_second is not None
        tau = o.replicas / o.samples_per_second
        obs.append(replace(o, sync_fraction=1.0 - a * (1.0 - below) / tau))
    seen = _estimates(obs, None)
    assert seen.reference_capped is capped
    if capped:
        assert seen.efficiency(8) < blind.efficiency(8) * (1.0 - below / 2)
    else:
        assert seen.efficiency(8) == pytest.approx(blind.efficiency(8))


@pytest.mark.parametrize("seed", [2, 8, 10])
def test_a_count_under_its_floor_is_not_held_on_a_doubt_the_sync_share_rules_out(
    seed: int,
) -> None:
    """comm-peak at 12 is truly 0.679 under a 0.70 floor. Measured at 4, 8 and 12 (10
    samples each, 5 % noise), the fit's one-replica reference is loose (its error alone
    puts 12 "within its doubt", and the job held it for hours in the benchmark with
    checkpoint stalls), but the sync share bounds the reference above, close to the fit's:
    12 may be at most that much better, which does not reach the floor, so the job leaves."""
    curve = named_curve("comm-peak")
    obs = _observe(curve, [4, 8, 12], sync=True, noise=0.05, seed=seed, samples=10)
    est = _estimates(obs, None)
    assert not est.reference_capped
    up, both = est.efficiency_error(12, upward=True), est.efficiency_error(12)
    assert up < 0.8 * both
    assert est.efficiency(12) < 0.70 < est.efficiency(12) + both
    spec = make_spec(replicas=12, hi=32, minEfficiency=0.7, scaleDownStabilizationSeconds=0)
    rec = recommend(spec, obs, 12, obs[-1].timestamp + 1.0)
    assert rec.replicas < 12, rec.reason
    assert "within its doubt" not in rec.reason
    # without the sync share nothing bounds the reference: both errors are the fit's
    blind = _estimates(_observe(curve, [4, 8, 12], sync=False, noise=0.05, seed=seed), None)
    assert blind.efficiency_error(12, upward=True) == blind.efficiency_error(12)
