"""Write one of Pollux's published workloads as a trace for ``trainscale simulate --workload``.

Why this script exists: ``benchmarks/cluster.py --pollux N`` replays Pollux's (OSDI'21)
workloads with the speedup curves its authors measured, but only inside the benchmark. A
platform engineer who wants to look at one of them with the product's own CLI (its per-job
story, its plot of the allocations) needs it as a trace CSV; this writes the trace
(``DIR/trace.csv``) and the measured curves its rows name (``DIR/curves/*.csv``, the
simulator's curve format), with the rules of :mod:`trainscale.testbed.pollux_trace` (the
same jobs ``--pollux N`` runs).

Run:  .venv/bin/python benchmarks/pollux_trace.py --workload 2 --output /tmp/pollux-2
      .venv/bin/trainscale simulate --workload /tmp/pollux-2/trace.csv --plot /tmp/pollux-2.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainscale.testbed.pollux_trace import (
    RESTART_SECONDS,
    TRACE_FILE,
    load_workload,
    measured_scaling,
    read_workload,
    trace_files,
    workload_path,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", type=int, required=True, help="N of workload-N.csv (1-8)")
    parser.add_argument("--output", type=Path, required=True, help="directory to write into")
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--gpus-per-node", type=int, default=4)
    parser.add_argument("--restart", type=float, default=RESTART_SECONDS,
                        help="seconds each start or resize costs")  # fmt: skip
    args = parser.parse_args(argv)
    scaling = measured_scaling()
    total = args.nodes * args.gpus_per_node
    jobs = load_workload(args.workload, scaling, total_gpus=total, restart=args.restart)
    files = trace_files(read_workload(workload_path(args.workload)), jobs, scaling)
    for name, text in files.items():
        path = args.output / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    trace = args.output / TRACE_FILE
    print(f"wrote {trace} ({files[TRACE_FILE].count(chr(10)) - 1} jobs) and {len(files) - 1}"
          f" curves under {args.output}; run:\n  trainscale simulate --workload {trace}"
          f" --nodes {args.nodes} --gpus-per-node {args.gpus_per_node}"
          f" --seed {args.workload} --plot {args.output / 'allocations.png'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
