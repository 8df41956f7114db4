"""The runtime's guarantees for a training loop someone else owns (no framework imported here).

Why this module exists: a framework's loop (Hugging Face ``Trainer``, Lightning) decides when
batches are fetched and steps are taken; it only lets us hook in at a few points. The
guarantees stay the runtime's: :class:`ForeignLoop` wires an
:class:`~trainscale.trainer.runtime.elastic.ElasticSession` (resume, exact data position,
SIGTERM turned into a coordinated stop with a checkpoint, periodic atomic checkpoints), the
trainer's metrics (same names, served only where the runtime serves them) and the sample
audit log to those hook points, and supplies the batch sampler that continues from the
committed position at whatever world size the process runs in. The framework modules only
translate their hooks into the calls below:

1. :meth:`ForeignLoop.start` once the process group, model, optimizer and scheduler exist
   (before the first batch is fetched);
2. :meth:`ForeignLoop.batch_sampler` for the framework's ``DataLoader``
   (:func:`~trainscale.trainer.runtime.sampler.build_loader` with ``combine`` to carry the
   sample indices inside the batch);
3. per optimizer step: :meth:`~ForeignLoop.step_started`, :meth:`~ForeignLoop.record_batch`
   for what was trained on, :meth:`~ForeignLoop.step_done` after ``optimizer.step()``;
4. :meth:`ForeignLoop.finish` at the end of training.

One optimizer step is one batch per rank: this rank's share of a constant global batch.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch

from trainscale.trainer.contract.environment import ENV_AUDIT_LOG_DIR
from trainscale.trainer.runtime import data_order
from trainscale.trainer.runtime.elastic import (
    ElasticSession,
    Stateful,
    record_session_step,
    serve_loader_metrics,
)
from trainscale.trainer.runtime.phases import RestartClock
from trainscale.trainer.runtime.sampler import ElasticBatchSampler
from trainscale.trainer.runtime.settings import CheckpointPolicy, checkpoint_policy_from_env
from trainscale.trainer.runtime.worker import AuditLog


class ForeignLoopError(RuntimeError):
    """The foreign loop did something the exact data order cannot allow (names it)."""


def check_shares(dataset_length: int, global_batch: int, world_size: int) -> None:
    """Every rank must get at least one sample of every step: a foreign loop cannot skip a
    step on one rank only (its collectives would hang).

    Raises:
        DataOrderError: naming the dataset length, global batch and world size.
    """
    remainder = dataset_length % global_batch
    if global_batch < world_size or 0 < remainder < world_size:
        raise data_order.DataOrderError(
            f"global batch {global_batch} over dataset length {dataset_length} leaves a step "
            f"of {remainder or global_batch} samples, fewer than the {world_size} ranks: choose "
            "a global batch (and dataset length) whose every step has at least one sample "
            "per rank at the largest world size"
        )


class _ContinuingBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Each ``iter()`` continues from the loop's committed position (resume, resize, or a
    framework starting its next "epoch" of the loader); ``len()`` is a full epoch's steps."""

    def __init__(self, loop: ForeignLoop) -> None:
        self._loop = loop

    def __iter__(self) -> Iterator[list[int]]:
        return iter(ElasticBatchSampler.from_session(self._loop.session, self._loop.global_batch))

    def __len__(self) -> int:
        return self._loop.steps_per_epoch


class ForeignLoop:
    """Resume, exact data order, SIGTERM checkpoints, metrics and audit for a foreign loop.

    Args:
        dataset_length: samples per epoch.
        global_batch: samples per optimizer step over all ranks, whatever the world size.
        epochs: epochs of the whole job.
        seed: data-order seed.
        max_steps: optimizer steps of the whole job (None: ``epochs`` decide).
        checkpoint_dir: overrides ``$TRAINSCALE_CHECKPOINT_DIR``.
        metrics: serve the trainer's metrics (None: where ``$TRAINSCALE_METRICS_PORT`` is set,
            like :class:`~trainscale.trainer.runtime.elastic.ElasticLoader`).
        loader_workers: the loader's worker processes (recorded in the audit log).

    Raises:
        DataOrderError: for a global batch or dataset length that cannot work.
    """

    def __init__(
        self,
        *,
        dataset_length: int,
        global_batch: int,
        epochs: int,
        seed: int = 0,
        max_steps: int | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        metrics: bool | None = None,
        loader_workers: int = 0,
    ) -> None:
        if global_batch < 1:
            raise data_order.DataOrderError(f"global batch must be >= 1, got {global_batch}")
        self.dataset_length = dataset_length
        self.global_batch = global_batch
        self.epochs = epochs
        self.seed = seed
        self.max_steps = max_steps
        self.steps_per_epoch = data_order.compute_steps_per_epoch(dataset_length, global_batch)
        self._checkpoint_dir = checkpoint_dir
        self._serve_metrics = metrics
        self._loader_workers = loader_workers
        self._restart: RestartClock | None = RestartClock.start(None)
        self._session: ElasticSession | None = None
        self._audit: AuditLog | None = None
        self._trained: list[np.ndarray] = []
        self._loss = (0.0, 0)
        self._step_end = self._step_start = 0.0
        self.metrics = serve_loader_metrics({}, False)

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole job (the same at every world size)."""
        steps = self.epochs * self.steps_per_epoch
        return steps if self.max_steps is None else min(steps, self.max_steps)

    @property
    def session(self) -> ElasticSession:
        """The running session (after :meth:`start`)."""
        if self._session is None:
            raise ForeignLoopError("ForeignLoop.start() must run before the first batch")
        return self._session

    @property
    def global_step(self) -> int:
        """Optimizer steps the job has completed (resumed ones included)."""
        return self.session.global_step

    def _policy(self) -> CheckpointPolicy:
        policy = checkpoint_policy_from_env(os.environ)
        if self._checkpoint_dir is None:
            return policy
        return CheckpointPolicy(
            directory=Path(self._checkpoint_dir),
            keep=policy.keep,
            interval_seconds=policy.interval_seconds,
            every_steps=policy.every_steps,
        )

    def start(self, objects: Mapping[str, Stateful], device: torch.device | None = None) -> bool:
        """Start the session in this process: stop handlers, resume, metrics, audit log.

        Call once the process group (if any) and ``objects`` (model, optimizer, scheduler:
        what a checkpoint holds) exist, before the first batch. Returns True on a resume.

        Raises:
            DataOrderError: when the global batch cannot be split over this world.
            ResumeError: for a checkpoint of another dataset length or seed.
        """
        restart = self._restart
        assert restart is not None
        restart.setup_done = time.time()
        self.metrics = serve_loader_metrics(os.environ, self._serve_metrics)
        session = ElasticSession(
            dataset_length=self.dataset_length,
            objects=objects,
            epochs=self.epochs,
            seed=self.seed,
            policy=self._policy(),
            max_steps=self.max_steps,
            device=device,
            on_checkpoint_saved=self.metrics.record_checkpoint,
        )
        check_shares(self.dataset_length, self.global_batch, session.world_size)
        session.install_signal_handlers()
        self.metrics.record_world(
            session.world_size, int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        )
        resumed = session.resume()
        if resumed:
            self.metrics.record_resume(session.global_step)
        restart.restore_done, restart.resumed_step = time.time(), session.global_step
        self._session = session
        self._audit = self._open_audit(session)
        self._step_end = time.perf_counter()
        return resumed

    def _open_audit(self, session: ElasticSession) -> AuditLog | None:
        directory = os.environ.get(ENV_AUDIT_LOG_DIR, "").strip()
        if not directory:
            return None
        return AuditLog.for_world(
            Path(directory),
            session.rank,
            distributed=session.distributed,
            loader_workers=self._loader_workers,
        )

    def batch_sampler(self) -> torch.utils.data.Sampler[list[int]]:
        """This rank's batches, one per step, from the committed position to the job's end."""
        return _ContinuingBatchSampler(self)

    def step_started(self) -> None:
        """The step's batch is fetched; its forward pass starts now."""
        self._step_start = time.perf_counter()

    def record_batch(self, ids: np.ndarray, loss_sum: float, count: int) -> None:
        """Record the dataset indices a micro-batch trained on and its summed loss."""
        self._trained.append(np.asarray(ids, dtype=np.int64))
        self._loss = (self._loss[0] + loss_sum, self._loss[1] + count)

    def step_done(self, *, exit_on_stop: bool = True) -> bool:
        """The optimizer step is done: commit it, audit it, agree on a stop, checkpoint.

        Never returns when the job must stop (SIGTERM here or at a peer): the session
        checkpoints this step and exits like a runtime worker. With ``exit_on_stop=False``
        it returns True instead (every rank at this same step), and the loop calls
        :meth:`stop` once its own state is that of this step (Lightning steps its LR
        schedulers after the hook that calls this); False: carry on.

        Raises:
            ForeignLoopError: when the loop trained on other samples than the order's.
        """
        session = self.session
        slice_, planned = session.next_step(self.global_batch)
        trained = np.concatenate(self._trained) if self._trained else np.zeros(0, np.int64)
        (loss_sum, count), self._trained, self._loss = self._loss, [], (0.0, 0)
        if not np.array_equal(trained, planned):
            raise ForeignLoopError(
                f"step {session.global_step + 1} trained on samples {trained[:8].tolist()}... "
                f"but the data order gives this rank {planned[:8].tolist()}...: the training "
                "loop must use the loader built on ForeignLoop.batch_sampler() unchanged"
            )
        session.commit(slice_)
        if self._audit is not None:
            self._audit.record(
                step=session.global_step,
                slice_=slice_,
                world_size=session.world_size,
                ids=trained,
                loss=loss_sum / count if count else math.nan,
            )
        coordinate_started = time.perf_counter()
        stop = session.coordinate(loss_sum, count)
        self._record_step(len(trained), time.perf_counter() - coordinate_started)
        if stop and exit_on_stop:
            self.stop()
        return stop

    def stop(self) -> None:
        """Stop at this step boundary (after :meth:`step_done` returned True): checkpoint,
        every rank waits for it, exit like a runtime worker (``128 + signal`` when signalled
        here, the restart code when a peer was). Never returns."""
        self.session.stop()

    def _record_step(self, samples: int, communication_seconds: float) -> None:
        now = time.perf_counter()
        step_seconds, self._step_end = now - self._step_end, now
        record_session_step(
            self.metrics,
            self.session,
            self._restart,
            samples=samples,
            step_seconds=step_seconds,
            data_seconds=max(self._step_start - (now - step_seconds), 0.0),
            communication_seconds=communication_seconds,
        )
        self._restart = None

    def finish(self) -> None:
        """Write the final checkpoint and close the audit log (end of training)."""
        self.session.finish()
        if self._audit is not None:
            self._audit.close()
            self._audit = None
