"""Restarts whose cost varies (``simulation.Restarts``): a fixed restart cost is our
assumption; a move onto a node that never ran the job pulls its image there, restart
times scatter, and a restarted job may train slowly for a while (a recompile, autotuning, a
cold data cache). The benchmark's ``--restart-spread``, ``--restart-new-nodes`` and
``--warmup`` use it."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from tests.simulation.test_simulation_model import Scripted
from tests.support.policy_sim import make_spec
from trainscale.operator.autoscaling.simulation import Restarts, parse_csv_curve, run_simulation

# one node holds 2 workers: 3 and 4 span two
TWO_NODES_CSV = """count,nodes,samples_per_second,gpu_utilization,sync_fraction
1,1,100,0.95,0.0
2,1,190,0.9,0.05
3,2,240,0.76,0.2
4,2,250,0.6,0.3
"""


@pytest.mark.parametrize(
    ("restarts", "nodes", "most_nodes", "cost"),
    [
        (Restarts(60.0), 3, 1, 60.0),  # no extra cost asked for
        (Restarts(60.0, new_nodes=100.0), 1, 1, 60.0),  # no node beyond the most
        (Restarts(60.0, new_nodes=100.0), 2, 1, 160.0),  # one new node
        (Restarts(60.0, new_nodes=100.0), 4, 2, 160.0),  # two, pulled in parallel
        (Restarts(60.0, new_nodes=100.0), 2, 3, 60.0),  # back onto nodes it spanned
        (Restarts(0.0, new_nodes=30.0), 3, 1, 30.0),
        # pulls sharing one link: each new node adds its pull
        (Restarts(60.0, new_nodes=100.0, new_nodes_each=True), 2, 1, 160.0),
        (Restarts(60.0, new_nodes=100.0, new_nodes_each=True), 4, 2, 260.0),
        (Restarts(0.0, new_nodes=30.0, new_nodes_each=True), 8, 1, 210.0),
        (Restarts(60.0, new_nodes=100.0, new_nodes_each=True), 2, 3, 60.0),
        (Restarts(60.0, new_nodes=100.0, new_nodes_each=True), 3, 3, 60.0),
    ],
)
def test_a_restart_costs_its_seconds_plus_a_pull_onto_nodes_never_spanned(
    restarts: Restarts, nodes: int, most_nodes: int, cost: float
) -> None:
    assert restarts.cost(nodes, most_nodes, random.Random(0)) == pytest.approx(cost)


def test_a_spread_scatters_each_restart_log_normally_around_the_same_mean() -> None:
    rng = random.Random(7)
    costs = [Restarts(120.0, spread=0.5).cost(1, 1, rng) for _ in range(20_000)]
    assert statistics.fmean(costs) == pytest.approx(120.0, rel=0.02)
    assert statistics.stdev(math.log(c) for c in costs) == pytest.approx(0.5, rel=0.03)
    assert min(costs) > 0
    # without a spread nothing is drawn: the stream is left as it was
    untouched = random.Random(7)
    Restarts(120.0).cost(1, 1, untouched)
    assert untouched.random() == random.Random(7).random()


@pytest.mark.parametrize("field", ["seconds", "spread", "new_nodes", "warmup_seconds"])
@pytest.mark.parametrize("value", [-1.0, math.inf, math.nan])
def test_a_negative_or_infinite_setting_is_refused_by_name(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"restart {field} must be >= 0"):
        Restarts(**{field: value})


def test_a_run_pays_the_new_node_once_and_a_fixed_cost_is_what_it_was() -> None:
    curve = parse_csv_curve(TWO_NODES_CSV, name="two-nodes.csv")
    spec = make_spec(replicas=2, lo=1, hi=4, intervalSeconds=30)
    # decisions at t = 30, 60, ...: 2 -> 3 at 30, 3 -> 2 at 150, 2 -> 3 at 270; run 300 s
    script = [3, 3, 3, 3, 2, 2, 2, 2, 3]

    def samples(restart: float | Restarts) -> float:
        return run_simulation(
            curve, spec, hours=300 / 3600, noise=0.0, restart_seconds=restart,
            settle_seconds=0, controller=Scripted(list(script)),
        ).samples  # fmt: skip

    # the first move onto the second node restarts for 10 + 50 s, the move back onto it
    # (its image there already) for 10 s like the move off it
    paid = 190 * 30 + 240 * (150 - 90) + 190 * (270 - 160) + 240 * (300 - 280)
    assert samples(Restarts(10.0, new_nodes=50.0)) == pytest.approx(paid)
    fixed = 190 * 30 + 240 * (150 - 40) + 190 * (270 - 160) + 240 * (300 - 280)
    assert samples(Restarts(10.0)) == pytest.approx(fixed)
    assert samples(10.0) == pytest.approx(fixed)


@pytest.mark.parametrize("share", [-0.1, 1.5, math.nan])
def test_a_warmup_share_outside_zero_to_one_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match="restart warmup_share must be within"):
        Restarts(warmup_seconds=60.0, warmup_share=share)


def test_a_warmup_trains_slowly_after_each_restart_then_at_full_speed() -> None:
    curve = parse_csv_curve(TWO_NODES_CSV, name="two-nodes.csv")
    spec = make_spec(replicas=2, lo=1, hi=4, intervalSeconds=30)
    script = [3, 3, 3, 3, 2, 2, 2, 2, 3]  # 2 -> 3 at 30, 3 -> 2 at 150, 2 -> 3 at 270

    def run(restart: Restarts) -> tuple[float, list[float | None], list[float | None]]:
        scripted = Scripted(list(script))
        done = run_simulation(
            curve, spec, hours=300 / 3600, noise=0.0, restart_seconds=restart,
            rate_window=10, settle_seconds=0, controller=scripted,
        )  # fmt: skip
        seen = scripted.seen
        return done.samples, [o.gpu_utilization for o in seen], [o.sync_fraction for o in seen]

    # each restart (10 s) is followed by 40 s at a quarter of the rate, then full speed
    samples, utilization, sync = run(Restarts(10.0, warmup_seconds=40.0, warmup_share=0.25))
    warm = 0.25 * (240 * 40) + 240 * (150 - 80)  # 3 from 40: slow until 80
    warm += 0.25 * (190 * 40) + 190 * (270 - 200)  # 2 from 160: slow until 200
    warm += 0.25 * 240 * (300 - 280)  # 3 from 280: still warming at the end
    assert samples == pytest.approx(190 * 30 + warm)
    # the GPU gauge reads the warm-up too: at t = 60 (3 warming) and t = 90 (at speed);
    # the same sync per step is a quarter of the share of a step four times as long
    assert utilization[1:3] == pytest.approx([0.25 * 0.76, 0.76])
    full = curve.point(3).sync_fraction
    assert full is not None and full > 0
    assert sync[1:3] == pytest.approx([0.25 * full, full])
    # no warm-up asked for, or at full speed: the run is the plain one
    plain = run(Restarts(10.0))[0]
    assert run(Restarts(10.0, warmup_seconds=40.0))[0] == pytest.approx(plain)
    assert run(Restarts(10.0, warmup_seconds=0.0, warmup_share=0.25))[0] == pytest.approx(plain)
    assert plain > samples


@pytest.mark.parametrize(("report", "costs"), [(False, {60.0}), (True, {60.0, 250.0})])
def test_the_trainer_tells_the_autoscaler_its_restarts_where_its_samples_cannot(
    report: bool, costs: set[float]
) -> None:
    """With the operator's quiet time after a rescale (the new world forming, then
    settleSeconds: 195 s here) the throughput missed across it teaches the autoscaler no
    restart cost; the trainer's measure of each restart does, once it is over."""
    curve = parse_csv_curve(TWO_NODES_CSV, name="two-nodes.csv")
    spec = make_spec(replicas=1, lo=1, hi=4, intervalSeconds=30, minEfficiency=0.5)
    done = run_simulation(
        curve, spec, hours=1.0, noise=0.0, restart_seconds=250.0, settle_seconds=195,
        report_restarts=report,
    )  # fmt: skip
    assert len({p.replicas for p in done.points}) > 1  # it rescaled
    used = {d.recommendation.restart_cost_seconds for d in done.decisions}
    assert used == costs
    sources = {d.recommendation.restart_cost_source.value for d in done.decisions}
    assert sources == ({"default", "measured"} if report else {"default"})
    if report:  # the measure comes once the restart is over, not before
        told = [d.time for d in done.decisions if d.recommendation.restart_cost_seconds == 250]
        moved = min(p.time for p in done.points if p.replicas != 1)
        assert min(told) >= moved + 250


@pytest.mark.parametrize(
    ("restart", "await_world", "first_after"),
    [
        (50.0, False, 60.0),  # settleSeconds after the count changed
        (50.0, True, 50.0 + 60.0),  # ... after the new world formed, at the pause's end
        (300.0, True, 120.0 + 60.0),  # ... or AWAIT_WORLD_SECONDS after the change
        (0.0, True, 60.0),
    ],
)
def test_the_daemons_timing_measures_nothing_until_the_new_world_and_settle_seconds(
    restart: float, await_world: bool, first_after: float
) -> None:
    curve = parse_csv_curve(TWO_NODES_CSV, name="two-nodes.csv")
    spec = make_spec(replicas=2, lo=1, hi=4, intervalSeconds=10, settleSeconds=60)
    scripted = Scripted([3])  # 2 -> 3 at the first decision (t = 10), then holds
    run_simulation(
        curve, spec, hours=600 / 3600, noise=0.0, restart_seconds=restart,
        await_world=await_world, controller=scripted,
    )  # fmt: skip
    times = [o.timestamp for o in scripted.seen]
    assert times[0] == 10.0
    assert times[1] == pytest.approx(10.0 + math.ceil(first_after / 10) * 10)
    assert times[1:] == pytest.approx([times[1] + 10 * i for i in range(len(times) - 1)])


@pytest.mark.parametrize(
    ("restarts", "words"),
    [
        (Restarts(60.0), []),
        (Restarts(60.0, new_nodes=120.0), ["+120 s onto new nodes"]),
        (Restarts(60.0, new_nodes=30.0, new_nodes_each=True), ["+30 s onto new nodes each"]),
        (
            Restarts(60.0, spread=0.5, warmup_seconds=180.0, warmup_share=0.5),
            ["spread 0.5", "then 180 s at 0.5 of the rate"],
        ),
    ],
)
def test_how_restarts_vary_is_said_in_words(restarts: Restarts, words: list[str]) -> None:
    assert restarts.variations() == words
