"""Checkpoints: atomic, pruned, always loadable — even when the writer is killed mid-write.

Covers:
- names sort like steps; only checkpoint names are pruned, the newest ``keep`` survive;
- the periodic trigger (steps or seconds, never twice for one step) as a decision table;
- an exception in the middle of a write leaves the previous checkpoint and no temporary;
- a writer process SIGKILLed at random moments never leaves an unloadable newest checkpoint;
- stale temporaries are removed, a corrupt file is skipped in favour of an older one;
- the background writer saves a snapshot (later mutations do not leak into the file).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from trainscale.trainer.runtime import checkpoint as ck


def test_names_sort_like_steps_and_prune_keeps_newest() -> None:
    names = [ck.build_checkpoint_name(s) for s in (3, 100, 20, 7)] + [".step-x.pt.tmp-1", "a"]
    assert sorted(n for n in names if ck.parse_checkpoint_step(n) is not None) == [
        ck.build_checkpoint_name(s) for s in (3, 7, 20, 100)
    ]
    assert sorted(ck.decide_checkpoints_to_prune(names, keep=2)) == [
        ck.build_checkpoint_name(3),
        ck.build_checkpoint_name(7),
    ]
    with pytest.raises(ck.CheckpointError, match="keep"):
        ck.decide_checkpoints_to_prune(names, keep=0)


@pytest.mark.parametrize(
    ("kwargs", "due"),
    [
        pytest.param(dict(now=10, step=5, last_save_time=0, last_save_step=0,
                          interval_seconds=None, every_steps=5), True, id="steps-due"),
        pytest.param(dict(now=10, step=4, last_save_time=0, last_save_step=0,
                          interval_seconds=None, every_steps=5), False, id="steps-not-yet"),
        pytest.param(dict(now=30, step=1, last_save_time=0, last_save_step=0,
                          interval_seconds=30, every_steps=None), True, id="time-due"),
        pytest.param(dict(now=29, step=1, last_save_time=0, last_save_step=0,
                          interval_seconds=30, every_steps=None), False, id="time-not-yet"),
        pytest.param(dict(now=99, step=5, last_save_time=0, last_save_step=5,
                          interval_seconds=1, every_steps=1), False, id="same-step"),
        pytest.param(dict(now=99, step=9, last_save_time=0, last_save_step=0,
                          interval_seconds=None, every_steps=None), False, id="disabled"),
    ],
)  # fmt: skip
def test_checkpoint_due_table(kwargs: dict, due: bool) -> None:
    assert ck.decide_checkpoint_due(**kwargs) is due


def test_exception_mid_write_keeps_previous(tmp_path: Path) -> None:
    ck.save_checkpoint(tmp_path, 1, {"w": torch.ones(3)}, keep=3)

    def broken(fh) -> None:
        fh.write(b"half a checkpoint")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        ck.write_atomically(tmp_path / ck.build_checkpoint_name(2), broken)
    assert sorted(os.listdir(tmp_path)) == [ck.build_checkpoint_name(1)]
    path, doc = ck.load_newest_checkpoint(tmp_path) or (None, None)
    assert path == tmp_path / ck.build_checkpoint_name(1) and doc["step"] == 1


_WRITER = textwrap.dedent(
    """
    import sys, torch
    from pathlib import Path
    from trainscale.trainer.runtime.checkpoint import save_checkpoint
    big = torch.arange(4_000_000, dtype=torch.float32)  # 16 MB: kills land mid-write
    step = int(sys.argv[2])
    while True:
        step += 1
        save_checkpoint(Path(sys.argv[1]), step, {"w": big + step}, keep=2)
        print(step, flush=True)
    """
)


@pytest.mark.slow
def test_sigkill_at_random_moments_never_corrupts(tmp_path: Path) -> None:
    env = dict(os.environ)
    rng = torch.Generator().manual_seed(0)
    last_step = 0
    for _ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(tmp_path), str(last_step)],
            stdout=subprocess.PIPE,
            env=env,
        )
        assert proc.stdout is not None
        proc.stdout.readline()  # at least one complete checkpoint of this writer
        time.sleep(float(torch.rand(1, generator=rng)) * 0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        newest = ck.load_newest_checkpoint(tmp_path)
        assert newest is not None
        _path, doc = newest
        assert doc["step"] > last_step
        assert torch.equal(doc["w"], torch.arange(4_000_000, dtype=torch.float32) + doc["step"])
        assert len(ck.list_checkpoints(tmp_path)) <= 3  # keep=2, plus one being pruned
        last_step = doc["step"]
    ck.remove_stale_temporaries(tmp_path)
    assert all(ck.parse_checkpoint_step(n) is not None for n in os.listdir(tmp_path))


def test_corrupt_newest_falls_back_to_older(tmp_path: Path) -> None:
    ck.save_checkpoint(tmp_path, 1, {"w": torch.zeros(2)}, keep=5)
    (tmp_path / ck.build_checkpoint_name(2)).write_bytes(b"not a checkpoint")
    newest = ck.load_newest_checkpoint(tmp_path)
    assert newest is not None and newest[1]["step"] == 1
    with pytest.raises(ck.CheckpointError, match="unreadable"):
        ck.load_checkpoint(tmp_path / ck.build_checkpoint_name(2))


def test_keep_last_k(tmp_path: Path) -> None:
    for step in range(1, 6):
        ck.save_checkpoint(tmp_path, step, {}, keep=2)
    assert [s for s, _ in ck.list_checkpoints(tmp_path)] == [5, 4]


def test_background_writer_saves_a_snapshot(tmp_path: Path) -> None:
    saved: list[tuple[int, float]] = []
    writer = ck.CheckpointWriter(tmp_path, keep=2, on_saved=lambda s, t: saved.append((s, t)))
    weights = torch.zeros(1000)
    writer.save(7, {"w": weights})
    weights += 1  # training goes on while the thread writes
    writer.wait()
    doc = ck.load_checkpoint(tmp_path / ck.build_checkpoint_name(7))
    assert torch.equal(doc["w"], torch.zeros(1000))
    assert [s for s, _ in saved] == [7] and writer.last_saved_step == 7


def test_background_failure_surfaces_on_wait(tmp_path: Path) -> None:
    target = tmp_path / "file-not-dir"
    target.write_text("x")
    writer = ck.CheckpointWriter(target, keep=1)
    writer.save(1, {})
    with pytest.raises(ck.CheckpointError, match="background checkpoint write failed"):
        writer.wait()
