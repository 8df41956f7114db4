"""Cluster benchmark: jobs sharing GPUs under five policies, in a discrete-time simulator.

Why this script exists: issue 10 claims that dividing a shared cluster's GPUs by what each
job would gain beats both fixed sizes and per-job autoscaling. The simulator, its workload
generator, trace reader and policies are :mod:`trainscale.operator.autoscaling.workload` (read
its docstring: the job model, the policies, what the arbiter is told and why that does not
flatter it); ``trainscale simulate --workload`` runs the same code on one workload. This
script replays generated workloads (default 160 jobs over 8 hours on 16 nodes x 4 GPUs) or a
CSV trace under each policy, reports the worst case over the seeds for each policy, and
checks the issue's goal: average JCT at least 1.5x better than both ``fixed`` and ``per-job``
(and, for information, ``per-job-oracle``), p99 no worse than ``fixed``, no job unfinished;
each ratio is taken seed by seed and the worst is shown.

``--pollux 1 2 3`` replays Pollux's published workloads instead (OSDI'21: 160 jobs each over
8 hours, from Microsoft's Philly trace) with the speedup curves measured on its 16 x 4-GPU
cluster (:mod:`trainscale.testbed.pollux_trace` says how a row becomes a job and what is
approximated); each workload plays the part of a seed (its number seeds the model errors).

Run:  .venv/bin/python benchmarks/cluster.py [--seeds 1 2 3] [--jobs 160] [--markdown] [--per-seed]
      .venv/bin/python benchmarks/cluster.py --pollux 1 2 3 4 5 6 7 8 [--restart 30] [--markdown]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence

from trainscale.operator.autoscaling.arbiter import ArbiterSettings
from trainscale.operator.autoscaling.workload import (
    POLICIES,
    TIER_HEADER,
    Cluster,
    Job,
    Result,
    Tier,
    floor_bound_jct,
    generate,
    read_trace,
    render,
    row,
    simulate,
    tier_row,
    tiers,
    with_priorities,
    worst,
    worst_tier,
)
from trainscale.testbed.pollux_trace import (
    RESTART_SECONDS,
    ScalingSource,
    load_workload,
    measured_scaling,
)


def print_checks(
    by_policy: dict[str, list[Result]], results: dict[str, Result], bounds: Sequence[float]
) -> None:
    """The issue's goal, seed by seed (the worst seed decides), and beside each ratio the
    most any policy honouring the same efficiency floors could reach on that worst seed
    (the baseline over :func:`floor_bound_jct`'s average)."""
    ts = results["trainscale"]
    print(f"arbiter time per run (worst): {ts.decide_seconds:.1f} s")
    checks: list[tuple[str, bool]] = []
    for base in ("fixed", "per-job", "per-job-oracle"):
        if base in results:
            # the ratio per seed, worst seed
            ratios = [
                b.avg_jct / t.avg_jct
                for b, t in zip(by_policy[base], by_policy["trainscale"], strict=True)
            ]
            worst_seed = ratios.index(min(ratios))
            reachable = by_policy[base][worst_seed].avg_jct / bounds[worst_seed]
            checks.append((f"avg JCT {min(ratios):.2f}x better than {base} (>= 1.5; at most "
                           f"{reachable:.2f}x reachable on that seed within the floors)",
                           min(ratios) >= 1.5))  # fmt: skip
    if "fixed" in results:
        ok = all(
            t.p99_jct <= f.p99_jct
            for f, t in zip(by_policy["fixed"], by_policy["trainscale"], strict=True)
        )
        checks.append(("p99 JCT no worse than fixed on every seed", ok))
    checks.append(("no unfinished job", ts.unfinished == 0))
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}: {text}")


def count_range(counts: Sequence[int]) -> str:
    """``8`` when every seed has 8, else ``lowest-highest``."""
    low, high = min(counts), max(counts)
    return str(low) if low == high else f"{low}-{high}"


def print_tiers(
    by_policy: dict[str, list[Result]], by_tier: dict[str, list[list[Tier]]], markdown: bool
) -> None:
    """Each policy's jobs by priority, the highest first, worst seed metric by metric, and
    the running jobs it stopped (preempted) to wait again."""
    rows = []
    for policy, runs in by_tier.items():
        for seeds in zip(*runs, strict=True):  # one priority's tier, seed by seed
            rows.append(tier_row(policy, worst_tier(seeds), count_range([t.jobs for t in seeds])))
    print("by priority, worst seed:")
    print(render(rows, markdown, header=TIER_HEADER))
    stops = ", ".join(f"{p} {max(r.stops for r in rs):,}" for p, rs in by_policy.items())
    print(f"running jobs stopped (preempted) to wait again, worst seed: {stops}")


def load_jobs(args: argparse.Namespace, seed: int, scaling: ScalingSource | None) -> list[Job]:
    """The jobs of one run: Pollux's workload ``seed`` (with ``scaling``), the trace, or
    generated with ``seed``."""
    if scaling is not None:
        total = args.nodes * args.gpus_per_node
        jobs = load_workload(seed, scaling, total_gpus=total, restart=args.restart)
        if args.urgent or args.low:  # Pollux's workloads have one priority: draw them
            jobs = with_priorities(jobs, seed, urgent=args.urgent, low=args.low)
        return jobs
    if args.trace:
        return read_trace(args.trace)
    return generate(
        seed, args.jobs, args.hours, args.gpus_per_node, urgent=args.urgent, low=args.low
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--jobs", type=int, default=160)
    parser.add_argument("--hours", type=float, default=8.0, help="arrival window")
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--gpus-per-node", type=int, default=4)
    parser.add_argument("--interval", type=float, default=60.0, help="seconds per decision")
    parser.add_argument("--trace", help="CSV trace instead of generated jobs (see --help)")
    parser.add_argument(
        "--pollux",
        type=int,
        nargs="+",
        metavar="N",
        help="Pollux's workload-N.csv (1-8) with measured curves, instead",
    )
    parser.add_argument("--restart", type=float, default=RESTART_SECONDS,
                        help="seconds each start or resize costs a --pollux job")  # fmt: skip
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    parser.add_argument("--markdown", action="store_true")
    defaults = ArbiterSettings()
    parser.add_argument("--fairness-power", type=float, default=defaults.fairness_power)
    parser.add_argument("--restart-horizon", type=float, default=defaults.restart_horizon_seconds)
    parser.add_argument("--resize-margin", type=float, default=defaults.resize_margin)
    parser.add_argument("--per-seed", action="store_true", help="also print each seed's table")
    parser.add_argument("--pools", type=int, default=1,
                        help="node pools (the nodes split evenly, in order)")  # fmt: skip
    parser.add_argument("--restricted", type=float, default=0.0,
                        help="share of the jobs whose template admits one pool only")  # fmt: skip
    parser.add_argument("--cpu-per-node", type=int, default=0, metavar="CORES",
                        help="CPUs per node, which the workers' requests must fit beside"
                        " their GPUs (0: CPU not modelled)")  # fmt: skip
    parser.add_argument("--cpu-heavy", type=float, default=0.0, metavar="SHARE",
                        help="share of the jobs whose workers ask half a node's CPU (the"
                        " others: half a GPU's share)")  # fmt: skip
    parser.add_argument("--urgent", type=float, default=0.0, metavar="SHARE",
                        help="share of the generated (or --pollux) jobs with a higher priority"
                        " (their PriorityClass preempts, in every policy: the arbiter's, or"
                        " the scheduler's for the baselines' pods)")  # fmt: skip
    parser.add_argument("--low", type=float, default=0.0, metavar="SHARE",
                        help="share of the other generated (or --pollux) jobs with a lower"
                        " priority (batch work; with --urgent, three priorities)")  # fmt: skip
    parser.add_argument("--arbitration-preemption", choices=("grow", "start"), default="grow",
                        help="as the operator's flag: trainscale's preempting jobs stop"
                        " lower-priority ones to grow too, or only to start")  # fmt: skip
    parser.add_argument("--no-preemption", action="store_true",
                        help="the PriorityClasses say preemptionPolicy: Never (a higher"
                        " priority only goes first)")  # fmt: skip
    parser.add_argument("--placed", action="store_true",
                        help="a job's throughput follows the nodes its workers span (its"
                        " cliff once they span two), not its count packed (the parametric"
                        " family; a measured curve has packed rows only)")  # fmt: skip
    parser.add_argument("--apart", type=float, default=0.0, metavar="SHARE",
                        help="share of the jobs whose workers may not share a node (a required"
                        " pod anti-affinity to their own workers)")  # fmt: skip
    parser.add_argument("--told-length", action="store_true",
                        help="each job says the samples it has left (our trainer's gauge): its"
                        " autoscaler and the arbiter charge a restart over the time it has"
                        " left where that is shorter")  # fmt: skip
    parser.add_argument("--told-factor", type=float, default=1.0, metavar="F",
                        help="with --told-length: each job says its configured total is F"
                        " times its real work (2: it stops early, at half its epochs; 0.5:"
                        " it runs twice what it says)")  # fmt: skip
    parser.add_argument("--hide", choices=["pools", "order", "plan", "cpu", "across", "apart"],
                        nargs="+",
                        default=[],
                        help="ablations: keep from the arbiter the jobs' pools, or where their"
                        " workers run by index (what it did not read before); 'plan': new"
                        " workers do not prefer the node the arbiter planned for them (the"
                        " scheduler's packing alone, as before); 'cpu': the nodes' CPU and"
                        " the workers' requests; 'across' (with --placed): each job's"
                        " throughput when its workers span nodes; 'apart': the bound on"
                        " workers per node (the arbiter and the per-job autoscaler)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.told_factor != 1.0 and not args.told_length:
        parser.error("--told-factor needs --told-length (the jobs say nothing otherwise)")
    if not args.told_factor > 0:
        parser.error(f"--told-factor must be > 0, got {args.told_factor}")
    return args


def describe_nodes(args: argparse.Namespace) -> str:
    """What the nodes hold the jobs to, in words (pools, CPU, workers one per node)."""
    words = ""
    if args.pools > 1:
        words += f", {args.pools} node pools, {args.restricted:g} of the jobs held to one"
    if args.cpu_per_node:
        words += (
            f", {args.cpu_per_node} CPUs per node, {args.cpu_heavy:g} of the jobs' workers"
            " asking half of them"
        )
    if args.apart:
        words += f", {args.apart:g} of the jobs' workers one per node"
    return words


def describe_source(args: argparse.Namespace) -> str:
    """The workload and cluster in words, for the report's heading."""
    source = f"trace {args.trace}" if args.trace else f"{args.jobs} generated jobs"
    if args.pollux:
        source = f"Pollux workloads (160 jobs each, restarts {args.restart:g} s)"
    source += describe_nodes(args)
    if args.low:
        source += f", {args.low:g} of them low-priority batch work"
    if args.urgent or args.low:
        if args.urgent:
            source += f", {args.urgent:g} of them urgent (a higher priority)"
        if args.no_preemption:
            source += " whose classes never preempt"
        elif args.arbitration_preemption == "start":
            source += ", trainscale preempting only to start"
    if args.placed:
        source += ", throughput where the workers run"
    source += "".join(
        " (new workers not told the arbiter's plan)"
        if hidden == "plan"
        else f" (the arbiter not told {'the throughput across nodes' if hidden == 'across' else hidden})"
        for hidden in args.hide
    )
    if args.told_length:
        source += ", each job saying the samples it has left"
        if args.told_factor != 1.0:
            source += f" (x{args.told_factor:g} of its real work)"
    return source


def print_waste(args: argparse.Namespace, results: dict[str, Result]) -> None:
    """The workers granted that found no room (on pools, with CPU, or one per node), and
    the GPU time held under the jobs' efficiency floors, worst seed."""
    if args.pools > 1 or args.cpu_per_node or args.apart:
        room = "no GPU with its CPU on their nodes" if args.cpu_per_node else "no GPU on their pool"
        if args.apart:
            room = "no GPU on a node of their own or their pool"
        print(f"workers granted that found {room} (left Pending), summed over"
              " steps, worst seed: "
              + ", ".join(f"{p} {r.unplaced:,}" for p, r in results.items()))  # fmt: skip
    print("GPU-h held at a true efficiency under the jobs' floors, worst seed: "
          + ", ".join(f"{p} {r.below_floor_hours:,.1f}" for p, r in results.items()))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    by_policy: dict[str, list[Result]] = {p: [] for p in args.policies}
    by_tier: dict[str, list[list[Tier]]] = {p: [] for p in args.policies}
    bounds: list[float] = []
    seeds = args.pollux or ([0] if args.trace else args.seeds)
    scaling = measured_scaling() if args.pollux else None
    for seed in seeds:
        jobs = load_jobs(args, seed, scaling)
        last = max(j.arrival for j in jobs)
        horizon = last + (48 if args.pollux else 24) * 3600.0  # imagenet runs ~11 h
        probe = Cluster(args.nodes, args.gpus_per_node, args.interval, seed,
                        pools=args.pools, restricted=args.restricted, apart=args.apart,
                        placed_throughput=args.placed)  # fmt: skip
        bounds.append(statistics.fmean(floor_bound_jct(j, probe) for j in jobs))
        for policy in args.policies:
            settings = ArbiterSettings(
                args.fairness_power,
                args.restart_horizon,
                args.resize_margin,
                preempt_to_grow=args.arbitration_preemption == "grow",
            )
            cluster = Cluster(args.nodes, args.gpus_per_node, args.interval, seed, settings,
                              pools=args.pools, restricted=args.restricted,
                              tell_pools="pools" not in args.hide,
                              tell_order="order" not in args.hide,
                              tell_plan="plan" not in args.hide,
                              cpu_per_node=1000 * args.cpu_per_node,
                              cpu_heavy=args.cpu_heavy,
                              tell_cpu="cpu" not in args.hide,
                              preempts=not args.no_preemption,
                              placed_throughput=args.placed,
                              tell_across="across" not in args.hide,
                              apart=args.apart,
                              tell_apart="apart" not in args.hide,
                              tell_time_left=args.told_length,
                              told_length_factor=args.told_factor)  # fmt: skip
            by_policy[policy].append(simulate(policy, jobs, cluster, horizon))
            by_tier[policy].append(tiers(by_policy[policy][-1], jobs, probe))
    results = {p: worst(rs) for p, rs in by_policy.items()}
    if args.per_seed:
        for i, seed in enumerate(seeds):
            print(f"seed {seed}:")
            print(render([row(rs[i]) for rs in by_policy.values()], args.markdown))
            print(f"no-contention bound within the efficiency floors: avg JCT {bounds[i]:,.0f} s")
    source = describe_source(args)
    print(
        f"{source} over {args.hours:g} h on {args.nodes} nodes x {args.gpus_per_node} GPUs,"
        f" decisions every {args.interval:g} s; worst case over"
        f" {'workloads' if args.pollux else 'seeds'} {seeds}:"
    )
    print(render([row(r) for r in results.values()], args.markdown))
    if len(seeds) > 1:
        means = ", ".join(
            f"{p} {statistics.fmean(r.avg_jct for r in rs):,.0f}" for p, rs in by_policy.items()
        )
        print(f"avg JCT s, mean over {'workloads' if args.pollux else 'seeds'}: {means}")
    print_waste(args, results)
    if any(len(t[0]) > 1 for t in by_tier.values()):
        print_tiers(by_policy, by_tier, args.markdown)
    if "trainscale" in results:
        print_checks(by_policy, results, bounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
