"""The runtime's guarantees for a training loop that a framework drives: the shared glue.

Why this module exists: Lightning's and Hugging Face's loops call us back (after a batch, at
the end of training); they never ask us for the next step. :class:`ForeignLoop` turns those
callbacks into what :class:`~trainscale.trainer.runtime.elastic.ElasticSession` needs, once for
every framework integration:

* :meth:`ForeignLoop.start` (after the process group exists) resumes the newest checkpoint,
  takes over SIGTERM/SIGINT, starts the metrics and the audit log;
* :meth:`ForeignLoop.loader` is the framework's training data: a standard ``DataLoader``
  driven by the exact elastic order (:class:`~trainscale.trainer.runtime.sampler.ElasticBatchSampler`),
  one batch per optimizer step for this rank, evaluated when the framework iterates it (so it
  starts at the resume position, at whatever world size this is);
* :meth:`ForeignLoop.step_done` (after every optimizer step, on every rank) commits the step,
  appends it to the audit log, runs the runtime's one all-reduce that carries the stop flag, and
  records the step in the policy's metrics; when any rank was told to stop, every rank stops
  at this boundary, the checkpoint is written (atomically, like the runtime's) and the process
  exits as the runtime's workers do (``128 + signal``, or the restart code for a peer's stop);
* :meth:`ForeignLoop.finish` writes the final checkpoint.

Every rank takes the same number of steps at every world size: the global batch is split into
shares that differ by at most one sample, and :meth:`ForeignLoop.start` refuses a global batch
that would leave a rank without a sample (a rank with no batch would leave its peers waiting
in the gradient all-reduce).
"""

from __future__ import annotations

import collections
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sized
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from trainscale.trainer.contract.environment import ENV_AUDIT_LOG_DIR
from trainscale.trainer.runtime.elastic import (
    ElasticSession,
    Stateful,
    record_session_step,
    serve_loader_metrics,
)
from trainscale.trainer.runtime.metrics import TrainerMetrics
from trainscale.trainer.runtime.phases import RestartClock
from trainscale.trainer.runtime.sampler import ElasticBatchSampler, build_loader
from trainscale.trainer.runtime.settings import CheckpointPolicy, checkpoint_policy_from_env
from trainscale.trainer.runtime.task import Dataset
from trainscale.trainer.runtime.worker import AuditLog

Collate = Callable[[list[Any]], Any]

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_early_signals: list[int] = []


def catch_stop_signals() -> None:
    """Remember SIGTERM/SIGINT from now on, until :meth:`ForeignLoop.start` takes them over.

    Call it first thing in the training script (main thread): a pod deleted while the
    framework is still starting then stops at the first step boundary with a checkpoint,
    instead of dying at once.
    """
    for sig in _STOP_SIGNALS:
        signal.signal(sig, _remember_signal)


def _remember_signal(signum: int, frame: FrameType | None) -> None:
    _early_signals.append(signum)


class _SessionBatches(ElasticBatchSampler):
    """The elastic batch sampler read from the session each time it is iterated or measured:
    this rank's batches from the session's position to the end of its epoch (``whole_run``:
    of training), one batch per optimizer step."""

    _session: ElasticSession
    _whole_run: bool

    @classmethod
    def following(
        cls, session: ElasticSession, global_batch: int, whole_run: bool
    ) -> _SessionBatches:
        """The sampler that follows ``session`` wherever it stands when iterated."""
        sampler = cls.from_session(session, global_batch)
        assert isinstance(sampler, cls)
        sampler._session, sampler._whole_run = session, whole_run
        return sampler

    def _follow_session(self) -> None:
        s = self._session
        self.epoch, self.position, self.global_step = s.epoch, s.position, s.global_step
        self.epochs = s.epochs if self._whole_run else min(s.epoch + 1, s.epochs)

    def __iter__(self) -> Iterator[list[int]]:
        self._follow_session()
        return super().__iter__()

    def __len__(self) -> int:
        self._follow_session()
        return super().__len__()


class StepLoader:
    """The framework's training data: a ``DataLoader`` over the elastic order whose batches
    are handed out as they are, while the dataset indices of each one are kept (in order) for
    the audit of the step that trains on it. ``len()`` is this rank's number of steps left.

    Built at the first ``iter()``/``len()`` (after :meth:`ForeignLoop.start`, so that it
    starts at the resume position); with loader workers, they persist across epochs.
    """

    def __init__(self, build: Callable[[], tuple[torch.utils.data.DataLoader[Any], Sized]]) -> None:
        self._build = build
        self._built: tuple[torch.utils.data.DataLoader[Any], Sized] | None = None
        self.delivered: collections.deque[tuple[np.ndarray, float]] = collections.deque()

    def _loader(self) -> tuple[torch.utils.data.DataLoader[Any], Sized]:
        if self._built is None:
            self._built = self._build()
        return self._built

    def __len__(self) -> int:
        return len(self._loader()[1])

    def __iter__(self) -> Iterator[Any]:
        self.delivered.clear()
        batches = iter(self._loader()[0])
        while True:
            started = time.perf_counter()
            try:
                ids, batch = next(batches)
            except StopIteration:
                return
            self.delivered.append((ids.numpy(), time.perf_counter() - started))
            yield batch


class ForeignLoop:
    """Resume, exact data order, coordinated stops, audit and metrics for a framework's loop.

    Args:
        dataset_length: samples per epoch.
        global_batch: samples per optimizer step over all ranks, the same at every world
            size (give this or ``batch_size``).
        batch_size: samples per rank and step (the global batch then follows the world size).
        seed: data-order seed.
        checkpoint_dir: shared checkpoint directory (None: ``$TRAINSCALE_CHECKPOINT_DIR``; the
            other ``TRAINSCALE_CHECKPOINT_*`` settings always come from the environment).
        metrics: serve the policy's metrics (None: when ``$TRAINSCALE_METRICS_PORT`` is set).
    """

    def __init__(
        self,
        *,
        dataset_length: int,
        global_batch: int | None = None,
        batch_size: int | None = None,
        seed: int = 0,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        metrics: bool | None = None,
    ) -> None:
        if (batch_size is None) == (global_batch is None):
            raise ValueError("give exactly one of batch_size and global_batch")
        for name, value in (("global_batch", global_batch), ("batch_size", batch_size)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if dataset_length < 1:
            raise ValueError(f"dataset_length must be >= 1, got {dataset_length}")
        self.dataset_length = dataset_length
        self._global_batch, self._batch_size = global_batch, batch_size
        self.seed = seed
        self.checkpoint_dir = checkpoint_dir
        self.serve_metrics = metrics
        self._session: ElasticSession | None = None
        self.metrics: TrainerMetrics | None = None
        self._audit: AuditLog | None = None
        self._restart: RestartClock | None = None
        self._loaders: list[StepLoader] = []
        self._step_started = 0.0

    # -- start -------------------------------------------------------------------------------

    @property
    def session(self) -> ElasticSession:
        """The session (after :meth:`start`)."""
        if self._session is None:
            raise RuntimeError("ForeignLoop.start() has not run yet")
        return self._session

    @property
    def global_batch(self) -> int:
        """Samples per optimizer step over all ranks at the current world size."""
        if self._global_batch is not None:
            return self._global_batch
        return int(self._batch_size or 0) * self.session.world_size

    def start(
        self,
        state: Mapping[str, Stateful],
        *,
        epochs: int,
        max_steps: int | None = None,
        device: torch.device | None = None,
        loader_workers: int = 0,
    ) -> bool:
        """Build the session over ``state`` and resume it; call once the process group exists.

        Returns:
            True when training resumed from a checkpoint: ``session.epoch``,
            ``session.position`` and ``session.global_step`` are where the framework's own
            counters must continue.

        Raises:
            ValueError: when the global batch would leave a rank of this world without samples.
            ResumeError: when the newest checkpoint does not fit this job.
        """
        restart = RestartClock.start(None)
        restart.setup_done = time.time()
        self._restart = restart
        env = os.environ
        policy = checkpoint_policy_from_env(env)
        if self.checkpoint_dir is not None:
            policy = CheckpointPolicy(
                directory=Path(self.checkpoint_dir),
                keep=policy.keep,
                interval_seconds=policy.interval_seconds,
                every_steps=policy.every_steps,
            )
        self.metrics = serve_loader_metrics(env, self.serve_metrics)
        if device is None and dist.is_available() and dist.is_initialized():
            device = torch.device("cuda") if dist.get_backend() == "nccl" else None
        session = ElasticSession(
            dataset_length=self.dataset_length,
            objects=state,
            epochs=epochs,
            seed=self.seed,
            policy=policy,
            max_steps=max_steps,
            device=device,
            on_checkpoint_saved=self.metrics.record_checkpoint,
        )
        self._session = session
        self.take_over_signals()
        self.metrics.record_world(
            session.world_size, int(env.get("TORCHELASTIC_RESTART_COUNT", "0"))
        )
        resumed = session.resume()
        self._check_every_rank_has_samples()
        if resumed:
            self.metrics.record_resume(session.global_step)
        restart.restore_done, restart.resumed_step = time.time(), session.global_step
        if env.get(ENV_AUDIT_LOG_DIR):
            world_id = [uuid.uuid4().hex[:12]]
            if session.distributed:
                dist.broadcast_object_list(world_id, src=0)
            self._audit = AuditLog(
                Path(env[ENV_AUDIT_LOG_DIR]), world_id[0], session.rank, loader_workers
            )
        self._step_started = time.perf_counter()
        return resumed

    def take_over_signals(self, already_signalled: bool = False) -> None:
        """Make SIGTERM/SIGINT the session's (a stop at the next step boundary), replacing
        whatever the framework installed; a stop request that arrived earlier (through
        :func:`catch_stop_signals` or, ``already_signalled``, the framework's own handler)
        is kept."""
        session = self.session
        session.install_signal_handlers()
        if _early_signals:
            session.note_signal(_early_signals[0])
        if already_signalled:
            session.note_signal(signal.SIGTERM)

    def _check_every_rank_has_samples(self) -> None:
        session, batch = self.session, self.global_batch
        length = session.dataset_length
        # the full steps, the last step of this epoch and of every later one
        sizes = [min(batch, length), (length - session.position) % batch, length % batch]
        smallest = min(size for size in sizes if size > 0)
        if smallest < session.world_size:
            raise ValueError(
                f"a step of {smallest} samples (global batch {batch}, dataset of "
                f"{session.dataset_length}) leaves ranks of this world of {session.world_size} "
                "without a sample, and their peers would wait for them in the gradient "
                "all-reduce: use a global batch that divides the dataset, with at least one "
                "sample per rank at the largest world size"
            )

    # -- data ----------------------------------------------------------------------------------

    def loader(
        self,
        dataset: Dataset,
        *,
        num_workers: int = 0,
        collate_fn: Collate | None = None,
        pin_memory: bool = False,
        prefetch_factor: int | None = None,
        whole_run: bool = False,
    ) -> StepLoader:
        """This rank's batches for the rest of the current epoch (``whole_run``: of training),
        one per optimizer step, read from the session each time it is iterated; ``len()`` is
        their count. May be called before :meth:`start` (it is built on first use, after it).

        With ``num_workers`` > 0 a standard ``DataLoader``'s worker processes build them.
        """
        if len(dataset) != self.dataset_length:
            raise ValueError(
                f"the dataset has {len(dataset)} samples, the job was set up for "
                f"{self.dataset_length}"
            )

        def build() -> tuple[torch.utils.data.DataLoader[Any], Sized]:
            sampler = _SessionBatches.following(self.session, self.global_batch, whole_run)
            loader = build_loader(
                dataset,
                sampler,
                collate=collate_fn,
                workers=num_workers,
                pin_memory=pin_memory,
                prefetch_factor=prefetch_factor,
            )
            return loader, sampler

        step_loader = StepLoader(build)
        self._loaders.append(step_loader)
        return step_loader

    # -- steps ---------------------------------------------------------------------------------

    def step_done(self, loss: float | None = None) -> bool:
        """End the optimizer step just taken (every rank, once per step): commit it, audit it,
        agree with every rank on whether to stop, record its metrics.

        ``loss`` is this rank's mean loss of the step (None: not known).

        Returns:
            True when any rank was told to stop: every rank got True at this same step, and
            must call :meth:`stop` once its framework's state is that of this step (its
            schedulers stepped), before any further step.
        """
        session = self.session
        step, planned = session.next_step(self.global_batch)
        ids, data_seconds = self._take_delivered(planned)
        session.commit(step)
        if self._audit is not None:
            self._audit.record(
                step=session.global_step,
                slice_=step,
                world_size=session.world_size,
                ids=ids,
                loss=float("nan") if loss is None else loss,
            )
        started = time.perf_counter()
        loss_sum = 0.0 if loss is None else loss * len(ids)
        stop = session.coordinate(loss_sum, len(ids) if loss is not None else 0)
        communication = time.perf_counter() - started
        self._record_step(len(ids), data_seconds, communication)
        return stop

    def _take_delivered(self, planned: np.ndarray) -> tuple[np.ndarray, float]:
        """The indices the step trained on (those its batch was built from, when it came from
        :meth:`loader`) and the seconds its fetch took."""
        for loader in self._loaders:
            if loader.delivered:
                return loader.delivered.popleft()
        return planned, 0.0

    def _record_step(self, samples: int, data_seconds: float, communication: float) -> None:
        assert self.metrics is not None
        now = time.perf_counter()
        step_seconds, self._step_started = now - self._step_started, now
        record_session_step(
            self.metrics,
            self.session,
            self._restart,
            samples=samples,
            step_seconds=step_seconds,
            data_seconds=data_seconds,
            communication_seconds=communication,
        )
        self._restart = None

    def stop(self) -> None:
        """Stop every rank at this step boundary (after :meth:`step_done` returned True):
        checkpoint (atomically; every rank waits for it), then exit like the runtime's workers:
        ``128 + signal`` when this process was signalled, the restart code otherwise (a peer
        left, so the agent re-rendezvouses at once). Never returns."""
        self.close_audit()
        self.session.stop()

    def close_audit(self) -> None:
        """Close the audit log (nothing more is appended)."""
        if self._audit is not None:
            self._audit.close()
            self._audit = None

    def finish(self) -> None:
        """Training is done: write the final checkpoint and wait until it is on disk."""
        self.session.finish()
        self.close_audit()
