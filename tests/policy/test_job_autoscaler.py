"""``JobAutoscaler``: the per-job memory between passes, and the compact state kept in status.

Covers:
- the memory round-trips through JSON (camelCase keys) and tolerates missing or bad keys;
  a bad sync share is dropped, its point kept;
- an autoscaler restored from memory resumes without exploring again (a fresh one explores),
  and keeps every remembered point, two node spans of one count included; the sync share
  measured at each point is remembered, so the restored fit keeps the one-replica reference;
- forced moves are not choices: after unschedulable pods or a ceiling pushed the job down,
  it returns as soon as the cap lifts, to the count it held even where the forced count's
  samples made the fit doubtful; a count it chose to leave needs confidence instead;
- a ceiling above the current count caps what the job asks for;
- how long the job has run (the horizon a restart must pay back in) survives an operator
  restart, and a job that has run long pays a restart a 30-minute horizon would not;
- ``predict_throughput`` is None before anything is measured, then follows the curve, per
  (count, nodes);
- the history and the raw targets stay bounded over a long run;
- the trainer's measure of a restart is asked for after each rescale, taken once, only
  when every running pod finished the restart after it, and its median (of the last 5) is
  the restart cost where the observations teach none; the memory keeps it.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from tests.support.policy_sim import RATE, amdahl, cliff, linear, make_spec, steady
from trainscale.operator.api import AutoscalingStatus
from trainscale.operator.autoscaling import AutoscalerMemory, JobAutoscaler, Placement
from trainscale.operator.autoscaling import autoscaler as autoscaler_module
from trainscale.operator.autoscaling.autoscaler import (
    RESTART_READ_SECONDS,
    MeasuredPoint,
    RestartReading,
    SchedulableCap,
)
from trainscale.operator.autoscaling.policy import (
    LimitedBy,
    Observation,
    Recommendation,
    RestartCostSource,
)
from trainscale.operator.autoscaling.simulation import (
    Ceiling,
    FragmentedCurve,
    Noise,
    SimulationResult,
    named_curve,
    run_simulation,
)

INTERVAL = 30.0


def run(
    autoscaler: JobAutoscaler,
    tau,  # type: ignore[no-untyped-def]
    current: int,
    start: float,
    passes: int,
    **kw,  # type: ignore[no-untyped-def]
) -> tuple[int, float, list[Recommendation]]:
    """Noise-free passes at the job's count; returns (count, time, recommendations)."""
    t = start
    recs = []
    for _ in range(passes):
        t += INTERVAL
        (o,) = steady(current, start=t, count=1, tau=tau)
        rec = autoscaler.decide([o], current_replicas=current, now=t, **kw)
        recs.append(rec)
        current = rec.replicas
    return current, t, recs


def test_memory_round_trips_through_json() -> None:
    memory = AutoscalerMemory(
        points=(MeasuredPoint(4, 1, 390.5, 0.91, 20, 0.25), MeasuredPoint(8, 2, None, 0.7, 6)),
        relative_noise=0.031,
        restart_cost_seconds=55.0,
        last_scale_time=1234.5,
        forced_from=(8,),
        left_downwards=(16,),
        schedulable=SchedulableCap(8, 5000.5, 2, room=1),
        running_since=1000.5,
    )
    data = json.loads(json.dumps(memory.to_dict()))
    assert data["runningSince"] == 1000.5
    assert data["schedulable"] == {"replicas": 8, "until": 5000.5, "tries": 2, "room": 1}
    assert data["points"][0] == {
        "replicas": 4, "nodes": 1, "samplesPerSecond": 390.5, "gpuUtilization": 0.91, "samples": 20,
        "syncFraction": 0.25,
    }  # fmt: skip
    assert "samplesPerSecond" not in data["points"][1]  # no nulls in status
    assert "syncFraction" not in data["points"][1]
    assert AutoscalerMemory.from_dict(data) == memory
    # the status model (so the CRD schema) declares every key: the apiserver keeps them
    status = AutoscalingStatus.model_validate({"memory": data})
    assert status.memory is not None
    assert status.model_dump(by_alias=True, exclude_none=True)["memory"] == data


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({}, id="empty"),
        pytest.param({"points": None, "forcedFrom": None}, id="nulls"),
        pytest.param({"points": [{"replicas": 4}], "restartCostSeconds": "x"}, id="partial-point"),
        pytest.param(
            {"points": [{"replicas": 4, "nodes": 1, "samples": 3, "gpuUtilization": 7}]},
            id="percent-not-ratio",
        ),
        pytest.param({"points": ["junk"], "leftDownwards": [-1, True, 3]}, id="junk"),
        pytest.param({"schedulable": {"replicas": 0, "until": 10.0, "tries": 1}}, id="cap-zero"),
        pytest.param({"schedulable": {"replicas": 8, "until": "x", "tries": 1}}, id="cap-until"),
        pytest.param({"schedulable": {"replicas": 8, "until": 1.0, "tries": 0}}, id="cap-tries"),
        pytest.param({"schedulable": [8]}, id="cap-junk"),
        pytest.param({"schedulable": {"until": 1.0, "tries": 1, "room": 2}}, id="cap-no-replicas"),
    ],
)
def test_memory_from_dict_tolerates_missing_and_bad_keys(data) -> None:  # type: ignore[no-untyped-def]
    memory = AutoscalerMemory.from_dict(data)
    assert memory.points == ()
    assert memory.restart_cost_seconds is None
    assert set(memory.left_downwards) <= {3}
    assert memory.schedulable is None


def test_memory_from_status_reads_what_status_autoscaling_memory_holds() -> None:
    """The autoscaler and cluster arbitration read a job's memory from its status alike:
    ``status.autoscaling.memory`` through :meth:`AutoscalerMemory.from_dict` (a bad count is
    skipped, the others kept); None where the status holds none."""
    status = {"autoscaling": {"memory": {"forcedFrom": [8, "x", -1, 12]}}}
    memory = AutoscalerMemory.from_status(status)
    assert memory is not None and memory.forced_from == (8, 12)
    assert AutoscalerMemory.from_status({}) is None
    assert AutoscalerMemory.from_status({"autoscaling": {"memory": "junk"}}) is None


@pytest.mark.parametrize(
    "sync",
    [
        pytest.param(1.5, id="above-one"),
        pytest.param(1.0, id="one"),
        pytest.param(-0.1, id="negative"),
        pytest.param("x", id="string"),
        pytest.param(math.nan, id="nan"),
        pytest.param(math.inf, id="inf"),
        pytest.param(True, id="bool"),
        pytest.param(None, id="null"),
    ],
)
def test_memory_from_dict_drops_a_bad_sync_fraction_but_keeps_the_point(sync) -> None:  # type: ignore[no-untyped-def]
    raw = {"replicas": 4, "nodes": 1, "samplesPerSecond": 390.5, "samples": 20}
    memory = AutoscalerMemory.from_dict({"points": [{**raw, "syncFraction": sync}]})
    assert memory.points == (MeasuredPoint(4, 1, 390.5, None, 20, None),)


def _sync_tau(n: int) -> float:
    """Per-worker seconds per sample: 8 ms that do not synchronise, and synchronisation that
    grows with the count (there would be 2 ms of it at one replica by extrapolation)."""
    return 0.01 * (1.0 + 0.05 * (n - 1))


def _sync_share(n: int) -> float:
    return 1.0 - 0.008 / _sync_tau(n)


def _efficiencies(autoscaler: JobAutoscaler, counts: tuple[int, ...]) -> list[float]:
    est = autoscaler._current_estimates()
    assert est is not None
    return [est.efficiency(n) for n in counts]


def test_memory_keeps_the_sync_fraction_and_the_restored_fit_its_reference() -> None:
    measured = JobAutoscaler(make_spec(replicas=2, hi=8))
    t = 0.0
    for n in (2, 4):  # throughput only, never one replica: the sync share is the reference
        for _ in range(10):
            t += INTERVAL
            o = Observation(t, n, None, n / _sync_tau(n), 1, _sync_share(n))
            measured.decide([o], current_replicas=n, now=t)
        t += 3600.0
    counts = (2, 4)
    reference = _efficiencies(measured, counts)
    memory = measured.memory()
    shares = {p.replicas: p.sync_fraction for p in memory.points}
    assert shares == {n: pytest.approx(_sync_share(n), abs=1e-6) for n in counts}
    data = json.loads(json.dumps(memory.to_dict()))
    assert all("syncFraction" in p for p in data["points"])
    assert AutoscalingStatus.model_validate({"memory": data}).memory is not None
    restored = AutoscalerMemory.from_dict(data)
    assert restored == memory
    # an operator restart: the fit from memory alone (no new observation yet)
    resumed = JobAutoscaler(make_spec(replicas=4, hi=8), memory=restored)
    resumed.decide([], current_replicas=4, now=t + 600.0)
    assert _efficiencies(resumed, counts) == pytest.approx(reference, rel=5e-3)
    # without the share the same medians extrapolate one replica's step (about 10 ms, where
    # 8 ms of every step do not synchronise): efficiencies come out higher, so it was the
    # remembered share that kept the reference
    forgetful = AutoscalerMemory(
        points=tuple(dataclasses.replace(p, sync_fraction=None) for p in memory.points),
        relative_noise=memory.relative_noise,
    )
    blind = JobAutoscaler(make_spec(replicas=4, hi=8), memory=forgetful)
    blind.decide([], current_replicas=4, now=t + 600.0)
    unshared = _efficiencies(blind, counts)
    assert all(u > r * 1.1 for u, r in zip(unshared, reference, strict=True)), (unshared, reference)


def test_restored_autoscaler_resumes_without_exploring() -> None:
    tau = amdahl(0.03)
    spec = make_spec(replicas=4)
    first = JobAutoscaler(spec)
    settled, t, _ = run(first, tau, 4, 0.0, 240)  # two hours: explores, settles
    memory = AutoscalerMemory.from_dict(json.loads(json.dumps(first.memory().to_dict())))
    assert {p.replicas for p in memory.points} >= {4, settled}
    # an operator restart: a new autoscaler from status, fresh observations at the same count
    resumed = JobAutoscaler(spec.model_copy(update={"replicas": settled}), memory=memory)
    final, _, recs = run(resumed, tau, settled, t + 600.0, 40)
    assert final == settled, [r.reason for r in recs if r.replicas != r.current_replicas]
    assert not any(r.exploring for r in recs)
    assert recs[-1].model is not None and len(recs[-1].model.counts) >= 2
    fresh = JobAutoscaler(spec.model_copy(update={"replicas": settled}))
    _, _, fresh_recs = run(fresh, tau, settled, t + 600.0, 40)
    assert fresh_recs[-1].model is not None and fresh_recs[-1].model.counts == (settled,)


def test_the_jobs_age_survives_an_operator_restart() -> None:
    """How long the job has run sets the restart payback horizon: a restored autoscaler
    counts from the first decision, not from the restart; memory an operator wrote before
    it was kept starts counting at the restore."""
    tau = amdahl(0.03)
    spec = make_spec(replicas=4)
    first = JobAutoscaler(spec)
    _, t, _ = run(first, tau, 4, 0.0, 10)
    assert first.memory().running_since == INTERVAL  # the first decision
    data = json.loads(json.dumps(first.memory().to_dict()))
    resumed = JobAutoscaler(spec, memory=AutoscalerMemory.from_dict(data))
    run(resumed, tau, 4, t + 7200.0, 1)
    assert resumed.memory().running_since == INTERVAL
    del data["runningSince"]
    older = JobAutoscaler(spec, memory=AutoscalerMemory.from_dict(data))
    run(older, tau, 4, t + 7200.0, 1)
    assert older.memory().running_since == t + 7200.0 + INTERVAL


def test_a_job_that_has_run_long_pays_a_restart_a_young_one_would_not() -> None:
    # utilization strong-8 on the benchmark's 250 s-restart seed: after 8 read under the
    # target the job went to 5, where 6 is best; x1.15 does not pay a 265 s restart within
    # 30 minutes, so with a fixed 30-minute horizon it held 5 for the rest of the 4 h run
    # (0.849 of hindsight). The horizon is how long the job has run: it moves at 36 minutes.
    spec = make_spec(replicas=4, objective="utilization", targetGpuUtilization=0.8)
    result = run_simulation(named_curve("strong-8"), spec, hours=4.0, noise=Noise(0.02, 0.0, 0.8),
                            restart_seconds=250.0, seed=1, rate_window=60)  # fmt: skip
    reasons = [d.recommendation.reason for d in result.decisions]
    assert any("does not pay a 265 s restart within 30 min; holding" in r for r in reasons)
    assert any("within 34 min (as long as the job has run); holding" in r for r in reasons)
    assert result.final_replicas == 6
    assert result.score.rescales == 3


def test_a_job_that_says_it_has_hours_left_takes_a_gain_its_age_would_not_pay_yet() -> None:
    # the same run, the trainer saying how many samples it has left (its remaining-samples
    # gauge): 4 h, not the job's age, is what the 265 s restart has to pay back in, so the
    # job moves from 5 to 6, its best, at 21.5 minutes instead of 36.5
    def run(told: bool) -> SimulationResult:
        spec = make_spec(replicas=4, objective="utilization", targetGpuUtilization=0.8)
        return run_simulation(named_curve("strong-8"), spec, hours=4.0,
                              noise=Noise(0.02, 0.0, 0.8), restart_seconds=250.0, seed=1,
                              rate_window=60, report_time_left=told)  # fmt: skip

    def five_to_six(result: SimulationResult) -> float:
        return next(
            d.time
            for d in result.decisions
            if (d.recommendation.current_replicas, d.recommendation.replicas) == (5, 6)
        )

    untold, told = run(False), run(True)
    assert five_to_six(told) < 22 * 60 < 36 * 60 < five_to_six(untold)
    assert not any("does not pay" in d.recommendation.reason for d in told.decisions)
    assert told.final_replicas == untold.final_replicas == 6
    assert told.samples > untold.samples


def test_restored_autoscaler_keeps_every_remembered_point() -> None:
    # two spans of one count: restored as old samples, neither may push the other out
    memory = AutoscalerMemory(
        points=(
            MeasuredPoint(4, 1, 390.0, 0.95, 20),
            MeasuredPoint(8, 1, 700.0, 0.85, 20),
            MeasuredPoint(8, 2, 500.0, 0.6, 20),
        ),
        relative_noise=0.02,
    )
    resumed = JobAutoscaler(make_spec(replicas=4, hi=16), memory=memory)
    run(resumed, linear, 4, 1e6, 3)
    kept = {(p.replicas, p.nodes): p.samples for p in resumed.memory().points}
    assert kept.keys() == {(4, 1), (8, 1), (8, 2)}, kept
    assert kept[(8, 1)] == kept[(8, 2)] == 20


def test_forced_down_by_unschedulable_pods_returns_when_they_fit() -> None:
    tau = amdahl(0.03)
    autoscaler = JobAutoscaler(make_spec(replicas=4, hi=12))
    current, t, _ = run(autoscaler, tau, 4, 0.0, 120)
    assert current == 12  # the objective wants maxReplicas on this curve
    t += INTERVAL
    (o,) = steady(12, start=t, count=1, tau=tau)
    rec = autoscaler.decide([o], current_replicas=12, now=t, pending_replicas=4,
                            unschedulable_replicas=4)  # fmt: skip
    assert (rec.replicas, rec.limited_by, rec.forced) == (8, LimitedBy.UNSCHEDULABLE, True)
    assert autoscaler.memory().forced_from == (12,)
    back, _, recs = run(autoscaler, tau, 8, t, 20)
    assert back == 12, [r.reason for r in recs]
    assert any("returning to 12 (left by force)" in r.reason for r in recs)


def on_a_cluster_that_places(
    autoscaler: JobAutoscaler,
    tau,  # type: ignore[no-untyped-def]
    room,  # type: ignore[no-untyped-def]  # minutes -> workers the cluster places
    minutes: float,
    free=None,  # type: ignore[no-untyped-def]  # (minutes, running) -> room the job is told
) -> list[tuple[float, int, int, str]]:
    """Passes at the job's count where the cluster places ``room(t)`` workers (the others
    pending, unschedulable); returns the moves as (minute, from, to, reason). ``free``: the
    ``room`` the operator reads from nodes and pods (default: not known)."""
    current, t, moves = 4, 0.0, []
    while t < minutes * 60.0:
        t += INTERVAL
        running = min(current, room(t / 60.0))
        (o,) = steady(running, start=t, count=1, tau=tau)
        rec = autoscaler.decide([o], current_replicas=current, now=t,
                                pending_replicas=current - running,
                                unschedulable_replicas=current - running,
                                room=None if free is None else free(t / 60.0, running))  # fmt: skip
        if rec.replicas != current:
            moves.append((t / 60.0, current, rec.replicas, rec.reason))
        current = rec.replicas
    return moves


@pytest.mark.parametrize(
    ("earlier", "now", "expected"),
    [
        pytest.param(None, 100.0, SchedulableCap(8, 400.0, 1), id="first"),
        pytest.param(SchedulableCap(8, 1000.0, 2), 1100.0, SchedulableCap(8, 2300.0, 3), id="third"),
        pytest.param(SchedulableCap(6, 1000.0, 6), 1100.0, SchedulableCap(8, 4700.0, 7), id="at-most-an-hour"),
        pytest.param(SchedulableCap(8, 1000.0, 4), 4600.0, SchedulableCap(8, 8200.0, 5), id="within-an-hour"),
        pytest.param(SchedulableCap(8, 1000.0, 4), 4601.0, SchedulableCap(8, 4901.0, 1), id="long-after"),
    ],
)  # fmt: skip
def test_each_try_that_fails_doubles_the_wait(
    earlier: SchedulableCap | None, now: float, expected: SchedulableCap
) -> None:
    assert SchedulableCap.after(8, now, earlier) == expected


def test_a_full_cluster_is_tried_again_after_a_doubling_wait() -> None:
    # The objective wants 12; the cluster places 8. Returning to the count it was forced off
    # at the next pass, the job went 8 -> 9 -> 8 every 1.5 minutes (266 moves in 200 min).
    autoscaler = JobAutoscaler(make_spec(replicas=4, hi=12))
    moves = on_a_cluster_that_places(autoscaler, amdahl(0.03), lambda _: 8, 200.0)
    tries = [m for m, before, after, _ in moves if after > before >= 8]
    downs = [(m, why) for m, before, after, why in moves if after < before]
    assert all(after <= 9 for _, _, after, _ in moves), moves
    assert len(downs) == len(tries) + 1 <= 8, moves  # one cap after each try, and the first
    gaps = [b - a for a, b in zip([downs[0][0], *tries], tries, strict=False)]
    waits = [min(60.0, 5.0 * 2**i) for i in range(len(gaps))]
    assert all(waits[i] <= gap <= waits[i] + 1.0 for i, gap in enumerate(gaps)), (gaps, moves)
    assert "pods beyond 8 were unschedulable (3 times in a row), asking for more again in 20 min" \
        in downs[2][1]  # fmt: skip
    cap = autoscaler.memory().schedulable
    assert cap is not None and cap.replicas == 8 and cap.tries == len(downs)


def test_a_try_that_finds_room_ends_the_wait() -> None:
    autoscaler = JobAutoscaler(make_spec(replicas=4, hi=12))
    moves = on_a_cluster_that_places(
        autoscaler, amdahl(0.03), lambda minute: 8 if minute < 30.0 else 12, 60.0
    )
    # capped at 8 three times (waits of 5, 10 and 20 min): the try at 38 min finds room,
    # and the job goes on to the 12 its objective wants
    assert sum(1 for _, before, after, _ in moves if after < before) == 3, moves
    retry, last = moves[-2], moves[-1]
    assert (retry[1], retry[2]) == (8, 9) and 37.0 <= retry[0] <= 39.0, moves
    assert last[2] == 12 and last[0] <= 45.0, moves
    assert autoscaler.memory().schedulable is None


def test_room_that_appears_ends_the_wait_at_once() -> None:
    # As above, but the operator reads the free GPUs: none while the cluster places 8, room
    # for 4 more workers from minute 30. The job asks again at once, not at 38 min, and
    # makes no timed try before (it could place no more than the failed one did).
    autoscaler = JobAutoscaler(make_spec(replicas=4, hi=12))

    def placed(minute: float) -> int:
        return 8 if minute < 30.0 else 12

    moves = on_a_cluster_that_places(
        autoscaler,
        amdahl(0.03),
        placed,
        60.0,
        free=lambda minute, running: placed(minute) - running,
    )
    downs = [m for m, before, after, _ in moves if after < before]
    assert len(downs) == 1 and downs[-1] < 30.0, moves  # no timed try while no room
    retry = next(m for m in moves if m[0] >= 30.0)
    assert (retry[1], retry[2]) == (8, 9) and retry[0] <= 31.0, moves
    assert "(the cluster has room for 4 more than the 8 running, 0 more than 8 when pods " \
        "beyond were unschedulable)" in retry[3]  # fmt: skip
    assert moves[-1][2] == 12 and moves[-1][0] <= 38.0, moves
    assert autoscaler.memory().schedulable is None


def test_room_the_job_freed_itself_does_not_end_the_wait() -> None:
    # recover-4 at 12, capped at 6 (4 + 2 workers, under its 0.70 floor) by a cap it is not
    # told of: the job chooses 4, freeing 2 workers' GPUs it had itself. Counted as room
    # that appeared, it went back up at once, ran 6 again and went down again, two 250 s
    # restarts a cycle, twice within the cap. Only the timer's tries may move it up there.
    spec = make_spec(replicas=4, lo=1, hi=32, minEfficiency=0.7)
    cap = Ceiling(5400.0, 1800.0, 6, told=False)
    result = run_simulation(named_curve("recover-4"), spec, hours=3.0, noise=0.02,
                            restart_seconds=250.0, seed=1, rate_window=60, ceiling=cap)  # fmt: skip
    within = [d.recommendation for d in result.decisions if cap.at(d.time) is not None]
    assert any(r.replicas == 4 for r in within)  # it did choose 4 under the cap
    assert not [r.reason for r in within if "the cluster has room" in r.reason]
    lifted = next(d for d in result.decisions if d.time >= cap.lifts_at)
    assert "the cluster has room for 28 more than the 4 running" in lifted.recommendation.reason
    assert result.final_replicas == 12


def test_room_the_pods_cannot_use_does_not_end_the_wait() -> None:
    # Two free GPUs on a node the job's pods may not run on (a taint): the operator reads
    # room for 2 more workers at every pass, and the try finds the pods unschedulable all the
    # same. Only more room than at the failed try ends the wait, and while the room is known
    # and has not grown the timed tries are skipped (blind, the job tries 6 more times).
    autoscaler = JobAutoscaler(make_spec(replicas=4, hi=12))
    moves = on_a_cluster_that_places(
        autoscaler, amdahl(0.03), lambda _: 8, 200.0, free=lambda minute, running: 2
    )
    blind = on_a_cluster_that_places(JobAutoscaler(make_spec(replicas=4, hi=12)),
                                     amdahl(0.03), lambda _: 8, 200.0)  # fmt: skip
    tried = [m for m, before, after, _ in moves if after > before >= 8]
    assert tried == [] and len([m for m in blind if m[2] > m[1] >= 8]) == 6, (moves, blind)
    cap = autoscaler.memory().schedulable
    assert cap is not None and cap.room == 2 and cap.tries == 1
    assert "asking for more again in" in moves[-1][3]


@pytest.mark.parametrize(
    ("at_try", "running", "now", "appeared"),
    [
        pytest.param(0, 8, 1, True, id="freed"),
        pytest.param(0, 8, 0, False, id="still-full"),
        pytest.param(2, 8, 2, False, id="unusable-room-unchanged"),
        pytest.param(2, 8, 1, False, id="less"),
        pytest.param(0, 6, 2, False, id="freed-by-the-job-moving-down"),
        pytest.param(0, 6, 3, True, id="more-than-it-freed"),
        pytest.param(None, 8, 4, False, id="unknown-at-the-try"),
        pytest.param(0, 8, None, False, id="unknown-now"),
    ],
)  # fmt: skip
def test_only_more_room_than_the_failed_try_found_counts(
    at_try: int | None, running: int, now: int | None, appeared: bool
) -> None:
    assert SchedulableCap(8, 100.0, 1, at_try).room_appeared(running, now) is appeared


def _scale_ups_with_a_rejected_pod(
    autoscaler: JobAutoscaler, minutes: float, *, transient: bool
) -> list[tuple[float, int, int, str]]:
    """Passes where, after each scale-up, the scheduler rejects one new pod while the
    operator reads free GPUs for it (one freed after the scheduler's try): for one pass when
    ``transient`` (the scheduler places it at its next try), for good otherwise (something
    other than GPUs keeps it off). Returns the moves as (minute, from, to, reason)."""
    current, t, grew, moves = 4, 0.0, -math.inf, []
    while t < minutes * 60.0:
        t += INTERVAL
        rejected = 1 if current > 4 and (not transient or t - grew <= INTERVAL) else 0
        running = current - rejected
        (o,) = steady(running, start=t, count=1, tau=amdahl(0.03))
        rec = autoscaler.decide([o], current_replicas=current, now=t, pending_replicas=rejected,
                                unschedulable_replicas=rejected, room=rejected)  # fmt: skip
        if rec.replicas != current:
            moves.append((t / 60.0, current, rec.replicas, rec.reason))
        if rec.replicas > current:
            grew = t
        current = rec.replicas
    return moves


def test_a_pod_rejected_while_the_cluster_shows_gpus_for_it_is_left_to_the_scheduler() -> None:
    # Capped at once, the job dropped the pod and recorded room for 1 at the failed try: the
    # same 1 free GPU at every later pass never "appeared", so it held one short, that GPU
    # idle, for the rest of the run (seen on the test-bed under arbitration).
    autoscaler = JobAutoscaler(make_spec(replicas=4, hi=12))
    moves = _scale_ups_with_a_rejected_pod(autoscaler, 60.0, transient=True)
    assert [m for m in moves if m[2] < m[1]] == [], moves
    assert moves and moves[-1][2] == 12, moves
    assert autoscaler.memory().schedulable is None


def test_a_pod_rejected_for_good_caps_the_job_after_the_grace() -> None:
    autoscaler = JobAutoscaler(make_spec(replicas=4, hi=12))
    seen: list[str] = []
    current, t = 4, 0.0
    for _ in range(40):  # up from 4 first; then the pod beyond 8 never runs
        t += INTERVAL
        rejected = max(0, current - 8)
        (o,) = steady(current - rejected, start=t, count=1, tau=amdahl(0.03))
        rec = autoscaler.decide([o], current_replicas=current, now=t, pending_replicas=rejected,
                                unschedulable_replicas=rejected, room=rejected)  # fmt: skip
        seen.append(rec.reason)
        if rejected and rec.replicas == current:
            assert "leaving them to the scheduler for up to 30 s" in rec.reason
        if rec.replicas < current:
            break
        current = rec.replicas
    assert rec.replicas == 8 and rec.limited_by is LimitedBy.UNSCHEDULABLE, seen
    graced = [r for r in seen if "leaving them to the scheduler" in r]
    assert len(graced) == 1, seen  # one 30 s pass, then the cap as before
    cap = autoscaler.memory().schedulable
    assert cap is not None and cap.replicas == 8 and cap.room >= 1


def test_the_wait_survives_an_operator_restart() -> None:
    autoscaler = JobAutoscaler(make_spec(replicas=4, hi=12))
    moves = on_a_cluster_that_places(autoscaler, amdahl(0.03), lambda _: 8, 10.0)
    memory = AutoscalerMemory.from_dict(json.loads(json.dumps(autoscaler.memory().to_dict())))
    cap = memory.schedulable
    assert cap is not None and cap.replicas == 8 and cap.tries == 2, moves
    resumed = JobAutoscaler(make_spec(replicas=8, hi=12), memory=memory)
    t = moves[-1][0] * 60.0
    current, t, recs = run(resumed, amdahl(0.03), 8, t, 10)
    assert current == 8 and t < cap.until, [r.reason for r in recs]
    assert recs[-1].limited_by is LimitedBy.UNSCHEDULABLE
    assert "asking for more again in" in recs[-1].reason
    current, _, recs = run(resumed, amdahl(0.03), 8, cap.until, 5)
    assert current > 8, [r.reason for r in recs]  # its wait over, it tries again


def test_ceiling_forces_down_and_caps_then_lifts() -> None:
    autoscaler = JobAutoscaler(make_spec(replicas=4, hi=16))
    current, t, _ = run(autoscaler, linear, 4, 0.0, 60)
    assert current == 16
    current, t, recs = run(autoscaler, linear, current, t, 1, ceiling=6)
    assert current == 6 and recs[0].limited_by is LimitedBy.CEILING and recs[0].forced
    assert "cluster ceiling 6 < 16 replicas; moving to 6" in recs[0].reason
    current, t, recs = run(autoscaler, linear, current, t, 20, ceiling=10)
    assert current == 10 and recs[-1].limited_by is LimitedBy.CEILING
    current, _, recs = run(autoscaler, linear, current, t, 20)
    assert current == 16, [r.reason for r in recs]


def test_after_a_ceiling_on_a_partial_node_it_returns_where_it_was() -> None:
    # recover-4 (the inter-node cost follows the least-filled node) under a 0.7 efficiency
    # floor, the benchmark's 250 s-restart seed: 12 held for an hour, a ceiling of 6 (4 + 2
    # workers, a placement the model cannot describe) for 30 min. Its samples make every
    # estimate doubtful; the objective's count is 16 and no large move is "safe", so the
    # job held 6 for the rest of the run (0.463 of hindsight after the lift). Back to 12.
    spec = make_spec(replicas=4, lo=1, hi=32, minEfficiency=0.7)
    result = run_simulation(
        named_curve("recover-4"),
        spec,
        hours=3.0,
        noise=Noise(0.02, 0.0, 0.8),
        restart_seconds=250.0,
        seed=1,
        rate_window=60,
        ceiling=Ceiling(5400.0, 1800.0, 6),
    )
    lifted = [d for d in result.decisions if d.time >= 7200.0]
    assert lifted[0].recommendation.replicas == 12, lifted[0].recommendation.reason
    assert "returning to 12 (left by force)" in lifted[0].recommendation.reason
    assert result.final_replicas == 12
    assert result.score.rescales == 1  # scored after the lift: the return alone


def test_a_count_left_by_choice_is_not_returned_to_on_a_whim() -> None:
    autoscaler = JobAutoscaler(make_spec(replicas=16, hi=16, scaleDownStabilizationSeconds=0))
    current, _, _ = run(autoscaler, amdahl(0.1), 16, 0.0, 60)
    assert current < 16
    assert 16 in autoscaler.memory().left_downwards
    assert autoscaler.memory().forced_from == ()


def test_predict_throughput_per_count_and_nodes() -> None:
    tau = cliff(0.01, 0.3, 4)
    autoscaler = JobAutoscaler(make_spec(replicas=4, hi=32))
    assert autoscaler.predict_throughput(4) is None
    gpus = Placement((4,), gpus_per_node=4)
    t = 0.0
    for n, nodes in ((2, 1), (4, 1), (8, 2)):
        for o in steady(n, start=t, count=8, tau=tau):
            autoscaler.decide([Observation(o.timestamp, n, o.gpu_utilization,
                                           o.samples_per_second, nodes)],
                              current_replicas=n, now=o.timestamp, placement=gpus)  # fmt: skip
        t += 8 * INTERVAL + 3600.0
    assert autoscaler.predict_throughput(12) == pytest.approx(RATE * 12 / tau(12), rel=0.03)
    assert autoscaler.predict_throughput(5) == pytest.approx(RATE * 5 / tau(5), rel=0.03)
    one_node = autoscaler.predict_throughput(4, nodes=1)
    two_nodes = autoscaler.predict_throughput(4, nodes=2)
    assert one_node is not None and two_nodes is not None and two_nodes < one_node


def test_without_the_node_size_a_count_measured_across_nodes_is_judged_on_its_span() -> None:
    # The operator may not list nodes: placements carry no GPUs per node. Efficiency 0.96 at
    # 8 on one node; 32 on four 8-GPU nodes runs at 0.47, under the 0.70 floor.
    tau = cliff(0.005, 1.0, 8)
    spec = make_spec(replicas=8, hi=32, objective="efficiency", minEfficiency=0.7)
    autoscaler = JobAutoscaler(spec)
    t = 0.0
    for n, placement in ((8, Placement((8,))), (32, Placement((8, 8, 8, 8)))):
        for o in steady(n, start=t, count=8, tau=tau):
            rec = autoscaler.decide([o], current_replicas=n, now=o.timestamp, placement=placement)
        t += 8 * INTERVAL + 3600.0
    assert rec.target == 8, rec.reason  # once the scale-down window has passed
    assert "efficiency 0.48 at 32 < floor 0.70" in rec.reason
    assert rec.model is not None and rec.model.as_status()["workersPerNode"] == 8
    # 16 spans two nodes as 32 did: the inter-node cost measured at 32 is in its prediction
    two_nodes = autoscaler.predict_throughput(16, nodes=2)
    assert autoscaler.predict_throughput(16) == pytest.approx(two_nodes, rel=1e-6)
    # and so after an operator restart, from the measurements kept in status alone
    restored = JobAutoscaler(spec, memory=autoscaler.memory())
    restored.decide([], current_replicas=8, now=t, placement=Placement((8,)))
    assert restored.predict_throughput(16) == pytest.approx(
        restored.predict_throughput(16, nodes=2), rel=1e-6
    )
    assert restored.predict_throughput(16) < restored.predict_throughput(16, nodes=1)


def test_without_the_node_size_a_job_keeps_its_floor_past_a_node_boundary() -> None:
    # the benchmark's cliff-8 under the efficiency floor, node size not told (its worst seed
    # held 32 GPUs at a true 0.50 reading 0.87 before the node size was inferred)
    spec = make_spec(replicas=4, hi=32, objective="efficiency", minEfficiency=0.7)
    result = run_simulation(
        named_curve("cliff-8"), spec, hours=4.0, noise=0.05, restart_seconds=60.0, seed=0,
        rate_window=60, report_node_size=False,
    )  # fmt: skip
    assert result.score.constraint_met, result.score
    assert result.final_replicas == result.hindsight.replicas == 8


def test_where_nodes_are_partly_free_the_job_judges_counts_on_the_nodes_it_gets() -> None:
    # 8-GPU nodes told, but only 6 GPUs of each free: 8 workers run 6 + 2, at 0.48
    tau = cliff(0.005, 1.0, 6)
    spec = make_spec(replicas=8, hi=32, objective="efficiency", minEfficiency=0.7)
    autoscaler = JobAutoscaler(spec)
    t = 0.0
    one_node, spilled = Placement((6,), gpus_per_node=8), Placement((6, 2), gpus_per_node=8)
    for n, placement in ((6, one_node), (8, spilled), (6, one_node)):
        for o in steady(n, start=t, count=8, tau=tau):
            rec = autoscaler.decide([o], current_replicas=n, now=o.timestamp, placement=placement)
        if n == 8:  # 8 is judged on the two nodes it ran on
            assert rec.target == 6, rec.reason
            assert "efficiency 0.50 at 8 < floor 0.70" in rec.reason
        t += 8 * INTERVAL + 3600.0
    # back on one node, 7 and 8 are still predicted across two: it stays at 6
    assert rec.replicas == 6, rec.reason
    assert rec.model is not None and rec.model.as_status()["workersPerNode"] == 6
    one = autoscaler.predict_throughput(7, nodes=1)
    assert one is not None and autoscaler.predict_throughput(7) < one


def test_where_nodes_are_partly_free_a_job_keeps_its_floor() -> None:
    # the benchmark's cliff-8 with 6 of each node's 8 GPUs free (benchmarks/policy.py
    # --fragmented 0.75): held 8 as one node's, truly 0.59 under the 0.70 floor
    spec = make_spec(replicas=4, hi=32, objective="efficiency", minEfficiency=0.7)
    curve = FragmentedCurve(named_curve("cliff-8"), 6)
    result = run_simulation(curve, spec, hours=4.0, noise=0.05, restart_seconds=60.0, seed=0,
                            rate_window=60)  # fmt: skip
    assert result.score.constraint_met, result.score
    assert result.final_replicas == result.hindsight.replicas == 6


def test_history_and_targets_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(autoscaler_module, "MAX_TARGETS_KEPT", 100)
    autoscaler = JobAutoscaler(make_spec(replicas=4, hi=8))
    run(autoscaler, amdahl(0.05), 4, 0.0, 400)  # 3 h 20 min
    assert len(autoscaler._targets) == 100
    assert len(autoscaler._observations) <= 3600 / INTERVAL + 20 * 8 + 1


def test_it_remembers_the_counts_it_probed() -> None:
    # efficiency 0.78 at 3, 0.75 at 4, 0.69 at 5: 3 -> 4 is a move, 4 -> 5 a probe
    autoscaler = JobAutoscaler(make_spec(replicas=3))
    current, _, recs = run(autoscaler, amdahl(0.11), 3, 0.0, 60)
    probes = [r for r in recs if r.probing and r.replicas != r.current_replicas]
    assert [(r.current_replicas, r.replicas) for r in probes] == [(4, 5)]
    assert autoscaler._probed == {5}  # probes from 5 would chain: the policy makes none
    assert current == 5


def _collapse_then_recover(forget: int | None) -> tuple[int, int, list[Recommendation]]:
    """Linear scaling to 8, then a sync cost that makes 2+ workers useless (the job drops to
    1), then the cost gone again: where is the job an hour after the recovery?"""
    extra = {} if forget is None else {"forgetAfterSeconds": forget}
    autoscaler = JobAutoscaler(
        make_spec(replicas=2, hi=8, scaleDownStabilizationSeconds=0, **extra)
    )
    current, t, _ = run(autoscaler, linear, 2, 0.0, 120)
    assert current == 8, "grows on a linear curve"
    collapsed, t, _ = run(autoscaler, lambda n: 1.0 + 3.0 * (n - 1), current, t, 120)
    assert collapsed < current, "leaves the counts whose efficiency collapsed"
    final, _, recs = run(autoscaler, linear, collapsed, t, 120)
    return collapsed, final, recs


def test_without_forgetting_old_measurements_keep_the_job_down() -> None:
    collapsed, final, _ = _collapse_then_recover(None)
    assert final == collapsed  # what it measured at the larger counts is still believed


def test_forget_after_seconds_explores_again_when_scaling_changed() -> None:
    collapsed, final, recs = _collapse_then_recover(600)
    assert final > collapsed, [r.reason for r in recs if r.replicas != r.current_replicas]


def test_restored_memory_is_forgotten_only_after_forget_after_seconds() -> None:
    memory = AutoscalerMemory(
        points=(MeasuredPoint(4, 1, 400.0, 0.95, 20), MeasuredPoint(8, 1, 780.0, 0.93, 20)),
        relative_noise=0.02,
    )
    resumed = JobAutoscaler(make_spec(replicas=4, hi=8, forgetAfterSeconds=600), memory=memory)
    _, t, _ = run(resumed, linear, 4, 1e6, 3, ceiling=4)  # an operator restart keeps memory
    assert {p.replicas for p in resumed.memory().points} == {4, 8}
    run(resumed, linear, 4, t, 21, ceiling=4)  # 630 s more at 4, never at 8
    assert {p.replicas for p in resumed.memory().points} == {4}


def test_forgetting_never_churns_a_job_that_sits_at_its_best_count() -> None:
    # Seen on the real loop (throughput only, no GPU metrics, forgetAfterSeconds 30): once the
    # count below the job's was forgotten, its one remaining count could not identify the
    # efficiency, and the job went down "to measure efficiency" and back up, once per
    # forgetAfterSeconds, for ever. What forgetting is for, finding that counts it left may
    # pay again, concerns the counts above; the counts below are its efficiency reference.
    autoscaler = JobAutoscaler(
        make_spec(replicas=1, hi=2, scaleDownStabilizationSeconds=0, forgetAfterSeconds=300)
    )
    t, current, recs = 0.0, 1, []
    for _ in range(240):  # 2 h on a linear curve: 2 workers are twice as fast as 1
        t += INTERVAL
        (o,) = steady(current, start=t, count=1, tau=linear, util=False)
        rec = autoscaler.decide([o], current_replicas=current, now=t)
        recs.append(rec)
        current = rec.replicas
    moves = [
        (r.current_replicas, r.replicas, r.reason) for r in recs if r.replicas != r.current_replicas
    ]
    assert current == 2 and len(moves) == 1, moves


def _rescaled(autoscaler: JobAutoscaler, count: int, t: float) -> float:
    """One pass at ``count`` (a user moved ``spec.replicas`` there: a rescale at ``t``)."""
    (o,) = steady(count, start=t, count=1, tau=amdahl(0.03))
    autoscaler.decide([o], current_replicas=count, now=t)
    return t


def test_the_trainers_restart_measure_is_taken_once_per_rescale() -> None:
    spec = make_spec(replicas=4, hi=8)
    job = JobAutoscaler(spec)
    # passes minutes apart, as the operator's around a rescale: no restart learned from them
    _rescaled(job, 4, 30.0)
    assert job.restart_reading_since(60.0) is None  # no rescale yet: nothing to ask
    since = _rescaled(job, 5, 300.0)
    assert job.restart_reading_since(330.0) == since
    good = RestartReading(since, pods=5, pause_seconds=40.0, retrained_seconds=2.5)
    # not this rescale's restart, one pod still on an older one, no workers, a bad figure
    assert not job.take_restart(dataclasses.replace(good, since=30.0), running=5)
    assert not job.take_restart(dataclasses.replace(good, pods=4), running=5)
    assert not job.take_restart(good, running=0)
    assert not job.take_restart(dataclasses.replace(good, pause_seconds=math.nan), running=5)
    assert job.restart_reading_since(330.0) == since  # still asked for
    assert job.take_restart(good, running=5)
    assert not job.take_restart(good, running=5)  # once a rescale
    assert job.restart_reading_since(360.0) is None
    (o,) = steady(5, start=600.0, count=1, tau=amdahl(0.03))
    rec = job.decide([o], current_replicas=5, now=600.0)
    assert (rec.restart_cost_seconds, rec.restart_cost_source) == (42.5, RestartCostSource.MEASURED)
    assert job.memory().restart_cost_seconds == 42.5
    later = _rescaled(job, 6, 900.0)
    assert job.restart_reading_since(later + RESTART_READ_SECONDS) == later
    assert job.restart_reading_since(later + RESTART_READ_SECONDS + 1) is None  # asked long enough


def test_the_median_of_the_last_measured_restarts_is_the_cost() -> None:
    spec = make_spec(replicas=2, hi=16)
    job = JobAutoscaler(spec)
    costs = [300.0, 20.0, 30.0, 25.0, 35.0, 40.0]  # the first falls out of the last five
    _rescaled(job, 2, 0.0)
    for i, cost in enumerate(costs):
        since = _rescaled(job, 3 + i, 100.0 * (i + 1))
        assert job.take_restart(RestartReading(since, 3 + i, cost), running=3 + i)
    (o,) = steady(8, start=1000.0, count=1, tau=amdahl(0.03))
    rec = job.decide([o], current_replicas=8, now=1000.0)
    assert (rec.restart_cost_seconds, rec.restart_cost_source) == (30.0, RestartCostSource.MEASURED)
    data = json.loads(json.dumps(job.memory().to_dict()))
    assert data["restartCostSeconds"] == 30.0
    resumed = JobAutoscaler(spec, memory=AutoscalerMemory.from_dict(data))
    (o,) = steady(8, start=1100.0, count=1, tau=amdahl(0.03))
    rec = resumed.decide([o], current_replicas=8, now=1100.0)
    assert (rec.restart_cost_seconds, rec.restart_cost_source) == (
        30.0, RestartCostSource.REMEMBERED,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("measured", "source"), [(5.0, RestartCostSource.LEARNED), (200.0, RestartCostSource.MEASURED)]
)
def test_the_larger_of_the_samples_and_the_trainers_cost_is_used_and_kept(
    measured: float, source: RestartCostSource
) -> None:
    """The samples across a rescale say about 60 s were lost; the trainer says ``measured``:
    a restart costs at least the pause the trainer measured, and the samples also count a
    slow start after it."""
    spec = make_spec(replicas=4, hi=8)
    job = JobAutoscaler(spec)
    for o in steady(4, count=10, tau=amdahl(0.03)):
        job.decide([o], current_replicas=4, now=o.timestamp)
    since = 300.0
    dip = [Observation(since + 30 * i, 8, 0.0, 0.0) for i in range(2)]  # 60 s at zero
    job.decide([dip[0]], current_replicas=8, now=since)
    assert job.take_restart(RestartReading(since, 8, measured), running=8)
    job.decide([dip[1]], current_replicas=8, now=since + 30)
    for o in steady(8, start=since + 60, count=10, tau=amdahl(0.03)):
        rec = job.decide([o], current_replicas=8, now=o.timestamp)
    assert rec.restart_cost_source is source
    if source is RestartCostSource.LEARNED:
        assert rec.restart_cost_seconds == pytest.approx(60.0, abs=31)
    else:
        assert rec.restart_cost_seconds == measured
    assert job.memory().restart_cost_seconds == rec.restart_cost_seconds
