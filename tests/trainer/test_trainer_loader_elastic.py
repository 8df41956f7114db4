"""Loader workers across resizes: a real elastic job with ``--loader-workers 2`` loses nothing.

One local job (real torchrun agents, gloo, the synthetic task, two DataLoader worker
processes per rank driven by the elastic batch sampler) goes 2 -> 3 workers (scale-up) -> 2
(SIGTERM, like a deleted pod) and must finish. The audit records the dataset indices each
rank's loader actually delivered, so the checks below are about the loader path:

- the job exits 0 at its target step, having trained at world sizes 2, 3, 2;
- every sample of every epoch was trained exactly once (tests/support/audit.py);
- the graceful resizes redo no step;
- no process outlives the job (loader workers die with their training process).
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.audit import assert_exact_data_order, read_audit
from trainscale.trainer.launch.local import LocalCluster, LocalClusterConfig
from trainscale.trainer.runtime.checkpoint import list_checkpoints

pytestmark = pytest.mark.slow

SAMPLES, BATCH, EPOCHS = 1024, 32, 2
SLOW_MS, FAST_MS = "250", "20"  # per micro-batch: while a resize is under way / otherwise
TOTAL_STEPS = EPOCHS * SAMPLES // BATCH
#: The run's directory, the job's exit code, the processes still holding its files at the end.
LoaderRun = tuple[Path, int, list[int]]


def _wait(audit: Path, what: str, pred: Callable[[list[dict[str, Any]]], bool]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        entries = read_audit(audit)
        if entries and pred(entries):
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; logs in {audit.parent / 'logs'}")


def _world_since(size: int, since: float) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda entries: any(e["world_size"] == size and e["time"] > since for e in entries)


def _worlds(entries: list[dict[str, Any]]) -> list[tuple[int, int, int]]:
    """(size, first step, last step) of each successive world."""
    worlds: dict[str, list[Any]] = {}
    for e in entries:
        w = worlds.setdefault(e["world_id"], [e["time"], e["world_size"], e["step"], e["step"]])
        w[0], w[2], w[3] = min(w[0], e["time"]), min(w[2], e["step"]), max(w[3], e["step"])
    return [(size, first, last) for _, size, first, last in sorted(worlds.values())]


def _holders(directory: Path) -> list[int]:
    """Pids of the processes with a file under ``directory`` open (their logs, say)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:  # gone, or not ours to read
            continue
        if any(link.startswith(str(directory)) for link in links):
            pids.append(int(pid))
    return pids


def _left_behind(directory: Path) -> list[int]:
    deadline = time.monotonic() + 30
    while (pids := _holders(directory)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return pids


@pytest.fixture(scope="module")
def loader_run(tmp_path_factory: pytest.TempPathFactory) -> LoaderRun:
    base = tmp_path_factory.mktemp("loader-elastic")
    audit, delay = base / "audit", base / "delay-ms"
    config = LocalClusterConfig(
        worker_args=(
            "--task", "trainscale.trainer.examples.synthetic:task",
            "--epochs", str(EPOCHS), "--global-batch-size", str(BATCH),
            "--micro-batch-size", "8", "--checkpoint-every-steps", "10",
            "--loader-workers", "2", "--no-metrics",
        ),
        # Every world here has 2 or more workers; on a loaded machine an agent back first
        # from a resize would otherwise train alone (seen: worlds 2, 3, 1, 2, 3, 2).
        min_workers=2,
        checkpoint_dir=base / "ckpt",
        env={
            "TRAINSCALE_AUDIT_LOG_DIR": str(audit),
            "TRAINSCALE_SYNTHETIC_SAMPLES": str(SAMPLES),
            "TRAINSCALE_SYNTHETIC_DELAY_FILE": str(delay),
            "OMP_NUM_THREADS": "1",
        },
    )  # fmt: skip
    delay.write_text(FAST_MS)
    with LocalCluster(config, log_dir=base / "logs") as cluster:
        cluster.start(2)
        _wait(audit, "first steps", lambda e: max(x["step"] for x in e) >= 5)
        delay.write_text(SLOW_MS)
        since = time.time()
        cluster.add_worker()
        _wait(audit, "world 3", _world_since(3, since))
        delay.write_text(FAST_MS)
        step = max(e["step"] for e in read_audit(audit))
        _wait(audit, "progress at 3", lambda e: max(x["step"] for x in e) >= step + 3)
        delay.write_text(SLOW_MS)
        since = time.time()
        cluster.remove_worker(sig=signal.SIGTERM)
        _wait(audit, "world 2 after SIGTERM", _world_since(2, since))
        delay.write_text(FAST_MS)
        code = cluster.wait(timeout=180)
    return base, code, _left_behind(base)


def test_job_with_loader_workers_finishes_through_resizes(loader_run: LoaderRun) -> None:
    base, code, _ = loader_run
    assert code == 0, f"logs in {base / 'logs'}"
    assert list_checkpoints(base / "ckpt")[0][0] == TOTAL_STEPS
    entries = read_audit(base / "audit")
    assert {e["loader_workers"] for e in entries} == {2}
    worlds = _worlds(entries)
    assert [size for size, _, _ in worlds] == [2, 3, 2], worlds
    redone = [prev[2] - (nxt[1] - 1) for prev, nxt in itertools.pairwise(worlds)]
    assert redone == [0, 0], redone


def test_loader_workers_keep_the_exact_data_order(loader_run: LoaderRun) -> None:
    base, _, _ = loader_run
    assert_exact_data_order(read_audit(base / "audit"), dataset_length=SAMPLES, epochs=EPOCHS)


def test_no_process_outlives_the_job(loader_run: LoaderRun) -> None:
    _, _, left = loader_run
    assert left == [], f"processes still running after the job: {left}"
