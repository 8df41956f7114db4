"""``trainscale simulate --workload``: what cluster arbitration would do with many jobs.

Why this module exists: before a platform team lets trainscale divide a shared cluster's GPUs,
they want to see it on their own mix of jobs — a trace of theirs, or a generated one — next to
what they run today (fixed sizes) and per-job autoscaling. This replays the workload with
:func:`trainscale.operator.autoscaling.workload.simulate` (the code ``benchmarks/cluster.py``
uses), prints the policies' completion times side by side and each job's story under
arbitration, and optionally plots the GPUs each job holds over time (matplotlib, imported only
for ``--plot``). A cluster split into node pools (``--pools``) holds each job to the pool its
trace row names (``pool``), or, generated, a share of the jobs (``--restricted``) to one pool
drawn per job. With CPU beside the GPUs (``--cpu-per-node``), each worker also needs the CPUs
its trace row asks (``cpu_per_worker``), or, generated, half a node's for a share of the jobs
(``--cpu-heavy``) and half a GPU's share for the rest, on its node. Where jobs have more than
one priority (a trace's ``priority`` column, or ``--urgent``: a share of the generated jobs
given a higher one), the completion times are also shown by priority, with the running jobs
each policy stopped (preempted) to wait again: the baselines' pods preempt as the default
scheduler's do, and trainscale's arbiter as the operator does. With ``--placed`` each job's
throughput is that of the nodes its workers span (the cliff of its curve once they span
two), as on a real cluster, not its count's packed. Jobs whose workers may not share a node
(a trace's ``apart`` column, or ``--apart``: a share of the generated jobs) get one worker per
node under every policy, as their required pod anti-affinity has the scheduler do.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trainscale.operator.app.simulate import SimulateError, load_pyplot
from trainscale.operator.autoscaling.workload import (
    POLICIES,
    TIER_HEADER,
    Cluster,
    Job,
    Result,
    TraceError,
    generate,
    read_trace,
    render,
    row,
    simulate,
    tier_row,
    tiers,
)

GENERATED = "generated"
DEFAULT_POLICIES = ("fixed", "per-job", "trainscale")


class WorkloadError(SimulateError):
    """A flag or a trace that cannot be simulated; the message names it."""


@dataclass(frozen=True)
class WorkloadOptions:
    """The flags of ``trainscale simulate --workload``."""

    workload: str
    nodes: int = 16
    gpus_per_node: int = 4
    jobs: int = 160
    hours: float = 8.0
    interval: int = 60
    seed: int = 1
    policies: tuple[str, ...] = DEFAULT_POLICIES
    plot: str | None = None
    pools: int = 1
    restricted: float = 0.0
    cpu_per_node: int = 0  # CPUs per node; 0: CPU not modelled
    cpu_heavy: float = 0.0
    urgent: float = 0.0  # share of the generated jobs with a higher priority
    low: float = 0.0  # share of the others with a lower priority
    placed: bool = False  # throughput follows the nodes a job's workers span
    apart: float = 0.0  # share of the generated jobs whose workers may not share a node


def _check_flags(options: WorkloadOptions) -> None:
    """Raises :class:`WorkloadError` naming the first flag out of range."""
    if options.nodes < 1 or options.gpus_per_node < 1:
        raise WorkloadError("--nodes and --gpus-per-node must be >= 1")
    if options.interval < 1:
        raise WorkloadError(f"--interval must be >= 1 second, got {options.interval}")
    if not 1 <= options.pools <= options.nodes:
        raise WorkloadError(
            f"--pools must be between 1 and --nodes ({options.nodes}), got {options.pools}"
        )
    if options.cpu_per_node < 0:
        raise WorkloadError(f"--cpu-per-node must be >= 0, got {options.cpu_per_node}")
    generated = options.workload == GENERATED
    _check_share("--restricted", options.restricted, generated and options.pools > 1,
                 "--pools 2 or more", "pool in its pool column")  # fmt: skip
    _check_share("--cpu-heavy", options.cpu_heavy, generated and options.cpu_per_node > 0,
                 "--cpu-per-node", "CPUs per worker in its cpu_per_worker column")  # fmt: skip
    _check_share("--urgent", options.urgent, generated, "", "priority in its priority column")
    _check_share("--low", options.low, generated, "", "priority in its priority column")
    _check_share("--apart", options.apart, generated, "", "rule in its apart column")
    unknown = [p for p in options.policies if p not in POLICIES]
    if unknown or "trainscale" not in options.policies:
        raise WorkloadError(
            f"--policies must include trainscale and be among {', '.join(POLICIES)};"
            f" got {', '.join(options.policies)}"
        )


def _check_share(flag: str, share: float, usable: bool, needs: str, column: str) -> None:
    """A share of a generated workload's jobs (``--restricted``, ``--cpu-heavy``,
    ``--urgent``, ``--low``): in [0, 1], and given only where it applies (``usable``: a generated
    workload, with ``needs`` where not empty)."""
    if not 0.0 <= share <= 1.0:
        raise WorkloadError(f"{flag} must be a share in [0, 1], got {share}")
    if share > 0 and not usable:
        needs = f"{needs} and " if needs else ""
        raise WorkloadError(
            f"{flag} needs {needs}a generated workload (a trace names each job's {column})"
        )


def load_workload(options: WorkloadOptions) -> list[Job]:
    """The jobs: generated (``--jobs`` over ``--hours``, ``--seed``) or read from a CSV.

    Raises:
        WorkloadError: a bad flag or an unreadable trace, naming it.
    """
    _check_flags(options)
    if options.workload == GENERATED:
        if options.jobs < 1 or options.hours <= 0:
            raise WorkloadError("--jobs must be >= 1 and --hours > 0 for a generated workload")
        return generate(
            options.seed,
            options.jobs,
            options.hours,
            options.gpus_per_node,
            urgent=options.urgent,
            low=options.low,
        )
    try:
        jobs = read_trace(options.workload, pools=options.pools)
    except OSError as exc:
        raise WorkloadError(f"--workload {options.workload}: {exc.strerror}") from None
    except TraceError as exc:
        raise WorkloadError(f"--workload {exc}") from None
    _check_cpu(options, jobs)
    for job in jobs:
        if job.apart and job.min_replicas > options.nodes:
            raise WorkloadError(
                f"--workload {options.workload}: job {job.name} keeps its workers apart and "
                f"needs {job.min_replicas} of them, more than the {options.nodes} nodes "
                "(--nodes): it could never run"
            )
    return jobs


def _check_cpu(options: WorkloadOptions, jobs: Sequence[Job]) -> None:
    """A trace's CPUs per worker need ``--cpu-per-node``, and must fit on a node."""
    asking = [j for j in jobs if j.cpu is not None]
    if asking and options.cpu_per_node < 1:
        raise WorkloadError(
            f"--workload {options.workload}: job {asking[0].name} asks cpu_per_worker "
            f"{asking[0].cpu:g}; give the nodes' CPUs with --cpu-per-node"
        )
    for job in asking:
        if job.cpu is not None and job.cpu > options.cpu_per_node:
            raise WorkloadError(
                f"--workload {options.workload}: job {job.name} asks cpu_per_worker "
                f"{job.cpu:g}, more than a node's {options.cpu_per_node} (--cpu-per-node): "
                "it could never run"
            )


def make_cluster(options: WorkloadOptions) -> Cluster:
    """The simulated cluster of the flags (nodes, GPUs, decisions, seed, pools, CPU,
    throughput where the workers run)."""
    return Cluster(
        options.nodes,
        options.gpus_per_node,
        float(options.interval),
        options.seed,
        pools=options.pools,
        restricted=options.restricted,
        cpu_per_node=1000 * options.cpu_per_node,
        cpu_heavy=options.cpu_heavy,
        placed_throughput=options.placed,
        apart=options.apart,
    )


def run_policies(options: WorkloadOptions, jobs: Sequence[Job]) -> dict[str, Result]:
    """Each policy's replay of the workload, until every job finished (24 h past the last
    arrival at most: a job still running then is reported unfinished)."""
    horizon = max(j.arrival for j in jobs) + 24 * 3600.0
    results = {}
    for policy in options.policies:
        results[policy] = simulate(policy, jobs, make_cluster(options), horizon)
    return results


def _histories(
    result: Result, finish: Mapping[str, float]
) -> tuple[dict[str, float], dict[str, int], dict[str, list[int]]]:
    """From ``result``'s timeline, per job: when it first held GPUs, the most it held, and
    its sizes in order (0 where it stopped before it finished: preempted or queued again)."""
    first: dict[str, float] = {}
    most: dict[str, int] = {}
    sizes: dict[str, list[int]] = {}
    for now, held, _ in result.timeline:
        for name, workers in held.items():
            first.setdefault(name, now)
            most[name] = max(most.get(name, 0), workers)
            sizes.setdefault(name, [])
        for name, seen in sizes.items():
            workers = held.get(name, 0)
            if workers == 0 and finish.get(name, math.inf) <= now:
                continue  # finished, not stopped
            if not seen or seen[-1] != workers:
                seen.append(workers)
    return first, most, sizes


def job_lines(result: Result, jobs: Sequence[Job], cluster: Cluster) -> Iterator[str]:
    """Each job under ``result``'s policy: when it arrived, first ran and finished, its
    completion time, the most GPUs it held and how its size changed (0: stopped after it
    had started, preempted or queued again); on node pools, the pool it may use (``any``:
    every node); with CPU modelled, its workers' CPUs; where jobs have more than one
    priority, its own."""
    finish = dict(result.finishes)
    first, most, sizes = _histories(result, finish)
    pools = cluster.pools > 1
    cpus = cluster.cpu_per_node > 0
    priorities = len({j.priority for j in jobs}) > 1
    extra = (f"{'pool':>6}" if pools else "") + (f"{'CPUs':>6}" if cpus else "")
    extra += f"{'priority':>9}" if priorities else ""
    yield f"{'job':<12}{'arrival':>9}{'waited':>8}{'JCT s':>9}{'GPUs (most)':>12}{extra}  sizes"
    for job in jobs:
        end = finish.get(job.name)
        waited = first.get(job.name, math.inf) - job.arrival
        jct = f"{end - job.arrival:,.0f}" if end is not None else "unfinished"
        shown = " > ".join(str(n) for n in sizes.get(job.name, [])[:8])
        if len(sizes.get(job.name, [])) > 8:
            shown += " > ..."
        pool = ""
        if pools:
            index = cluster.pool_of(job)
            pool = f"{'any' if index is None else index:>6}"
        if cpus:
            pool += f"{cluster.cpu_of(job) / 1000:>6g}"
        if priorities:
            pool += f"{job.priority:>9}"
        yield (
            f"{job.name:<12}{job.arrival:>9,.0f}{waited:>8,.0f}{jct:>9}"
            f"{most.get(job.name, 0):>12}{pool}  {shown}"
        )


def write_plot(results: dict[str, Result], options: WorkloadOptions, path: str) -> None:
    """GPUs held per job over time, one panel per policy, with the jobs waiting.

    Raises:
        SimulateError: when matplotlib is missing.
    """
    plt = load_pyplot()
    total = options.nodes * options.gpus_per_node
    fig, axes = plt.subplots(
        len(results), 1, sharex=True, figsize=(11, 3.2 * len(results)), constrained_layout=True
    )
    axes = list(axes) if len(results) > 1 else [axes]
    fig.suptitle(
        f"trainscale simulate --workload {options.workload}: {options.nodes} nodes x "
        f"{options.gpus_per_node} GPUs; GPUs held per job (one colour per job) and jobs waiting",
        fontsize=11,
    )
    names = sorted({n for r in results.values() for _, held, _ in r.timeline for n in held})
    colours = plt.get_cmap("tab20")
    most_waiting = max((w for r in results.values() for _, _, w in r.timeline), default=0)
    for ax, (policy, result) in zip(axes, results.items(), strict=True):
        hours = [t / 3600 for t, _, _ in result.timeline]
        stacks = [[held.get(n, 0) for _, held, _ in result.timeline] for n in names]
        ax.stackplot(
            hours,
            stacks,
            step="post",
            colors=[colours(i % 20) for i in range(len(names))],
            labels=names,
        )
        if len(names) <= 20 and ax is axes[0]:
            ax.legend(loc="upper left", fontsize=8, ncols=min(len(names), 5))
        ax.axhline(total, color="black", lw=0.8, ls="--")
        ax.set_ylim(0, total * 1.05)
        ax.set_ylabel("GPUs")
        ax.set_title(
            f"{policy}: average JCT {result.avg_jct:,.0f} s, p99 {result.p99_jct:,.0f} s, "
            f"{result.rescales} rescales",
            fontsize=10,
            loc="left",
        )
        waiting = ax.twinx()
        waiting.plot(hours, [w for _, _, w in result.timeline], color="tab:red", lw=1)
        waiting.set_ylabel("jobs waiting", color="tab:red")
        waiting.set_ylim(0, max(1, most_waiting) * 1.1)
        waiting.yaxis.get_major_locator().set_params(integer=True)
    axes[-1].set_xlabel("hours")
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run_workload(options: WorkloadOptions, out: Any) -> int:
    """Run the workload under each policy, print the comparison and the jobs, plot.

    Raises:
        SimulateError: on a bad flag or trace, naming it (a :class:`WorkloadError`), or when
            a plot is asked for without matplotlib.
    """
    jobs = load_workload(options)
    results = run_policies(options, jobs)
    source = (
        f"{options.jobs} generated jobs over {options.hours:g} h, seed {options.seed}"
        if options.workload == GENERATED
        else f"{len(jobs)} jobs from {options.workload}"
    )
    cluster = make_cluster(options)  # which jobs are held to a pool, for the lines below
    pools = ""
    if options.pools > 1:
        held = sum(1 for j in jobs if cluster.pool_of(j) is not None)
        pools = f" in {options.pools} node pools ({held} of the jobs held to one)"
    if options.cpu_per_node:
        pools += f", {options.cpu_per_node} CPUs per node"
    if options.placed:
        pools += ", throughput where the workers run"
    apart = sum(1 for j in jobs if cluster.apart_of(j))
    if apart:
        pools += f", {apart} of the jobs' workers one per node"
    print(
        f"# {source}, on {options.nodes} nodes x {options.gpus_per_node} GPUs{pools}, "
        f"decisions every {options.interval} s",
        file=out,
    )
    print(render([row(r) for r in results.values()], markdown=False), file=out)
    if options.pools > 1 or options.cpu_per_node or options.placed or apart:
        pending = ", ".join(f"{p} {r.unplaced:,}" for p, r in results.items())
        room = (
            "no GPU with its CPUs"
            if options.cpu_per_node
            else "no GPU on their job's pool"
            if options.pools > 1
            else "no GPU on a node of their own"
            if apart
            else "no free GPU"
        )
        print(
            f"# workers granted that found {room} (Pending), summed over steps: {pending}",
            file=out,
        )
    under = ", ".join(f"{p} {r.below_floor_hours:,.1f}" for p, r in results.items())
    print(f"# GPU-h held at a true efficiency under the jobs' floors: {under}", file=out)
    if len({j.priority for j in jobs}) > 1:
        rows = [tier_row(p, t) for p, r in results.items() for t in tiers(r, jobs, cluster)]
        print("# by priority:", file=out)
        print(render(rows, markdown=False, header=TIER_HEADER), file=out)
        stops = ", ".join(f"{p} {r.stops:,}" for p, r in results.items())
        print(f"# running jobs stopped (preempted) to wait again: {stops}", file=out)
    base = results.get("fixed")
    ts = results["trainscale"]
    if base is not None:
        print(
            f"# trainscale: average JCT {base.avg_jct / ts.avg_jct:.2f}x better than fixed "
            f"sizes, p99 {base.p99_jct / ts.p99_jct:.2f}x",
            file=out,
        )
    print("# each job under trainscale's arbitration:", file=out)
    for line in job_lines(ts, jobs, cluster):
        print(line, file=out)
    if options.plot:
        write_plot(results, options, options.plot)
        print(f"# plot written to {options.plot}", file=out)
    return 0


__all__ = ["WorkloadError", "WorkloadOptions", "load_workload", "run_workload"]
