"""Benchmark: decision-to-first-step time of elastic resizes on this machine (CPU, gloo).

Why this script exists: the autoscaler's restart-cost model and the issue's goal (<= 5 s per
scale-up and scale-down) need measured figures, and a speed goal is measured here, never
asserted by a test. It runs a real local job (torchrun agents, c10d store, synthetic task)
and resizes it repeatedly:

* scale-up: ``decision`` = the moment a new agent process is started (the operator creating a
  pod, minus Kubernetes scheduling and image pull); ``first step`` = the first optimizer step
  of the new, larger world. Also reported: ``pause``, the time the job did not train (last
  step of the old world to first step of the new one; the new agent boots while training
  goes on).
* scale-down: ``decision`` = SIGTERM to one agent (the kubelet deleting a pod); ``first step``
  as above.
* with ``--sigkill``: scale-down by SIGKILL (a node failure; bounded by heartbeat expiry).

Usage::

    .venv/bin/python benchmarks/resize.py                  # fast resize (our agent)
    .venv/bin/python benchmarks/resize.py --baseline       # torchrun's stock behaviour
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from trainscale.trainer.contract.audit import read_audit
from trainscale.trainer.launch.local import LocalCluster, LocalClusterConfig


def wait_for_new_world(
    audit: Path, size: int, since: float, timeout: float = 180
) -> dict[str, float]:
    """Wait for the first step of a world of ``size`` that started after ``since``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entries = read_audit(audit)
        new = [e for e in entries if e["world_size"] == size and e["time"] > since]
        if new:
            world = min(new, key=lambda e: e["time"])["world_id"]
            first = min(e["time"] for e in new if e["world_id"] == world)
            old = [e["time"] for e in entries if e["world_id"] != world and e["time"] < first]
            return {"first_step": first, "last_old_step": max(old) if old else since}
        time.sleep(0.02)
    raise TimeoutError(f"no world of size {size} within {timeout} s")


def wait_steps(audit: Path, steps: int) -> None:
    start = max((e["step"] for e in read_audit(audit)), default=0)
    while max((e["step"] for e in read_audit(audit)), default=0) < start + steps:
        time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="scale-up/down pairs")
    parser.add_argument("--workers", type=int, default=2, help="size before each scale-up")
    parser.add_argument("--sigkill", action="store_true", help="also measure SIGKILL scale-down")
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="torchrun's stock behaviour: spawn, no early rendezvous leave, 1 s polling",
    )
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="trainscale-resize-"))
    audit = base / "audit"
    config = LocalClusterConfig(
        worker_args=(
            "--task", "trainscale.trainer.examples.synthetic:task",
            "--epochs", "10000", "--global-batch-size", "64", "--checkpoint-interval", "30",
        ),
        checkpoint_dir=base / "ckpt",
        start_method="spawn" if args.baseline else "forkserver",
        env={
            "TRAINSCALE_AUDIT_LOG_DIR": str(audit),
            "TRAINSCALE_SYNTHETIC_DELAY_MS": "10",
            "OMP_NUM_THREADS": "1",
            **({"TRAINSCALE_FAST_RESIZE": "0"} if args.baseline else {}),
        },
    )  # fmt: skip
    results: dict[str, list[float]] = {"up": [], "up_pause": [], "down": [], "kill": []}
    with LocalCluster(config, log_dir=base / "logs") as cluster:
        cluster.start(args.workers)
        wait_for_new_world(audit, args.workers, 0)
        wait_steps(audit, 10)
        for i in range(args.repeats):
            decided = time.time()
            cluster.add_worker()
            up = wait_for_new_world(audit, args.workers + 1, decided)
            results["up"].append(up["first_step"] - decided)
            results["up_pause"].append(up["first_step"] - up["last_old_step"])
            wait_steps(audit, 10)
            decided = time.time()
            cluster.remove_worker(sig=signal.SIGTERM)
            down = wait_for_new_world(audit, args.workers, decided)
            results["down"].append(down["first_step"] - decided)
            print(
                f"round {i + 1}: scale-up {results['up'][-1]:.2f} s "
                f"(pause {results['up_pause'][-1]:.2f} s), "
                f"scale-down {results['down'][-1]:.2f} s",
                flush=True,
            )
            wait_steps(audit, 10)
        if args.sigkill:
            decided = time.time()
            cluster.add_worker()
            wait_for_new_world(audit, args.workers + 1, decided)
            wait_steps(audit, 10)
            decided = time.time()
            cluster.remove_worker(sig=signal.SIGKILL)
            results["kill"].append(
                wait_for_new_world(audit, args.workers, decided)["first_step"] - decided
            )
            print(f"SIGKILL scale-down {results['kill'][-1]:.2f} s", flush=True)

    def show(name: str, values: list[float]) -> str:
        if not values:
            return ""
        return (
            f"{name:<28} median {statistics.median(values):5.2f} s  "
            f"min {min(values):5.2f} s  max {max(values):5.2f} s  (n={len(values)})"
        )

    mode = "baseline (torchrun stock)" if args.baseline else "trainscale agent"
    print(f"\n{mode}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    for name, key in (
        ("scale-up decision->step", "up"),
        ("scale-up training pause", "up_pause"),
        ("scale-down decision->step", "down"),
        ("SIGKILL decision->step", "kill"),
    ):
        line = show(name, results[key])
        if line:
            print(line)
    print(f"logs: {base}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
