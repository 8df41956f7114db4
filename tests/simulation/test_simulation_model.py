"""Tests of the simulated-job model (``trainscale.operator.autoscaling.simulation``).

Covers:
- packed placement, node-boundary cliffs at the first count that spills onto a second node
  (5 on 4-GPU nodes, 9 on 8-GPU nodes), and recovery once the nodes fill;
- strong scaling loses efficiency faster than weak scaling;
- CSV curves: parse errors name the line and the field; interpolation only between given
  points on the same number of nodes; the node size inferred from the rows;
- hindsight and the score on a hand-computed case, a broken floor scoring zero;
- the scrapes a run needs to tell which side of its limit the best count is on (knife edges);
- the rate() window mixing sizes right after a resize, missing scrapes, settle time,
  determinism, and a closed loop with the real ``JobAutoscaler``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import pytest

from tests.support.policy_sim import make_spec
from trainscale.operator.api import TrainingJobSpec
from trainscale.operator.autoscaling.autoscaler import JobAutoscaler
from trainscale.operator.autoscaling.placement import Placement
from trainscale.operator.autoscaling.policy import Observation, Recommendation
from trainscale.operator.autoscaling.simulation import (
    CURVE_NAMES,
    OVERLAP_NAMES,
    Ceiling,
    CurveChange,
    CurveError,
    FragmentedCurve,
    JobModel,
    Noise,
    hindsight,
    load_curve,
    named_curve,
    parse_csv_curve,
    run_simulation,
    samples_to_resolve,
)

# counts 1..4 on one node; efficiency 1, 0.95, 0.8, 0.625
SMALL_CSV = """count,nodes,samples_per_second,gpu_utilization
1,1,100,0.95
2,1,190,0.9
3,1,240,0.76
4,1,250,0.6
"""


class Scripted:
    """A controller that asks for the listed counts, one per decision, then holds."""

    def __init__(self, counts: Sequence[int]) -> None:
        self.counts = list(counts)
        self.seen: list[Observation] = []
        self.ceilings: list[int | None] = []
        self.unschedulable: list[int] = []

    def decide(
        self,
        observations: Sequence[Observation],
        *,
        current_replicas: int,
        now: float,
        placement: Placement | None = None,
        pending_replicas: int = 0,
        unschedulable_replicas: int = 0,
        ceiling: int | None = None,
        room: int | None = None,
    ) -> Recommendation:
        self.seen.extend(observations)
        self.ceilings.append(ceiling)
        self.unschedulable.append(unschedulable_replicas)
        assert pending_replicas == unschedulable_replicas  # a cap holds them all
        n = self.counts.pop(0) if self.counts else current_replicas
        return Recommendation(n, n, current_replicas, f"scripted {n}")


def throughputs(name: str, counts: range) -> list[float]:
    curve = named_curve(name)
    return [curve.point(n).samples_per_second for n in counts]


def test_packed_placement_fills_a_node_first() -> None:
    assert Placement.packed(10, workers_per_node_max=4).workers_per_node == (4, 4, 2)
    assert Placement.packed(3, workers_per_node_max=None).workers_per_node == (3,)
    curve = named_curve("cliff-8")
    assert [curve.point(n).nodes for n in (8, 9, 16, 17)] == [1, 2, 2, 3]
    assert curve.placement(6, gpus_per_replica=2).workers_per_node == (4, 2)


def test_a_fragmented_cluster_places_the_job_on_what_is_free() -> None:
    inner = named_curve("cliff-8")
    curve = FragmentedCurve(inner, 6)  # 6 of each 8-GPU node free for the job
    assert curve.placement(8) == Placement((6, 2), gpus_per_node=8)  # the node size is told
    assert curve.placement(8, gpus_per_replica=2).workers_per_node == (3, 3, 2)
    assert curve.name == "cliff-8" and curve.gpus_per_node == 8
    spilled = curve.point(8)
    assert spilled.nodes == 2 and spilled.samples_per_second < inner.point(8).samples_per_second
    assert curve.point(12).samples_per_second == inner.measure(Placement((6, 6), 8))[0]
    spec = make_spec(replicas=4, hi=32, objective="efficiency", minEfficiency=0.7)
    assert hindsight(curve, spec).replicas == 6 and hindsight(inner, spec).replicas == 8
    with pytest.raises(CurveError, match=r"within \[1, 8\), got 8"):
        FragmentedCurve(inner, 8)
    with pytest.raises(CurveError, match="amdahl has no placement but its packed one"):
        FragmentedCurve(named_curve("amdahl"), 2)  # no node size
    with pytest.raises(CurveError, match="has no placement but its packed one"):
        FragmentedCurve(parse_csv_curve(SMALL_CSV, name="small", gpus_per_node=4), 2)


@pytest.mark.parametrize(("name", "node"), [("cliff-4", 4), ("cliff-8", 8)])
def test_throughput_drops_at_the_first_count_on_a_second_node(name: str, node: int) -> None:
    x = throughputs(name, range(1, 33))
    assert all(a < b for a, b in itertools.pairwise(x[:node]))  # rises to a full node
    assert x[node] < x[node - 1]  # spills: drops


def test_recovering_curve_regains_efficiency_once_the_nodes_fill() -> None:
    spec = make_spec(hi=32)
    job = JobModel(named_curve("recover-8"), spec)
    ref = job.best_per_replica()
    eff = {n: job.constrained_value(n, ref) for n in (8, 9, 16, 24)}
    assert eff[9] < 0.6
    assert 0.7 < eff[24] < eff[16] < eff[8]
    x = throughputs("recover-8", range(1, 33))
    assert x[8] < x[7] < x[15] < x[23]  # 9 < 8 < 16 < 24 workers
    assert hindsight(named_curve("recover-8"), make_spec(hi=32)).replicas == 24


def test_strong_scaling_loses_efficiency_faster_than_weak() -> None:
    spec = make_spec(hi=16)
    strong, weak = JobModel(named_curve("strong-8"), spec), JobModel(named_curve("weak-8"), spec)
    s_ref, w_ref = strong.best_per_replica(), weak.best_per_replica()
    assert strong.constrained_value(8, s_ref) < weak.constrained_value(8, w_ref)
    x = throughputs("strong-8", range(1, 17))
    assert max(x) == x[7]  # peaks at one full node, then the cliff and falling returns


def test_every_named_curve_is_defined_on_1_to_32() -> None:
    for name in (*CURVE_NAMES, *OVERLAP_NAMES):
        curve = load_curve(name)
        for n in range(1, 33):
            p = curve.point(n)
            assert p.samples_per_second > 0
            assert 0 < p.gpu_utilization <= 1


def test_csv_curve_interpolates_between_given_points_only() -> None:
    text = "count,nodes,samples_per_second,gpu_utilization\n1,1,100,1\n4,1,340,0.8\n8,2,400,0.5\n"
    curve = parse_csv_curve(text, name="m.csv")
    assert curve.gpus_per_node == 4  # the largest count measured on one node
    assert curve.point(2).samples_per_second == pytest.approx(180.0)
    assert curve.point(3).gpu_utilization == pytest.approx(0.8667, abs=1e-4)
    with pytest.raises(CurveError, match=r"no point at or around 6 workers on 2 node"):
        curve.point(6)  # only 8 is given on two nodes: no extrapolation
    with pytest.raises(CurveError, match="no point at or around 9"):
        curve.point(9)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            "count,nodes,samples_per_second\n1,1,100\n",
            "m.csv line 1: missing column(s) gpu_utilization",
            id="missing-column",
        ),
        pytest.param(
            SMALL_CSV + "5,1,fast,0.5\n",
            "m.csv line 6: field 'samples_per_second' is 'fast', not a number",
            id="not-a-number",
        ),
        pytest.param(
            SMALL_CSV + "5.5,1,1,0.5\n",
            "m.csv line 6: field 'count' is '5.5', not a whole number",
            id="fractional-count",
        ),
        pytest.param(
            SMALL_CSV + "5,1,300,\n",
            "m.csv line 6: field 'gpu_utilization' is empty",
            id="empty",
        ),
        pytest.param(
            SMALL_CSV + "5,1,300,1.5\n",
            "m.csv line 6: field 'gpu_utilization' must be within [0, 1], got 1.5",
            id="utilization-range",
        ),
        pytest.param(
            SMALL_CSV + "3,1,250,0.5\n",
            "m.csv line 6: a second row for 3 workers on 1 node(s)",
            id="duplicate",
        ),
        pytest.param(
            SMALL_CSV + "5,6,300,0.5\n",
            "m.csv line 6: field 'nodes' must be within [1, count], got 6",
            id="nodes-range",
        ),
        pytest.param(
            SMALL_CSV + "5,1,300,0.5,extra\n",
            "m.csv line 6: more fields than the header names",
            id="extra-field",
        ),
        pytest.param(
            SMALL_CSV + "6,3,300,0.5\n",
            "m.csv: 6 workers on 3 node(s) is no packed placement on 4-GPU nodes",
            id="not-packed",
        ),
        pytest.param(
            "count,nodes,samples_per_second,gpu_utilization\n", "no data rows", id="empty-file"
        ),
        pytest.param(
            "count,nodes,samples_per_second,gpu_utilization,sync_fraction\n1,1,100,1,1.0\n",
            "m.csv line 2: field 'sync_fraction' must be within [0, 1), got 1",
            id="sync-range",
        ),
    ],
)
def test_csv_errors_name_the_line_and_the_field(text: str, message: str) -> None:
    with pytest.raises(CurveError) as info:
        parse_csv_curve(text, name="m.csv")
    assert message in str(info.value)


def test_unknown_curve_names_the_choices() -> None:
    with pytest.raises(CurveError, match=r"unknown curve 'cliff-3'.*cliff-4"):
        load_curve("cliff-3")


def test_hindsight_per_objective_on_a_hand_computed_curve() -> None:
    curve = parse_csv_curve(SMALL_CSV, name="m.csv")
    # efficiency 1, .95, .8, .625: 4 breaks the 0.7 floor, 3 has the most samples
    assert hindsight(curve, make_spec(lo=1, hi=4, minEfficiency=0.7)).replicas == 3
    # 2 GPUs cost 2/h: the budget pays for 2
    budget = make_spec(lo=1, hi=4, objective="budget", costPerGpuHour=1.0, maxCostPerHour=2.0)
    assert hindsight(curve, budget).replicas == 2
    # utilization .95 .9 .76 .6 against 0.8: 2
    utilization = make_spec(lo=1, hi=4, objective="utilization", targetGpuUtilization=0.8)
    assert hindsight(curve, utilization).replicas == 2
    # nothing keeps a floor of 0.99 above one worker... and with minReplicas 2 nothing does
    best = hindsight(curve, make_spec(replicas=2, lo=2, hi=4, minEfficiency=0.99))
    assert (best.replicas, best.feasible) == (2, False)


def test_score_on_a_hand_computed_run() -> None:
    curve = parse_csv_curve(SMALL_CSV, name="m.csv")
    spec = make_spec(replicas=2, lo=1, hi=4, minEfficiency=0.7, intervalSeconds=30)
    # 2 -> 3 at the first decision (t = 30), 60 s restart, one hour
    run = run_simulation(
        curve, spec, hours=1, noise=0.0, restart_seconds=60, controller=Scripted([3])
    )
    assert run.hindsight.replicas == 3
    assert run.samples == pytest.approx(190 * 30 + 240 * (3600 - 90))
    assert run.score.raw_samples_ratio == pytest.approx((5700 + 240 * 3510) / (240 * 3600))
    assert run.score.rescales == 1
    assert run.score.settled_at == 30
    assert run.score.constraint_value == pytest.approx((0.95 * 30 + 0.8 * 3510) / 3540)
    assert run.score.constraint_met
    assert run.score.samples_ratio == run.score.raw_samples_ratio
    assert run.gpu_hours == pytest.approx((2 * 30 + 3 * 3570) / 3600)


def test_a_broken_floor_scores_zero() -> None:
    curve = parse_csv_curve(SMALL_CSV, name="m.csv")
    spec = make_spec(replicas=4, lo=1, hi=4, minEfficiency=0.7)
    run = run_simulation(curve, spec, hours=1, noise=0.0, controller=Scripted([]))
    assert run.score.raw_samples_ratio == pytest.approx(250 / 240)  # more samples ...
    assert run.score.constraint_value == pytest.approx(0.625)
    assert not run.score.constraint_met
    assert run.score.samples_ratio == 0.0  # ... at efficiency 0.625 < 0.7


def test_a_budget_overrun_scores_zero() -> None:
    curve = parse_csv_curve(SMALL_CSV, name="m.csv")
    spec = make_spec(replicas=3, hi=4, objective="budget", costPerGpuHour=1.0, maxCostPerHour=2.5)
    run = run_simulation(curve, spec, hours=1, noise=0.0, controller=Scripted([]))
    assert run.score.constraint_value == pytest.approx(3.0)
    assert run.score.samples_ratio == 0.0


def test_the_rate_window_mixes_sizes_right_after_a_resize() -> None:
    curve = parse_csv_curve(SMALL_CSV, name="m.csv")
    spec = make_spec(replicas=2, lo=1, hi=4, intervalSeconds=30)
    scripted = Scripted([3])
    run_simulation(
        curve,
        spec,
        hours=0.05,
        noise=0.0,
        restart_seconds=10,
        rate_window=60,
        settle_seconds=0,
        controller=scripted,
    )
    rates = [o.samples_per_second for o in scripted.seen]
    # t=30: 2 workers all window; t=60: 30 s at 2, 10 s restart, 20 s at 3; t=90: 50 s at 3
    assert rates[:3] == pytest.approx([190, (190 * 30 + 240 * 20) / 60, (240 * 50) / 60])
    assert rates[3] == pytest.approx(240)
    assert [o.replicas for o in scripted.seen[:3]] == [2, 3, 3]


def test_the_sync_share_of_a_csv_curve_is_read_interpolated_and_windowed() -> None:
    text = (
        "count,nodes,samples_per_second,gpu_utilization,sync_fraction\n"
        "1,1,100,0.95,0.0\n2,1,190,0.9,0.05\n4,1,340,0.8,0.15\n"
    )
    curve = parse_csv_curve(text, name="m.csv")
    assert curve.point(2).sync_fraction == pytest.approx(0.05)
    assert curve.point(3).sync_fraction == pytest.approx(0.10)  # between 2 and 4
    assert parse_csv_curve(SMALL_CSV, name="m.csv").point(2).sync_fraction is None
    spec = make_spec(replicas=2, lo=1, hi=4, intervalSeconds=30)
    scripted = Scripted([4])
    run_simulation(
        curve, spec, hours=0.05, noise=0.0, restart_seconds=10, settle_seconds=0,
        controller=scripted,
    )  # fmt: skip
    shares = [o.sync_fraction for o in scripted.seen]
    # t=60: 30 s at 2, then the 10 s restart (no step, so no share), then 20 s at 4
    assert shares[:3] == pytest.approx([0.05, (0.05 * 30 + 0.15 * 20) / 50, 0.15])
    # a job that exports none, and a trainer that under-reads its sync
    scripted = Scripted([])
    run_simulation(curve, spec, hours=0.02, noise=0.0, controller=scripted, report_sync=False)
    assert all(o.sync_fraction is None for o in scripted.seen)
    scripted = Scripted([])
    run_simulation(curve, spec, hours=0.02, noise=Noise(0.0, sync_seen=0.8), controller=scripted)
    assert scripted.seen[0].sync_fraction == pytest.approx(0.04)


def test_missing_scrapes_carry_no_values_and_settle_skips_decisions() -> None:
    curve = named_curve("linear")
    scripted = Scripted([5])
    spec = make_spec(replicas=4, intervalSeconds=30, settleSeconds=75)
    run_simulation(curve, spec, hours=0.05, noise=Noise(0.05, missing=1.0), controller=scripted)
    assert [o.timestamp for o in scripted.seen] == [30, 120, 150, 180]  # 60, 90 settling
    assert all(o.gpu_utilization is None and o.samples_per_second is None for o in scripted.seen)


def test_same_seed_same_run_other_seed_other_noise() -> None:
    spec = make_spec(replicas=4, hi=16)
    one = run_simulation(named_curve("amdahl"), spec, hours=0.5, seed=3)
    two = run_simulation(named_curve("amdahl"), spec, hours=0.5, seed=3)
    three = run_simulation(named_curve("amdahl"), spec, hours=0.5, seed=4)
    assert one == two
    assert one.decisions[0].observation != three.decisions[0].observation


def _lag_correlation(values: Sequence[float], lag: int) -> float:
    mean = sum(values) / len(values)
    dev = [v - mean for v in values]
    return sum(a * b for a, b in zip(dev, dev[lag:], strict=False)) / sum(d * d for d in dev)


@pytest.mark.parametrize(("window", "neighbours"), [(60, 0.5), (30, 0.0), (150, 0.8)])
def test_windowed_noise_is_shared_by_overlapping_rate_windows(
    window: float, neighbours: float
) -> None:
    """Noise that arises in the training: each scrape still scatters by ``relative``, and
    scrapes every 30 s whose ``rate()`` windows overlap share it (a window of k intervals:
    neighbours correlate ``(k - 1) / k``); the utilization gauge's noise stays its own."""
    spec = make_spec(replicas=4, lo=1, hi=4, intervalSeconds=30)
    scripted = Scripted([])
    run_simulation(
        named_curve("linear"), spec, hours=20.0, noise=Noise(0.05, windowed=True),
        rate_window=window, settle_seconds=0, controller=scripted,
    )  # fmt: skip
    x = [o.samples_per_second for o in scripted.seen[10:] if o.samples_per_second]
    level = sum(x) / len(x)
    assert math.sqrt(sum((v / level - 1) ** 2 for v in x) / len(x)) == pytest.approx(0.05, rel=0.1)
    assert _lag_correlation(x, 1) == pytest.approx(neighbours, abs=0.06)
    u = [o.gpu_utilization for o in scripted.seen[10:] if o.gpu_utilization]
    assert _lag_correlation(u, 1) == pytest.approx(0.0, abs=0.06)


@pytest.mark.parametrize(
    ("since", "start", "end", "stalled"),
    [
        (0.0, 0.0, 600.0, 0.0),  # the first stall starts after 600 s of training
        (0.0, 570.0, 630.0, 30.0),  # a window holding all of it
        (0.0, 615.0, 675.0, 15.0),  # its second half
        (0.0, 0.0, 1260.0, 60.0),  # two cycles of 630 s
        (100.0, 0.0, 730.0, 30.0),  # counted from the restart on, nothing before it
        (100.0, 0.0, 90.0, 0.0),
    ],
)
def test_checkpoint_stall_seconds_in_a_window(
    since: float, start: float, end: float, stalled: float
) -> None:
    noise = Noise(0.0, stall_every=600.0, stall_seconds=30.0)
    assert noise.stalled(since, start, end) == pytest.approx(stalled)
    assert Noise(0.0).stalled(since, start, end) == 0.0


def test_a_checkpoint_stall_reads_low_and_idle_and_only_then() -> None:
    """A 45 s stall after every 600 s of training: the rate() windows of 60 s holding part
    of it read that share less, the gauge (the last second) reads idle inside it, every
    other scrape as without stalls; the run's samples (its score) do not count stalls
    (every count loses the same share)."""
    spec = make_spec(replicas=4, lo=1, hi=4, intervalSeconds=30)
    quiet, stalling = Scripted([]), Scripted([])
    runs = [
        run_simulation(
            named_curve("linear"),
            spec,
            hours=0.5,
            settle_seconds=0,
            controller=c,
            noise=Noise(0.0, stall_every=every, stall_seconds=45.0),
        )
        for every, c in ((0.0, quiet), (600.0, stalling))
    ]
    assert runs[0].samples == runs[1].samples
    full = quiet.seen[-1].samples_per_second
    busy = quiet.seen[-1].gpu_utilization
    assert full and busy and all(o.samples_per_second == full for o in quiet.seen[2:])
    # stalls [600, 645) and [1245, 1290)
    share = {o.timestamp: o.samples_per_second / full for o in stalling.seen[2:]}
    low = {t: v for t, v in share.items() if v != pytest.approx(1.0)}
    assert low == pytest.approx(
        {630.0: 0.5, 660.0: 0.25, 690.0: 0.75, 1260.0: 0.75, 1290.0: 0.25, 1320.0: 0.5}
    )
    idle = [o.timestamp for o in stalling.seen if o.gpu_utilization != busy]
    assert idle == [630.0, 1260.0, 1290.0]
    assert all(o.gpu_utilization == 0.0 for o in stalling.seen if o.timestamp in idle)


def test_stalls_are_counted_from_each_restart() -> None:
    """An elastic restart resumes from its checkpoint: the next stall is a whole training
    period after it, not on the schedule of the run before."""
    spec = make_spec(replicas=4, lo=1, hi=8, intervalSeconds=30)
    scripted = Scripted([4] * 9 + [8])  # moves at the 10th decision, 300 s
    run_simulation(
        named_curve("linear"), spec, hours=0.5, settle_seconds=0, controller=scripted,
        restart_seconds=60.0, noise=Noise(0.0, stall_every=600.0, stall_seconds=45.0),
    )  # fmt: skip
    idle = [o.timestamp for o in scripted.seen if o.gpu_utilization == 0.0]
    # restarting [300, 360); training again from 360: stalls [960, 1005), [1605, 1650)
    assert [t for t in idle if t > 360.0] == [990.0, 1620.0, 1650.0]


def test_independent_noise_draws_as_it_always_did() -> None:
    """The windowed noise has streams of its own: a run without it is the run it was."""
    spec = make_spec(replicas=4, hi=16)
    plain = run_simulation(named_curve("amdahl"), spec, hours=0.5, seed=3)
    assert plain == run_simulation(
        named_curve("amdahl"), spec, hours=0.5, seed=3, noise=Noise(0.05, windowed=False)
    )
    windowed = run_simulation(
        named_curve("amdahl"), spec, hours=0.5, seed=3, noise=Noise(0.05, windowed=True)
    )
    first, other = plain.decisions[0].observation, windowed.decisions[0].observation
    assert first.gpu_utilization == other.gpu_utilization  # the gauge draws the same
    assert first.samples_per_second != other.samples_per_second


def test_closed_loop_with_the_job_autoscaler_scales_a_linear_job_up() -> None:
    spec = make_spec(replicas=2, hi=8, minEfficiency=0.7)
    auto = JobAutoscaler(spec)
    run = run_simulation(named_curve("linear"), spec, hours=1, noise=0.02, seed=1, controller=auto)
    assert run.hindsight.replicas == 8
    assert run.final_replicas > 2
    assert all(d.recommendation.reason for d in run.decisions)
    assert len(run.points) == len(run.decisions)
    # the JobAutoscaler is what decided: its memory holds the counts it measured on the way
    measured = {point.replicas for point in auto.memory().points}
    assert 2 in measured and max(measured) > 2


@pytest.mark.parametrize(
    ("spec", "noise", "expected"),
    [
        # efficiency 0.8 at 3 against a 0.7 floor: 1/7 of the floor away (4, at 0.625, is
        # nearer but only 4 % faster: the best keeps 0.95 of it either way)
        pytest.param(
            make_spec(lo=1, hi=4, minEfficiency=0.7), 0.05, (1.645 * 0.05 * 7) ** 2, id="efficiency"
        ),
        # utilization 0.9 at 2 against 0.8, 1/8 of the target away; but 3, a quarter faster,
        # reads 0.76, 1/20 under it: its twin keeps the target and is best (the nearer
        # margin decides; at twice the noise)
        pytest.param(
            make_spec(lo=1, hi=4, objective="utilization", targetGpuUtilization=0.8),
            0.10,
            (1.645 * 0.10 * 20) ** 2,
            id="utilization-a-faster-count-nearer",
        ),
        # efficiency 0.8 at 3 on a 0.8 floor: no number of scrapes tells the side
        pytest.param(make_spec(lo=1, hi=4, minEfficiency=0.8), 0.05, math.inf, id="on-the-limit"),
        # the cost of a count is known exactly: nothing to resolve
        pytest.param(
            make_spec(lo=1, hi=4, objective="budget", costPerGpuHour=1.0, maxCostPerHour=2.0),
            0.05,
            0.0,
            id="budget",
        ),
        # no count keeps the floor: no best count to resolve
        pytest.param(
            make_spec(replicas=2, lo=2, hi=4, minEfficiency=0.99), 0.05, 0.0, id="infeasible"
        ),
        pytest.param(make_spec(lo=1, hi=4, minEfficiency=0.7), 0.0, 0.0, id="no-noise"),
    ],
)
def test_scrapes_to_resolve_the_best_counts_margin(
    spec: TrainingJobSpec, noise: float, expected: float
) -> None:
    curve = parse_csv_curve(SMALL_CSV, name="m.csv")
    best = hindsight(curve, spec)
    need = samples_to_resolve(best, JobModel(curve, spec).constraint(), noise)
    assert need == pytest.approx(expected)
    run = run_simulation(curve, spec, hours=0.1, noise=noise, controller=Scripted([]))
    assert run.scrapes_to_resolve == pytest.approx(expected)


SLOWER_CSV = """count,nodes,samples_per_second,gpu_utilization
1,1,100,0.95
2,1,150,0.9
3,1,150,0.5
4,1,120,0.3
"""


def test_a_curve_change_runs_on_the_new_curve_and_scores_what_follows() -> None:
    curve = parse_csv_curve(SMALL_CSV, name="m.csv")
    later = parse_csv_curve(SLOWER_CSV, name="later.csv")
    spec = make_spec(replicas=3, lo=1, hi=4, minEfficiency=0.7, intervalSeconds=30)
    run = run_simulation(
        curve, spec, hours=1, noise=0.0, controller=Scripted([]),
        change=CurveChange(1800.0, later),
    )  # fmt: skip
    assert run.samples == pytest.approx(240 * 1800 + 150 * 1800)
    # scored after the change, against the new curve's best static count (2: 150, at 0.75)
    assert run.hindsight.replicas == 2
    assert run.score.raw_samples_ratio == pytest.approx(1.0)  # 3 is as fast as 2 there ...
    assert run.score.constraint_value == pytest.approx(0.5)
    assert run.score.samples_ratio == 0.0  # ... at efficiency 0.5 < 0.7


def test_a_restart_in_progress_at_the_change_ends_on_the_new_curve() -> None:
    curve = parse_csv_curve(SMALL_CSV, name="m.csv")
    later = parse_csv_curve(SLOWER_CSV, name="later.csv")
    spec = make_spec(replicas=3, lo=1, hi=4, minEfficiency=0.7, intervalSeconds=30)
    # 3 -> 2 at t = 30, restarting until 90; the curve changes at 45
    run = run_simulation(
        curve, spec, hours=1, noise=0.0, restart_seconds=60, settle_seconds=0,
        controller=Scripted([2]), change=CurveChange(45.0, later),
    )  # fmt: skip
    assert run.samples == pytest.approx(240 * 30 + 150 * (3600 - 90))
    assert run.score.rescales == 0  # the move came before the change
    assert run.score.raw_samples_ratio == pytest.approx(150 * 3510 / (150 * 3555))


def test_a_ceiling_caps_the_run_while_it_holds_and_the_score_counts_after_it_lifts() -> None:
    """The controller is told the cap; one that ignores it still runs no more than it
    allows. The run is scored after the lift: the move back is its one rescale."""
    curve = parse_csv_curve(SMALL_CSV, name="m.csv")
    spec = make_spec(replicas=2, hi=4)
    scripted = Scripted([4])  # asks for 4 at once, then holds whatever runs
    run = run_simulation(
        curve, spec, hours=1, noise=0.0, controller=scripted, ceiling=Ceiling(900, 600, 2)
    )
    counts = {d.time: p.replicas for d, p in zip(run.decisions, run.points, strict=True)}
    told = dict(zip((d.time for d in run.decisions), scripted.ceilings, strict=True))
    assert counts[30.0] == 4 and counts[870.0] == 4
    assert (told[870.0], told[900.0]) == (None, 2)  # told at 900 s, not before
    assert counts[900.0] == 2 and counts[1470.0] == 2  # capped: 4 -> 2
    assert (told[1470.0], told[1500.0]) == (2, None)  # lifted at 1500 s
    assert run.score.rescales == 0  # a scripted job stays at 2: nothing after the lift
    back = Scripted([4] * 120)  # asks for 4 at every decision: back at 4 once it lifts
    run = run_simulation(
        curve, spec, hours=1, noise=0.0, controller=back, ceiling=Ceiling(900, 600, 2)
    )
    assert run.final_replicas == 4 and run.score.rescales == 1
    # scored on the 35 min after the lift: 4 replicas (250 samples/s) less its 60 s restart
    lifted = 3600.0 - 1500.0
    expected = 250.0 * (lifted - 60.0) / (run.hindsight.samples_per_second * lifted)
    assert run.score.raw_samples_ratio == pytest.approx(expected, rel=1e-3)


def test_ceilings_that_come_and_go_are_each_told_and_the_score_counts_after_the_last() -> None:
    curve = parse_csv_curve(SMALL_CSV, name="m.csv")
    spec = make_spec(replicas=2, hi=4)
    back = Scripted([4] * 120)  # asks for 4 at every decision
    caps = (Ceiling(1800, 300, 3), Ceiling(600, 300, 2))  # given out of order
    run = run_simulation(curve, spec, hours=1, noise=0.0, controller=back, ceiling=caps)
    assert run.ceilings == tuple(sorted(caps, key=lambda c: c.at_seconds))
    told = dict(zip((d.time for d in run.decisions), back.ceilings, strict=True))
    counts = {d.time: p.replicas for d, p in zip(run.decisions, run.points, strict=True)}
    assert (told[570.0], told[600.0], told[870.0], told[900.0]) == (None, 2, 2, None)
    assert (told[1770.0], told[1800.0], told[2070.0], told[2100.0]) == (None, 3, 3, None)
    assert (counts[600.0], counts[900.0], counts[1800.0], counts[2100.0]) == (2, 4, 3, 4)
    assert run.scored_from == 2100.0
    assert run.score.rescales == 1  # back to 4 after the last lift; the first lift's is before


def test_an_untold_ceiling_shows_only_as_unschedulable_pods_that_start_once_it_lifts() -> None:
    """Not told: the pods beyond the cap are evicted and stay pending, rejected by the
    scheduler, while the job keeps asking for them; they start when it lifts."""
    curve = parse_csv_curve(SMALL_CSV, name="m.csv")
    spec = make_spec(replicas=2, hi=4)
    back = Scripted([4] * 120)  # asks for 4 at every decision
    run = run_simulation(
        curve, spec, hours=1, noise=0.0, settle_seconds=0, controller=back,
        ceiling=Ceiling(900, 600, 2, told=False),
    )  # fmt: skip
    counts = {d.time: p.replicas for d, p in zip(run.decisions, run.points, strict=True)}
    times = [d.time for d in run.decisions]
    unschedulable = dict(zip(times, back.unschedulable, strict=True))
    assert set(back.ceilings) == {None}  # never told
    assert (counts[870.0], counts[900.0], counts[1470.0], counts[1500.0]) == (4, 2, 2, 4)
    assert (unschedulable[870.0], unschedulable[900.0], unschedulable[1470.0]) == (0, 2, 2)
    assert unschedulable[1500.0] == 0  # the pending pods started as it lifted
    assert run.score.rescales == 1  # the pending pods starting is the move back
    assert run.final_replicas == 4


def test_a_job_that_gives_up_its_pending_pods_is_back_only_when_it_asks_again() -> None:
    curve = parse_csv_curve(SMALL_CSV, name="m.csv")
    spec = make_spec(replicas=4, hi=4)
    # holds 4 until the cap at 900 s, then asks for the 2 that ran (pending pods given up)
    # and for 4 again 20 passes after the lift at 1500 s
    asks = [4] * 29 + [2] * 40 + [4]
    scripted = Scripted(asks)
    run = run_simulation(
        curve, spec, hours=1, noise=0.0, settle_seconds=0, controller=scripted,
        ceiling=Ceiling(900, 600, 2, told=False),
    )  # fmt: skip
    counts = {d.time: p.replicas for d, p in zip(run.decisions, run.points, strict=True)}
    unschedulable = dict(zip((d.time for d in run.decisions), scripted.unschedulable, strict=True))
    assert (counts[900.0], unschedulable[900.0], unschedulable[930.0]) == (2, 2, 0)
    assert (counts[1500.0], counts[2070.0], counts[2100.0]) == (2, 2, 4)
    assert run.score.rescales == 1


def test_a_job_that_sees_the_room_return_at_the_lift_of_an_untold_cap() -> None:
    """The real autoscaler under a cap it is not told of (half its count for 30 min): the
    operator that reads the free GPUs (``room``) asks again at the lift; blind, it asks
    only when its wait after the failed tries ends."""
    spec = make_spec(replicas=16, lo=1, hi=16, minEfficiency=0.7)
    cap = Ceiling(3600.0, 1800.0, 8, told=False)

    def back_after_lift(report_room: bool) -> float:
        run = run_simulation(named_curve("linear"), spec, hours=2, noise=0.0,
                             restart_seconds=60.0, ceiling=cap, report_room=report_room)  # fmt: skip
        under = {p.replicas for p in run.points if cap.at(p.time) is not None}
        assert under == {8}, under  # evicted down to the cap, and held there
        return next(p.time for p in run.points if p.time >= cap.lifts_at and p.replicas == 16)

    assert back_after_lift(True) - cap.lifts_at <= 30.0  # at the first pass after the lift
    assert back_after_lift(False) - cap.lifts_at >= 300.0  # tries at 5, 15 and 35 min


@pytest.mark.parametrize(
    ("ceiling", "change", "message"),
    [
        (Ceiling(0.0, 600, 2), False, "must start and lift within the run"),
        (Ceiling(3000, 1200, 2), False, "must start and lift within the run"),
        (Ceiling(900, 600, 0), False, "must be at least minReplicas"),
        (Ceiling(900, 600, 2), True, "a curve change or a ceiling, not both"),
        ((Ceiling(900, 600, 2), Ceiling(1200, 600, 2)), False, "ceilings must not overlap"),
        ((Ceiling(900, 600, 2), Ceiling(1800, 600, 0)), False, "must be at least minReplicas"),
    ],
)
def test_a_ceiling_that_cannot_hold_is_refused(
    ceiling: Ceiling | tuple[Ceiling, ...], change: bool, message: str
) -> None:
    curve = parse_csv_curve(SMALL_CSV, name="m.csv")
    with pytest.raises(ValueError, match=message):
        run_simulation(
            curve,
            make_spec(replicas=2, hi=4),
            hours=1,
            ceiling=ceiling,
            change=CurveChange(1800, curve) if change else None,
        )


@pytest.mark.parametrize("at", [0.0, 3600.0])
def test_a_curve_change_outside_the_run_is_refused(at: float) -> None:
    curve = parse_csv_curve(SMALL_CSV, name="m.csv")
    with pytest.raises(ValueError, match="the curve must change within the run"):
        run_simulation(curve, make_spec(replicas=2, hi=4), hours=1, change=CurveChange(at, curve))


@pytest.mark.parametrize(
    ("name", "plain"), [("overlap-amdahl", "amdahl"), ("overlap-peak", "comm-peak")]
)
def test_overlap_hides_a_fixed_share_of_the_communication(name: str, plain: str) -> None:
    """The exposed sync is the plain family's communication less what hides behind the
    backward pass: zero while it all hides, then an offset below it, not a multiple of it."""
    curve, base = named_curve(name), named_curve(plain)
    assert name not in CURVE_NAMES

    def comm(n: int) -> float:
        return base.step_time(base.placement(n)) - 1.0

    assert comm(2) == pytest.approx(0.013 if plain == "comm-peak" else 0.03)
    for n in (1, 2, 3, 4, 8, 16, 32):
        exposed = max(0.0, comm(n) - 0.05)
        where = curve.placement(n)
        x, _ = curve.measure(where)
        assert x == pytest.approx(curve.rate * n / (1.0 + exposed))
        assert curve.sync_fraction(where) == pytest.approx(exposed / (1.0 + exposed))
    assert curve.sync_fraction(curve.placement(2)) == 0.0  # at most 0.03 of a step: hidden
    share = curve.sync_fraction
    # the exposed sync of 8 over that of 4 is far more than the communication's 7/3
    s4, s8 = (share(curve.placement(n)) / (1 - share(curve.placement(n))) for n in (4, 8))
    assert s8 / s4 > (comm(8) / comm(4)) * 1.5


@pytest.mark.parametrize(
    ("name", "plain"),
    [
        ("overlap-buckets", "amdahl"),
        ("overlap-recover-8", "recover-8"),
        ("overlap-strong-8", "strong-8"),
    ],
)
def test_bucketed_overlap_hides_a_share_that_depends_on_the_count(name: str, plain: str) -> None:
    """DDP's buckets: up to 0.1 of a step hides, never the last bucket's fifth. The exposed
    sync is a multiple of the communication at small counts and an offset below it past
    them, so the hidden share of the communication falls as there is more to send."""
    curve, base = named_curve(name), named_curve(plain)
    assert name not in CURVE_NAMES
    assert curve.gpus_per_node == base.gpus_per_node
    strong = plain == "strong-8"

    def rest(n: int) -> float:  # what is not communication: compute, strong's overhead
        return 1.0 + 0.01 * n if strong else 1.0

    def comm(n: int) -> float:
        return base.step_time(base.placement(n)) - rest(n)

    hidden_share = {}
    for n in (1, 2, 3, 4, 8, 9, 12, 16, 24, 32):
        exposed = max(comm(n) - 0.1, 0.2 * comm(n))
        where = curve.placement(n)
        assert where == base.placement(n)
        x, u = curve.measure(where)
        assert x == pytest.approx(curve.rate * n / (rest(n) + exposed))
        assert u == pytest.approx(curve.compute_fraction / (rest(n) + exposed))
        assert curve.sync_fraction(where) == pytest.approx(exposed / (rest(n) + exposed))
        if comm(n) > 0:
            hidden_share[n] = 1.0 - exposed / comm(n)
    assert hidden_share[2] == pytest.approx(0.8)  # little to send: all but the last bucket
    assert hidden_share[32] < 0.4  # much to send: the backward pass is too short
    # the more there is to send, the less of it hides (recover-8's communication is not
    # monotone in the count: a lone worker on a second node sends the most)
    shares = [hidden_share[n] for n in sorted(hidden_share, key=comm)]
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(shares)), shares
    if plain == "recover-8":  # inter-node traffic hides too: 16 gains more than 8 does
        gain = {
            n: base.step_time(base.placement(n)) - curve.step_time(curve.placement(n))
            for n in (8, 16)
        }
        assert gain[16] == pytest.approx(0.1) and gain[8] < 0.1


def test_the_cli_help_names_every_named_curve() -> None:
    from trainscale.operator.app.cli import build_parser

    sim = build_parser()._subparsers._group_actions[0].choices["simulate"]  # type: ignore[union-attr]
    (curve,) = [a for a in sim._actions if "--curve" in a.option_strings]
    for name in (*CURVE_NAMES, *OVERLAP_NAMES):
        assert name in (curve.help or ""), name


def test_a_csv_row_of_one_worker_per_node_is_a_measured_spread_placement() -> None:
    """Besides its packed rows, a curve may give a count spread one worker per node (as
    Pollux measured 11, 111, 1111): read at that placement, not taken for a packed one."""
    curve = parse_csv_curve(SMALL_CSV + "2,2,150,0.6\n", name="m.csv")
    assert curve.gpus_per_node == 4
    assert curve.measure(Placement((1, 1), 4)) == (150.0, 0.6)
    assert curve.point(2).samples_per_second != 150.0
