"""Each step of the decision pipeline alone, as a table: the context it gets, what it does.

Covers every entry of ``STEPS`` in order (hard limits, metrics freshness, settling, fit,
objective, exploration, pending pods, restart payback, confidence, stabilization): when it
decides (and what it says), when it passes on (None); that ``recommend`` reports the step
that decided and its reason leads with it; and that the docs name the same steps.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.support.policy_sim import amdahl, cliff, linear, make_spec, peaked, steady
from trainscale.operator.autoscaling.policy import (
    STEPS,
    DecisionContext,
    LimitedBy,
    Observation,
    Recommendation,
    choose_payback_horizon,
    compute_payback_horizon,
    compute_time_left,
    recommend,
)

NOW = 10 * 30.0
STEP = dict(STEPS)


def context(observations: list[Observation], current: int, now: float = NOW, *,
            spec: dict[str, Any] | None = None, **kw: Any) -> DecisionContext:  # fmt: skip
    spec = spec or {}
    inside = min(max(current, spec.get("lo", 1)), spec.get("hi", 32))  # a spec must validate
    return DecisionContext(make_spec(replicas=inside, **spec), observations, current, now, **kw)


def run_to(ctx: DecisionContext, name: str) -> Recommendation | None:
    """Run the steps before ``name`` (each must pass on), then ``name`` itself."""
    for step_name, step in STEPS:
        if step_name == name:
            return step(ctx)
        assert step(ctx) is None, step_name
    raise KeyError(name)


@pytest.mark.parametrize(
    ("spec", "current", "kw", "replicas", "limited_by", "says"),
    [
        pytest.param({"hi": 8}, 12, {}, 8, LimitedBy.BOUND, "replicas 12 outside bounds", id="above-max"),
        pytest.param({"lo": 2}, 1, {}, 2, LimitedBy.BOUND, "moving to minReplicas 2", id="below-min"),
        pytest.param({}, 8, {"unschedulable": 2, "pending": 2}, 6, LimitedBy.UNSCHEDULABLE,
                     "2 of 8 pods unschedulable; capping at the 6 that ran", id="unschedulable"),
        pytest.param({}, 8, {"cap": 3}, 3, LimitedBy.CEILING, "cluster ceiling 3 < 8 replicas",
                     id="ceiling"),
        pytest.param({"objective": "budget", "maxCostPerHour": 6, "costPerGpuHour": 1.5}, 8, {}, 4,
                     LimitedBy.BUDGET, "cost 12.00/h at 8 > budget 6.00/h; 4 fits", id="budget"),
        pytest.param({}, 8, {"cap": 8}, None, None, "", id="within-limits"),
    ],
)  # fmt: skip
def test_hard_limits(spec, current, kw, replicas, limited_by, says) -> None:  # type: ignore[no-untyped-def]
    rec = STEP["hard limits"](context([], current, spec=spec, **kw))
    if replicas is None:
        assert rec is None
        return
    assert rec is not None and (rec.replicas, rec.limited_by, rec.forced) == (
        replicas,
        limited_by,
        True,
    )
    assert says in rec.reason


@pytest.mark.parametrize(
    ("observations", "spec", "says"),
    [
        pytest.param([], {}, "no metrics yet", id="none"),
        pytest.param(steady(4, count=5), {}, "no fresh metrics for 180 s (stale after 90 s)", id="stale"),
        pytest.param(steady(4, util=False), {"objective": "utilization"}, "needs GPU utilization",
                     id="utilization-without-gpu-metrics"),
        pytest.param(steady(4), {}, None, id="fresh"),
    ],
)  # fmt: skip
def test_metrics_freshness(observations, spec, says) -> None:  # type: ignore[no-untyped-def]
    rec = run_to(context(observations, 4, spec=spec), "metrics freshness")
    if says is None:
        assert rec is None
    else:
        assert rec is not None and rec.metrics_stale and says in rec.reason and rec.replicas == 4


@pytest.mark.parametrize(
    ("observations", "spec", "kw", "replicas", "says"),
    [
        pytest.param([], {}, {"forced_from": frozenset({8}), "cap": 8}, 8,
                     "no metrics yet; returning to 8 (left by force)", id="cap-lifted"),
        pytest.param(steady(4, count=5), {}, {"forced_from": frozenset({6, 8}), "cap": 12}, 8,
                     "no fresh metrics for 180 s (stale after 90 s); returning to 8",
                     id="stale-to-the-largest"),
        pytest.param([], {}, {"forced_from": frozenset({8}), "cap": 7}, 7,
                     "no metrics yet; returning to 7", id="within-the-ceiling"),
        pytest.param([], {}, {"forced_from": frozenset({8}), "cap": 4}, 4,
                     "no metrics yet; holding at 4", id="still-capped"),
        pytest.param([], {}, {"forced_from": frozenset({8}), "pending": 1}, 4,
                     "no metrics yet; holding at 4", id="pods-pending"),
        pytest.param([], {"objective": "budget", "maxCostPerHour": 6, "costPerGpuHour": 1.0},
                     {"forced_from": frozenset({8})}, 6, "returning to 6", id="within-the-budget"),
        pytest.param([], {}, {"forced_from": frozenset({2})}, 4, "holding at 4", id="below"),
    ],
)  # fmt: skip
def test_without_metrics_a_forced_move_is_undone(  # type: ignore[no-untyped-def]
    observations, spec, kw, replicas, says
) -> None:
    """Without fresh metrics the job holds, except that it goes back toward the largest count
    it was forced off (a ceiling, unschedulable pods) as far as its reach and budget allow,
    no pods pending: forced moves are not choices, and it has nothing to choose with."""
    rec = run_to(context(observations, 4, spec=spec, **kw), "metrics freshness")
    assert rec is not None and rec.metrics_stale and says in rec.reason
    assert rec.replicas == replicas


@pytest.mark.parametrize(
    ("observations", "current", "says"),
    [
        pytest.param(steady(4), 8, "waiting for 8 replicas to run (metrics show 4)", id="waiting"),
        pytest.param([*steady(2, count=8), *steady(4, start=240, count=2)], 4,
                     "measuring 4 replicas (2/3 settled samples)", id="measuring"),
        pytest.param([*steady(4, count=9), Observation(270.0, 4, 0.1, 10.0)], 4,
                     "throughput below its steady level", id="dipped"),
        pytest.param(steady(4), 4, None, id="settled"),
    ],
)  # fmt: skip
def test_settling(observations, current, says) -> None:  # type: ignore[no-untyped-def]
    rec = run_to(context(observations, current), "settling")
    assert (rec is None) == (says is None)
    if rec is not None:
        assert says in rec.reason and rec.replicas == current


def restarted(replicas: int, start: float, ramp: int, count: int) -> list[Observation]:
    """A rescale to ``replicas`` at ``start``: ``ramp`` samples at a tenth of its rate, then
    ``count`` steady ones."""
    slow = [Observation(o.timestamp, o.replicas, 0.1 * (o.gpu_utilization or 0.0),
                        0.1 * (o.samples_per_second or 0.0))
            for o in steady(replicas, start=start, count=ramp)]  # fmt: skip
    return [*slow, *steady(replicas, start=start + ramp * 30.0, count=count)]


@pytest.mark.parametrize(
    ("observations", "now", "says", "scaled"),
    [
        # the rescale to 4 took 120 s to settle; 8 has run 90 s, three samples at one level
        pytest.param([*steady(2, count=8), *restarted(4, 240.0, 4, 6), *restarted(8, 540.0, 1, 3)],
                     630.0, "measuring 8 replicas (0/3 settled samples)", None, id="as-long-as-the-last"),
        pytest.param([*steady(2, count=8), *restarted(4, 240.0, 4, 6), *restarted(8, 540.0, 1, 5)],
                     690.0, "measuring 8 replicas (2/3 settled samples)", None, id="part-way"),
        pytest.param([*steady(2, count=8), *restarted(4, 240.0, 4, 6), *restarted(8, 540.0, 1, 6)],
                     720.0, None, None, id="run-long-enough"),
        # the longest of the recent rescales counts (the 120 s one before a 30 s one)
        pytest.param([*steady(2, count=8), *restarted(4, 240.0, 4, 6), *restarted(6, 540.0, 1, 6),
                      *restarted(8, 750.0, 1, 3)], 840.0, "measuring 8 replicas (0/3", None, id="longest"),
        # the first rescale the history shows: nothing to wait for
        pytest.param([*steady(4, count=8), *restarted(8, 240.0, 1, 3)], 330.0, None, None,
                     id="first-rescale"),
        # a scrape gap (150 s, over three intervals) inside the slow rescale: no duration
        pytest.param([*steady(2, count=8), *restarted(4, 240.0, 1, 0), *steady(4, start=390.0, count=5),
                      *restarted(8, 540.0, 1, 3)], 630.0, None, None, id="gap-teaches-nothing"),
        # the daemon measures nothing while the new world forms and for settleSeconds after
        # (75 s here, and up to 120 s for the world): 240 s without a sample across the
        # rescale to 4 is its quiet time, not a gap, and its 120 s ramp is learned
        pytest.param([*steady(2, count=8), *restarted(4, 450.0, 4, 6), *restarted(8, 750.0, 1, 3)],
                     840.0, "measuring 8 replicas (0/3", None, id="across-the-daemon-quiet-time"),
        # 300 s without a sample is longer than that (and the interval): an interruption
        pytest.param([*steady(2, count=8), *restarted(4, 510.0, 4, 6), *restarted(8, 810.0, 1, 3)],
                     900.0, None, None, id="longer-than-the-quiet-time"),
        # 4 read slow for a minute after the scale to 8 was asked (at 540, the last scale
        # time, which splits its stay): the same count, no rescale, nothing to wait for
        pytest.param([*steady(2, count=8), *steady(4, start=240.0, count=10),
                      *restarted(4, 540.0, 2, 1), *restarted(8, 630.0, 1, 3)], 720.0, None, 540.0,
                     id="split-stay-is-no-rescale"),
    ],
)  # fmt: skip
def test_settling_waits_as_long_as_rescales_took(observations, now, says, scaled) -> None:  # type: ignore[no-untyped-def]
    """A warm-up that ends in a step (a recompile, a cold cache) reads steady until the step:
    a count is measured once it has run as long as the recent rescales took to settle."""
    rec = run_to(context(observations, 8, now, last_scale_time=scaled), "settling")
    assert (rec is None) == (says is None), None if rec is None else rec.reason
    if rec is not None:
        assert says in rec.reason


@pytest.mark.parametrize(
    ("tau", "per_node", "kw", "replicas", "step", "says"),
    [
        # forced off 12, at 8 for two samples, the cap gone: back to 12 at once
        pytest.param(amdahl(0.03), 8, {"forced_from": [12]}, 12, "stabilization",
                     "returning to 12 (left by force); scaling up to 12", id="forced-return"),
        pytest.param(amdahl(0.03), 8, {"forced_from": [12], "ceiling": 10}, 8, "settling",
                     "measuring 8 replicas (2/3 settled samples)", id="cap-still-below-it"),
        pytest.param(amdahl(0.03), 8, {}, 8, "settling", "measuring 8 replicas", id="not-forced"),
        # 12 spans three 4-GPU nodes and is known to break the floor: no return, and the
        # move down the objective wants (to 4) waits for 8 to settle, as without the cap
        pytest.param(cliff(0.03, 1.0, 4), 4, {"forced_from": [12]}, 8, "settling",
                     "measuring 8 replicas (2/3 settled samples)", id="no-return-no-other-move"),
    ],
)  # fmt: skip
def test_settling_lets_a_forced_return_through(  # type: ignore[no-untyped-def]
    tau, per_node, kw, replicas, step, says
) -> None:
    """A job moved within a cap goes back to the count it was forced off as soon as the cap
    lifts, without first measuring where it is (caps that come and go: 12 on 8-GPU nodes
    is 8 + 4, the job moved to 8, and waited for 8 to settle after the lift)."""
    obs = [*steady(4, count=6, tau=tau), *steady(12, start=180, count=10, tau=tau),
           *steady(8, start=480, count=2, tau=tau)]  # fmt: skip
    spec = make_spec(replicas=8, hi=16, scaleDownStabilizationSeconds=0)
    rec = recommend(spec, obs, 8, 540.0, workers_per_node=per_node, **kw)
    assert (rec.replicas, rec.step) == (replicas, step), rec.reason
    assert rec.reason.startswith(f"{step}: ") and says in rec.reason, rec.reason


def test_fit_passes_with_a_model_and_holds_without_one() -> None:
    ctx = context(steady(4), 4)
    assert run_to(ctx, "fit") is None and ctx.model is not None and ctx.est is not None
    bare = context(steady(4), 4)
    run_to(bare, "metrics freshness")
    assert bare.analysis is not None
    bare.analysis.points.clear()  # nothing settled enough to fit
    rec = STEP["fit"](bare)
    assert rec is not None and "not enough settled samples to fit a model" in rec.reason


@pytest.mark.parametrize(
    ("observations", "current", "kw", "target", "limited", "says"),
    [
        pytest.param(steady(4), 4, {}, 8, None, "trust region ends at 8 (measured up to 4)",
                     id="linear-up-to-the-trust-region"),
        pytest.param(steady(4), 4, {"cap": 6}, 6, LimitedBy.CEILING, "cluster ceiling 6",
                     id="capped-by-the-ceiling"),
        # maxReplicas within 4x: the trust region reaches it (one rescale there, not two)
        pytest.param(steady(4), 4, {"spec": {"hi": 16}}, 16, LimitedBy.BOUND, "maxReplicas 16",
                     id="reaches-max-replicas-within-4x"),
        pytest.param(steady(4), 4, {"spec": {"hi": 17}}, 8, None, "trust region ends at 8",
                     id="max-replicas-beyond-4x"),
        # no floor at stake: a linear fit is trusted up to the limit, however far (a slow
        # count costs a move back, each step on the way a restart)
        pytest.param(steady(4), 4, {"spec": {"objective": "budget", "maxCostPerHour": 32}}, 32,
                     LimitedBy.BOUND, "32 replicas cost 32.00/h <= budget 32.00/h",
                     id="budget-trusts-a-linear-fit-to-its-limit"),
        # ... and to its limit when that is within 4x: one rescale there instead of two
        pytest.param(steady(4), 4, {"spec": {"objective": "budget", "maxCostPerHour": 16}}, 16,
                     LimitedBy.BUDGET, "16 replicas cost 16.00/h <= budget 16.00/h",
                     id="budget-reaches-its-limit-within-4x"),
        pytest.param(steady(4), 4, {"spec": {"objective": "budget", "maxCostPerHour": 32,
                                             "hi": 16}}, 16, LimitedBy.BOUND,
                     "16 replicas cost 16.00/h <= budget 32.00/h",
                     id="budget-reaches-max-replicas-within-4x"),
        pytest.param([*steady(6, tau=amdahl(0.05)), *steady(8, start=300, tau=amdahl(0.05)),
                      *steady(9, start=600, tau=amdahl(0.05))], 9, {}, 9, None,
                     "efficiency 0.71 at 9 >= floor 0.70; 10 predicted 0.69", id="at-the-floor"),
    ],
)  # fmt: skip
def test_objective(observations, current, kw, target, limited, says) -> None:  # type: ignore[no-untyped-def]
    now = observations[-1].timestamp + 30.0
    ctx = context(observations, current, now, **kw)
    assert run_to(ctx, "objective") is None
    assert (ctx.target, ctx.limited) == (target, limited)
    assert says in ctx.reason


def _jittered(n: int, start: float, count: int, beta: float = 0.03) -> list[Observation]:
    return [
        Observation(o.timestamp, n, o.gpu_utilization, o.samples_per_second * (1.03, 0.97)[i % 2])  # type: ignore[operator]
        for i, o in enumerate(steady(n, start=start, count=count, tau=amdahl(beta)))
    ]


@pytest.mark.parametrize(
    ("samples", "held", "target"),
    [
        # E(17) = 0.69, estimated 0.69 +- 0.015: within the doubt about the reference
        # throughput (one replica, never measured) while 17 is new: hysteresis delays...
        pytest.param(8, True, 17, id="new-count-within-the-reference-doubt-held"),
        # ... but that doubt does not shrink by staying: measured long, its own samples'
        # error judges it, and a count the estimates say breaks the floor is left.
        pytest.param(24, False, 16, id="long-measured-below-its-floor-left"),
    ],
)  # fmt: skip
def test_objective_a_floor_is_a_floor(samples: int, held: bool, target: int) -> None:
    beta = 0.028  # E(17) = 0.69
    obs = [
        *_jittered(4, 0, 6, beta),
        *_jittered(8, 300, 6, beta),
        *_jittered(17, 600, samples, beta),
    ]
    ctx = context(obs, 17, 600 + 30.0 * samples)
    assert run_to(ctx, "objective") is None
    assert (ctx.feasible_current, ctx.target) == (held, target)
    assert "efficiency 0.69 at 17 < floor 0.70" in ctx.reason
    # A count held under its floor says why (the doubt), never just "under; holding".
    assert ("within its doubt (+- 0.0" in ctx.reason) is held, ctx.reason


@pytest.mark.parametrize(("samples", "held", "target"), [(6, True, 12), (24, False, 11)])
def test_objective_a_utilization_target_held_within_its_doubt_says_so(
    samples: int, held: bool, target: int
) -> None:
    beta = 0.018  # U(12) = 0.79, read from throughput jittered by 3 %
    obs = [
        *_jittered(4, 0, 6, beta),
        *_jittered(8, 300, 6, beta),
        *_jittered(12, 600, samples, beta),
    ]
    spec = {"objective": "utilization", "targetGpuUtilization": 0.8}
    ctx = context(obs, 12, 600 + 30.0 * samples, spec=spec)
    assert run_to(ctx, "objective") is None
    assert (ctx.feasible_current, ctx.target) == (held, target)
    assert "GPU utilization 0.79 at 12 < target 0.80" in ctx.reason
    assert ("within its doubt (+- 0.0" in ctx.reason) is held, ctx.reason


@pytest.mark.parametrize(
    ("observations", "current", "target", "exploring"),
    [
        pytest.param(steady(4, util=False), 4, 5, True, id="one-count-explores-the-next"),
        pytest.param([*steady(4, util=False), *steady(6, start=300, util=False)], 6, None, False,
                     id="two-counts-no-exploration"),
    ],
)  # fmt: skip
def test_exploration(observations, current, target, exploring) -> None:  # type: ignore[no-untyped-def]
    ctx = context(observations, current, observations[-1].timestamp + 30.0)
    assert run_to(ctx, "exploration") is None
    before = ctx.target
    assert ctx.exploring is exploring
    assert ctx.target == (target if target is not None else before)


@pytest.mark.parametrize(
    ("per_node", "util", "target", "says"),
    [
        pytest.param(None, False, 5, "exploring 5 (curve not identified", id="no-node-size-above"),
        pytest.param(8, False, 5, "exploring 5 (curve not identified", id="inside-the-node-above"),
        pytest.param(4, False, 3, "exploring 3", id="a-partial-node-is-never-a-target"),
        pytest.param(1, False, 3, "5 would spill onto another node", id="above-spills-below"),
    ],
)  # fmt: skip
def test_exploration_never_spills_onto_another_node(per_node, util, target, says) -> None:  # type: ignore[no-untyped-def]
    current = 4
    observations = steady(current, util=util)
    ctx = context(observations, current, observations[-1].timestamp + 30.0,
                  workers_per_node=per_node)  # fmt: skip
    assert run_to(ctx, "exploration") is None
    assert (ctx.target, ctx.exploring) == (target, True)
    assert says in ctx.reason


@pytest.mark.parametrize(
    ("spec", "kw", "target"),
    [
        pytest.param({}, {}, 8, id="the-next-node-filled"),
        pytest.param({"hi": 7}, {}, 3, id="no-room-for-a-full-node-below-instead"),
        pytest.param({}, {"cap": 6}, 3, id="a-cluster-ceiling-below-it-below-instead"),
        pytest.param({}, {"max_schedulable": 7}, 3, id="more-than-ran-below-instead"),
    ],
)  # fmt: skip
def test_exploration_across_a_node_boundary_probes_a_full_node(spec, kw, target) -> None:  # type: ignore[no-untyped-def]
    """One count filling its node, utilization to spare: the experiment that identifies the
    curve past the boundary is the next node filled, not the count below (which says
    nothing about the far side, where measured curves either fall or keep scaling)."""
    # utilization 0.88 at 4: 8 predicted under the 0.8 target by the one-count fit, 5
    # (a partial node) is never a target, so the objective stays and exploration decides
    observations = steady(4, count=4, tau=lambda n: 1.08)
    ctx = context(observations, 4, observations[-1].timestamp + 30.0, workers_per_node=4,
                  spec={"objective": "utilization", "targetGpuUtilization": 0.8, **spec}, **kw)  # fmt: skip
    assert run_to(ctx, "exploration") is None
    assert (ctx.target, ctx.exploring) == (target, True)
    assert f"exploring {target} (curve not identified from one count)" in ctx.reason


UTIL_08 = {"objective": "utilization", "targetGpuUtilization": 0.8}


@pytest.mark.parametrize(
    ("tau4", "spec", "kw", "target", "says"),
    [
        pytest.param(1.08, UTIL_08, {}, 8, "6 predicted 0.81; filling the node: 8 (GPU "
                     "utilization 0.76 +- 0.08)", id="utilization-6-chosen-8-within-doubt"),
        pytest.param(1.16, {"objective": "efficiency", "minEfficiency": 0.7}, {}, 8,
                     "6 predicted 0.73; filling the node: 8 (efficiency 0.66 +- 0.13)",
                     id="efficiency-6-chosen-8-within-doubt"),
        pytest.param(1.12, UTIL_08, {}, 5, "5 predicted 0.81", id="8-beyond-doubt-stays"),
        pytest.param(1.08, {**UTIL_08, "hi": 16, "allowed": {"values": [1, 2, 3, 4, 5, 6, 7, 16]}}, {},
                     6, "6 predicted 0.81", id="8-not-allowed"),
        pytest.param(1.08, UTIL_08, {"cap": 7}, 6, "6 predicted 0.81", id="ceiling-inside-the-node"),
        pytest.param(1.08, {"objective": "budget", "maxCostPerHour": 6, "costPerGpuHour": 1}, {},
                     6, "6 replicas cost 6.00/h", id="budget-has-no-floor-to-doubt"),
    ],
)  # fmt: skip
def test_exploration_fills_the_node(tau4, spec, kw, target, says) -> None:  # type: ignore[no-untyped-def]
    """One count on an 8-GPU node: the one-count fit reads all idle time as sync growing
    linearly (a ring's grows ever slower) and stops the job part-way into its node; the
    full node is measured instead when it may keep the floor."""
    observations = steady(4, count=4, tau=lambda n: tau4)
    ctx = context(observations, 4, observations[-1].timestamp + 30.0, workers_per_node=8,
                  spec=spec, **kw)  # fmt: skip
    assert run_to(ctx, "exploration") is None
    assert ctx.target == target
    assert says in ctx.reason
    assert ("filling the node" in ctx.reason) is (target == 8)


EFF_07 = {"objective": "efficiency", "minEfficiency": 0.7}
MULTI = "every count measured spans several nodes"


def _at(n: int, tau: float, start: float = 0.0) -> list[Observation]:
    return steady(n, start=start, count=4, tau=lambda _: tau)


@pytest.mark.parametrize(
    ("observations", "per_node", "spec", "target", "pinned"),
    [
        pytest.param(_at(16, 1.3), 4, EFF_07, 12, True, id="one-count-above-floor-in-doubt"),
        pytest.param(_at(16, 1.45), 4, EFF_07, 12, True, id="one-count-under-floor-within-doubt"),
        pytest.param(_at(16, 1.2), 4, EFF_07, 24, False, id="floor-kept-an-error-down-no-pin"),
        pytest.param(_at(16, 1.6), 4, EFF_07, 8, False, id="objective-goes-lower-itself"),
        pytest.param(_at(16, 1.3), 8, EFF_07, 8, True, id="8-gpu-nodes-one-node-smaller"),
        pytest.param(_at(16, 1.3), 4, {**EFF_07, "lo": 4, "hi": 16, "allowed": {"values": [4, 16]}}, 4, True,
                     id="next-allowed-full-node-below"),
        pytest.param(_at(16, 1.3), 4, {**EFF_07, "lo": 13}, 20, False, id="none-above-minReplicas"),
        pytest.param([*_at(12, 1.1), *_at(16, 1.4, 150.0)], 4, EFF_07, 4, True,
                     id="two-multi-node-counts-measure-one-node"),
        pytest.param([*_at(4, 1.1), *_at(16, 1.45, 150.0)], 4, EFF_07, None, False,
                     id="one-node-measured-no-pin"),
        pytest.param(_at(16, 1.45), 4, UTIL_08, None, False, id="utilization-has-its-gauge"),
    ],
)  # fmt: skip
def test_exploration_pins_the_reference_on_a_node(
    observations, per_node, spec, target, pinned
) -> None:  # type: ignore[no-untyped-def]
    """Every count measured spans several nodes and the floor at the current one is in
    doubt: the one-replica reference is an extrapolation nobody measured (start 16:
    cifar10 strong scaling read 0.71 at 16 for a true 0.57 and held it for 4 h). The job
    measures the full-node count one node smaller (one node, once two multi-node counts
    are measured), unless the objective already goes at least that far down."""
    ctx = context(observations, 16, observations[-1].timestamp + 30.0,
                  workers_per_node=per_node, spec=spec)  # fmt: skip
    before = ctx.target
    assert run_to(ctx, "exploration") is None
    assert (MULTI in ctx.reason) is pinned, ctx.reason
    assert ctx.target == (target if target is not None else ctx.target), ctx.reason
    if pinned:
        assert ctx.exploring
        assert f"measuring {target} first: {MULTI}, so the floor at 16 (efficiency" in ctx.reason
    assert before == 16


BUDGET_24 = {"objective": "budget", "maxCostPerHour": 24, "costPerGpuHour": 1}


@pytest.mark.parametrize(
    ("tau", "samples", "spec", "kw", "target"),
    [
        pytest.param(peaked(0.01, 0.003), 8, BUDGET_24, {}, 17, id="comm-peak-probes-the-peak"),
        pytest.param(amdahl(0.03), 8, BUDGET_24, {}, None, id="amdahl-no-peak-below-24"),
        pytest.param(peaked(0.01, 0.003), 4, BUDGET_24, {}, None, id="not-before-6-settled"),
        pytest.param(peaked(0.01, 0.003), 30, BUDGET_24, {}, None, id="not-after-a-long-stay"),
        pytest.param(peaked(0.01, 0.003), 8, BUDGET_24, {"probed": frozenset({24})}, None,
                     id="probes-do-not-chain"),
        pytest.param(peaked(0.01, 0.003), 8, {**BUDGET_24, "lo": 4, "hi": 24, "allowed": {"values": [4, 16, 24]}},
                     {}, 16, id="an-allowed-count"),
        pytest.param(peaked(0.01, 0.003), 8, {"objective": "efficiency", "minEfficiency": 0.3, "hi": 24}, {},
                     None, id="budget-only"),
    ],
)  # fmt: skip
def test_exploration_under_a_budget_probes_where_a_quadratic_sync_would_peak(
    tau, samples, spec, kw, target
) -> None:  # type: ignore[no-untyped-def]
    """4 and 24 measured fit a linear and a quadratic synchronisation alike; the linear one
    never peaks, so the budget job would hold 24 (comm-peak: 18 is 4 % faster). Where a
    purely quadratic one through the two counts peaks in between by 3 % or more, that count
    is measured once, early in the stay at 24."""
    obs = [*steady(4, count=8, tau=tau), *steady(24, start=300, count=samples, tau=tau)]
    ctx = context(obs, 24, obs[-1].timestamp + 30.0, spec=spec, **kw)
    before = ctx.target
    assert run_to(ctx, "exploration") is None
    probed = target is not None
    assert (ctx.probing, "would peak there" in ctx.reason) == (probed, probed), ctx.reason
    if probed:
        assert (ctx.target, ctx.exploring) == (target, True)
        assert (
            f"probing {target} (unmeasured: a synchronisation growing with the square" in ctx.reason
        )
    assert before == 24


def test_confidence_keeps_the_node_a_pinned_reference_measures() -> None:
    """Leaving the one multi-node count for the node that pins the reference is an
    experiment: the leaving probe (the count one below, 15 here: weak-8 from 16 held it at
    0.65 under its 0.70 floor for 4 h) does not replace it."""
    observations = _at(16, 1.55)
    ctx = context(observations, 16, observations[-1].timestamp + 30.0, workers_per_node=8,
                  spec=EFF_07)  # fmt: skip
    assert run_to(ctx, "confidence") is None
    assert (ctx.target, ctx.exploring, ctx.probing) == (8, True, False), ctx.reason
    assert "probing" not in ctx.reason


@pytest.mark.parametrize(
    ("target", "pending", "holds"),
    [
        pytest.param(8, 1, True, id="up-while-pending-holds"),
        pytest.param(3, 1, False, id="down-while-pending-passes"),
        pytest.param(8, 0, False, id="up-without-pending-passes"),
    ],
)
def test_pending_pods(target: int, pending: int, holds: bool) -> None:
    ctx = context(steady(4), 4, pending=pending)
    ctx.target, ctx.reason = target, "proposal"
    rec = STEP["pending pods"](ctx)
    assert (rec is not None) is holds
    if rec is not None:
        assert (
            rec.replicas == 4
            and f"{pending} pods pending, not asking for more than 4" in rec.reason
        )


@pytest.mark.parametrize(
    ("restart", "running", "target", "holds", "within"),
    [
        pytest.param(600, 0, 15, True, "30 min", id="small-gain-big-restart-holds"),
        pytest.param(10, 0, 15, False, "", id="small-gain-small-restart-passes"),
        pytest.param(600, 3600, 15, True, "60 min (as long as the job has run)",
                     id="an-hour-old-job-still-holds"),
        pytest.param(600, 4 * 3600, 15, False, "", id="a-job-four-hours-old-pays-it"),
    ],
)  # fmt: skip
def test_restart_payback(
    restart: int, running: float, target: int, holds: bool, within: str
) -> None:
    """The horizon is as long as the job has run (at least 30 min): x1.05 pays a 600 s
    restart back in 4 h, not in 1 h."""
    tau = amdahl(0.02)
    obs = [*steady(12, tau=tau), *steady(13, start=300, tau=tau), *steady(14, start=600, tau=tau)]
    ctx = context(
        obs,
        14,
        900.0,
        spec={"hi": 15, "minEfficiency": 0.5, "restartCostSeconds": restart},
    )
    ctx.horizon, ctx.horizon_note = choose_payback_horizon(
        compute_time_left(obs, 900.0), compute_payback_horizon(running)
    )
    assert run_to(ctx, "pending pods") is None
    ctx.target = target
    rec = STEP["restart payback"](ctx)
    assert (rec is not None) is holds
    if rec is not None:
        assert (
            f"gain x1.05 does not pay a {restart} s restart within {within}; holding" in rec.reason
        )


def told(observations: list[Observation], seconds_left: float) -> list[Observation]:
    """The observations, the newest saying the job has ``seconds_left`` at its rate."""
    *rest, newest = observations
    assert newest.samples_per_second is not None
    return [*rest, replace(newest, remaining_samples=newest.samples_per_second * seconds_left)]


@pytest.mark.parametrize(
    ("observations", "now", "left"),
    [
        pytest.param(steady(14), 270.0, None, id="not-told"),
        pytest.param(told(steady(14), 600.0), 270.0, 600.0, id="told-at-the-newest"),
        pytest.param(told(steady(14), 600.0), 330.0, 540.0, id="less-the-time-since"),
        pytest.param(told(steady(14), 600.0), 2000.0, 0.0, id="never-below-zero"),
        pytest.param([*steady(14, count=9), replace(told(steady(14), 600.0)[-1],
                      samples_per_second=700.0, remaining_samples=1400.0 * 600.0)],
                     270.0, 600.0, id="the-median-rate-not-a-ramp-scrape"),
        pytest.param([*steady(12, count=9), *told(steady(14, start=270.0, count=1), 600.0)],
                     270.0, 600.0, id="only-the-rate-at-its-count"),
        pytest.param([*steady(14, count=9), Observation(270.0, 14, 0.9, None, remaining_samples=1e5)],
                     270.0, 1e5 / 1400.0, id="a-rate-from-earlier-scrapes"),
        pytest.param([Observation(270.0, 14, 0.9, None, remaining_samples=1e5)], 270.0, None,
                     id="no-rate-measured"),
    ],
)  # fmt: skip
def test_time_left(observations: list[Observation], now: float, left: float | None) -> None:
    got = compute_time_left(observations, now)
    assert got == (None if left is None else pytest.approx(left))


@pytest.mark.parametrize(
    ("seconds_left", "running", "holds", "within"),
    [
        pytest.param(None, 3600, True, "60 min (as long as the job has run)", id="untold-by-age"),
        pytest.param(4 * 3600, 0, False, "", id="a-young-job-with-hours-left-pays-it"),
        pytest.param(3600, 4 * 3600, True, "60 min (the time the job has left)",
                     id="an-old-job-about-to-end-holds"),
        pytest.param(600, 0, True, "10 min (the time the job has left)", id="ten-minutes-left"),
    ],
)  # fmt: skip
def test_restart_payback_within_the_time_the_job_has_left(
    seconds_left: float | None, running: float, holds: bool, within: str
) -> None:
    """Where the trainer says how much it has left, the horizon is the time that leaves,
    whatever the job's age: x1.05 pays a 600 s restart back in 4 h, not in 1 h."""
    tau = amdahl(0.02)
    obs = [*steady(12, tau=tau), *steady(13, start=300, tau=tau), *steady(14, start=600, tau=tau)]
    if seconds_left is not None:
        obs = told(obs, seconds_left)
    spec = make_spec(replicas=14, hi=15, minEfficiency=0.5, restartCostSeconds=600)
    rec = recommend(spec, obs, 14, 900.0, horizon_seconds=compute_payback_horizon(running))
    # told at the newest observation, 30 s before the decision
    assert rec.time_left_seconds == (None if seconds_left is None else seconds_left - 30)
    says = f"gain x1.05 does not pay a 600 s restart within {within}; holding"
    assert (rec.step == "restart payback" and says in rec.reason) is holds, rec.reason
    assert holds or rec.step != "restart payback", rec.reason


@pytest.mark.parametrize(
    ("running", "horizon"),
    [
        pytest.param(0.0, 1800.0, id="a-new-job-30-min"),
        pytest.param(1799.0, 1800.0, id="younger-than-30-min"),
        pytest.param(5400.0, 5400.0, id="as-long-as-it-has-run"),
        pytest.param(3 * 86400.0, 3 * 86400.0, id="days-not-capped"),
    ],
)
def test_payback_horizon(running: float, horizon: float) -> None:
    assert compute_payback_horizon(running) == horizon


@pytest.mark.parametrize(
    ("kw", "holds", "says"),
    [
        pytest.param({}, True, "15 not confidently better than 14", id="creep-holds"),
        pytest.param({"forced_from": frozenset({15})}, False, "returning to 15 (left by force)",
                     id="forced-off-returns"),
    ],
)  # fmt: skip
def test_confidence(kw: dict[str, Any], holds: bool, says: str) -> None:
    obs = [*_jittered(4, 0, 6), *_jittered(8, 300, 6), *_jittered(14, 600, 20)]
    ctx = context(obs, 14, 1200.0, **kw)
    assert run_to(ctx, "restart payback") is None
    assert ctx.target == 15
    rec = STEP["confidence"](ctx)
    assert (rec is not None) is holds
    assert says in (rec.reason if rec is not None else ctx.reason)


@pytest.mark.parametrize(
    ("forced", "measured", "target", "returning"),
    [
        # 8 measured long, 15 the objective's count: a large move inside the band
        pytest.param(frozenset(), None, 15, False, id="no-cap-goes-to-the-objective"),
        # forced off 12 by a ceiling that has lifted: back to 12 first, without confidence
        pytest.param(frozenset({12}), None, 12, True, id="back-to-the-count-it-was-forced-off"),
        pytest.param(frozenset({10, 12}), None, 12, True, id="the-largest-it-was-forced-off"),
        pytest.param(frozenset({15}), None, 15, True, id="forced-off-the-objective-count"),
        # forced off a count beyond the objective's: back to it while its own samples may
        # keep the floor (16 at 0.69 +- 0.013), only as far as the objective's where they
        # break it (17 at 0.676, 20 at 0.637), or where it was never measured
        pytest.param(frozenset({16}), 16, 16, True, id="forced-off-above-within-its-doubt"),
        pytest.param(frozenset({17}), 17, 15, True, id="forced-off-above-known-to-break"),
        pytest.param(frozenset({20}), 20, 15, True, id="forced-off-far-above-known-to-break"),
        pytest.param(frozenset({16}), None, 15, True, id="forced-off-above-never-measured"),
    ],
)  # fmt: skip
def test_confidence_returns_to_the_count_it_was_forced_off(
    forced: frozenset[int], measured: int | None, target: int, returning: bool
) -> None:
    """Forced moves are not choices: once the cap lifts the job goes back to the count it was
    forced off, even where the fit (made doubtful by what the forced count measured) would
    hold it; past that count a move is a choice and needs its evidence."""
    before = [] if measured is None else _jittered(measured, 300, 12)
    obs = [*_jittered(4, 0, 6), *before, *_jittered(8, 900, 20)]
    ctx = context(obs, 8, 1500.0, forced_from=forced)
    assert run_to(ctx, "restart payback") is None
    assert ctx.target == 15
    assert STEP["confidence"](ctx) is None
    assert (ctx.target, ctx.returning) == (target, returning)
    assert ("left by force" in ctx.reason) is returning


@pytest.mark.parametrize(
    ("spec", "recent", "replicas", "says"),
    [
        pytest.param({}, [], 8, "scale-down to 5 waits for stabilization (0/300 s)", id="waits"),
        pytest.param({}, [(t, 5) for t in range(300, 600, 30)], 5, "scaling down to 5", id="held-long-enough"),
        pytest.param({"scaleDownStabilizationSeconds": 0}, [], 5, "scaling down to 5", id="no-window"),
        # 8 breaks its floor (0.59): the latest target, not the window's largest (6), which
        # was computed from fewer samples and may break the floor too
        pytest.param({}, [(t, 6) for t in range(300, 600, 30)], 5, "scaling down to 5",
                     id="leaving-a-broken-floor-goes-to-the-latest-target"),
    ],
)  # fmt: skip
def test_stabilization(spec, recent, replicas, says) -> None:  # type: ignore[no-untyped-def]
    tau = amdahl(0.1)
    obs = [*steady(4, tau=tau), *steady(8, start=300, tau=tau)]
    ctx = context(obs, 8, 600.0, spec=spec, recent_targets=recent)
    rec = run_to(ctx, "stabilization")
    assert rec is not None and rec.target == 5 and rec.replicas == replicas
    assert says in rec.reason


@pytest.mark.parametrize(
    ("sync", "replicas", "says"),
    [
        # 8 at efficiency 0.34 against a 0.7 floor: no noise explains it
        pytest.param(0.28, 2, "scaling down to 2 at once (far below the floor", id="far-below-leaves-at-once"),
        # 8 at efficiency 0.59: below the floor, within what a window may wait out
        pytest.param(0.1, 8, "waits for stabilization (0/300 s)", id="just-below-waits"),
    ],
)  # fmt: skip
def test_stabilization_never_waits_at_a_count_far_below_its_floor(sync, replicas, says) -> None:  # type: ignore[no-untyped-def]
    tau = amdahl(sync)
    obs = [*steady(4, tau=tau), *steady(8, start=300, tau=tau)]
    ctx = context(obs, 8, 600.0, spec={"minEfficiency": 0.7}, workers_per_node=8)
    rec = run_to(ctx, "stabilization")
    assert rec is not None and rec.replicas == replicas
    assert says in rec.reason


@pytest.mark.parametrize(
    ("step_at_8", "sync_seconds_at_8", "replicas", "says"),
    [
        # a cliff: 8's step is 2.96 of one replica's, 1.96 of it synchronising (share 0.66);
        # what does not synchronise is one replica's step, as at 4
        pytest.param(2.96, 1.96, 4, "scaling down to 4 at once (far below the floor", id="cliff-in-its-sync-leaves-at-once"),
        # a warm-up: 8 truly at 1.7 (0.7 synchronising), training at half speed after its
        # restart: a step of 3.4 that syncs as before (share 0.21); 2.7 of it does not
        # synchronise, 2.7 times 4's: slow for another reason, the window waits it out
        pytest.param(3.4, 0.7, 8, "waits for stabilization (0/300 s)", id="warming-up-waits"),
        # the same reading from a trainer that exports no sync share: read as a cliff
        pytest.param(3.4, None, 4, "scaling down to 4 at once (far below the floor", id="no-sync-share-leaves-at-once"),
    ],
)  # fmt: skip
def test_a_count_slow_apart_from_its_sync_is_not_left_at_once(
    step_at_8: float, sync_seconds_at_8: float | None, replicas: int, says: str
) -> None:
    tau = amdahl(0.1)  # 4: 1.3 (0.3 synchronising)

    def with_sync(obs: list[Observation], share: float | None) -> list[Observation]:
        return [replace(o, sync_fraction=share) for o in obs]

    at_8 = steady(8, start=300, tau=lambda n: step_at_8)
    share = None if sync_seconds_at_8 is None else sync_seconds_at_8 / step_at_8
    obs = [*with_sync(steady(4, tau=tau), 0.3 / 1.3 if share is not None else None),
           *with_sync(at_8, share)]  # fmt: skip
    ctx = context(obs, 8, 600.0, spec={"minEfficiency": 0.7}, workers_per_node=8)
    rec = run_to(ctx, "stabilization")
    assert rec is not None and rec.replicas == replicas, rec.reason
    assert says in rec.reason


def test_recommend_names_the_step_that_decided() -> None:
    assert recommend(make_spec(replicas=4), [], 4, NOW).step == "metrics freshness"
    assert recommend(make_spec(replicas=8, hi=8), [], 12, NOW).step == "hard limits"
    rec = recommend(make_spec(replicas=4), steady(4, tau=linear), 4, NOW)
    assert rec.step == "stabilization"
    assert rec.reason.startswith("stabilization: efficiency 0.95 at 4 >= floor 0.70")


def test_docs_name_the_same_steps() -> None:
    docs = (Path(__file__).parents[2] / "docs" / "autoscaling.md").read_text()
    for name, _ in STEPS:
        assert f"**{name.capitalize()}**" in docs, name


@pytest.mark.parametrize(
    ("first", "target"),
    [
        pytest.param(None, 32, id="one-count-the-move-is-the-experiment"),
        pytest.param(1, 32, id="one-replica-besides-shows-no-sync"),
        pytest.param(4, 16, id="two-synchronising-counts-land-in-the-band"),
    ],
)
def test_confidence_band_needs_two_synchronising_counts(first: int | None, target: int) -> None:
    """A large move must land inside the floor's band, judged by a fit whose
    synchronisation two counts identify; one replica shows none, so with it and one full
    node measured the large move is the experiment, as from the full node alone (from one
    worker, imagenet went 1 -> 4 -> 8 -> 16 where the start at 4 goes 4 -> 16)."""
    tau = cliff(0.005, 0.3, 8)
    obs = [*steady(first, count=8, tau=tau)] if first else []
    obs += steady(8, start=240.0, count=20, tau=tau)
    ctx = context(obs, 8, 240.0 + 20 * 30.0, workers_per_node=8)
    assert run_to(ctx, "confidence") is None
    assert ctx.target == target, ctx.reason
    assert "32 predicted" in ctx.reason
    assert ("32 too uncertain" in ctx.reason) is (target == 16), ctx.reason


@pytest.mark.parametrize(
    ("settled", "probes"),
    [
        pytest.param(10, False, id="too-early"),
        pytest.param(14, True, id="early-in-the-stay"),
        pytest.param(24, True, id="last-sample-of-the-window"),
        # after a long stay an estimate near the floor is noise: probing then is a late flap
        pytest.param(25, False, id="after-a-long-stay"),
    ],
)
def test_confidence_probes_only_early_in_a_stay(settled: int, probes: bool) -> None:
    tau = amdahl(0.11)  # efficiency 0.75 at 4, 0.69 at 5 (1.15x the throughput)
    obs = [*steady(3, count=8, tau=tau), *steady(4, start=240, count=settled, tau=tau)]
    ctx = context(obs, 4, 240 + 30.0 * (settled - 1))
    assert run_to(ctx, "confidence") is None
    assert (ctx.target == 5) is probes, ctx.reason
    assert ("probing 5" in ctx.reason) is probes


@pytest.mark.parametrize(
    ("floor", "target", "waits"),
    [
        # x1.36 at best: measure the count it leaves a little longer first
        pytest.param(0.75, 12, True, id="modest-gain-waits"),
        # x1.6 even one standard error down: every minute of confirming costs more
        pytest.param(0.7, 15, False, id="strong-gain-goes"),
    ],
)
def test_confidence_measures_before_a_large_move(floor: float, target: int, waits: bool) -> None:
    tau = amdahl(0.03)
    obs = [*steady(4, count=6, tau=tau), *steady(8, start=300, count=4, tau=tau)]
    ctx = context(obs, 8, 420.0, spec={"minEfficiency": floor})
    assert run_to(ctx, "restart payback") is None
    assert ctx.target == target
    rec = STEP["confidence"](ctx)
    assert (rec is not None) is waits
    if rec is not None:
        assert f"measuring 8 replicas before a move to {target} (4/6 settled samples)" in rec.reason


@pytest.mark.parametrize(
    ("probed", "probes"),
    [
        pytest.param(frozenset(), True, id="reached-by-a-move"),
        # 4 was itself a probe: probing on from it would creep along the floor
        pytest.param(frozenset({4}), False, id="reached-by-a-probe"),
        pytest.param(frozenset({3}), True, id="an-earlier-probe-elsewhere"),
    ],
)
def test_confidence_probes_do_not_chain(probed: frozenset[int], probes: bool) -> None:
    tau = amdahl(0.11)  # efficiency 0.75 at 4, 0.69 at 5 (1.15x the throughput)
    obs = [*steady(3, count=8, tau=tau), *steady(4, start=240, count=14, tau=tau)]
    ctx = context(obs, 4, 240 + 30.0 * 13, probed=probed)
    assert run_to(ctx, "confidence") is None
    assert ctx.probing is probes, ctx.reason
    assert ("probing 5" in ctx.reason) is probes
    assert STEP["stabilization"](ctx).probing is probes


@pytest.mark.parametrize(
    ("per_node", "spec", "kw", "target"),
    [
        pytest.param(4, {}, {}, 4, id="4-gpu-nodes-the-full-node"),
        pytest.param(8, {}, {}, 8, id="8-gpu-nodes-the-full-node"),
        pytest.param(None, {}, {}, 2, id="node-size-unknown-the-count-above"),
        pytest.param(8, {"hi": 6}, {}, 2, id="the-full-node-above-max-replicas"),
        pytest.param(8, {}, {"cap": 4}, 2, id="the-full-node-above-the-ceiling"),
        pytest.param(4, {"hi": 8, "allowed": {"values": [1, 2, 3, 8]}}, {}, 2, id="the-full-node-not-allowed"),
    ],
)  # fmt: skip
def test_exploration_from_one_replica_fills_the_node(per_node, spec, kw, target) -> None:  # type: ignore[no-untyped-def]
    """One replica shows no synchronisation at all: the full node shows the most a node
    can, and saves the restarts of doubling up to it."""
    observations = steady(1, count=4)
    ctx = context(observations, 1, observations[-1].timestamp + 30.0, workers_per_node=per_node,
                  spec=spec, **kw)  # fmt: skip
    assert run_to(ctx, "exploration") is None
    assert (ctx.target, ctx.exploring) == (target, True)
    assert f"exploring {target} (curve not identified from one count)" in ctx.reason
