"""A worker told to stop gets the pod's grace period to checkpoint, not torchrun's 30 s.

torchrun's agent SIGTERMs its workers and SIGKILLs them 30 s later (pytorch issue 119856),
whatever the pod's ``terminationGracePeriodSeconds``: a checkpoint that takes longer is lost.
The operator sets ``PET_SHUTDOWN_TIMEOUT`` from the pod's grace period
(:func:`trainscale.trainer.contract.environment.shutdown_timeout_for_grace`) and the agent
honours it. Here a one-worker job is SIGTERMed in the middle of a step that takes
``SLOW_STEP_MS`` (longer than 30 s): the worker finishes the step, checkpoints it and exits,
and the agent waited for it. Without the agent passing the timeout on, the worker is killed
at 30 s and the last checkpoint is older than the last step trained.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.support.audit import read_audit
from trainscale.trainer.contract import environment as env_names
from trainscale.trainer.launch.local import LocalCluster, LocalClusterConfig
from trainscale.trainer.runtime.checkpoint import list_checkpoints

pytestmark = pytest.mark.slow

TORCHRUN_DEFAULT_SECONDS = 30
SLOW_STEP_MS = 36_000  # the step in flight at SIGTERM: longer than torchrun's 30 s
GRACE_SECONDS = 75  # the pod's terminationGracePeriodSeconds


def test_a_stop_longer_than_torchruns_30_s_completes_within_the_pods_grace(
    tmp_path: Path,
) -> None:
    delay = tmp_path / "delay-ms"
    delay.write_text("20")
    audit, ckpt = tmp_path / "audit", tmp_path / "ckpt"
    timeout = env_names.shutdown_timeout_for_grace(GRACE_SECONDS)
    config = LocalClusterConfig(
        worker_args=(
            "--task", "trainscale.trainer.examples.synthetic:task", "--epochs", "1000",
            "--global-batch-size", "32", "--checkpoint-every-steps", "100000",
        ),
        min_workers=1,
        max_workers=1,
        checkpoint_dir=ckpt,
        env={
            "TRAINSCALE_AUDIT_LOG_DIR": str(audit),
            "TRAINSCALE_SYNTHETIC_DELAY_FILE": str(delay),
            "OMP_NUM_THREADS": "1",
            env_names.PET_SHUTDOWN_TIMEOUT: str(timeout),
        },
    )  # fmt: skip
    with LocalCluster(config, log_dir=tmp_path / "logs") as cluster:
        cluster.start(1)
        deadline = time.monotonic() + 120
        while not read_audit(audit) or max(e["step"] for e in read_audit(audit)) < 3:
            assert time.monotonic() < deadline, "no training steps"
            time.sleep(0.1)
        delay.write_text(str(SLOW_STEP_MS))
        time.sleep(1.0)  # a step takes 20 ms: the worker is now inside the slow one
        trained = max(e["step"] for e in read_audit(audit))
        signalled = time.monotonic()
        cluster.remove_worker(sig=signal.SIGTERM, timeout=GRACE_SECONDS)
        stopped_after = time.monotonic() - signalled
    logs = "\n".join(p.read_text(errors="replace")[-2000:] for p in (tmp_path / "logs").glob("*"))
    last_step = max(e["step"] for e in read_audit(audit))
    saved = [step for step, _ in list_checkpoints(ckpt)]
    assert stopped_after > TORCHRUN_DEFAULT_SECONDS, (stopped_after, logs)
    assert stopped_after < timeout + 10, (stopped_after, logs)
    # The slow step finished and is the one checkpointed: nothing trained was lost.
    assert last_step == trained + 1, (trained, last_step, logs)
    assert saved and saved[0] == last_step, (saved, last_step, logs)
