"""One optimizer step on the same global batch gives the same weights at world sizes 1, 2 and 3.

Covers the gradient scale of the constant global batch: each rank weights its micro-batch
losses by ``(b - a) * world_size / step.size`` and DDP averages over the ranks, so the
gradient is the mean over the whole global batch whatever the world size (uneven shares and
gradient accumulation included). Each world is a real gloo process group on the CPU running
the trainer's own loop (:func:`~trainscale.trainer.runtime.worker.train`) for one step; the
weights are compared from each world's final checkpoint.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.support.gloo_rank import run_rank
from trainscale.trainer.launch.local import find_free_port
from trainscale.trainer.runtime.checkpoint import load_newest_checkpoint

pytestmark = pytest.mark.slow

# 10 samples per step: shares 10 | 5+5 | 3+3+4, micro-batches of 3 (gradient accumulation).
GLOBAL_BATCH, MICRO_BATCH, SAMPLES = 10, 3, 40


def _rank_main(rank: int, world_size: int, port: int, checkpoint_dir: str) -> None:
    """One rank of one world: the trainer's loop for one step; exits without teardown."""
    run_rank(
        rank,
        world_size,
        port,
        {"TRAINSCALE_CHECKPOINT_DIR": checkpoint_dir, "TRAINSCALE_SYNTHETIC_SAMPLES": str(SAMPLES)},
        task="trainscale.trainer.examples.synthetic:task",
        max_steps=1,
        global_batch_size=GLOBAL_BATCH,
        micro_batch_size=MICRO_BATCH,
        no_metrics=True,
        collective_timeout=60,
    )


def _one_step_weights(tmp_path: Path, worlds: tuple[int, ...]) -> dict[int, dict[str, Any]]:
    """Run one step in each world (all worlds at once); return each world's final weights."""
    ctx = multiprocessing.get_context("spawn")
    procs = {}
    for world_size in worlds:
        port = find_free_port()
        procs[world_size] = [
            ctx.Process(
                target=_rank_main, args=(r, world_size, port, str(tmp_path / str(world_size)))
            )
            for r in range(world_size)
        ]
        for proc in procs[world_size]:
            proc.start()
    weights = {}
    for world_size, group in procs.items():
        for proc in group:
            proc.join(timeout=240)
            if proc.is_alive():
                proc.kill()
        codes = [proc.exitcode for proc in group]
        assert codes == [0] * world_size, f"world {world_size}: exit codes {codes}"
        newest = load_newest_checkpoint(tmp_path / str(world_size))
        assert newest is not None and newest[1]["progress"]["global_step"] == 1
        weights[world_size] = dict(newest[1]["state"]["model"])
    return weights


def test_one_step_gives_the_same_weights_at_world_sizes_1_2_3(tmp_path: Path) -> None:
    weights = _one_step_weights(tmp_path, (1, 2, 3))
    from trainscale.trainer.examples.synthetic import task

    torch.manual_seed(0)
    initial = task().model.state_dict()
    for name, reference in weights[1].items():
        assert not torch.allclose(reference, initial[name]), f"{name}: the step changed nothing"
        for world in (2, 3):
            torch.testing.assert_close(
                weights[world][name],
                reference,
                rtol=1e-5,
                atol=1e-6,
                msg=lambda m, n=name, w=world: f"{n} at world {w} differs from world 1: {m}",
            )
