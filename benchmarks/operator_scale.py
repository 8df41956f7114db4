"""Operator at scale: a burst of N TrainingJobs on one operator replica, on the local test-bed.

Why this script exists: issue 14 asks whether one operator process can run a thousand jobs —
how fast a burst of new jobs gets going, what idle jobs cost the apiserver, how long a
reconcile pass takes, whether memory comes back after the jobs are gone — and, on this
small machine, which process is the limit. Everything is real but the GPUs: the test-bed
control plane (etcd, kube-apiserver, scheduler, controller-manager, kwok nodes that mark
pods Running without running them) and ``trainscale operator`` as its own process.

For each ``--jobs`` N (a fresh namespace and a fresh operator each):

* **burst**: N jobs of ``--workers`` workers (no GPU, autoscaling off, arbitration off;
  ``--arbitrated``: one GPU per worker, autoscaled at a fixed size and arbitrated, so each
  job waits for its admission by an arbitration pass) created by one ``kubectl create``;
  two ``kubectl --watch`` streams time, per job, its first worker pod and its ``Running``
  phase from the moment the job appeared (p50/p99), and the whole burst until every job is
  Running; with the arbitration passes the operator ran and their p50/p99 duration;
* **steady**: after ``--settle`` s, a ``--window`` s window with nothing changing: the
  apiserver's own ``apiserver_request_total`` deltas (all clients, WATCH excluded; the same
  window measured before any job is the baseline that is subtracted), the operator's CPU,
  its reconcile passes and the reconcile latency (its /metrics histogram) p50/p99;
* **CPU by process**: utime+stime from ``/proc/<pid>/stat`` of etcd, kube-apiserver,
  scheduler, controller-manager, kwok and the operator over the burst and the window, and
  the rest of the machine (``/proc/stat``: other sessions share it), so the table says
  which process was the limit;
* **memory**: the operator's RSS (``VmRSS``) before the burst, with N jobs Running, and
  after each of ``--rounds`` delete-all/recreate rounds once every job is gone and the
  operator has given the freed memory back (``QUIET_SECONDS`` after the last deletion).

Run:  .venv/bin/python benchmarks/operator_scale.py --jobs 100 200 [--rounds 2] [--markdown]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from trainscale.operator.api import GPU_RESOURCE
from trainscale.operator.daemons.memory import QUIET_SECONDS
from trainscale.operator.observability.metric_names import (
    ARBITRATION_PASS_DURATION_NAME,
    JOB_LOOPS_NAME,
    RECONCILE_DURATION_NAME,
    RECONCILE_TOTAL_NAME,
)
from trainscale.testbed.apiserver_requests import parse_request_counts
from trainscale.testbed.cluster import Testbed
from trainscale.trainer.contract.naming import WORKER_INFIX
from trainscale.trainer.launch.local import find_free_port

TRAINSCALE = Path(sys.executable).with_name("trainscale")
OPERATOR = "operator"
PODS_PER_NODE = 100  # kwok nodes advertise 110 pods; keep a margin
CLK_TCK = os.sysconf("SC_CLK_TCK")
WORKER_POD = re.compile(rf"^(?P<job>.+){re.escape(WORKER_INFIX)}\d+$")


# ---------------------------------------------------------------------------------------------
# Pure helpers


def job_manifest(name: str, workers: int, arbitrated: bool = False) -> dict[str, Any]:
    """``workers`` workers, no GPU (kwok nodes run nothing), autoscaling off (the default).

    ``arbitrated``: one GPU per worker and autoscaling on, held at ``workers``
    (min = max), so cluster arbitration admits the job and its autoscale loop runs every
    ``intervalSeconds`` (30 s, the default) against a Prometheus that refuses connections."""
    container: dict[str, Any] = {"name": "trainer", "image": "trainer:1"}
    extra: dict[str, Any] = {}
    if arbitrated:
        container["resources"] = {"limits": {GPU_RESOURCE: 1}}
        extra["autoscaling"] = {"enabled": True}
    return {
        "apiVersion": "trainscale.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "replicas": workers,
            "minReplicas": workers,
            "maxReplicas": workers,
            **extra,
            "template": {"spec": {"terminationGracePeriodSeconds": 0, "containers": [container]}},
        },
    }


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank); NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float:
    """Prometheus' ``histogram_quantile`` over cumulative ``buckets`` (upper bound -> count,
    +Inf included): linear within the bucket; the highest finite bound when it lands in +Inf;
    NaN when there is no observation."""
    bounds = sorted(buckets)
    total = buckets.get(math.inf, 0.0)
    if total <= 0:
        return math.nan
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower


def subtract(after: Mapping[Any, float], before: Mapping[Any, float]) -> dict[Any, float]:
    """Per key, ``after - before`` (counters between two scrapes)."""
    return {key: value - before.get(key, 0.0) for key, value in after.items()}


def parse_cpu_ticks(stat: str) -> int:
    """utime + stime (clock ticks) from the text of ``/proc/<pid>/stat``."""
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def parse_rss_mib(status: str, key: str = "VmRSS") -> float:
    """VmRSS (or another ``key``, such as VmHWM: the peak RSS) in MiB from the text of
    ``/proc/<pid>/status``."""
    for line in status.splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    return math.nan


@dataclass(frozen=True)
class OperatorScrape:
    """What the benchmark reads of the operator's /metrics."""

    buckets: dict[float, float]  # reconcile duration histogram, cumulative
    passes: float
    loops: float
    arbitration: dict[float, float] = field(default_factory=dict)  # pass duration, cumulative


def parse_operator_metrics(text: str) -> OperatorScrape:
    buckets: dict[float, float] = {}
    arbitration: dict[float, float] = {}
    passes = loops = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == RECONCILE_DURATION_NAME + "_bucket":
                buckets[float(sample.labels["le"])] = sample.value
            elif sample.name == ARBITRATION_PASS_DURATION_NAME + "_bucket":
                arbitration[float(sample.labels["le"])] = sample.value
            elif sample.name == RECONCILE_TOTAL_NAME:
                passes += sample.value
            elif sample.name == JOB_LOOPS_NAME:
                loops += sample.value
    return OperatorScrape(buckets, passes, loops, arbitration)


# ---------------------------------------------------------------------------------------------
# Process sampling


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU ticks of each watched process and of the whole machine, at one moment."""

    at: float
    ticks: dict[str, int]
    machine_busy: int

    def seconds_since(self, earlier: CpuSnapshot) -> dict[str, float]:
        """CPU-seconds per process between the two snapshots, and ``other`` (the machine's
        busy time not spent by a watched process: other sessions, kubectl, this script)."""
        used = {n: (t - earlier.ticks.get(n, t)) / CLK_TCK for n, t in self.ticks.items()}
        used["other"] = max(
            0.0, (self.machine_busy - earlier.machine_busy) / CLK_TCK - sum(used.values())
        )
        return used


def read_machine_busy() -> int:
    """Busy ticks of all CPUs together (``/proc/stat``: everything but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4]


def cpu_snapshot(pids: Mapping[str, int]) -> CpuSnapshot:
    ticks = {}
    for name, pid in pids.items():
        with contextlib.suppress(OSError):
            ticks[name] = parse_cpu_ticks(Path(f"/proc/{pid}/stat").read_text())
    return CpuSnapshot(time.monotonic(), ticks, read_machine_busy())


def rss_mib(pid: int, key: str = "VmRSS") -> float:
    return parse_rss_mib(Path(f"/proc/{pid}/status").read_text(), key)


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# ---------------------------------------------------------------------------------------------
# The operator and the watches


class Operator:
    """``trainscale operator`` for one namespace, /metrics on a loopback port."""

    def __init__(self, bed: Testbed, namespace: str, log: Path, arbitrated: bool = False) -> None:
        self.port = find_free_port()
        # Arbitrated: the autoscale loops' Prometheus refuses connections at once (port 9).
        arbitration = ["--prometheus-url", "http://127.0.0.1:9"] if arbitrated else [
            "--no-arbitration"]  # fmt: skip
        argv = [str(TRAINSCALE), "operator", "--namespace", namespace, *arbitration,
                "--metrics-port", str(self.port), "--metrics-address", "127.0.0.1",
                "--liveness-port", "0", "--log-level", "WARNING"]  # fmt: skip
        with log.open("ab") as out:
            self.proc = subprocess.Popen(argv, env=bed.env(), stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip

    def scrape(self) -> OperatorScrape | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
                return parse_operator_metrics(r.read().decode())
        except OSError:
            return None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class BurstWatch:
    """Arrival times (this process's monotonic clock) of jobs, their first worker pod and
    their Running phase, from two ``kubectl get --watch`` streams."""

    seen: dict[str, float] = field(default_factory=dict)
    first_pod: dict[str, float] = field(default_factory=dict)
    running: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_job(self, name: str, phase: str) -> None:
        now = time.monotonic()
        with self.lock:
            self.seen.setdefault(name, now)
            if phase == "Running":
                self.running.setdefault(name, now)

    def on_pod(self, name: str, _phase: str) -> None:
        match = WORKER_POD.match(name)
        if match:
            with self.lock:
                self.first_pod.setdefault(match["job"], time.monotonic())

    def delays(self, arrived: Mapping[str, float]) -> list[float]:
        with self.lock:
            return [t - self.seen[j] for j, t in arrived.items() if j in self.seen]


@contextlib.contextmanager
def watching(bed: Testbed, namespace: str) -> Iterator[BurstWatch]:
    """Follow the namespace's jobs and pods until the block ends."""
    watch = BurstWatch()
    columns = "custom-columns=NAME:.metadata.name,PHASE:.status.phase"
    assert bed.bin_dir is not None
    stop = threading.Event()
    procs: list[subprocess.Popen[str]] = []
    for kind, handler in (("trainingjobs", watch.on_job), ("pods", watch.on_pod)):
        argv = [str(bed.bin_dir / "kubectl"), "get", kind, "-n", namespace, "--watch",
                "--no-headers", "-o", columns]  # fmt: skip
        threading.Thread(
            target=_follow, args=(argv, bed.env(), handler, stop, procs), daemon=True
        ).start()
    try:
        yield watch
    finally:
        stop.set()
        for proc in list(procs):
            proc.terminate()
            proc.wait(10)


def _follow(
    argv: list[str],
    env: Mapping[str, str],
    handler: Callable[[str, str], None],
    stop: threading.Event,
    procs: list[subprocess.Popen[str]],
) -> None:
    """Run ``kubectl get --watch`` and hand each line to ``handler``, starting it again
    whenever it exits before ``stop``: under a burst of 1,000 jobs the watch of the jobs
    ended now and then (kubectl exits when the apiserver ends its watch), the jobs' Running
    phases were missed and the benchmark waited out its timeout. Started again, kubectl lists
    every object afresh; the handlers keep the first time they saw each."""
    while not stop.is_set():
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)  # fmt: skip
        procs.append(proc)
        if stop.is_set():  # stopped while it started: the block's end missed it
            proc.terminate()
        assert proc.stdout is not None
        for line in proc.stdout:
            parts = line.split()
            if len(parts) == 2:
                handler(parts[0], parts[1])
        proc.wait()
        if not stop.is_set():
            print(f"[watch] {argv[2]} ended (exit {proc.returncode}); watching again",
                  file=sys.stderr, flush=True)  # fmt: skip


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, interval: float = 1.0
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"operator_scale: timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------
# One size


@dataclass
class Phase:
    """CPU by process and reconcile latency over one stretch of time."""

    seconds: float
    cpu: dict[str, float]
    reconcile_p50: float
    reconcile_p99: float
    passes: float
    arbitration_p50: float = math.nan
    arbitration_p99: float = math.nan
    arbitration_passes: float = 0.0


@dataclass
class SizeResult:
    jobs: int
    create_s: float = 0.0
    first_pod: list[float] = field(default_factory=list)
    running: list[float] = field(default_factory=list)
    all_running_s: float = 0.0
    burst: Phase | None = None
    steady: Phase | None = None
    steady_requests: dict[tuple[str, str], float] = field(default_factory=dict)
    rss_start: float = 0.0
    rss_running: float = 0.0
    rss_after_rounds: list[float] = field(default_factory=list)
    rss_peak_running: float = 0.0  # VmHWM: the highest RSS so far, the burst's included
    rss_peak: float = 0.0  # VmHWM at the end, the delete rounds' included
    delete_s: list[float] = field(default_factory=list)
    load: str = ""


class Bench:
    """The test-bed, its components' pids, and the baseline window."""

    def __init__(self, bed: Testbed, args: argparse.Namespace) -> None:
        self.bed = bed
        self.args = args
        self.logs = Path(tempfile.mkdtemp(prefix="operator-scale-"))
        self.baseline: dict[tuple[str, str], float] = {}
        self.baseline_cpu: dict[str, float] = {}

    def kubectl(self, *args: str, input: str | None = None, timeout: float = 300) -> str:
        return self.bed.kubectl(*args, input=input, timeout=timeout).stdout

    def requests(self) -> dict[tuple[str, str], float]:
        return parse_request_counts(self.kubectl("get", "--raw", "/metrics", timeout=60))

    def pids(self, operator: Operator | None = None) -> dict[str, int]:
        pids = {name: pid for name, pid in self.bed.pids.items()}
        if operator is not None:
            pids[OPERATOR] = operator.proc.pid
        return pids

    def window(self, operator: Operator | None) -> tuple[dict[tuple[str, str], float], Phase]:
        """``--window`` seconds of nothing happening: request rates and CPU."""
        scrape0 = operator.scrape() if operator else None
        before, cpu0 = self.requests(), cpu_snapshot(self.pids(operator))
        time.sleep(self.args.window)  # the measurement window itself: nothing is awaited
        after, cpu1 = self.requests(), cpu_snapshot(self.pids(operator))
        elapsed = cpu1.at - cpu0.at
        rates = {k: v / elapsed for k, v in subtract(after, before).items() if k[0] != "WATCH"}
        scrape1 = operator.scrape() if operator else None
        return rates, self.phase(cpu0, cpu1, scrape0, scrape1)

    @staticmethod
    def phase(cpu0: CpuSnapshot, cpu1: CpuSnapshot, s0: OperatorScrape | None,
              s1: OperatorScrape | None) -> Phase:  # fmt: skip
        p50 = p99 = passes = math.nan
        arbitration: dict[float, float] = {}
        if s0 is not None and s1 is not None:
            buckets = subtract(s1.buckets, s0.buckets)
            p50, p99 = histogram_quantile(0.5, buckets), histogram_quantile(0.99, buckets)
            passes = s1.passes - s0.passes
            arbitration = subtract(s1.arbitration, s0.arbitration)
        return Phase(cpu1.at - cpu0.at, cpu1.seconds_since(cpu0), p50, p99, passes,
                     histogram_quantile(0.5, arbitration), histogram_quantile(0.99, arbitration),
                     arbitration.get(math.inf, 0.0))  # fmt: skip

    def measure_baseline(self) -> None:
        self.baseline, phase = self.window(None)
        self.baseline_cpu = phase.cpu

    def create(self, namespace: str, jobs: int) -> float:
        items = [job_manifest(f"job-{i}", self.args.workers, self.args.arbitrated)
                 for i in range(jobs)]  # fmt: skip
        began = time.monotonic()
        self.kubectl("create", "-n", namespace, "-f", "-",
                     input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))  # fmt: skip
        return time.monotonic() - began

    def burst(self, op: Operator, namespace: str, result: SizeResult) -> None:
        jobs = result.jobs
        with watching(self.bed, namespace) as watch:
            time.sleep(1.0)  # the watches have listed (an empty namespace)
            scrape0, cpu0 = op.scrape(), cpu_snapshot(self.pids(op))
            result.create_s = self.create(namespace, jobs)
            wait_until(lambda: len(watch.running) >= jobs, self.args.timeout,
                       f"{jobs} jobs Running")  # fmt: skip
            cpu1, scrape1 = cpu_snapshot(self.pids(op)), op.scrape()
        result.all_running_s = cpu1.at - cpu0.at
        result.first_pod = watch.delays(watch.first_pod)
        result.running = watch.delays(watch.running)
        result.burst = self.phase(cpu0, cpu1, scrape0, scrape1)

    def delete_all(self, op: Operator, namespace: str) -> float:
        began = time.monotonic()
        self.kubectl("delete", "tj", "--all", "-n", namespace, "--wait=false")
        wait_until(lambda: not self.kubectl("get", "tj,pods", "-n", namespace, "-o",
                                            "name").split(),
                   self.args.timeout, "every job and pod gone", interval=2.0)  # fmt: skip
        gone = time.monotonic() - began

        def no_loops() -> bool:
            scrape = op.scrape()
            return scrape is not None and scrape.loops == 0

        wait_until(no_loops, 120, "no job loop left")
        return gone

    def run_size(self, jobs: int) -> SizeResult:
        namespace = f"bench-{jobs}-{int(time.time())}"
        self.kubectl("create", "namespace", namespace)
        wait_until(lambda: self.bed.kubectl("get", "serviceaccount", "default", "-n", namespace,
                                            check=False).returncode == 0, 60,
                   "the namespace's default ServiceAccount")  # fmt: skip
        op = Operator(self.bed, namespace, self.logs / f"operator-{jobs}.log",
                      self.args.arbitrated)  # fmt: skip
        result = SizeResult(jobs)
        try:
            wait_until(lambda: op.scrape() is not None, 60, "the operator's /metrics")
            time.sleep(2.0)
            result.rss_start = rss_mib(op.proc.pid)
            self.burst(op, namespace, result)
            print(f"{jobs} jobs: first pod p50/p99 {fmt(quantile(result.first_pod, 0.5))}/"
                  f"{fmt(quantile(result.first_pod, 0.99))} s, all Running after "
                  f"{result.all_running_s:.1f} s; load average {load_average()}", flush=True)  # fmt: skip
            time.sleep(self.args.settle)
            rates, result.steady = self.window(op)
            result.steady_requests = rates
            result.rss_running = rss_mib(op.proc.pid)
            result.rss_peak_running = rss_mib(op.proc.pid, "VmHWM")
            result.load = load_average()
            for round_ in range(self.args.rounds):
                if round_:
                    self.create(namespace, jobs)
                    wait_until(lambda: self.running_jobs(namespace) >= jobs, self.args.timeout,
                               f"{jobs} jobs Running again")  # fmt: skip
                result.delete_s.append(self.delete_all(op, namespace))
                # The operator gives freed memory back QUIET_SECONDS after the last deletion.
                time.sleep(QUIET_SECONDS + 5.0)
                result.rss_after_rounds.append(rss_mib(op.proc.pid))
            result.rss_peak = rss_mib(op.proc.pid, "VmHWM")
        finally:
            op.stop()
            self.bed.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        return result

    def running_jobs(self, namespace: str) -> int:
        items = json.loads(self.kubectl("get", "tj", "-n", namespace, "-o", "json"))["items"]
        return sum(1 for j in items if (j.get("status") or {}).get("phase") == "Running")


# ---------------------------------------------------------------------------------------------
# Output


def render(rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
        return "\n".join(out)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def fmt(value: float, digits: int = 1) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def summary_rows(results: Sequence[SizeResult], baseline: Mapping[Any, float]) -> list[list[str]]:
    base_rate = sum(baseline.values())
    rows = [["jobs", "create s", "1st pod p50/p99 s", "Running p50/p99 s", "all Running s",
             "reconcile passes, p50/p99 s (burst)", "reconcile passes, p50/p99 s (steady)",
             "arbitration passes, p50/p99 s (burst)", "arbitration passes, p50/p99 s (steady)",
             "API req/s (steady, - baseline)", "req/job/min", "operator CPU %core (steady)",
             "operator ms CPU/job/s", "RSS MiB start/running/after rounds",
             "peak RSS MiB until running / in all"]]  # fmt: skip
    for r in results:
        assert r.burst is not None and r.steady is not None
        rate = sum(r.steady_requests.values()) - base_rate
        op_cpu = r.steady.cpu.get(OPERATOR, math.nan) / r.steady.seconds
        rows.append([
            str(r.jobs), fmt(r.create_s),
            f"{fmt(quantile(r.first_pod, 0.5))} / {fmt(quantile(r.first_pod, 0.99))}",
            f"{fmt(quantile(r.running, 0.5))} / {fmt(quantile(r.running, 0.99))}",
            fmt(r.all_running_s),
            f"{fmt(r.burst.passes, 0)}, {fmt(r.burst.reconcile_p50, 3)} / "
            f"{fmt(r.burst.reconcile_p99, 2)}",
            f"{fmt(r.steady.passes, 0)}, {fmt(r.steady.reconcile_p50, 3)} / "
            f"{fmt(r.steady.reconcile_p99, 3)}",
            *(f"{p.arbitration_passes:.0f}, {fmt(p.arbitration_p50, 2)} / "
              f"{fmt(p.arbitration_p99, 2)}" for p in (r.burst, r.steady)),
            fmt(rate), fmt(rate / r.jobs * 60, 2), fmt(100 * op_cpu),
            fmt(1000 * op_cpu / r.jobs, 2),
            f"{r.rss_start:.0f} / {r.rss_running:.0f} / "
            + " ".join(f"{v:.0f}" for v in r.rss_after_rounds),
            f"{r.rss_peak_running:.0f} / {r.rss_peak:.0f}",
        ])  # fmt: skip
    return rows


def cpu_rows(results: Sequence[SizeResult], baseline_cpu: Mapping[str, float],
             window: float) -> list[list[str]]:  # fmt: skip
    names = sorted({n for r in results for p in (r.burst, r.steady) if p for n in p.cpu})
    rows = [["phase", *names]]
    rows.append(["baseline (no job), %core", *(fmt(100 * baseline_cpu.get(n, 0) / window)
                                               for n in names)])  # fmt: skip
    for r in results:
        for label, phase in (("burst", r.burst), ("steady", r.steady)):
            assert phase is not None
            rows.append([f"{r.jobs} jobs {label} ({phase.seconds:.0f} s), %core",
                         *(fmt(100 * phase.cpu.get(n, 0) / phase.seconds) for n in names)])  # fmt: skip
    return rows


def request_rows(result: SizeResult, baseline: Mapping[tuple[str, str], float]) -> list[list[str]]:
    net = subtract(result.steady_requests, baseline)
    top = sorted(net.items(), key=lambda kv: -kv[1])[:8]
    rows = [["request", "req/s", "per job per min"]]
    rows += [
        [f"{v} {res}", fmt(rate, 2), fmt(rate / result.jobs * 60, 2)] for (v, res), rate in top
    ]
    return rows


def print_report(bench: Bench, results: Sequence[SizeResult]) -> None:
    args = bench.args
    md = args.markdown
    mode = ("one GPU each, autoscaled and arbitrated" if args.arbitrated
            else "autoscaling and arbitration off")  # fmt: skip
    print(f"\n{args.workers} workers per job, {bench.bed.nodes} kwok nodes, {mode}; steady window {args.window:.0f} s after {args.settle:.0f} s; "
          f"{args.rounds} delete round(s); {os.cpu_count()} CPUs")  # fmt: skip
    print(render(summary_rows(results, bench.baseline), md))
    print("\nCPU by process (% of one core; 'other' = the rest of the machine, other sessions):")
    print(render(cpu_rows(results, bench.baseline_cpu, args.window), md))
    for r in results:
        print(
            f"\nsteady requests at {r.jobs} jobs, above the baseline (top 8; "
            f"load average {r.load}):"
        )
        print(render(request_rows(r, bench.baseline), md))
    print(
        f"\nbaseline (no job): {sum(bench.baseline.values()):.1f} req/s; "
        f"operator logs in {bench.logs}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[100])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="delete/recreate rounds")
    parser.add_argument("--window", type=float, default=30.0, help="steady window, s")
    parser.add_argument("--settle", type=float, default=15.0, help="s after the burst")
    parser.add_argument("--timeout", type=float, default=600.0, help="per wait, s")
    parser.add_argument("--nodes", type=int, help="kwok nodes (default: enough pods)")
    parser.add_argument("--arbitrated", action="store_true",
                        help="jobs of one-GPU workers, autoscaled (held at --workers) and "
                        "arbitrated; nodes of one GPU per pod they hold")  # fmt: skip
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    if min(args.jobs) < 1 or args.workers < 1 or args.rounds < 1:
        parser.error("--jobs, --workers and --rounds must be >= 1")
    pods = max(args.jobs) * (args.workers + 1)  # + the rendezvous pod
    nodes = args.nodes or max(20, math.ceil(pods / PODS_PER_NODE))
    # A timeout's SIGTERM unwinds like Ctrl-C: the operator and the test-bed are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(f"load average before: {load_average()}", flush=True)
    gpus = PODS_PER_NODE if args.arbitrated else 8
    with Testbed(nodes=nodes, gpus_per_node=gpus) as bed:
        bed.apply_crd()
        bench = Bench(bed, args)
        time.sleep(args.settle)
        bench.measure_baseline()
        results = []
        for jobs in args.jobs:
            results.append(bench.run_size(jobs))
            print(f"{jobs} jobs done: load average {load_average()}", flush=True)
        print_report(bench, results)
        print(f"median first pod overall: {fmt(statistics.median(results[-1].first_pod))} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
