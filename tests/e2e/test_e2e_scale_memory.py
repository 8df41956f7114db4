"""Bounded memory: rounds of creating and deleting jobs leave nothing of them in the operator.

The operator runs as a process against the test-bed (kwok nodes) with /metrics on, cluster
arbitration on (its default). Each of ``ROUNDS`` rounds creates ``JOBS`` jobs at once (new
names each round, so state a round leaves behind is still there at the next round's check),
waits for their workers and loops, deletes them all at once and waits until the jobs and
their pods are gone. Then, through the operator's /metrics:

- no per-job series names a deleted job (managed pods, desired replicas, cost, conditions),
  the managed-jobs gauge counts none and no job loop is left;
- ``trainscale_operator_job_state_entries{store}`` — how many jobs each in-process store
  (the loops' wake-up events and status locks, the phases behind the managed-jobs gauge,
  the arbitration state) holds something for — is 0 in every store.

While the jobs run the same gauge counts ``JOBS`` in the wake-up and phase stores (so the
signal is live, not a constant 0). Once a round's deletions settle, the operator gives the
memory they freed back to the OS (``malloc_trim``; it logs ``RELEASE_LOG``, awaited before
the round's RSS is read: without it glibc kept a burst's freed chunks resident, see
docs/operator-scale.md). And the operator's resident memory (``VmRSS``) after the
last round exceeds that after the second by at most ``RSS_TOLERANCE_MIB``: the first round
is the warm-up (imports, kopf's caches, the allocator's arenas). The RSS check only catches
large leaks — a few KiB per job disappear in the allocator's noise at this size — so the
per-job state is the precise check, and ``benchmarks/operator_scale.py --rounds`` measures
RSS at hundreds of jobs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import OperatorProcess
from tests.e2e.test_e2e_loops import (
    LOOPS,
    create_jobs,
    jobs_left,
    jobs_with_a_worker,
    loops,
    operator_samples,
)
from tests.support.testbed import wait_for
from trainscale.operator.daemons.memory import MAX_DELAY_SECONDS, RELEASE_LOG
from trainscale.operator.observability.metric_names import (
    JOB_LABEL,
    JOB_STATE_NAME,
    MANAGED_JOBS_NAME,
    STORE_LABEL,
)
from trainscale.trainer.launch.local import find_free_port

pytestmark = [pytest.mark.testbed, pytest.mark.slow]

JOBS = 40
ROUNDS = 3
RSS_TOLERANCE_MIB = 8.0
# Stores that hold one entry per live job (the arbitration store holds only arbitrated,
# autoscaling jobs: none here, 0 throughout).
PER_JOB_STORES = ("wakeups", "phases")


def job_state(port: int) -> dict[str, float]:
    """Jobs held per in-process store (empty until the operator serves)."""
    return {
        s.labels[STORE_LABEL]: s.value for s in operator_samples(port) if s.name == JOB_STATE_NAME
    }


def leftovers(port: int, deleted: set[str]) -> list[str]:
    """Everything /metrics still shows of deleted jobs: series naming one, managed jobs, loops,
    per-job state."""
    found = []
    for sample in operator_samples(port):
        if sample.labels.get(JOB_LABEL) in deleted:
            found.append(f"{sample.name}{sample.labels}")
        elif sample.name in (MANAGED_JOBS_NAME, JOB_STATE_NAME) and sample.value:
            found.append(f"{sample.name}{sample.labels} = {sample.value}")
    found += [f"{loop} loops = {n}" for loop, n in loops(port).items() if n]
    return found


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


def pods_left(kubectl: Any, namespace: str) -> list[str]:
    out: str = kubectl("get", "pods", "-n", namespace, "-o", "name").stdout
    return out.split()


def releases(op: OperatorProcess) -> list[str]:
    """The operator's log lines saying it gave freed memory back to the OS."""
    text = op.log_path.read_text(errors="replace")
    return [line for line in text.splitlines() if RELEASE_LOG in line]


def run_round(kubectl: Any, namespace: str, port: int, names: list[str], deleted: set[str],
              describe: Callable[[], str], op: OperatorProcess) -> None:  # fmt: skip
    """Create ``names`` at once, wait for their workers and loops, delete them all at once and
    wait until nothing is left of them (``deleted`` grows by ``names``) and the operator has
    given the memory they freed back to the OS."""
    create_jobs(kubectl, namespace, names)
    wait_for(lambda: jobs_with_a_worker(kubectl, namespace) >= set(names), timeout=240,
             interval=1.0, what=f"a worker for each of {len(names)} jobs", describe=describe)  # fmt: skip
    wait_for(lambda: loops(port) == dict.fromkeys(LOOPS, len(names)), timeout=60, interval=0.5,
             what=f"{len(names)} loops of each kind", describe=describe)  # fmt: skip
    state = job_state(port)
    assert all(state.get(store) == len(names) for store in PER_JOB_STORES), state

    released_before = len(releases(op))
    kubectl("delete", "tj", "--all", "-n", namespace, "--wait=false", timeout=120)
    deleted |= set(names)
    wait_for(lambda: not jobs_left(kubectl, namespace) and not pods_left(kubectl, namespace),
             timeout=240, interval=1.0, what="jobs and pods gone", describe=describe)  # fmt: skip
    wait_for(lambda: not leftovers(port, deleted), timeout=60, interval=0.5,
             what="nothing left of the deleted jobs", describe=describe)  # fmt: skip
    # Once the deletions settle (QUIET_SECONDS, at most MAX_DELAY_SECONDS after the first).
    wait_for(lambda: len(releases(op)) > released_before, timeout=MAX_DELAY_SECONDS + 60,
             interval=0.5, what="freed memory given back after the deletions",
             describe=describe)  # fmt: skip


def test_create_delete_rounds_leave_no_per_job_state_and_rss_flat(
    kubectl: Any, private_operator: tuple[str, Callable[..., OperatorProcess]]
) -> None:
    namespace, start = private_operator
    port = find_free_port()
    op = start("--metrics-port", str(port), "--metrics-address", "127.0.0.1")
    assert op.proc is not None
    deleted: set[str] = set()

    def describe() -> str:
        return f"left: {leftovers(port, deleted)}\n{op.log_tail()}"

    rss: list[float] = []
    for round_ in range(ROUNDS):
        run_round(kubectl, namespace, port, [f"mem{round_}-{i}" for i in range(JOBS)], deleted,
                  describe, op)  # fmt: skip
        rss.append(rss_mib(op.proc.pid))

    # The last round's pod deletions have all been seen by now (its jobs' state went to 0
    # after its pods were gone); nothing came back since.
    assert not leftovers(port, deleted), describe()
    print(f"operator RSS after each of {ROUNDS} rounds of {JOBS} jobs: "
          + ", ".join(f"{v:.1f}" for v in rss) + " MiB")  # fmt: skip
    print("\n".join(releases(op)))
    assert rss[-1] - rss[1] <= RSS_TOLERANCE_MIB, (rss, json.dumps(job_state(port)))
