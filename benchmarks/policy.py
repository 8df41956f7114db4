"""Benchmark of the autoscaling policy against hindsight, on simulated jobs.

Why this script exists: whether ``recommend`` is any good is a question about whole runs,
not single decisions. It simulates a training job for a few hours on synthetic speedup
curves (the three families the model covers, and two it does not), with noisy metrics as
Prometheus would report them (a ``rate()`` window, per-sample noise), a restart penalty on
every rescale, and the operator's loop (one decision per ``intervalSeconds``, a bounded
observation history, raw targets fed back for stabilization). For each objective it
reports samples processed, GPU cost and rescales relative to the best *static* replica
count chosen with hindsight (the true curve known), and the same for a plain
HPA-style GPU-utilization threshold controller.

Run:  .venv/bin/python benchmarks/policy.py [--hours 4] [--seeds 3]
"""

from __future__ import annotations

import argparse
import collections
import math
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from trainscale.operator.api import TrainingJobSpec
from trainscale.operator.autoscaling.policy import (
    Observation,
    compact_observations,
    compute_cost_per_hour,
    recommend,
)

RATE_PER_REPLICA = 100.0  # samples/s of one worker at one replica
COMPUTE_FRACTION = 0.95  # GPU busy fraction at one replica (the rest is input pipeline)


@dataclass(frozen=True)
class Curve:
    name: str
    relative_step_time: Callable[[int], float]  # tau(n) / tau(1)
    in_family: bool

    def throughput(self, n: int) -> float:
        return 0.0 if n <= 0 else RATE_PER_REPLICA * n / self.relative_step_time(n)

    def utilization(self, n: int) -> float:
        return 0.0 if n <= 0 else COMPUTE_FRACTION / self.relative_step_time(n)

    def efficiency(self, n: int) -> float:
        return 1.0 / self.relative_step_time(n)


CURVES = [
    Curve("linear", lambda n: 1.0, True),
    Curve("amdahl", lambda n: 1.0 + 0.03 * (n - 1), True),
    Curve("comm-peak", lambda n: 1.0 + 0.01 * (n - 1) + 0.003 * (n - 1) ** 2, True),
    Curve("log-sync", lambda n: 1.0 + 0.08 * math.log2(n), False),
    Curve("two-tier", lambda n: 1.0 + 0.01 * (n - 1) + (0.25 if n > 8 else 0.0), False),
]

OBJECTIVES = {
    "efficiency": {"objective": "efficiency", "minEfficiency": 0.7},
    "budget": {"objective": "budget", "costPerGpuHour": 1.0, "maxCostPerHour": 24.0},
    "utilization": {"objective": "utilization", "targetGpuUtilization": 0.8},
}


def make_spec(objective: str, start: int, lo: int, hi: int, interval: int) -> TrainingJobSpec:
    auto = {"enabled": True, "intervalSeconds": interval, **OBJECTIVES[objective]}
    return TrainingJobSpec.model_validate(
        {
            "replicas": start,
            "minReplicas": lo,
            "maxReplicas": hi,
            "template": {
                "spec": {
                    "containers": [
                        {"name": "w", "image": "x", "resources": {"limits": {"nvidia.com/gpu": 1}}}
                    ]
                }
            },
            "autoscaling": auto,
        }
    )


def hindsight(spec: TrainingJobSpec, curve: Curve) -> int:
    """Best static count for the objective, knowing the true curve."""
    auto = spec.autoscaling
    counts = range(spec.min_replicas, spec.max_replicas + 1)
    if auto.objective == "efficiency":
        ok = [n for n in counts if curve.efficiency(n) >= auto.min_efficiency] or [
            spec.min_replicas
        ]
        return max(ok, key=lambda n: (curve.throughput(n), -n))
    if auto.objective == "budget":
        assert auto.max_cost_per_hour is not None
        ok = [n for n in counts if compute_cost_per_hour(spec, n) <= auto.max_cost_per_hour] or [
            spec.min_replicas
        ]
        return max(ok, key=lambda n: (curve.throughput(n), -n))
    ok = [n for n in counts if curve.utilization(n) >= auto.target_gpu_utilization]
    return max(ok) if ok else spec.min_replicas


@dataclass
class Run:
    samples: float
    gpu_hours: float
    rescales: int
    settle_seconds: float
    final: int
    decide_ms: float


def simulate(
    spec: TrainingJobSpec,
    curve: Curve,
    controller: str,
    *,
    hours: float,
    restart_seconds: float,
    noise: float,
    rate_window: float,
    seed: int,
    log: Callable[[str], None] | None = None,
) -> Run:
    """One run. ``controller``: "policy", "hpa", or "static:N"."""
    rng = random.Random(seed)
    interval = spec.autoscaling.interval_seconds
    dt = 1.0
    end = hours * 3600.0
    replicas = spec.replicas if not controller.startswith("static:") else int(controller[7:])
    paused_until = 0.0
    t = 0.0
    samples = gpu_seconds = 0.0
    rescales = 0
    last_change = 0.0
    rate_hist: collections.deque[tuple[float, float, float]] = collections.deque()
    obs: list[Observation] = []
    targets: collections.deque[tuple[float, int]] = collections.deque(maxlen=400)
    hpa_desired: collections.deque[tuple[float, int]] = collections.deque()
    last_scale: float | None = None
    next_decision = float(interval)
    decide_time = 0.0
    decisions = 0
    while t < end:
        running = t >= paused_until
        x = curve.throughput(replicas) if running else 0.0
        u = curve.utilization(replicas) if running else 0.0
        samples += x * dt
        gpu_seconds += replicas * spec.gpus_per_replica * dt
        t += dt
        rate_hist.append((t, x, u))
        while rate_hist and rate_hist[0][0] <= t - rate_window:
            rate_hist.popleft()
        if t < next_decision or controller.startswith("static:"):
            continue
        next_decision += interval
        mean_x = statistics.fmean(r[1] for r in rate_hist)
        recent_u = [r[2] for r in rate_hist if r[0] > t - interval]
        mean_u = statistics.fmean(recent_u)
        x_obs = max(0.0, mean_x * (1 + rng.gauss(0, noise)))
        u_obs = min(1.0, max(0.0, mean_u * (1 + rng.gauss(0, noise))))
        obs = compact_observations([*obs, Observation(t, replicas, u_obs, x_obs)], t)
        new = replicas
        if controller == "policy":
            started = time.perf_counter()
            rec = recommend(
                spec, obs, replicas, t, last_scale_time=last_scale, recent_targets=list(targets)
            )
            decide_time += time.perf_counter() - started
            decisions += 1
            targets.append((t, rec.target))
            new = rec.replicas
            if log is not None and (new != replicas or rec.target != replicas):
                log(f"{t / 60:7.1f}m {replicas:>3} -> {new:<3} {rec.reason}")
        elif controller == "hpa":
            new = hpa_step(spec, replicas, u_obs, t, hpa_desired)
        if new != replicas:
            replicas = new
            paused_until = t + restart_seconds
            rescales += 1
            last_change = t
            last_scale = t
            spec = spec.model_copy(update={"replicas": new})
    return Run(
        samples,
        gpu_seconds / 3600.0,
        rescales,
        last_change,
        replicas,
        1000 * decide_time / max(1, decisions),
    )


def hpa_step(
    spec: TrainingJobSpec,
    replicas: int,
    utilization: float,
    now: float,
    history: collections.deque[tuple[float, int]],
) -> int:
    """The HorizontalPodAutoscaler's algorithm on GPU utilization (tolerance 0.1, 300 s down)."""
    goal = spec.autoscaling.target_gpu_utilization
    ratio = utilization / goal
    desired = replicas if abs(ratio - 1) <= 0.1 else math.ceil(replicas * ratio)
    desired = min(max(desired, spec.min_replicas), spec.max_replicas)
    history.append((now, desired))
    while history and history[0][0] < now - 300:
        history.popleft()
    if desired < replicas:
        desired = max(d for _, d in history)
    return desired


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=4.0)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--interval", type=int, default=30)
    parser.add_argument("--restart-seconds", type=float, default=60.0)
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--rate-window", type=float, default=60.0)
    parser.add_argument("--start", type=int, default=4)
    parser.add_argument("--min", type=int, default=1)
    parser.add_argument("--max", type=int, default=32)
    args = parser.parse_args(argv)
    print(
        f"# {args.hours:g} h per run, {args.seeds} seeds, interval {args.interval} s, restart "
        f"{args.restart_seconds:g} s, noise {args.noise:.0%}, rate window {args.rate_window:g} s, "
        f"replicas {args.start} in [{args.min}, {args.max}]"
    )
    print(
        f"{'objective':<12}{'curve':<11}{'best':>5} {'final':>8}{'samples':>9}{'cost':>7}"
        f"{'rescales':>10}{'settled':>9}{'ms/dec':>8} |{'hpa final':>10}{'samples':>9}{'cost':>7}"
        f"{'rescales':>10}"
    )
    worst = math.inf
    most_rescales = 0
    for objective in OBJECTIVES:
        for curve in CURVES:
            spec = make_spec(objective, args.start, args.min, args.max, args.interval)
            best = hindsight(spec, curve)
            common = {
                "hours": args.hours,
                "restart_seconds": args.restart_seconds,
                "noise": args.noise,
                "rate_window": args.rate_window,
            }
            ref = simulate(spec, curve, f"static:{best}", seed=0, **common)
            runs = [simulate(spec, curve, "policy", seed=s, **common) for s in range(args.seeds)]
            hpas = [simulate(spec, curve, "hpa", seed=s, **common) for s in range(args.seeds)]
            ratio = min(r.samples for r in runs) / ref.samples
            cost = max(r.gpu_hours for r in runs) / ref.gpu_hours
            rescales = max(r.rescales for r in runs)
            finals = sorted({r.final for r in runs})
            settle = max(r.settle_seconds for r in runs) / 60
            ms = statistics.fmean(r.decide_ms for r in runs)
            hpa_ratio = min(r.samples for r in hpas) / ref.samples
            hpa_cost = max(r.gpu_hours for r in hpas) / ref.gpu_hours
            hpa_rescales = max(r.rescales for r in hpas)
            hpa_finals = sorted({r.final for r in hpas})
            mark = "" if curve.in_family else "*"
            print(
                f"{objective:<12}{curve.name + mark:<11}{best:>5} {'/'.join(map(str, finals)):>8}"
                f"{ratio:>9.3f}{cost:>7.2f}{rescales:>10}{settle:>7.0f}m{ms:>8.2f} |"
                f" {'/'.join(map(str, hpa_finals)):>9}{hpa_ratio:>9.3f}{hpa_cost:>7.2f}"
                f"{hpa_rescales:>10}"
            )
            worst = min(worst, ratio)
            most_rescales = max(most_rescales, rescales)
    print(
        "# samples/cost: worst seed relative to the best static count with hindsight; "
        "rescales: most over seeds; settled: time of the last rescale; * = curve outside "
        "the model family"
    )
    print(
        f"# worst samples ratio {worst:.3f} (goal >= 0.95); most rescales {most_rescales} (goal <= 3)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
