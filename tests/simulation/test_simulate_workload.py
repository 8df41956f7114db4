"""Tests of ``trainscale simulate --workload`` and the workload simulator behind it.

Covers:
- a CSV trace end to end through the console script: the three policies' table, each job's
  line under arbitration (arrival, wait, completion, GPUs, sizes), a real PNG;
- the numbers printed are the simulator's: the table row of each policy and each job's JCT
  equal what :func:`simulate` returns for the same workload;
- the timeline is the allocation: at every step the GPUs held fit in the cluster, a job
  holds GPUs only between its arrival and its finish, and the waiting count is the arrived,
  unfinished jobs without GPUs (the plot draws exactly this);
- on node pools (``--pools``), a trace's ``pool`` column holds each job to its pool: the
  printed rows are the simulator's on that cluster, each job's line names its pool, no job
  runs off its pool, and the Pending grants are counted;
- with CPU beside the GPUs (``--cpu-per-node``), a trace's ``cpu_per_worker`` column is each
  job's CPUs per worker: the printed rows are the simulator's on that cluster, each job's
  line shows its CPUs, and a figure no node can hold, or given without the nodes' CPUs, is
  refused;
- a trace's ``apart`` column (or ``--apart`` on a generated workload) keeps a job's workers
  one per node under every policy: the printed rows are the simulator's, and a job whose
  minimum needs more nodes than the cluster has is refused; the GPU time under the jobs'
  floors is printed;
- a bad trace or flag is refused naming the line, column or flag (exit 2, nothing printed).
"""

from __future__ import annotations

import collections
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from trainscale.operator.app.cli import main
from trainscale.operator.autoscaling.workload import (
    URGENT_PRIORITY,
    Cluster,
    Job,
    Result,
    generate,
    read_trace,
    row,
    simulate,
    tier_row,
    tiers,
)

TRAINSCALE = Path(sys.executable).with_name("trainscale")

TRACE = """name,arrival_seconds,total_samples,curve,min_replicas,max_replicas,requested_replicas,priority,restart_seconds
resnet,0,2000000,0.02:0.3,1,16,4,0,60
bert,300,1500000,0.05:0.5,1,8,2,0,90
gpt-small,600,4000000,0.01:0.2,2,16,8,0,120
vit,900,500000,0.03:0.0,1,8,1,0,45
"""


POOL_TRACE = """name,arrival_seconds,total_samples,curve,min_replicas,max_replicas,requested_replicas,priority,restart_seconds,pool
resnet,0,2000000,0.02:0.3,1,16,4,0,60,0
bert,300,1500000,0.05:0.5,1,8,2,0,90,
gpt-small,600,4000000,0.01:0.2,2,16,8,0,120,1
vit,900,500000,0.03:0.0,1,8,1,0,45,1
"""


CPU_TRACE = """name,arrival_seconds,total_samples,curve,min_replicas,max_replicas,requested_replicas,cpu_per_worker
resnet,0,2000000,0.02:0.3,1,16,4,16
bert,300,1500000,0.05:0.5,1,8,2,
gpt-small,600,4000000,0.01:0.2,2,16,8,16
vit,900,500000,0.03:0.0,1,8,1,2.5
"""


APART_TRACE = """name,arrival_seconds,total_samples,curve,min_replicas,max_replicas,requested_replicas,apart
resnet,0,2000000,0.02:0.3,1,16,4,true
bert,300,1500000,0.05:0.5,1,8,2,
gpt-small,600,4000000,0.01:0.2,2,16,8,0
vit,900,500000,0.03:0.0,1,8,1,yes
"""


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    path = tmp_path / "trace.csv"
    path.write_text(TRACE)
    return path


@pytest.mark.slow
def test_a_trace_prints_the_policies_and_the_jobs_and_plots(trace: Path, tmp_path: Path) -> None:
    png = tmp_path / "w.png"
    done = subprocess.run(
        [str(TRAINSCALE), "simulate", "--workload", str(trace), "--nodes", "4",
         "--plot", str(png)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout
    jobs = read_trace(str(trace))
    for policy in ("fixed", "per-job", "trainscale"):
        result = simulate(policy, jobs, Cluster(4, 4, 60.0, 1), horizon=900 + 24 * 3600.0)
        printed = next(x.split() for x in out.splitlines() if x.split()[:1] == [policy])
        assert printed == list(row(result)), (printed, row(result))
        if policy == "trainscale":
            finish = dict(result.finishes)
            for job in jobs:
                line = next(x for x in out.splitlines() if x.startswith(job.name + " "))
                assert f"{finish[job.name] - job.arrival:,.0f}" in line.split(), line
    assert "x better than fixed sizes" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_timeline_is_the_allocation() -> None:
    jobs = generate(seed=3, jobs=30, hours=1.0, gpus_per_node=4)
    cluster = Cluster(nodes=4, gpus_per_node=4, interval=60.0, seed=3)
    result = simulate("trainscale", jobs, cluster, horizon=jobs[-1].arrival + 24 * 3600.0)
    assert result.unfinished == 0
    finish = dict(result.finishes)
    arrival = {j.name: j.arrival for j in jobs}
    assert result.timeline, "a step per decision"
    for now, held, waiting in result.timeline:
        assert sum(held.values()) <= cluster.total, (now, held)
        for name, workers in held.items():
            assert workers >= 1
            assert arrival[name] <= now < finish[name], (name, now)
        arrived = [n for n, t in arrival.items() if t <= now and finish[n] > now]
        assert waiting == len([n for n in arrived if n not in held]), now
    # 30 jobs on 16 GPUs within an hour: the cluster is full at times, and everyone finishes
    assert max(sum(h.values()) for _, h, _ in result.timeline) == cluster.total


def test_per_job_autoscalers_are_told_the_node_size_as_the_operator_reads_it() -> None:
    # the baseline is the product without arbitration, which lists nodes by default: its
    # autoscalers predict multi-node counts with the node boundary (not all on one node)
    jobs = generate(seed=3, jobs=30, hours=1.0, gpus_per_node=4)
    cluster = Cluster(nodes=4, gpus_per_node=4, interval=60.0, seed=3)
    simulate("per-job", jobs, cluster, horizon=jobs[-1].arrival + 24 * 3600.0)
    autoscalers = [s.autoscaler for s in cluster.states if s.autoscaler is not None]
    assert autoscalers
    for autoscaler in autoscalers:
        assert autoscaler._workers_per_node == cluster.gpus_per_node


@pytest.mark.parametrize(
    ("csv", "message"),
    [
        pytest.param("arrival_seconds,total_samples\n0,1\n", "missing column(s) curve", id="cols"),
        pytest.param(
            TRACE.replace("0.02:0.3,1,16,4", "0.02:x,1,16,4"),
            "line 2: curve must be serial:cliff[:rate], got '0.02:x'",
            id="curve",
        ),
        pytest.param(
            TRACE.replace("300,1500000", "soon,1500000"),
            "line 3: arrival_seconds must be a number, got 'soon'",
            id="number",
        ),
        pytest.param(
            TRACE.replace("1,8,2,0,90", "4,8,2,0,90"),
            "line 3: need 1 <= min_replicas <= requested_replicas <= max_replicas, got 4, 2, 8",
            id="bounds",
        ),
        pytest.param(TRACE.replace("vit,", "bert,"), "job names must be unique", id="names"),
        pytest.param(TRACE.splitlines()[0] + "\n", "no jobs", id="empty"),
        pytest.param(
            POOL_TRACE.replace("120,1", "120,2"),
            "line 4: pool 2, but the cluster has 2 node pools (0 to 1; --pools)",
            id="pool-beyond-the-pools",
        ),
        pytest.param(
            POOL_TRACE.replace("60,0", "60,-1"),
            "line 2: pool must be >= 0, got '-1'",
            id="pool-negative",
        ),
        pytest.param(
            POOL_TRACE.replace("60,0", "60,a100"),
            "line 2: pool must be a number, got 'a100'",
            id="pool-not-a-number",
        ),
        pytest.param(
            CPU_TRACE.replace("0.0,1,8,1,2.5", "0.0,1,8,1,-2"),
            "line 5: cpu_per_worker must be >= 0, got '-2'",
            id="cpu-negative",
        ),
        pytest.param(
            CPU_TRACE,
            "job resnet asks cpu_per_worker 16; give the nodes' CPUs with --cpu-per-node",
            id="cpu-without-the-nodes-cpus",
        ),
        pytest.param(
            APART_TRACE.replace("1,16,4,true", "1,16,4,spread"),
            "line 2: apart must be true or false, got 'spread'",
            id="apart-not-a-flag",
        ),
        pytest.param(
            APART_TRACE.replace(
                "resnet,0,2000000,0.02:0.3,1,16,4", "resnet,0,2000000,0.02:0.3,5,16,5"
            ),
            "job resnet keeps its workers apart and needs 5 of them, more than the 4 nodes",
            id="apart-minimum-beyond-the-nodes",
        ),
    ],
)
def test_a_bad_trace_names_the_line_and_column(
    csv: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "t.csv"
    path.write_text(csv)
    assert main(["simulate", "--workload", str(path), "--nodes", "4", "--pools", "2"]) == 2
    captured = capsys.readouterr()
    assert message in captured.err, captured.err
    assert captured.out == ""


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["--workload", "missing.csv"], "--workload missing.csv: No such file"),
        pytest.param(
            ["--workload", "generated", "--policies", "fixed"], "--policies must include trainscale"
        ),
        pytest.param(["--workload", "generated", "--policies", "magic", "trainscale"], "magic"),
        pytest.param(["--workload", "generated", "--nodes", "0"], "--nodes and --gpus-per-node"),
        pytest.param(["--curve", "amdahl", "--jobs", "3"], "--jobs needs --workload"),
        pytest.param(["--curve", "amdahl", "--pools", "2"], "--pools needs --workload"),
        pytest.param(
            ["--workload", "generated", "--nodes", "4", "--pools", "5"],
            "--pools must be between 1 and --nodes (4), got 5",
        ),
        pytest.param(
            ["--workload", "generated", "--pools", "2", "--restricted", "1.5"],
            "--restricted must be a share in [0, 1], got 1.5",
        ),
        pytest.param(
            ["--workload", "trace.csv", "--pools", "2", "--restricted", "0.5"],
            "--restricted needs --pools 2 or more and a generated workload",
        ),
        pytest.param(
            ["--curve", "amdahl", "--cpu-per-node", "32"], "--cpu-per-node needs --workload"
        ),
        pytest.param(
            ["--workload", "generated", "--cpu-per-node", "-1"], "--cpu-per-node must be >= 0"
        ),
        pytest.param(
            ["--workload", "generated", "--cpu-per-node", "32", "--cpu-heavy", "2"],
            "--cpu-heavy must be a share in [0, 1], got 2.0",
        ),
        pytest.param(
            ["--workload", "generated", "--cpu-heavy", "0.3"],
            "--cpu-heavy needs --cpu-per-node and a generated workload",
        ),
        pytest.param(
            ["--workload", "trace.csv", "--cpu-per-node", "32", "--cpu-heavy", "0.3"],
            "--cpu-heavy needs --cpu-per-node and a generated workload",
        ),
        pytest.param(
            ["--workload", "generated", "--urgent", "-0.1"],
            "--urgent must be a share in [0, 1], got -0.1",
        ),
        pytest.param(
            ["--workload", "trace.csv", "--urgent", "0.2"],
            "--urgent needs a generated workload (a trace names each job's priority in its "
            "priority column)",
        ),
        pytest.param(["--curve", "amdahl", "--urgent", "0.2"], "--urgent needs --workload"),
        pytest.param(
            ["--workload", "generated", "--low", "1.5"], "--low must be a share in [0, 1], got 1.5"
        ),
        pytest.param(
            ["--workload", "trace.csv", "--low", "0.2"],
            "--low needs a generated workload (a trace names each job's priority in its "
            "priority column)",
        ),
        pytest.param(["--curve", "amdahl", "--low", "0.2"], "--low needs --workload"),
        pytest.param(
            ["--workload", "generated", "--apart", "2"],
            "--apart must be a share in [0, 1], got 2.0",
        ),
        pytest.param(
            ["--workload", "trace.csv", "--apart", "0.3"],
            "--apart needs a generated workload (a trace names each job's rule in its apart "
            "column)",
        ),
        pytest.param(["--curve", "amdahl", "--apart", "0.3"], "--apart needs --workload"),
    ],
)
def test_bad_workload_flags_are_named(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", *argv]) == 2
    captured = capsys.readouterr()
    assert message in captured.err, captured.err
    assert captured.out == ""


def test_curve_and_workload_are_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["simulate", "--curve", "amdahl", "--workload", "generated"])
    assert exit_.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def printed_policies(
    out: str, jobs: list[Job], cluster: Callable[[], Cluster]
) -> dict[str, tuple[Cluster, Result]]:
    """Each default policy simulated on a fresh ``cluster()``, its row checked against the
    one ``out`` printed; returns each cluster (with its jobs' states) and result."""
    found = {}
    for policy in ("fixed", "per-job", "trainscale"):
        simulated = cluster()
        result = simulate(policy, jobs, simulated, horizon=900 + 24 * 3600.0)
        printed = next(x.split() for x in out.splitlines() if x.split()[:1] == [policy])
        assert printed == list(row(result)), (printed, row(result))
        found[policy] = (simulated, result)
    return found


def test_a_trace_on_node_pools_holds_each_job_to_its_pool(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "pools.csv"
    path.write_text(POOL_TRACE)
    assert main(["simulate", "--workload", str(path), "--nodes", "4", "--pools", "2"]) == 0
    out = capsys.readouterr().out
    assert "on 4 nodes x 4 GPUs in 2 node pools (3 of the jobs held to one)" in out
    jobs = read_trace(str(path), pools=2)
    assert [j.pool for j in jobs] == [0, None, 1, 1]
    cluster = Cluster(4, 4, 60.0, 1, pools=2)
    assert [cluster.admitted(j) for j in jobs] == [
        frozenset({"node-00", "node-01"}),
        None,
        *[frozenset({"node-02", "node-03"})] * 2,
    ]
    clusters = printed_policies(out, jobs, lambda: Cluster(4, 4, 60.0, 1, pools=2))
    for cluster, _ in clusters.values():
        held = {s.job.name: s for s in cluster.states}
        assert held["resnet"].allowed == frozenset({"node-00", "node-01"})
    pending = ", ".join(f"{p} {r.unplaced:,}" for p, (_, r) in clusters.items())
    assert f"(Pending), summed over steps: {pending}" in out
    lines = {x.split()[0]: x.split() for x in out.splitlines() if x.split()[:1] != ["#"] and x}
    assert lines["job"][7] == "pool"  # job arrival waited JCT s GPUs (most) pool sizes
    assert [lines[j][5] for j in ("resnet", "bert", "gpt-small", "vit")] == ["0", "any", "1", "1"]
    # one pool: rows naming pool 0 are fine, the first naming pool 1 is refused
    assert main(["simulate", "--workload", str(path), "--nodes", "4"]) == 2
    assert "line 4: pool 1, but the cluster has 1 node pool (0 to 0; --pools)" in (
        capsys.readouterr().err
    )


def test_a_trace_with_cpus_per_worker_places_them_beside_the_gpus(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cpu.csv"
    path.write_text(CPU_TRACE)
    argv = ["simulate", "--workload", str(path), "--nodes", "4", "--cpu-per-node", "32"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "on 4 nodes x 4 GPUs, 32 CPUs per node" in out
    jobs = read_trace(str(path))
    assert [j.cpu for j in jobs] == [16.0, None, 16.0, 2.5]
    cluster = Cluster(4, 4, 60.0, 1, cpu_per_node=32_000)
    assert [cluster.cpu_of(j) for j in jobs] == [16_000, 4_000, 16_000, 2_500]  # bert: drawn
    clusters = printed_policies(out, jobs, lambda: Cluster(4, 4, 60.0, 1, cpu_per_node=32_000))
    pending = ", ".join(f"{p} {r.unplaced:,}" for p, (_, r) in clusters.items())
    assert f"found no GPU with its CPUs (Pending), summed over steps: {pending}" in out
    lines = {x.split()[0]: x.split() for x in out.splitlines() if x.split()[:1] != ["#"] and x}
    assert lines["job"][7] == "CPUs"  # job arrival waited JCT s GPUs (most) CPUs sizes
    assert [lines[j][5] for j in ("resnet", "bert", "gpt-small", "vit")] == ["16", "4", "16", "2.5"]
    # a worker asking more than a node has could never run
    assert main([*argv[:-1], "8"]) == 2
    assert "job resnet asks cpu_per_worker 16, more than a node's 8 (--cpu-per-node)" in (
        capsys.readouterr().err
    )


def test_a_higher_priority_job_preempts_in_the_simulator_as_in_the_operator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A trace's priorities preempt under arbitration, as the operator's PriorityClasses do
    by default: the urgent job starts on arrival, the job holding every GPU stops meanwhile
    and then runs on from where it was (its line's sizes: 16 > 0 > 16). With fixed sizes the
    scheduler preempts it as well (a gang: it stops whole); with ``preemptionPolicy: Never``
    the urgent job waits for it under either."""
    path = tmp_path / "priorities.csv"
    path.write_text(
        "name,arrival_seconds,total_samples,curve,min_replicas,max_replicas,requested_replicas,priority\n"
        "whole,0,20000000,0.0:0.0,16,16,16,0\n"
        "urgent,600,500000,0.0:0.0,4,4,4,100\n"
    )
    jobs = read_trace(str(path))
    horizon = 600 + 24 * 3600.0
    arbitrated = simulate("trainscale", jobs, Cluster(4, 4, 60.0, 1), horizon)
    held = [(t, h) for t, h, _ in arbitrated.timeline]
    arrival = next(t for t, h in held if "urgent" in h)
    assert arrival - 600 <= 60  # started at the first decision after it arrived
    assert all(h == {"urgent": 4} for t, h in held if "urgent" in h)  # whole stopped meanwhile
    assert any(h == {"whole": 16} for t, h in held if t > arrival)  # and ran again after
    assert arbitrated.unfinished == 0
    assert arbitrated.stops == 1
    fixed = simulate("fixed", jobs, Cluster(4, 4, 60.0, 1), horizon)
    finish = dict(fixed.finishes)
    assert finish["urgent"] - 600 < 3600 < finish["whole"]  # the scheduler preempted it
    assert fixed.stops == 1
    for policy in ("fixed", "trainscale"):
        never = simulate(policy, jobs, Cluster(4, 4, 60.0, 1, preempts=False), horizon)
        finish = dict(never.finishes)
        assert finish["urgent"] > finish["whole"]  # it waited for the whole job
        assert never.stops == 0
    assert main(["simulate", "--workload", str(path), "--nodes", "4"]) == 0
    out = capsys.readouterr().out
    lines = {x.split()[0]: x.split() for x in out.splitlines() if x}
    # GPUs (most), priority, sizes: stopped, then again; no 0 after the last
    assert lines["whole"][-7:] == ["16", "0", "16", ">", "0", ">", "16"]
    assert lines["urgent"][-3:] == ["4", "100", "4"]
    # the completion times by priority, each policy's tiers as simulated, and the stops
    table = out.split("# by priority:\n")[1].split("\n#")[0].splitlines()
    cluster = Cluster(4, 4, 60.0, 1)
    rows = [
        list(tier_row(policy, tier))
        for policy in ("fixed", "per-job", "trainscale")
        for tier in tiers(simulate(policy, jobs, Cluster(4, 4, 60.0, 1), horizon), jobs, cluster)
    ]
    assert [x.split() for x in table[1:]] == rows
    assert [r[:2] for r in rows] == [[p, t] for p in ("fixed", "per-job", "trainscale")
                                     for t in ("100", "0")]  # fmt: skip
    assert (
        "# running jobs stopped (preempted) to wait again: fixed 1, per-job 1, trainscale 1" in out
    )


def test_a_generated_workload_with_urgent_jobs_is_shown_by_priority(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--workload", "generated", "--jobs", "10", "--hours", "0.25", "--nodes", "2",
            "--policies", "fixed", "trainscale"]  # fmt: skip
    assert main(["simulate", *argv, "--urgent", "0.3"]) == 0
    out = capsys.readouterr().out
    table = out.split("# by priority:\n")[1].split("\n#")[0].splitlines()
    urgent = sum(j.priority == URGENT_PRIORITY for j in generate(1, 10, 0.25, 4, urgent=0.3))
    assert [x.split()[:3] for x in table[1:3]] == [
        ["fixed", str(URGENT_PRIORITY), str(urgent)],
        ["fixed", "0", str(10 - urgent)],
    ]
    assert main(["simulate", *argv]) == 0
    assert "# by priority:" not in capsys.readouterr().out  # one priority: no such table
    assert main(["simulate", *argv, "--urgent", "0.3", "--low", "0.5"]) == 0
    out = capsys.readouterr().out
    table = out.split("# by priority:\n")[1].split("\n#")[0].splitlines()
    jobs = generate(1, 10, 0.25, 4, urgent=0.3, low=0.5)
    counts = collections.Counter(j.priority for j in jobs)
    assert len(counts) == 3  # three priorities, each its row
    assert [x.split()[:3] for x in table[1:4]] == [
        ["fixed", str(p), str(counts[p])] for p in sorted(counts, reverse=True)
    ]


def test_a_trace_where_throughput_follows_placement(
    trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--placed``: each policy's row is the simulator's with throughput where the workers
    run, which differs from the count-only run for some policy on this trace; without
    ``--workload`` the flag is refused."""
    assert main(["simulate", "--workload", str(trace), "--nodes", "4", "--placed"]) == 0
    out = capsys.readouterr().out
    assert "on 4 nodes x 4 GPUs, throughput where the workers run, decisions every 60 s" in out
    jobs = read_trace(str(trace))
    placed = printed_policies(out, jobs, lambda: Cluster(4, 4, 60.0, 1, placed_throughput=True))
    counted = {p: simulate(p, jobs, Cluster(4, 4, 60.0, 1), horizon=900 + 24 * 3600.0)
               for p in placed}  # fmt: skip
    assert any(row(placed[p][1]) != row(counted[p]) for p in placed)
    assert main(["simulate", "--curve", "amdahl", "--placed"]) == 2
    assert "--placed needs --workload" in capsys.readouterr().err


def test_a_trace_whose_jobs_keep_their_workers_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The ``apart`` column: resnet and vit keep their workers one per node, gpt-small does
    not, bert's is drawn (none with ``--apart`` 0); each policy's row is the simulator's on
    that cluster, and so are the Pending grants and the GPU time under the floors."""
    path = tmp_path / "apart.csv"
    path.write_text(APART_TRACE)
    assert main(["simulate", "--workload", str(path), "--nodes", "4", "--placed"]) == 0
    out = capsys.readouterr().out
    assert ", 2 of the jobs' workers one per node, decisions every 60 s" in out
    jobs = read_trace(str(path))
    assert [j.apart for j in jobs] == [True, None, False, True]
    clusters = printed_policies(out, jobs, lambda: Cluster(4, 4, 60.0, 1, placed_throughput=True))
    pending = ", ".join(f"{p} {r.unplaced:,}" for p, (_, r) in clusters.items())
    assert f"found no GPU on a node of their own (Pending), summed over steps: {pending}" in out
    under = ", ".join(f"{p} {r.below_floor_hours:,.1f}" for p, (_, r) in clusters.items())
    assert f"GPU-h held at a true efficiency under the jobs' floors: {under}" in out
    for cluster, _ in clusters.values():
        resnet = next(st for st in cluster.states if st.job.name == "resnet")
        assert resnet.apart and cluster.spread_jobs
