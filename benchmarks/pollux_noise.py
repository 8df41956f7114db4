"""How noisy are step times measured on a real GPU cluster? The benchmark's noise, checked.

Why this script exists: ``benchmarks/policy.py`` runs its seeds under 2-10 % relative noise
per scrape, a figure we assumed. The only real-cluster measurements in this repository are
the step times Pollux (OSDI'21) published for a 16 x 4-GPU cluster
(``benchmarks/data/pollux``); they were measured once per placement and local batch, so
their scatter about a smooth curve in the batch says how far one averaged measurement
strays (:func:`trainscale.testbed.pollux.step_time_scatter`: each step time against the
line through its two neighbouring batches; curvature counts as scatter, and an offset a
placement's batches share cancels).
Inversions are neighbouring batches where the larger one was measured faster, which only
noise (or a kernel choice changing with the batch) explains.

Run:  .venv/bin/python benchmarks/pollux_noise.py
"""

from __future__ import annotations

import sys

from trainscale.testbed.pollux import BENCHMARK_BATCHES, read_app, step_time_scatter


def main() -> int:
    print(
        "| model | step times compared | scatter of one measurement | 90th percentile | "
        "larger batch measured faster |"
    )
    print("|---|---|---|---|---|")
    for name in BENCHMARK_BATCHES:
        scatter = step_time_scatter(read_app(name))
        if scatter is None:
            continue
        print(
            f"| {name} | {scatter.points} | {scatter.relative:.1%} | {scatter.p90:.1%} | "
            f"{scatter.inversions} of {scatter.pairs} |"
        )
    print("# scatter: robust (MAD) relative deviation of a step time from the line through")
    print("# its neighbouring local batches, per measurement; benchmarks/policy.py assumes 2-10 %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
