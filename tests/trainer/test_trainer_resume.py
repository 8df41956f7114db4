"""Resuming is exact: a stopped-and-resumed run equals an uninterrupted one.

Covers (single process, the real runtime loop and the real digits task with dropout):
- resume restores model, optimizer (momentum), LR scheduler, RNG states, global step and data
  position: after resuming, the final weights are bitwise equal to an uninterrupted run's;
- the audit log of the two halves is the exact data order of the whole run;
- the one-line ElasticLoader resumes at the exact sample after a restart, with and without
  DataLoader workers (``num_workers``);
- a checkpoint from another dataset or seed is refused, naming the field.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.support.audit import assert_exact_data_order, read_audit
from trainscale.trainer.runtime.checkpoint import load_newest_checkpoint
from trainscale.trainer.runtime.elastic import ElasticLoader, ResumeError
from trainscale.trainer.runtime.worker import WorkerOptions, train

TASK = "trainscale.trainer.examples.digits:task"
pytestmark = pytest.mark.usefixtures("restore_signals")


def _run(ckpt: Path, audit: Path, max_steps: int, seed: int = 0) -> dict:
    env = {"TRAINSCALE_CHECKPOINT_DIR": str(ckpt), "TRAINSCALE_AUDIT_LOG_DIR": str(audit)}
    options = WorkerOptions(task=TASK, max_steps=max_steps, no_metrics=True, seed=seed, epochs=2)
    assert train(options, env) == 0
    newest = load_newest_checkpoint(ckpt)
    assert newest is not None
    return newest[1]


def test_resumed_run_equals_uninterrupted(tmp_path: Path) -> None:
    whole = _run(tmp_path / "a", tmp_path / "audit-a", max_steps=30)
    _run(tmp_path / "b", tmp_path / "audit-b", max_steps=13)
    resumed = _run(tmp_path / "b", tmp_path / "audit-b", max_steps=30)
    assert whole["progress"]["global_step"] == resumed["progress"]["global_step"] == 30
    assert whole["progress"]["epoch"] == 1  # 23 steps per epoch: the resume crossed an epoch
    for name, tensor in whole["state"]["model"].items():
        assert torch.equal(tensor, resumed["state"]["model"][name]), name
    assert whole["state"]["scheduler"] == resumed["state"]["scheduler"]
    momentum = whole["state"]["optimizer"]["state"][0]["momentum_buffer"]
    assert torch.equal(momentum, resumed["state"]["optimizer"]["state"][0]["momentum_buffer"])


def test_two_epochs_resumed_mid_epoch_have_exact_order(tmp_path: Path) -> None:
    for steps in (7, 30, 46):
        _run(tmp_path / "ckpt", tmp_path / "audit", max_steps=steps)
    assert_exact_data_order(read_audit(tmp_path / "audit"), dataset_length=1437, epochs=2)


def test_other_seed_is_refused(tmp_path: Path) -> None:
    _run(tmp_path / "ckpt", tmp_path / "audit", max_steps=2)
    with pytest.raises(ResumeError, match="seed=0"):
        _run(tmp_path / "ckpt", tmp_path / "audit", max_steps=4, seed=1)


@pytest.mark.parametrize("workers", [0, 2])
def test_elastic_loader_resumes_at_the_exact_sample(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    monkeypatch.setenv("TRAINSCALE_CHECKPOINT_DIR", str(tmp_path))
    monkeypatch.setenv("TRAINSCALE_CHECKPOINT_EVERY_STEPS", "1")
    data = torch.utils.data.TensorDataset(torch.arange(50).float().unsqueeze(1))
    model = torch.nn.Linear(1, 1)
    state = {"model": model, "optimizer": torch.optim.SGD(model.parameters(), lr=0.01)}

    seen: list[int] = []
    loader = ElasticLoader(data, state=state, epochs=2, batch_size=8, num_workers=workers)
    for _ in range(9):  # the 9th batch is fetched but its step never completes
        (batch,) = next(loader)
        seen.extend(int(v) for v in batch[:, 0])
        assert loader.last_indices.tolist() == seen[-len(batch) :]
    seen = seen[:-8]
    assert loader.step == 8
    loader.session.wait_for_checkpoint()  # the background write of step 8
    # "restarted" process
    again = ElasticLoader(data, state=state, epochs=2, batch_size=8, num_workers=workers)
    assert again.step == 8
    for (batch,) in again:
        seen.extend(int(v) for v in batch[:, 0])
    epoch0, epoch1 = seen[:50], seen[50:]
    assert sorted(epoch0) == list(range(50)) and sorted(epoch1) == list(range(50))
    assert again.epoch == 2
