"""The PyTorch Lightning integration: a Lightning job resized under torchrun elastic loses nothing.

The elastic job runs ``examples/lightning_module.py`` (a ``LightningModule`` with the
``ElasticTraining`` callback) under real, plain ``torchrun`` agents (gloo on CPU, a standalone
rendezvous store in this process, agents configured through the ``PET_*`` environment like
worker pods), each rank's batches built by 2 ``DataLoader`` worker processes. It goes 1 -> 2
workers (a second agent joins: torchrun SIGTERMs the running worker) -> 1 (SIGTERM to the
second agent, like a deleted pod: the case Lightning's own handling gets wrong, its stop follows
rank 0's signal only), both mid-epoch, and must finish:

- the job exits 0 at its last step, having trained at world sizes 1, 2, 1, with a falling loss
  (torchrun signals a worker's whole process group: the loader workers must not die of it);
- each SIGTERM wrote a checkpoint at the step where its world stopped (periodic checkpoints are
  off) and the next world, of another size, resumed at the next step: nothing redone;
- every sample of every epoch was trained exactly once (the audit the callback writes, the
  runtime's format);
- no process (agent, worker, loader worker) outlives the job.

In one process: the callback serves the runtime's metric names, and a second ``fit`` resumes
Lightning's epoch and global-step counters from the checkpoint. Without PyTorch Lightning,
``trainscale.trainer`` imports and the integration says which extra to install.
"""

from __future__ import annotations

import itertools
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.audit import assert_exact_data_order, read_audit
from tests.support.extras import import_without
from tests.support.torchrun import TorchrunCluster
from trainscale.trainer.contract import metric_names as names
from trainscale.trainer.launch.local import (
    LocalClusterConfig,
)
from trainscale.trainer.runtime.checkpoint import list_checkpoints

from .test_trainer_loader_elastic import _left_behind, _wait, _world_since, _worlds
from .test_trainer_loader_metrics import _value, serve_metrics_here
from .test_trainer_metrics import assert_serves_every_documented_name, scrape

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lightning_module.py"
SAMPLES, BATCH, EPOCHS = 1024, 16, 2
SLOW_MS, FAST_MS = "400", "10"  # per step: while a resize is under way (mid-epoch) / otherwise
TOTAL_STEPS = EPOCHS * SAMPLES // BATCH
#: The run's directory, the job's exit code, the processes still holding its files at the end.
LightningRun = tuple[Path, int, list[int]]


@pytest.fixture(scope="module")
def lightning_run(tmp_path_factory: pytest.TempPathFactory) -> LightningRun:
    base = tmp_path_factory.mktemp("lightning-elastic")
    audit, delay = base / "audit", base / "delay-ms"
    config = LocalClusterConfig(
        worker_args=(
            "--samples", str(SAMPLES), "--global-batch-size", str(BATCH),
            "--epochs", str(EPOCHS), "--step-delay-file", str(delay), "--num-workers", "2",
        ),
        max_workers=3,
        checkpoint_dir=base / "ckpt",
        env={
            "TRAINSCALE_AUDIT_LOG_DIR": str(audit),
            "TRAINSCALE_CHECKPOINT_INTERVAL_SECONDS": "0",  # only the stops checkpoint
            "OMP_NUM_THREADS": "1",
        },
    )  # fmt: skip
    delay.write_text(FAST_MS)
    with TorchrunCluster(config, script=EXAMPLE, log_dir=base / "logs") as cluster:
        cluster.start(1)
        _wait(audit, "first steps", lambda e: max(x["step"] for x in e) >= 3)
        delay.write_text(SLOW_MS)
        since = time.time()
        cluster.add_worker()
        _wait(audit, "world 2", _world_since(2, since))
        delay.write_text(FAST_MS)
        step = max(e["step"] for e in read_audit(audit))
        _wait(audit, "progress at 2", lambda e: max(x["step"] for x in e) >= step + 3)
        delay.write_text(SLOW_MS)
        since = time.time()
        cluster.remove_worker(sig=signal.SIGTERM)
        delay.write_text(FAST_MS)
        _wait(audit, "world 1 after SIGTERM", _world_since(1, since))
        code = cluster.wait(timeout=180)
    return base, code, _left_behind(base)


def test_lightning_job_resizes_mid_epoch_and_finishes(lightning_run: LightningRun) -> None:
    base, code, _ = lightning_run
    assert code == 0, f"logs in {base / 'logs'}"
    entries = read_audit(base / "audit")
    worlds = _worlds(entries)
    assert [size for size, _, _ in worlds] == [1, 2, 1], worlds
    assert max(e["step"] for e in entries) == TOTAL_STEPS
    resumed_at = [next(e for e in entries if e["step"] == first) for _, first, _ in worlds[1:]]
    assert all(e["start"] > 0 for e in resumed_at), f"a resize fell on an epoch boundary: {worlds}"
    losses = [e["loss"] for e in sorted(entries, key=lambda e: e["step"])]
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < first / 2, f"the loss does not fall: {first:.3f} -> {last:.3f}"


def test_sigterm_checkpoints_and_the_next_world_size_resumes_there(
    lightning_run: LightningRun,
) -> None:
    base, _, _ = lightning_run
    worlds = _worlds(read_audit(base / "audit"))
    stops = [last for _, _, last in worlds[:-1]]
    saved = sorted(step for step, _ in list_checkpoints(base / "ckpt"))
    assert saved == [*stops, TOTAL_STEPS], f"checkpoints {saved}, worlds {worlds}"
    redone = [prev[2] - (nxt[1] - 1) for prev, nxt in itertools.pairwise(worlds)]
    assert redone == [0, 0], redone


def test_lightning_keeps_the_exact_data_order(lightning_run: LightningRun) -> None:
    base, _, _ = lightning_run
    assert_exact_data_order(read_audit(base / "audit"), dataset_length=SAMPLES, epochs=EPOCHS)


def test_no_process_outlives_the_job(lightning_run: LightningRun) -> None:
    _, _, left = lightning_run  # loader workers included (they leave the worker's group)
    assert left == [], f"processes still running after the job: {left}"


# -- one process ---------------------------------------------------------------------------------


def _example() -> Any:
    """``examples/lightning_module.py`` as a module."""
    sys.path.insert(0, str(EXAMPLE.parent))
    try:
        import lightning_module
    finally:
        sys.path.remove(str(EXAMPLE.parent))
    return lightning_module


def _trainer(epochs: int, *callbacks: Any, **settings: Any) -> Any:
    import pytorch_lightning as pl

    return pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        callbacks=list(callbacks),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **settings,
    )


def _fit(epochs: int, port: int) -> tuple[Any, str]:
    """One ``fit`` of the example's module with the callback; returns (trainer, /metrics)."""
    example = _example()
    elastic = example.ElasticTraining(
        example.synthetic_dataset(64), global_batch_size=16, metrics=True
    )
    trainer = _trainer(epochs, elastic, **elastic.trainer_settings())
    try:
        trainer.fit(example.Regression(), train_dataloaders=elastic.train_dataloader())
        return trainer, scrape(port)
    finally:
        assert elastic.loop.metrics is not None
        elastic.loop.metrics.shutdown()


@pytest.mark.usefixtures("restore_signals")
def test_callback_serves_the_runtime_metrics_and_resumes_lightning_counters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = serve_metrics_here(monkeypatch, tmp_path)

    trainer, text = _fit(epochs=1, port=port)
    assert_serves_every_documented_name(text)
    assert (trainer.global_step, trainer.current_epoch) == (4, 1)
    assert _value(text, names.SAMPLES_TOTAL) == 64
    assert _value(text, f"{names.STEP_SECONDS}_count") == 4
    assert _value(text, names.GLOBAL_STEP) == 4
    assert _value(text, names.WORLD_SIZE) == 1
    assert _value(text, names.REMAINING_SAMPLES) == 0  # its one epoch done
    assert _value(text, names.CHECKPOINT_STEP) == 4  # the final checkpoint
    assert _value(text, names.RESUMES_TOTAL) == 0

    trainer, text = _fit(epochs=2, port=port)  # a restarted job: one more epoch
    assert (trainer.global_step, trainer.current_epoch) == (8, 2)
    assert _value(text, names.RESUMES_TOTAL) == 1
    assert _value(text, names.SAMPLES_TOTAL) == 64  # this process trained one epoch
    assert _value(text, names.GLOBAL_STEP) == 8


@pytest.mark.usefixtures("restore_signals")
def test_a_trainer_without_the_elastic_settings_is_refused_by_name(tmp_path: Path) -> None:
    example = _example()
    elastic = example.ElasticTraining(
        example.synthetic_dataset(64), global_batch_size=16, checkpoint_dir=tmp_path
    )
    trainer = _trainer(1, elastic)  # no trainer_settings(): the loader is never reloaded
    with pytest.raises(ValueError, match="reload_dataloaders_every_n_epochs must be 1"):
        trainer.fit(example.Regression(), train_dataloaders=elastic.train_dataloader())


@pytest.mark.usefixtures("restore_signals")
def test_batches_from_another_loader_are_refused(tmp_path: Path) -> None:
    import torch

    example = _example()
    data = example.synthetic_dataset(64)
    elastic = example.ElasticTraining(data, global_batch_size=16, checkpoint_dir=tmp_path)
    trainer = _trainer(1, elastic, **elastic.trainer_settings())
    plain = torch.utils.data.DataLoader(data, batch_size=16)  # not the elastic order
    with pytest.raises(RuntimeError, match=r"did not come from ElasticTraining.train_dataloader"):
        trainer.fit(example.Regression(), train_dataloaders=plain)


def test_trainer_imports_without_lightning_and_the_integration_names_the_extra() -> None:
    out = import_without(
        "pytorch_lightning",
        ["trainscale.trainer", "trainscale.trainer.integrations"],
        "trainscale.trainer.integrations.lightning",
    )
    assert "pip install 'trainscale[lightning]'" in out.stdout, out.stdout + out.stderr
