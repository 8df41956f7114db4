"""The autoscaling policy when the cluster takes the job's GPUs for a while: forced moves.

On a shared cluster, cluster arbitration (or a higher-priority job) caps a job below the count
it chose, and lifts the cap later. A forced move is not a choice: the job must go back once the
cap lifts, without the confidence a chosen return needs (the issue's shared-cluster job sat at
1 GPU for 80 hours where 40 were efficient). Every case of the main table
(``benchmarks/policy.py``: the curves, objectives and per-seed conditions) starts at 4
workers and runs 4 h; from 1.5 h to 2 h a ceiling of half the best static count (at least 1)
holds it down. Scored on the 2 h after the cap lifts against the best static count (samples,
0 when the time-averaged constraint broke), with the rescales after the lift and the minutes
from the lift until the job runs the count it held when the cap came (or more) again.

Beside it, the same policy remembering the forced move as its own choice (the job's
autoscaler with the forced and chosen moves not told apart), as it was before.

Run: ``.venv/bin/python benchmarks/forced.py [--seeds 3] [--markdown] [--cases GLOB]`` (about
3 min).
"""

from __future__ import annotations

import argparse
import fnmatch
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
CAP_AT = 1.5 * 3600.0
CAP_SECONDS = 0.5 * 3600.0
MAX_REPLICAS = 32


class _Chosen(JobAutoscaler):
    """The baseline: a move the ceiling forced is remembered as the job's own choice."""

    def _remember_move(self, rec: Recommendation, current: int, now: float) -> None:
        super()._remember_move(replace(rec, forced=False), current, now)


@dataclass(frozen=True)
class Outcome:
    score: float  # worst seed, after the lift
    raw: float  # the same seed's samples ratio before the constraint is applied
    rescales: int  # most over seeds, after the lift
    minutes: float  # worst seed: lift to the count held before the cap again (inf: never)
    final: tuple[int, ...]  # final counts over seeds

    def meets_goal(self) -> bool:
        return self.score >= GOAL_SHARE and self.rescales <= GOAL_RESCALES


def cap_for(best: int) -> int:
    """The ceiling of a case: half its best static count, at least one replica."""
    return max(1, best // 2)


def run_case(curve_name: str, objective: str, seeds: int, chosen: bool) -> tuple[int, Outcome]:
    curve = load_case_curve(curve_name)
    spec = make_spec(objective, 4, 1, curve_max(curve, MAX_REPLICAS), 30)
    best = hindsight(curve, spec).replicas
    ceiling = Ceiling(CAP_AT, CAP_SECONDS, cap_for(best))
    scores: list[tuple[float, float]] = []
    rescales, minutes, finals = [], [], []
    for seed in range(seeds):
        controller = (_Chosen if chosen else JobAutoscaler)(spec)
        r = run_seed(curve, spec, seed, controller, ceiling=ceiling)
        scores.append((r.score.samples_ratio, r.score.raw_samples_ratio))
        rescales.append(r.score.rescales)
        held = next(p.replicas for p in reversed(r.points) if p.time < CAP_AT)
        back = [p.time for p in r.points if p.time >= ceiling.lifts_at and p.replicas >= held]
        minutes.append((back[0] - ceiling.lifts_at) / 60 if back else float("inf"))
        finals.append(r.final_replicas)
    worst = min(scores)
    return best, Outcome(*worst, max(rescales), max(minutes), tuple(sorted(set(finals))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--cases", default="*", help="glob over 'objective/curve'")
    args = parser.parse_args(argv)
    started = time.monotonic()
    rows = []
    for objective in OBJECTIVES:
        for curve_name in (*CURVE_NAMES, *MEASURED):
            if not fnmatch.fnmatch(f"{objective}/{curve_name}", args.cases):
                continue
            best, new = run_case(curve_name, objective, args.seeds, chosen=False)
            _, old = run_case(curve_name, objective, args.seeds, chosen=True)
            rows.append((objective, curve_name, best, new, old))

    def cell(o: Outcome) -> tuple[str, str, str, str]:
        final = "/".join(map(str, o.final))
        score = f"{o.score:.3f}" if o.score or not o.raw else f"0 ({o.raw:.3f})"
        return score, str(o.rescales), f"{o.minutes:.1f}", final

    print(
        f"# {HOURS:g} h per run, a ceiling of half the best static count from "
        f"{CAP_AT / 3600:g} h for {CAP_SECONDS / 60:g} min, {args.seeds} seeds (the policy "
        "benchmark's conditions), start 4, max 32; after the lift: score (worst seed, vs the "
        "best static count; 0 (raw) when its time-averaged constraint broke), rescales (most), "
        "minutes from the lift to the count held before the cap (worst), final counts"
    )
    head = ("objective", "curve", "best", "cap", "score", "rescales", "min back", "final",
            "as chosen: score", "rescales", "min back", "final")  # fmt: skip
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
    else:
        print("  ".join(f"{h:>11}" for h in head))
    for objective, curve_name, best, new, old in rows:
        values = (objective, curve_name, str(best), str(cap_for(best)), *cell(new), *cell(old))
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
