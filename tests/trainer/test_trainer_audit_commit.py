"""A rank killed after its step's gradient all-reduce has its audit record written.

Why: a peer that survives commits the step (its all-reduce completed), and when its next
collective fails it saves that step (``emergency_save``). The next world resumes after it, so
the step is in the final model's history, and the exactly-once data-order proof needs every
rank's record of it. The trainer writes each rank's record before the backward whose
collective commits the step, so there is no window in which a rank has contributed its
gradients but not its record. (Seen in CI once: the real-loop test's SIGKILL landed in that
window, and step 329 had rank 0's record only.)

Two real gloo ranks run the trainer's own loop (:func:`~trainscale.trainer.runtime.worker.train`)
on the synthetic task. Rank 1's optimizer SIGKILLs its own process at step ``KILL_AT``: after
the all-reduce of that step, before anything else of the step.
"""

from __future__ import annotations

import dataclasses
import itertools
import multiprocessing
import os
import signal
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.support.gloo_rank import run_rank
from trainscale.trainer.contract.audit import read_audit
from trainscale.trainer.launch.local import find_free_port
from trainscale.trainer.runtime.checkpoint import load_newest_checkpoint
from trainscale.trainer.runtime.task import Task

pytestmark = pytest.mark.slow

KILL_AT = 3  # the optimizer step at which rank 1 dies
SAMPLES, GLOBAL_BATCH = 640, 32


def task() -> Task:
    """The synthetic task, with an optimizer that SIGKILLs rank 1 at its ``KILL_AT``-th step."""
    from trainscale.trainer.examples import synthetic

    base = synthetic.task()

    def optimizer(params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        opt = base.optimizer(params)
        step, calls = opt.step, itertools.count(1)

        def dying_step(*args: Any, **kwargs: Any) -> Any:
            if os.environ["RANK"] == "1" and next(calls) == KILL_AT:
                os.kill(os.getpid(), signal.SIGKILL)
            return step(*args, **kwargs)

        opt.step = dying_step  # type: ignore[method-assign]
        return opt

    return dataclasses.replace(base, optimizer=optimizer)


def _rank_main(rank: int, port: int, checkpoints: str, audit: str) -> None:
    env = {
        "TRAINSCALE_CHECKPOINT_DIR": checkpoints,
        "TRAINSCALE_AUDIT_LOG_DIR": audit,
        "TRAINSCALE_SYNTHETIC_SAMPLES": str(SAMPLES),
    }
    run_rank(rank, 2, port, env, task=f"{__name__}:task", global_batch_size=GLOBAL_BATCH,
             no_metrics=True, collective_timeout=60)  # fmt: skip


def test_a_rank_killed_after_the_all_reduce_left_its_record(tmp_path: Path) -> None:
    checkpoints, audit = tmp_path / "ckpt", tmp_path / "audit"
    ctx = multiprocessing.get_context("spawn")
    port = find_free_port()
    procs = [
        ctx.Process(target=_rank_main, args=(r, port, str(checkpoints), str(audit)))
        for r in range(2)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=240)
        if proc.is_alive():
            proc.kill()
    assert procs[1].exitcode == -signal.SIGKILL, [p.exitcode for p in procs]
    assert procs[0].exitcode != 0, "rank 0 must see its peer die"
    # Rank 0 committed the step rank 1 died in, and saved it: it is in the history.
    newest = load_newest_checkpoint(checkpoints)
    assert newest is not None
    saved = newest[1]["progress"]["global_step"]
    assert saved == KILL_AT, saved
    ranks: dict[int, set[int]] = {}
    for entry in read_audit(audit):
        ranks.setdefault(entry["step"], set()).add(entry["rank"])
    missing = {step: sorted({0, 1} - ranks.get(step, set())) for step in range(1, saved + 1)}
    assert all(not m for m in missing.values()), f"records missing (step: ranks): {missing}"
