"""PyTorch Lightning integration (``pip install 'trainscale[lightning]'``): elastic-safe ``fit``.

Why this module exists: Lightning's ``DistributedSampler`` shards the data by world size and
its mid-epoch resume restarts the epoch's loader, so a job resized from 2 to 3 workers repeats
or skips samples; its SIGTERM handling broadcasts from inside the signal handler and stops
only when rank 0 was signalled (a deleted pod is rarely rank 0), and it exports nothing the
autoscaling policy reads. :class:`ElasticTraining` is one callback that gives a Lightning job
the runtime's guarantees instead (through :mod:`._common`)::

    elastic = ElasticTraining(train_set, global_batch_size=64)
    trainer = lightning.Trainer(max_epochs=3, callbacks=[elastic], **elastic.trainer_settings())
    trainer.fit(model, train_dataloaders=elastic.train_dataloader())

run under torchrun (``torchrun --nnodes 1:4 ... script.py``, or a TrainingJob pod):

* **Exact resume across world sizes.** The training data is the runtime's elastic order: one
  batch per optimizer step, this rank's share of a global batch that is the same at every
  world size, from the resume position. ``trainer_settings()`` sets ``devices``/``num_nodes``
  from torchrun's environment (Lightning refuses a world size that differs from them) and
  reloads the loader every epoch (its length depends on the resume position). Resume does not
  use Lightning's checkpoint: on ``fit`` start the callback loads the newest trainscale
  checkpoint (module, optimizers, LR schedulers, RNG, data position) and sets Lightning's
  epoch and global-step counters to it.
* **Checkpoint on SIGTERM within the pod's grace period.** The runtime owns SIGTERM/SIGINT:
  from the callback's creation a signal is remembered, and from ``on_train_start`` (after
  Lightning installed its own handler, which this replaces; a SIGTERM Lightning saw before is
  kept) it becomes a stop flag carried by the one all-reduce after each step, so *every* rank
  stops at the same step whichever was signalled. The callback then sets
  ``trainer.should_stop``, Lightning finishes the step (LR schedulers stepped, end-of-epoch
  hooks), and at ``on_train_end`` the checkpoint is written atomically (temp file, fsync,
  rename), every rank waits for it, and the process exits like the runtime's workers. It must
  complete within the agent's shutdown timeout, which the operator derives from the pod's
  ``terminationGracePeriodSeconds`` (``PET_SHUTDOWN_TIMEOUT``); keep the end-of-epoch hooks and
  any validation due on stop short.
* **Metrics.** The same series as the runtime (samples, step time, progress, checkpoints,
  resumes, restart phases), served on ``$TRAINSCALE_METRICS_PORT`` + local rank.

Limits (checked in ``setup`` with an error naming the setting): ``accumulate_grad_batches``
must be 1 (a step is one batch: ranks' shares differ by up to one sample, so a micro-batch
count could differ between ranks), ``max_epochs`` must be set, ``min_epochs``/``min_steps``
unset (they could keep a stopped job running), no ``ckpt_path`` given to ``fit`` (the newest
trainscale checkpoint is the resume point), every step must give every rank a sample (the
dataset's last step too: ``ForeignLoop.start`` says so at once), and only ``fit`` is elastic.
"""

from __future__ import annotations

import collections
import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from types import FrameType
from typing import Any

import numpy as np
import torch

from trainscale.trainer.integrations._common import ForeignLoop
from trainscale.trainer.runtime.elastic import ElasticSession
from trainscale.trainer.runtime.sampler import Collate, ElasticBatchSampler, build_loader
from trainscale.trainer.runtime.task import Dataset

try:
    import pytorch_lightning as pl
except ImportError as exc:  # pragma: no cover - exercised by the missing-extra test
    raise ImportError(
        "trainscale.trainer.integrations.lightning needs PyTorch Lightning: "
        "pip install 'trainscale[lightning]'"
    ) from exc


def trainer_settings(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ``lightning.Trainer`` arguments an elastic job needs, for this process's world.

    Under torchrun (``LOCAL_WORLD_SIZE`` and ``WORLD_SIZE`` set): ``devices`` = processes per
    node, ``num_nodes`` = world size / that, DDP. Always: the loader reloaded every epoch, and
    no distributed sampler (the elastic order shards the data).
    """
    env = os.environ if env is None else env
    settings: dict[str, Any] = {
        "use_distributed_sampler": False,
        "reload_dataloaders_every_n_epochs": 1,
    }
    if env.get("LOCAL_WORLD_SIZE") and env.get("WORLD_SIZE"):
        local, world = int(env["LOCAL_WORLD_SIZE"]), int(env["WORLD_SIZE"])
        settings.update(devices=local, num_nodes=max(world // local, 1), strategy="ddp")
    return settings


class _EpochBatches(ElasticBatchSampler):
    """The elastic batch sampler, read from the session each time it is iterated or measured:
    this rank's batches from the session's position to the end of its epoch (one Lightning
    epoch is one epoch of the data order), one batch per optimizer step."""

    _session: ElasticSession

    @classmethod
    def following(cls, session: ElasticSession, global_batch: int) -> _EpochBatches:
        sampler = cls.from_session(session, global_batch)
        assert isinstance(sampler, cls)
        sampler._session = session
        return sampler

    def _follow_session(self) -> None:
        s = self._session
        self.epoch, self.position, self.global_step = s.epoch, s.position, s.global_step
        self.epochs = min(s.epoch + 1, s.epochs)

    def __iter__(self) -> Iterator[list[int]]:
        self._follow_session()
        return super().__iter__()

    def __len__(self) -> int:
        self._follow_session()
        return super().__len__()


class StepLoader:
    """What ``Trainer.fit`` iterates: the batches of a ``DataLoader`` over :class:`_EpochBatches`,
    handed out as they are, while the dataset indices of each (in order: Lightning fetches
    ahead) wait for the step that trains on it. ``len()`` is this rank's steps left in the
    epoch. The loader is built at the first ``len()``/``iter()``, after the resume (its loader
    workers, if any, then live for the whole fit)."""

    def __init__(
        self, build: Callable[[], tuple[torch.utils.data.DataLoader[Any], _EpochBatches]]
    ) -> None:
        self._build = build
        self._built: tuple[torch.utils.data.DataLoader[Any], _EpochBatches] | None = None
        self.delivered: collections.deque[np.ndarray] = collections.deque()

    def _loader(self) -> tuple[torch.utils.data.DataLoader[Any], _EpochBatches]:
        if self._built is None:
            self._built = self._build()
        return self._built

    def __len__(self) -> int:
        return len(self._loader()[1])

    def __iter__(self) -> Iterator[Any]:
        self.delivered.clear()
        for ids, batch in self._loader()[0]:
            self.delivered.append(ids.numpy())
            yield batch


_early_signals: list[int] = []


def _remember_signal(signum: int, frame: FrameType | None) -> None:
    _early_signals.append(signum)


class ElasticTraining(pl.Callback):
    """A Lightning callback: exact elastic resume, coordinated SIGTERM checkpoints, metrics.

    Args:
        dataset: the training set (map-style; the same on every rank).
        global_batch_size: samples per optimizer step over all ranks, the same at every world
            size; each rank's batch is its share (shares differ by at most one sample).
        seed: data-order seed.
        num_workers, collate_fn, pin_memory, prefetch_factor: the ``DataLoader``'s.
        checkpoint_dir: shared checkpoint directory (None: ``$TRAINSCALE_CHECKPOINT_DIR``).
        metrics: serve the policy's metrics (None: when ``$TRAINSCALE_METRICS_PORT`` is set).
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        global_batch_size: int,
        seed: int = 0,
        num_workers: int = 0,
        collate_fn: Collate | None = None,
        pin_memory: bool = False,
        prefetch_factor: int | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        metrics: bool | None = None,
    ) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):  # until the session takes them over
                signal.signal(sig, _remember_signal)
        self.dataset = dataset
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.checkpoint_dir = checkpoint_dir
        self.serve_metrics = metrics
        self.num_workers = num_workers
        self._loop: ForeignLoop | None = None
        self._loader = StepLoader(
            lambda: self._build_loader(collate_fn, pin_memory, prefetch_factor)
        )
        self.stopping = False

    trainer_settings = staticmethod(trainer_settings)

    @property
    def loop(self) -> ForeignLoop:
        """The runtime's side of the fit (from ``on_fit_start``)."""
        if self._loop is None:
            raise RuntimeError("ElasticTraining: Trainer.fit has not started")
        return self._loop

    def train_dataloader(self) -> StepLoader:
        """The training data to give ``Trainer.fit`` (or return from ``train_dataloader()``):
        this rank's batches for the rest of the current epoch, one per optimizer step."""
        return self._loader

    def _build_loader(
        self, collate: Collate | None, pin_memory: bool, prefetch_factor: int | None
    ) -> tuple[torch.utils.data.DataLoader[Any], _EpochBatches]:
        sampler = _EpochBatches.following(self.loop.session, self.global_batch_size)
        loader = build_loader(
            self.dataset,
            sampler,
            collate=collate,
            workers=self.num_workers,
            pin_memory=pin_memory,
            prefetch_factor=prefetch_factor,
        )
        return loader, sampler

    def _take_over_signals(self, already_signalled: bool = False) -> None:
        session = self.loop.session
        session.install_signal_handlers()
        if _early_signals:
            session.note_signal(_early_signals[0])
        if already_signalled:
            session.note_signal(signal.SIGTERM)

    # -- Lightning hooks -----------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        checks = (
            (trainer.accumulate_grad_batches == 1, "accumulate_grad_batches must be 1"),
            (getattr(trainer, "reload_dataloaders_every_n_epochs", None) == 1, "reload_dataloaders_every_n_epochs must be 1"),
            (trainer.max_epochs not in (None, -1), "max_epochs must be set"),
            (not trainer.min_epochs and trainer.min_steps in (None, -1), "min_epochs/min_steps must be unset"),
            (trainer.ckpt_path is None, "fit(ckpt_path=...) must be None (the callback resumes)"),
        )  # fmt: skip
        for ok, what in checks:
            if not ok:
                raise ValueError(
                    f"ElasticTraining: Trainer setting {what} (use ElasticTraining.trainer_settings())"
                )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert trainer.max_epochs is not None
        self._loop = ForeignLoop(
            dataset_length=len(self.dataset),
            global_batch=self.global_batch_size,
            epochs=trainer.max_epochs,
            seed=self.seed,
            max_steps=trainer.max_steps if trainer.max_steps not in (None, -1) else None,
            checkpoint_dir=self.checkpoint_dir,
            metrics=self.serve_metrics,
            loader_workers=self.num_workers,
        )
        state: dict[str, Any] = {"model": pl_module}
        for i, optimizer in enumerate(trainer.optimizers):
            state[f"optimizer_{i}"] = optimizer
        for i, config in enumerate(trainer.lr_scheduler_configs):
            state[f"lr_scheduler_{i}"] = config.scheduler
        device = pl_module.device if pl_module.device.type == "cuda" else None
        resumed = self.loop.start(state, device)
        self._take_over_signals()
        if resumed:
            _continue_counters(trainer, self.loop.session.epoch, self.loop.session.global_step)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning installed its SIGTERM handler after on_fit_start: the runtime's replaces it.
        self._take_over_signals(already_signalled=trainer.received_sigterm)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.loop.step_started()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not self._loader.delivered:
            raise RuntimeError(
                "ElasticTraining: this batch did not come from ElasticTraining.train_dataloader(); "
                "give that to Trainer.fit (or return it from train_dataloader())"
            )
        ids = self._loader.delivered.popleft()
        loss = _loss_of(outputs)
        self.loop.record_batch(ids, 0.0 if loss is None else loss * len(ids), len(ids))
        if self.loop.step_done(exit_on_stop=False):
            # Every rank got the stop at this step: let Lightning end it (schedulers), then
            # checkpoint in on_train_end.
            self.stopping = True
            trainer.should_stop = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.stopping:
            self.loop.stop()  # never returns
        self.loop.finish()


def _loss_of(outputs: Any) -> float | None:
    """This rank's loss of the step from ``training_step``'s output (None: not there)."""
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        return None
    return float(loss.detach())


def _continue_counters(trainer: pl.Trainer, epoch: int, global_step: int) -> None:
    """Set Lightning's epoch and global-step counters to a resumed position.

    They live in the fit loop's progress trackers (what Lightning's own checkpoint restores);
    ``trainer.current_epoch``, ``trainer.global_step``, ``max_steps`` and the loggers' step
    then continue from the checkpoint instead of 0.
    """
    fit = trainer.fit_loop
    loop = fit.epoch_loop
    trackers = (
        (fit.epoch_progress.total, epoch),
        (fit.epoch_progress.current, epoch),
        (loop.automatic_optimization.optim_progress.optimizer.step.total, global_step),
        (loop.manual_optimization.optim_step_progress.total, global_step),
        (loop.batch_progress.total, global_step),
    )
    for tracker, value in trackers:
        for count in ("ready", "started", "processed", "completed"):
            if hasattr(tracker, count):
                setattr(tracker, count, value)
    loop._batches_that_stepped = global_step
