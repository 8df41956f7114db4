"""The autoscaling policy when the cluster takes the job's GPUs for a while: forced moves.

On a shared cluster, cluster arbitration (or a higher-priority job) caps a job below the count
it chose, and lifts the cap later. A forced move is not a choice: the job must go back once the
cap lifts, without the confidence a chosen return needs (the issue's shared-cluster job sat at
1 GPU for 80 hours where 40 were efficient). Every case of the main table
(``benchmarks/policy.py``: the curves, objectives and per-seed conditions) starts at 4
workers and runs 4 h; from 1.5 h to 2 h a ceiling of half the best static count (at least 1)
holds it down (``--cap-share``, ``--cap-at``, ``--cap-minutes``: a deeper, earlier or longer
cap; ``--repeat``, ``--every``: caps that come and go, scored after the last). Scored on the rest of the run after the cap lifts against the best static count (samples,
0 when the time-averaged constraint broke), with the rescales after the lift and the minutes
from the lift until the job runs the count it held when the cap came (or more) again. One
250 s restart back costs 3.5 % of the 2 h after a lift at 2 h (the most a case can then score
is 0.965); a later lift leaves too little run for the 0.95 goal.

Beside it, the same policy remembering the forced move as its own choice (the job's
autoscaler with the forced and chosen moves not told apart), as it was before.

``--untold``: the cap is not told (no cluster arbitration; someone else's pods took the
GPUs): the job's pods beyond it are evicted, and those it asks for stay pending, rejected by
the scheduler, until it lifts. The job sees only its unschedulable pods and the free GPUs
(``room``; ``--no-room``: not those either, as an operator that may not list pods in every
namespace). Column ``asks``: passes under a cap at which the job asked for more workers than
ran (the as-chosen baseline never waits after unschedulable pods: its asks show what the
wait saves).

Run: ``.venv/bin/python benchmarks/forced.py [--seeds 3] [--markdown] [--cases GLOB]
[--cap-share 0.5] [--cap-at 1.5] [--cap-minutes 30] [--repeat 1 --every MINUTES]
[--untold [--no-room]]`` (about 5 min).
"""

from __future__ import annotations

import argparse
import fnmatch
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from policy import (
    GOAL_RESCALES,
    GOAL_SHARE,
    MEASURED,
    OBJECTIVES,
    RUN_HOURS,
    curve_max,
    load_case_curve,
    make_spec,
    run_seed,
)

from trainscale.operator.autoscaling import JobAutoscaler
from trainscale.operator.autoscaling.policy import Recommendation
from trainscale.operator.autoscaling.simulation import CURVE_NAMES, Ceiling, hindsight

HOURS = RUN_HOURS
CAP_AT = 1.5  # hours
CAP_SHARE = 0.5
CAP_MINUTES = 30.0
MAX_REPLICAS = 32


class _Chosen(JobAutoscaler):
    """The baseline: a move the ceiling forced is remembered as the job's own choice."""

    def _remember_move(
        self, rec: Recommendation, current: int, now: float, room: int | None = None
    ) -> None:
        super()._remember_move(replace(rec, forced=False), current, now, room)


@dataclass(frozen=True)
class Outcome:
    score: float  # worst seed, after the lift
    raw: float  # the same seed's samples ratio before the constraint is applied
    rescales: int  # most over seeds, after the lift
    asks: int  # most over seeds: passes under a cap that asked for more than ran
    minutes: float  # worst seed: lift to the count held before the cap again (inf: never)
    final: tuple[int, ...]  # final counts over seeds

    def meets_goal(self) -> bool:
        return bool(self.score >= GOAL_SHARE and self.rescales <= GOAL_RESCALES)


def cap_for(best: int, share: float = CAP_SHARE) -> int:
    """The ceiling of a case: ``share`` of its best static count (rounded down), at least one
    replica."""
    return max(1, math.floor(best * share))


@dataclass(frozen=True)
class CapShape:
    """When and how far the cluster caps a case: ``repeat`` caps of ``share`` of its best
    static count, ``minutes`` long, the first ``at`` hours into the run, one every
    ``every`` minutes."""

    share: float = CAP_SHARE
    at: float = CAP_AT
    minutes: float = CAP_MINUTES
    repeat: int = 1
    every: float = 0.0
    told: bool = True
    room: bool = True  # untold: the job sees the free GPUs (decide(room=...))

    def ceilings(self, best: int) -> tuple[Ceiling, ...]:
        cap = cap_for(best, self.share)
        return tuple(
            Ceiling(self.at * 3600.0 + i * self.every * 60.0, self.minutes * 60.0, cap, self.told)
            for i in range(self.repeat)
        )

    @property
    def lifts_at(self) -> float:
        """Hours into the run the last cap lifts."""
        return self.ceilings(1)[-1].lifts_at / 3600.0

    def describe(self) -> str:
        once = f"from {self.at:g} h for {self.minutes:g} min"
        if self.repeat > 1:
            once += f", {self.repeat} times {self.every:g} min apart (scored after the last)"
        if not self.told:
            seen = "and the free GPUs" if self.room else "(not the free GPUs)"
            once += f", not told: seen only as unschedulable pods {seen}"
        return once


def run_case(
    curve_name: str, objective: str, seeds: int, chosen: bool, shape: CapShape = CapShape()
) -> tuple[int, Outcome]:
    curve = load_case_curve(curve_name)
    spec = make_spec(objective, 4, 1, curve_max(curve, MAX_REPLICAS), 30)
    best = hindsight(curve, spec).replicas
    ceilings = shape.ceilings(best)
    first, lift = ceilings[0].at_seconds, ceilings[-1].lifts_at
    scores: list[tuple[float, float]] = []
    rescales, asks, minutes, finals = [], [], [], []
    for seed in range(seeds):
        controller = (_Chosen if chosen else JobAutoscaler)(spec)
        r = run_seed(curve, spec, seed, controller, ceiling=ceilings, report_room=shape.room)
        scores.append((r.score.samples_ratio, r.score.raw_samples_ratio))
        rescales.append(r.score.rescales)
        asks.append(
            sum(
                1
                for d, p in zip(r.decisions, r.points, strict=True)
                if d.recommendation.replicas > p.replicas
                and any(c.at(p.time) is not None for c in ceilings)
            )
        )
        held = next(p.replicas for p in reversed(r.points) if p.time < first)
        back = [p.time for p in r.points if p.time >= lift and p.replicas >= held]
        minutes.append((back[0] - lift) / 60 if back else float("inf"))
        finals.append(r.final_replicas)
    worst = min(scores)
    finals_seen = tuple(sorted(set(finals)))
    return best, Outcome(*worst, max(rescales), max(asks), max(minutes), finals_seen)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--cases", default="*", help="glob over 'objective/curve'")
    parser.add_argument(
        "--cap-share",
        type=float,
        default=CAP_SHARE,
        help="the ceiling as a share of the best static count (rounded down, at least 1)",
    )
    parser.add_argument(
        "--cap-at", type=float, default=CAP_AT, help="hours into the run the ceiling comes"
    )
    parser.add_argument(
        "--cap-minutes", type=float, default=CAP_MINUTES, help="how long the ceiling holds"
    )
    parser.add_argument("--repeat", type=int, default=1, help="how many times the cap comes")
    parser.add_argument(
        "--every", type=float, default=0.0, help="minutes from one cap's start to the next's"
    )
    parser.add_argument(
        "--untold",
        action="store_true",
        help="the job is not told its cap: it sees only pods the scheduler rejects",
    )
    parser.add_argument(
        "--no-room",
        action="store_true",
        help="with --untold: the job does not see the free GPUs either (an operator that "
        "may not list pods in every namespace)",
    )
    args = parser.parse_args(argv)
    if not 0.0 <= args.cap_share < 1.0:
        parser.error(f"--cap-share must be in [0, 1), got {args.cap_share}")
    if not (args.cap_at > 0.0 and args.cap_minutes > 0.0):
        parser.error(
            f"--cap-at and --cap-minutes must be > 0, got {args.cap_at}, {args.cap_minutes}"
        )
    if args.repeat < 1 or (args.repeat > 1 and args.every < args.cap_minutes):
        parser.error(
            f"--repeat must be >= 1, and --every at least --cap-minutes (caps must not "
            f"overlap), got --repeat {args.repeat} --every {args.every:g}"
        )
    if args.no_room and not args.untold:
        parser.error("--no-room needs --untold (a told cap needs no room)")
    args.shape = CapShape(
        args.cap_share,
        args.cap_at,
        args.cap_minutes,
        args.repeat,
        args.every,
        told=not args.untold,
        room=not args.no_room,
    )
    if not args.shape.lifts_at < HOURS:
        parser.error(
            f"the caps ({args.shape.describe()}) lift the last one after the {HOURS:g} h run"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    shape: CapShape = args.shape
    started = time.monotonic()
    rows = []
    for objective in OBJECTIVES:
        for curve_name in (*CURVE_NAMES, *MEASURED):
            if not fnmatch.fnmatch(f"{objective}/{curve_name}", args.cases):
                continue
            best, new = run_case(curve_name, objective, args.seeds, False, shape)
            _, old = run_case(curve_name, objective, args.seeds, True, shape)
            rows.append((objective, curve_name, best, new, old))

    def cell(o: Outcome) -> tuple[str, ...]:
        final = "/".join(map(str, o.final))
        score = f"{o.score:.3f}" if o.score or not o.raw else f"0 ({o.raw:.3f})"
        asks = () if shape.told else (str(o.asks),)
        return score, str(o.rescales), *asks, f"{o.minutes:.1f}", final

    print(
        f"# {HOURS:g} h per run, a ceiling of {args.cap_share:g} of the best static count (at "
        f"least 1) {shape.describe()}, {args.seeds} seeds (the policy "
        "benchmark's conditions), start 4, max 32; after the lift: score (worst seed, vs the "
        "best static count; 0 (raw) when its time-averaged constraint broke), rescales (most), "
        "minutes from the lift to the count held before the cap (worst), final counts"
        + ("" if shape.told else "; asks: passes under a cap that asked for more than ran (most)")
    )
    asks = () if shape.told else ("asks",)
    head = ("objective", "curve", "best", "cap", "score", "rescales", *asks, "min back", "final",
            "as chosen: score", "rescales", *asks, "min back", "final")  # fmt: skip
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
    else:
        print("  ".join(f"{h:>11}" for h in head))
    for objective, curve_name, best, new, old in rows:
        values = (
            objective,
            curve_name,
            str(best),
            str(cap_for(best, args.cap_share)),
            *cell(new),
            *cell(old),
        )
        if args.markdown:
            print("| " + " | ".join(values) + " |")
        else:
            print("  ".join(f"{v:>11}" for v in values))
    met = sum(1 for *_, new, _ in rows if new.meets_goal())
    was = sum(1 for *_, old in rows if old.meets_goal())
    worst = min(rows, key=lambda row: row[3].score)
    never = sum(1 for *_, new, _ in rows if new.minutes == float("inf"))
    never_old = sum(1 for *_, old in rows if old.minutes == float("inf"))
    print(
        f"# {met} of {len(rows)} cases >= {GOAL_SHARE:g} with <= {GOAL_RESCALES} rescales after "
        f"the lift (as chosen: {was}); never back: {never} (as chosen: {never_old}); worst "
        f"{worst[3].score:.3f} ({worst[0]}/{worst[1]}); {time.monotonic() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
