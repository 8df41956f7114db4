"""FSDP2 with sharded checkpoints on CPU (gloo): resharding, and a real elastic 2 -> 3 -> 2 run.

- An FSDP job with gradient accumulation is refused with a clear error (exit 78).
- A checkpoint saved asynchronously at world size 2 (training going on while it is written)
  loads at world size 3 into a model with other weights: the full model and Adam state equal
  those of the save moment (``tests/support/fsdp_reshard.py`` under torchrun).
- One local job (real agents, the FSDP example task) goes 2 -> 3 workers (scale-up) -> 2
  (SIGTERM, like a deleted pod) -> 3 -> 2 (SIGKILL, like a node failure) and finishes:
  * it exits 0 having trained at world sizes 2, 3, 2, 3, 2; every checkpoint is sharded;
  * exact data order: within every epoch each sample is trained on exactly once;
  * the graceful resizes redo no step (every rank writes its shard at the stop, then all
    exit); the SIGKILL redoes at most the steps since the newest published checkpoint;
  * the loss keeps falling: no jump after a resize (the resharded state is the trained
    one), and the end is far below the start;
  * the newest checkpoint is loadable at every moment (polled during the run).
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.audit import assert_exact_data_order, lineage, read_audit
from trainscale.trainer.launch.local import LocalCluster, LocalClusterConfig, find_free_port
from trainscale.trainer.runtime.checkpoint import (
    CheckpointError,
    is_sharded_checkpoint,
    list_checkpoints,
    load_checkpoint,
)
from trainscale.trainer.runtime.elastic import FATAL_EXIT_CODE

from .test_trainer_elastic import ElasticRun, _last_step, _wait, _world_since, _worlds

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SAMPLES, BATCH, EPOCHS, EVERY = 1536, 48, 6, 8
SLOW_MS, FAST_MS = "250", "20"  # per step: while a resize is under way / otherwise
TOTAL_STEPS = EPOCHS * SAMPLES // BATCH


def _torchrun(nproc: int, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone",
         f"--nproc-per-node={nproc}", str(REPO / "tests/support/fsdp_reshard.py"), *args],
        capture_output=True, text=True, timeout=240, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_checkpoint_saved_at_two_loads_at_three(tmp_path: Path) -> None:
    assert "RESHARD OK 2" in _torchrun(2, "save", str(tmp_path))
    assert "RESHARD OK 3" in _torchrun(3, "load", str(tmp_path))


def test_fsdp_with_gradient_accumulation_is_refused(tmp_path: Path) -> None:
    """Unequal micro-batch counts would hang FSDP's collectives: a clear error, and the
    worker exits 78 (configuration error: its agent does not retry)."""
    env = {**os.environ, "WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(find_free_port()),
           "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "trainscale.trainer", "--task",
         "trainscale.trainer.examples.fsdp:task", "--micro-batch-size", "16", "--no-metrics"],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert result.returncode != 0, result.stderr[-2000:]
    assert f"failed (exitcode: {FATAL_EXIT_CODE})" in result.stderr, result.stderr[-2000:]
    assert "micro-batch 16 < share 48" in result.stderr


def _poll_checkpoints(run: ElasticRun, stop: threading.Event) -> None:
    """Load the newest checkpoint's document over and over (a sharded one can be pruned
    between listing and loading: then it no longer exists)."""
    while not stop.is_set():
        for _, path in list_checkpoints(run.checkpoints)[:1]:
            try:
                load_checkpoint(path)
                run.checkpoint_loads += 1
            except CheckpointError as exc:
                if path.exists():
                    run.checkpoint_failures.append(str(exc))
        time.sleep(0.05)


def _pace(run: ElasticRun, ms: str) -> None:
    (run.base / "delay-ms").write_text(ms)


def _resize(run: ElasticRun, change: Callable[[], object], size: int, then_steps: int) -> None:
    """Slow the job down, make one membership change, wait for the new world size, then for
    ``then_steps`` steps in it at full speed."""
    _pace(run, SLOW_MS)
    since = time.time()
    change()
    _wait(run, f"world {size}", _world_since(size, since))
    _pace(run, FAST_MS)
    step = _last_step(read_audit(run.audit))
    _wait(run, f"progress at {size}", lambda e: _last_step(e) >= step + then_steps)


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory: pytest.TempPathFactory) -> ElasticRun:
    run = ElasticRun(base=tmp_path_factory.mktemp("fsdp"))
    config = LocalClusterConfig(
        worker_args=(
            "--task", "trainscale.trainer.examples.fsdp:task",
            "--epochs", str(EPOCHS), "--checkpoint-every-steps", str(EVERY),
            "--checkpoint-keep", "2", "--no-metrics",
        ),
        min_workers=2,  # on a loaded machine the first agent would otherwise train alone
        checkpoint_dir=run.checkpoints,
        env={"TRAINSCALE_SYNTHETIC_SAMPLES": str(SAMPLES), "OMP_NUM_THREADS": "1",
             "TRAINSCALE_AUDIT_LOG_DIR": str(run.audit),
             "TRAINSCALE_SYNTHETIC_DELAY_FILE": str(run.base / "delay-ms")},
    )  # fmt: skip
    stop = threading.Event()
    poller = threading.Thread(target=_poll_checkpoints, args=(run, stop), daemon=True)
    poller.start()
    _pace(run, FAST_MS)
    with LocalCluster(config, log_dir=run.base / "logs") as cluster:
        cluster.start(2)
        _wait(run, "first steps", lambda e: _last_step(e) >= 12)
        _resize(run, cluster.add_worker, size=3, then_steps=12)
        _resize(run, lambda: cluster.remove_worker(sig=signal.SIGTERM), size=2, then_steps=1)
        _resize(run, cluster.add_worker, size=3, then_steps=12)
        _resize(run, lambda: cluster.remove_worker(sig=signal.SIGKILL), size=2, then_steps=1)
        run.exit_code = cluster.wait(timeout=240)
    stop.set()
    poller.join()
    return run


def _step_loss(history: dict[int, list[dict[str, Any]]], step: int) -> float:
    records = history[step]
    n = sum(len(r["ids"]) for r in records)
    return sum(r["loss"] * len(r["ids"]) for r in records) / n


def test_fsdp_job_finishes_after_resizes(fsdp_run: ElasticRun) -> None:
    assert fsdp_run.exit_code == 0, f"logs in {fsdp_run.base / 'logs'}"
    checkpoints = list_checkpoints(fsdp_run.checkpoints)
    assert checkpoints[0][0] == TOTAL_STEPS
    assert all(is_sharded_checkpoint(path) for _, path in checkpoints), checkpoints
    assert load_checkpoint(checkpoints[0][1])["progress"]["epoch"] == EPOCHS
    sizes = [w["size"] for w in _worlds(read_audit(fsdp_run.audit))]
    assert sizes == [2, 3, 2, 3, 2], sizes


def test_fsdp_exact_data_order_across_resizes(fsdp_run: ElasticRun) -> None:
    assert_exact_data_order(read_audit(fsdp_run.audit), dataset_length=SAMPLES, epochs=EPOCHS)


def test_fsdp_graceful_resizes_redo_no_step(fsdp_run: ElasticRun) -> None:
    worlds = _worlds(read_audit(fsdp_run.audit))
    redone = [prev["last"] - (nxt["first"] - 1) for prev, nxt in itertools.pairwise(worlds)]
    assert redone[:3] == [0, 0, 0], redone
    # SIGKILL: a sharded checkpoint needs every rank, so the survivors resume from the newest
    # published one: at most the steps since the last periodic save (and one in flight).
    assert 0 <= redone[3] < 2 * EVERY, redone


def test_fsdp_loss_keeps_falling(fsdp_run: ElasticRun) -> None:
    history = lineage(read_audit(fsdp_run.audit))
    for world in _worlds(read_audit(fsdp_run.audit))[1:]:
        before = sum(_step_loss(history, s) for s in range(world["first"] - 3, world["first"]))
        after = sum(_step_loss(history, s) for s in range(world["first"], world["first"] + 3))
        assert after < 3 * before, (world, before / 3, after / 3)  # a reset model: 8-80x
    first = sum(_step_loss(history, s) for s in range(1, 11)) / 10
    last = sum(_step_loss(history, s) for s in range(TOTAL_STEPS - 9, TOTAL_STEPS + 1)) / 10
    assert last < 0.3 * first, (first, last)


def test_fsdp_newest_checkpoint_always_loadable(fsdp_run: ElasticRun) -> None:
    assert fsdp_run.checkpoint_failures == []
    assert fsdp_run.checkpoint_loads > 10
