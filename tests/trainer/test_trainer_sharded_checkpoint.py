"""Sharded (DCP) checkpoints: visible only when complete, asynchronous, resumable (one process).

Covers :mod:`trainscale.trainer.runtime.sharded_checkpoint` and its use by the session:
- an asynchronous save returns while its shards are still being written (the real DCP
  ``FileSystemWriter`` held mid-write by an event, deterministic); meanwhile the checkpoint is
  not listed under its final name and the newest loadable one is the previous step; the
  training thread changes the weights, and the released checkpoint still holds the values
  of the moment ``save`` was called;
- names, listing and pruning cover files and sharded directories alike; a temporary
  directory left by a world killed mid-write is removed and never listed;
- a session with ``sharded=True`` checkpoints every N steps and a new session resumes model,
  optimizer (momentum), progress and RNG from it; a sharded job refuses a single-file one,
  an unsharded job loads a sharded one.
Multi-process FSDP resharding and the elastic 2 -> 3 -> 2 run are in
``test_trainer_fsdp_elastic.py`` (slow).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.distributed.checkpoint.filesystem import FileSystemWriter

from trainscale.trainer.runtime import checkpoint as ck
from trainscale.trainer.runtime.elastic import ElasticSession, ResumeError
from trainscale.trainer.runtime.settings import CheckpointPolicy
from trainscale.trainer.runtime.sharded_checkpoint import (
    ShardedCheckpointWriter,
    build_sharded_state,
    load_sharded_state,
)


class _PausingWriter(FileSystemWriter):
    """DCP's file writer, held before it writes this rank's shard until released."""

    paused = threading.Event()
    release = threading.Event()

    def write_data(self, plan: Any, planner: Any) -> Any:
        if not _PausingWriter.paused.is_set():
            _PausingWriter.paused.set()
            assert _PausingWriter.release.wait(timeout=60), "the test never released the writer"
        return super().write_data(plan, planner)


def _objects() -> dict[str, Any]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    return {"model": model, "optimizer": optimizer}


def _payload(objects: dict[str, Any], step: int) -> dict[str, Any]:
    return {"progress": {"global_step": step}, "state": build_sharded_state(objects)}


def test_async_sharded_checkpoint_is_invisible_until_complete(tmp_path: Path) -> None:
    _PausingWriter.paused.clear()
    _PausingWriter.release.clear()
    objects = _objects()
    model = objects["model"]
    writer = ShardedCheckpointWriter(tmp_path, keep=3, rank=0, storage=_PausingWriter)
    _PausingWriter.paused.set()  # step 1 is written straight through
    writer.save(1, _payload(objects, 1), wait=True)
    _PausingWriter.paused.clear()

    saved = {k: v.clone() for k, v in model.state_dict().items()}
    writer.save(2, _payload(objects, 2))  # returns: the write runs in the background
    try:
        assert _PausingWriter.paused.wait(timeout=60), "the write never started"
        assert writer.in_flight
        with torch.no_grad():  # training goes on while the shards are written
            for p in model.parameters():
                p.add_(1.0)
        final = tmp_path / ck.build_sharded_checkpoint_name(2)
        assert not final.exists(), "a half-written sharded checkpoint is visible"
        assert [step for step, _ in ck.list_checkpoints(tmp_path)] == [1]
        newest = ck.load_newest_checkpoint(tmp_path)
        assert newest is not None and newest[1]["step"] == 1
    finally:
        _PausingWriter.release.set()
        writer.wait()
    assert [step for step, _ in ck.list_checkpoints(tmp_path)] == [2, 1]
    assert writer.last_saved_step == 2
    fresh = _objects()
    load_sharded_state(tmp_path / ck.build_sharded_checkpoint_name(2), fresh)
    for name, tensor in fresh["model"].state_dict().items():
        assert torch.equal(tensor, saved[name]), f"{name}: not the state at save()"


def test_names_listing_pruning_and_stale_temporaries(tmp_path: Path) -> None:
    assert ck.build_sharded_checkpoint_name(12) == "step-000000000012.dcp"
    assert ck.parse_checkpoint_step("step-000000000012.dcp") == 12
    stale = tmp_path / ".step-000000000009.dcp.tmp-shards"
    stale.mkdir(parents=True)
    (stale / "__0_0.distcp").write_bytes(b"half")
    (tmp_path / ck.build_checkpoint_name(3)).write_bytes(b"x")
    for step in (5, 7):
        (tmp_path / ck.build_sharded_checkpoint_name(step)).mkdir()
    assert [s for s, _ in ck.list_checkpoints(tmp_path)] == [7, 5, 3]
    ck.prune_checkpoints(tmp_path, keep=2)
    assert [s for s, _ in ck.list_checkpoints(tmp_path)] == [7, 5]
    assert ck.remove_stale_temporaries(tmp_path) == [stale]
    assert not stale.exists()


def _session(directory: Path, objects: dict[str, Any], sharded: bool = True) -> ElasticSession:
    policy = CheckpointPolicy(directory=directory, every_steps=2, interval_seconds=None)
    return ElasticSession(
        dataset_length=64, objects=objects, epochs=1, policy=policy, sharded=sharded
    )


def test_sharded_session_checkpoints_and_resumes(tmp_path: Path) -> None:
    objects = _objects()
    session = _session(tmp_path, objects)
    for _ in range(4):
        session.commit(session.next_step(8)[0])
        session.coordinate(0.0, 8)
    session.wait_for_checkpoint()
    assert [s for s, _ in ck.list_checkpoints(tmp_path)] == [3, 1]  # every 2 steps
    session.finish()
    assert [s for s, _ in ck.list_checkpoints(tmp_path)] == [4, 3, 1]
    rng_after_save = torch.get_rng_state()
    torch.manual_seed(99)

    fresh = _objects()
    with torch.no_grad():
        for p in fresh["model"].parameters():
            p.zero_()
    resumed = _session(tmp_path, fresh)
    assert resumed.resume()
    assert (resumed.global_step, resumed.position) == (4, 32)
    assert torch.equal(torch.get_rng_state(), rng_after_save)
    for name, tensor in objects["model"].state_dict().items():
        assert torch.equal(fresh["model"].state_dict()[name], tensor), name
    momentum = objects["optimizer"].state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(fresh["optimizer"].state_dict()["state"][0]["momentum_buffer"], momentum)


def test_sharded_job_refuses_a_single_file_checkpoint(tmp_path: Path) -> None:
    objects = _objects()
    plain = _session(tmp_path, objects, sharded=False)
    ck.save_checkpoint(tmp_path, 4, plain.checkpoint_payload(), keep=3)
    with pytest.raises(ResumeError, match="single file"):
        _session(tmp_path, _objects()).resume()


def test_unsharded_job_resumes_from_a_sharded_checkpoint(tmp_path: Path) -> None:
    objects = _objects()
    session = _session(tmp_path, objects)
    session.commit(session.next_step(8)[0])
    session.finish()
    fresh = _objects()
    with torch.no_grad():
        for p in fresh["model"].parameters():
            p.zero_()
    plain = _session(tmp_path, fresh, sharded=False)  # as a DDP job would be
    assert plain.resume() and plain.global_step == 1
    for name, tensor in objects["model"].state_dict().items():
        assert torch.equal(fresh["model"].state_dict()[name], tensor), name
