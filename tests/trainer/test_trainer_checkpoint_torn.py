"""A checkpoint being written is invisible until it is complete (deterministic, no timing).

Covers the temp-file-and-rename guarantee of :mod:`trainscale.trainer.runtime.checkpoint`:
the real background :class:`~trainscale.trainer.runtime.checkpoint.CheckpointWriter` is held
in the middle of writing step 2's bytes (``torch.save`` writes through a file object that
blocks on an event after the first megabyte); while it is held, the final path of step 2
does not exist, ``list_checkpoints`` does not list it and the newest loadable checkpoint is
still step 1. Released, step 2 becomes visible whole.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from trainscale.trainer.runtime import checkpoint as ck

PAUSE_AFTER_BYTES = 1 << 20


class _PausingFile:
    """A file object that stops in the middle of the write, once, until released."""

    def __init__(self, fh: Any, paused: threading.Event, release: threading.Event) -> None:
        self._fh, self._paused, self._release = fh, paused, release
        self.written = 0

    def write(self, data: Any) -> int:
        count = self._fh.write(data)
        self.written += count
        if self.written >= PAUSE_AFTER_BYTES and not self._paused.is_set():
            self._paused.set()
            assert self._release.wait(timeout=60), "the test never released the writer"
        return int(count)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)


def test_checkpoint_mid_write_is_invisible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = ck.CheckpointWriter(tmp_path, keep=3, background=True)
    writer.save(1, {"w": torch.zeros(8)}, wait=True)

    paused, release = threading.Event(), threading.Event()
    real_save = torch.save
    files: list[_PausingFile] = []

    def pausing_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        files.append(_PausingFile(f, paused, release))
        real_save(obj, files[-1], *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch, "save", pausing_save)
    # Two tensors of 2 MB each: the pause comes after the first one's bytes.
    payload = {"a": torch.arange(500_000, dtype=torch.float32), "b": torch.ones(500_000)}
    writer.save(2, payload)  # on the background thread
    try:
        assert paused.wait(timeout=60), "the writer never reached the middle of the file"
        assert PAUSE_AFTER_BYTES <= files[0].written < 4_000_000
        final = tmp_path / ck.build_checkpoint_name(2)
        assert not final.exists(), "a half-written checkpoint is visible under its final name"
        assert [step for step, _ in ck.list_checkpoints(tmp_path)] == [1]
        newest = ck.load_newest_checkpoint(tmp_path)
        assert newest is not None and newest[1]["step"] == 1
        assert torch.equal(newest[1]["w"], torch.zeros(8))
    finally:
        release.set()
        writer.wait()
    assert [step for step, _ in ck.list_checkpoints(tmp_path)] == [2, 1]
    newest = ck.load_newest_checkpoint(tmp_path)
    assert newest is not None and newest[1]["step"] == 2
    assert torch.equal(newest[1]["a"], payload["a"]) and torch.equal(newest[1]["b"], payload["b"])


def test_a_write_in_flight_is_the_last_save_for_the_next_due_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every 2 steps means steps 1, 3, 5...: a background write of step 1 still on disk at
    step 2 must not make step 2 look due (the slow write would then shift every checkpoint,
    seen as a flaky metrics test on a loaded machine)."""
    from trainscale.trainer.runtime.elastic import ElasticSession
    from trainscale.trainer.runtime.settings import CheckpointPolicy

    release = threading.Event()
    started: list[int] = []
    real_save = ck.save_checkpoint

    def slow_save(directory: Path, step: int, payload: Any, keep: int) -> Path:
        started.append(step)
        release.wait(timeout=60)
        return real_save(directory, step, payload, keep)

    monkeypatch.setattr(ck, "save_checkpoint", slow_save)
    policy = CheckpointPolicy(directory=tmp_path, every_steps=2, interval_seconds=None)
    model = torch.nn.Linear(2, 1)
    session = ElasticSession(dataset_length=40, objects={"model": model}, epochs=1, policy=policy)
    releaser = threading.Timer(3.0, release.set)  # never a deadlock, whatever the code does
    releaser.start()
    try:
        for step in (1, 2):  # step 1's write is held while step 2 ends
            session.global_step = step
            session.coordinate(0.0, 8)
        release.set()
        session.global_step = 3
        session.coordinate(0.0, 8)
        session.wait_for_checkpoint()
    finally:
        release.set()
        releaser.cancel()
    assert started == [1, 3]
    assert [s for s, _ in ck.list_checkpoints(tmp_path)] == [3, 1]
