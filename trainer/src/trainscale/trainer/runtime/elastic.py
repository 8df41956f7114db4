"""Elastic-safe training state for one worker process: resume, exact data position, stops.

Why this module exists: torchrun restarts every worker on each membership change, so a
worker's life is short and ends at a moment it does not choose. :class:`ElasticSession` is
the part of a worker that makes that harmless:

* it resumes from the newest checkpoint (model, optimizer, scheduler, RNG states, global step
  and the exact position in the data order, see :mod:`trainscale.trainer.runtime.data_order`);
* it hands out this rank's samples of each optimizer step for the *current* world size;
* after each step it runs one tiny all-reduce that both averages the step's loss and carries a
  stop flag, so that when any worker is told to stop (SIGTERM/SIGINT from its agent or the
  kubelet) *all* workers stop at the same step boundary; rank 0 then writes a checkpoint and
  everybody waits for it before exiting;
* it writes periodic checkpoints (every N steps or seconds) and, when a collective fails
  because a peer died, an emergency checkpoint of the last completed step.

A worker that stops because a *peer* was told to stop waits briefly for its own agent's
signal (a scale-up restarts every worker, which is not a failure); if none comes (a
scale-down), it exits with :data:`RESTART_EXIT_CODE` so that its agent re-rendezvouses at
once. :class:`ElasticLoader` wraps the session as a drop-in replacement for a DataLoader:
the one line that makes an existing torchrun script elastic-safe.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist

from trainscale.trainer.contract.environment import ENV_METRICS_PORT
from trainscale.trainer.runtime import data_order
from trainscale.trainer.runtime.checkpoint import (
    CheckpointError,
    CheckpointWriter,
    decide_checkpoint_due,
    load_checkpoint,
    load_newest_checkpoint,
    remove_stale_temporaries,
)
from trainscale.trainer.runtime.metrics import NullMetrics, TrainerMetrics
from trainscale.trainer.runtime.phases import RestartClock
from trainscale.trainer.runtime.sampler import ElasticBatchSampler, StepBatches, build_loader
from trainscale.trainer.runtime.settings import (
    CheckpointPolicy,
    checkpoint_policy_from_env,
    compute_metrics_port,
    metrics_settings_from_env,
)
from trainscale.trainer.runtime.sharded_checkpoint import (
    ShardedCheckpointWriter,
    build_sharded_state,
    is_sharded_module,
    load_sharded_state,
)
from trainscale.trainer.runtime.task import Dataset

logger = logging.getLogger(__name__)

#: Exit code of a worker that stopped because a peer left: its agent must re-rendezvous.
RESTART_EXIT_CODE = 75
#: Exit code of a worker whose configuration cannot work: its agent must not retry.
FATAL_EXIT_CODE = 78


class Stateful(Protocol):
    """Anything with ``state_dict``/``load_state_dict`` (modules, optimizers, schedulers)."""

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state_dict: Any) -> Any: ...


class ResumeError(RuntimeError):
    """A checkpoint that exists but does not fit the job (names what differs)."""


def _unwrap(obj: Any) -> Any:
    """Return the module inside DDP/FSDP-style wrappers so checkpoints stay portable."""
    if isinstance(obj, torch.nn.parallel.DistributedDataParallel):
        return obj.module
    return obj


def capture_rng_state() -> dict[str, Any]:
    """Return the RNG states of torch (CPU and CUDA), numpy and ``random`` as plain data."""
    np_state: tuple[Any, ...] = np.random.get_state(legacy=True)  # type: ignore[assignment]
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` returned (CUDA only where it was saved)."""
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):  # fewer devices than when saved
            torch.cuda.set_rng_state_all(state["cuda"])


class ElasticSession:
    """Resume, data position, coordinated stops and checkpoints of one worker process.

    Args:
        dataset_length: samples per epoch.
        objects: stateful objects to checkpoint by name (``{"model": m, "optimizer": o}``).
        epochs: train until this many epochs are done.
        seed: data-order seed (with the epoch it fixes each epoch's permutation).
        policy: checkpoint settings.
        max_steps: stop after this many optimizer steps (None: epochs decide).
        device: where the coordination tensor lives (CUDA for NCCL, CPU for gloo).
        peer_stop_grace_seconds: how long a worker stopped by a peer waits for its own signal.
        on_checkpoint_saved: ``(step, seconds)`` callback after each write (metrics).
        sharded: checkpoint with DCP, every rank writing its shard asynchronously (see
            :mod:`~trainscale.trainer.runtime.sharded_checkpoint`) instead of rank 0 writing
            one file; None (default) chooses DCP exactly when an object is an FSDP2 module.
    """

    def __init__(
        self,
        *,
        dataset_length: int,
        objects: Mapping[str, Stateful],
        epochs: int,
        seed: int = 0,
        policy: CheckpointPolicy | None = None,
        max_steps: int | None = None,
        device: torch.device | None = None,
        peer_stop_grace_seconds: float = 1.0,
        on_checkpoint_saved: Callable[[int, float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sharded: bool | None = None,
    ) -> None:
        if dataset_length < 1:
            raise ValueError(f"dataset_length must be >= 1, got {dataset_length}")
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.dataset_length = dataset_length
        self.objects = dict(objects)
        self.epochs = epochs
        self.seed = seed
        self.policy = policy or CheckpointPolicy()
        self.max_steps = max_steps
        self.device = device or torch.device("cpu")
        self.peer_stop_grace_seconds = peer_stop_grace_seconds
        self._clock = clock
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world_size = dist.get_world_size() if self.distributed else 1
        # Job progress (identical on every rank).
        self.epoch = 0
        self.position = 0
        self.global_step = 0
        self.samples_total = 0
        self._last_step_size: int | None = None
        self.resumed_from: Path | None = None
        self.last_loss = float("nan")
        self._permutation: tuple[int, np.ndarray] | None = None
        self._signal: int | None = None
        self._last_save_time = clock()
        # the step of the newest save started: a background write still in flight counts, so
        # a slow write does not make the next step look due as well
        self._last_save_step = -1
        self.sharded = (
            any(is_sharded_module(obj) for obj in self.objects.values())
            if sharded is None
            else sharded
        )
        self._writer = self._build_writer(on_checkpoint_saved)

    def _build_writer(
        self, on_saved: Callable[[int, float], None] | None
    ) -> CheckpointWriter | ShardedCheckpointWriter | None:
        directory = self.policy.directory
        if directory is None:
            return None
        if not self.sharded:
            return CheckpointWriter(
                directory, self.policy.keep, background=self.policy.background, on_saved=on_saved
            )
        # DCP's own group (collective: every rank builds its session at the same point), so
        # a background save never interleaves with the training loop's collectives.
        group = dist.new_group(backend="gloo") if self.distributed else None
        return ShardedCheckpointWriter(
            directory,
            self.policy.keep,
            rank=self.rank,
            process_group=group,
            asynchronous=self.policy.background,
            on_saved=on_saved,
        )

    @property
    def _all_ranks_save(self) -> bool:
        return self._writer is not None and self._writer.all_ranks_write

    @property
    def _saves_here(self) -> bool:
        """Whether this rank writes checkpoints: rank 0, or every rank when sharded."""
        return self.rank == 0 or self._all_ranks_save

    def _newest_save_step(self) -> int:
        """The step of the newest save started (a background write in flight counts)."""
        assert self._writer is not None
        return max(self._last_save_step, self._writer.last_saved_step)

    # -- signals ---------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """Turn SIGTERM/SIGINT into a stop at the next step boundary (main thread only)."""

        def _handler(signum: int, frame: FrameType | None) -> None:
            self._signal = signum

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _handler)

    def note_signal(self, signum: int) -> None:
        """Record a stop request that arrived before the handlers were installed."""
        self._signal = signum

    @property
    def signalled(self) -> bool:
        """True once this process was told to stop."""
        return self._signal is not None

    # -- resume ----------------------------------------------------------------------------

    def resume(self) -> bool:
        """Load the newest checkpoint, if any, into the objects and the data position.

        Rank 0 picks the checkpoint and tells the others its path, so that every rank loads
        the same one (the directory must be shared by all workers).

        Returns:
            True when training resumed from a checkpoint.

        Raises:
            ResumeError: when the checkpoint was taken with another dataset length or seed.
        """
        directory = self.policy.directory
        if directory is None:
            return False
        chosen: list[Any] = [None]
        if self.rank == 0:
            remove_stale_temporaries(directory)
            newest = load_newest_checkpoint(directory)
            chosen = [str(newest[0]) if newest else None]
        if self.distributed:
            dist.broadcast_object_list(chosen, src=0)
        if chosen[0] is None:
            return False
        path = Path(chosen[0])
        try:
            document = load_checkpoint(path)
        except FileNotFoundError as exc:
            raise ResumeError(
                f"checkpoint {path} chosen by rank 0 is missing on rank {self.rank}: the "
                "checkpoint directory must be storage shared by all workers"
            ) from exc
        self._apply(path, document)
        self.resumed_from = path
        if self._writer is not None:
            self._writer.last_saved_step = self.global_step
        self._last_save_step = self.global_step
        return True

    def _apply(self, path: Path, document: Mapping[str, Any]) -> None:
        for field, mine in (("dataset_length", self.dataset_length), ("seed", self.seed)):
            if document["progress"][field] != mine:
                raise ResumeError(
                    f"checkpoint was taken with {field}={document['progress'][field]}, this "
                    f"job has {field}={mine}; use another checkpoint directory"
                )
        progress = document["progress"]
        self.epoch = int(progress["epoch"])
        self.position = int(progress["position"])
        self.global_step = int(progress["global_step"])
        self.samples_total = int(progress["samples_total"])
        if "state" not in document:  # sharded: every rank reads its part, resharded
            writer = self._writer
            group = writer.process_group if isinstance(writer, ShardedCheckpointWriter) else None
            try:
                load_sharded_state(path, self.objects, group)
            except CheckpointError as exc:
                raise ResumeError(str(exc)) from exc
            restore_rng_state(document["rng"])
            return
        if self.sharded:
            raise ResumeError(
                f"checkpoint {path} is a single file but this job's model is sharded (FSDP); "
                "use another checkpoint directory"
            )
        for name, obj in self.objects.items():
            if name not in document["state"]:
                raise ResumeError(f"checkpoint has no state for {name!r}")
            _unwrap(obj).load_state_dict(document["state"][name])
        restore_rng_state(document["rng"])

    # -- data order ------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """True when the configured epochs (or max_steps) are done."""
        if self.max_steps is not None and self.global_step >= self.max_steps:
            return True
        return self.epoch >= self.epochs

    def permutation(self) -> np.ndarray:
        """Return the current epoch's sample order (cached per epoch)."""
        if self._permutation is None or self._permutation[0] != self.epoch:
            self._permutation = (
                self.epoch,
                data_order.compute_epoch_permutation(self.dataset_length, self.seed, self.epoch),
            )
        return self._permutation[1]

    def next_step(self, global_batch: int) -> tuple[data_order.StepSlice, np.ndarray]:
        """Return the next step's slice and the dataset indices this rank trains on."""
        step = data_order.compute_step_slice(
            self.epoch, self.position, self.dataset_length, global_batch
        )
        start, stop = data_order.compute_rank_range(step, self.world_size, self.rank)
        return step, self.permutation()[start:stop]

    def commit(self, step: data_order.StepSlice) -> None:
        """Record that the optimizer step over ``step`` is done (call after optimizer.step)."""
        self.epoch, self.position = data_order.compute_advance(
            step.epoch, step.start, step.size, self.dataset_length
        )
        self.global_step += 1
        self.samples_total += step.size
        self._last_step_size = step.size

    @property
    def remaining_samples(self) -> float:
        """Samples left until the configured end: the epochs not done or, with
        ``max_steps``, the steps left at the last step's global batch, whichever ends
        first; NaN before the first step of a step-limited session (no batch seen yet)."""
        by_epochs = float(max(0, (self.epochs - self.epoch) * self.dataset_length - self.position))
        if self.max_steps is None:
            return by_epochs
        if self._last_step_size is None:
            return math.nan
        return min(
            by_epochs, float(max(0, self.max_steps - self.global_step) * self._last_step_size)
        )

    # -- coordination and checkpoints ------------------------------------------------------

    def coordinate(self, loss_sum: float, sample_count: int) -> bool:
        """End a step: average the loss over all ranks and agree on whether to stop.

        Every rank must call this once per step. Writes a periodic checkpoint when due: rank 0
        decides (its clock) and the decision rides on the same all-reduce, so that with sharded
        checkpoints every rank saves at the same step.

        Returns:
            True when the workers must stop now (call :meth:`stop` next).
        """
        due = self.rank == 0 and self._checkpoint_due()
        flags = [
            1.0 if self.signalled else 0.0,
            float(loss_sum),
            float(sample_count),
            1.0 if due else 0.0,
        ]
        if self.distributed and self.world_size > 1:
            tensor = torch.tensor(flags, dtype=torch.float64, device=self.device)
            dist.all_reduce(tensor)
            flags = tensor.tolist()
        self.last_loss = flags[1] / flags[2] if flags[2] else float("nan")
        if flags[0] > 0:
            return True
        if flags[3] > 0 and self._saves_here:
            self.save()
        return False

    def _checkpoint_due(self) -> bool:
        if self._writer is None:
            return False
        return decide_checkpoint_due(
            now=self._clock(),
            step=self.global_step,
            last_save_time=self._last_save_time,
            last_save_step=self._newest_save_step(),
            interval_seconds=self.policy.interval_seconds,
            every_steps=self.policy.every_steps,
        )

    def checkpoint_payload(self) -> dict[str, Any]:
        """Return what a checkpoint of the current (committed) state holds."""
        return {
            "progress": {
                "epoch": self.epoch,
                "position": self.position,
                "global_step": self.global_step,
                "samples_total": self.samples_total,
                "dataset_length": self.dataset_length,
                "seed": self.seed,
                "world_size": self.world_size,
                "saved_at": time.time(),
            },
            "state": (
                build_sharded_state(self.objects)
                if self.sharded
                else {name: _unwrap(obj).state_dict() for name, obj in self.objects.items()}
            ),
            "rng": capture_rng_state(),
        }

    @property
    def last_saved_step(self) -> int:
        """Step of the newest checkpoint this process wrote or resumed from (-1: none)."""
        return self._writer.last_saved_step if self._writer is not None else -1

    def save(self, *, wait: bool = False) -> None:
        """Write a checkpoint of the committed state (no-op without a directory or if current)."""
        if self._writer is None or self.global_step <= self._newest_save_step():
            return
        self._writer.save(self.global_step, self.checkpoint_payload(), wait=wait)
        self._last_save_step = self.global_step
        self._last_save_time = self._clock()

    def wait_for_checkpoint(self) -> None:
        """Block until a background checkpoint write (if any) is on disk."""
        if self._writer is not None:
            self._writer.wait()

    def finish(self) -> None:
        """Write the final checkpoint (rank 0; sharded: all ranks) and wait until it is on disk."""
        if self._saves_here:
            self.save(wait=True)
        if self._writer is not None:
            self._writer.wait()

    def stop(self) -> None:
        """Stop at this step boundary: rank 0 checkpoints, all wait for it, then exit.

        Never returns: exits ``128 + signal`` when this process was signalled (its agent is
        stopping it, and a signal death is what an agent expects), otherwise waits
        ``peer_stop_grace_seconds`` for a signal and exits with :data:`RESTART_EXIT_CODE`
        when none comes, so that the agent re-rendezvouses.
        """
        if self._saves_here:
            self.save(wait=True)
        if self._writer is not None:
            self._writer.wait()
        if self.distributed and self.world_size > 1:
            with contextlib.suppress(Exception):
                dist.barrier()
        deadline = self._clock() + self.peer_stop_grace_seconds
        while not self.signalled and self._clock() < deadline:
            time.sleep(0.02)
        code = 128 + self._signal if self._signal is not None else RESTART_EXIT_CODE
        logger.info("rank %d stopping at step %d (exit %d)", self.rank, self.global_step, code)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # skip atexit/process-group teardown that could block on dead peers

    def emergency_save(self) -> None:
        """After a failed collective: save the last committed step unless already on disk.

        Any rank may call this; concurrent writers of the same step are harmless. A sharded
        checkpoint needs every rank, so after a peer died only the newest complete one counts.
        """
        if self._writer is None:
            return
        with contextlib.suppress(CheckpointError):
            self._writer.wait()
        if self._all_ranks_save:
            logger.warning(
                "a sharded checkpoint needs every rank: the job resumes from step %d",
                self._writer.last_saved_step,
            )
            return
        if self.global_step > self._writer.last_saved_step:
            newest = self.policy.directory and (
                self.policy.directory / f"step-{self.global_step:012d}.pt"
            )
            if newest and newest.exists():
                return
            try:
                self._writer.save(self.global_step, self.checkpoint_payload(), wait=True)
            except Exception:  # the original failure matters more
                logger.exception("emergency checkpoint failed")


class ElasticLoader:
    """A DataLoader replacement that makes an existing torchrun training loop elastic-safe.

    One line replaces the script's ``DataLoader(..., sampler=DistributedSampler(...))``::

        loader = ElasticLoader(dataset, batch_size=32, epochs=10,
                               state={"model": model, "optimizer": optimizer})
        for inputs, targets in loader:          # one batch per optimizer step
            ...forward, backward, optimizer.step()...

    On creation it resumes ``state`` from the newest checkpoint in
    ``$TRAINSCALE_CHECKPOINT_DIR``. Each batch is this rank's share of a global batch of
    ``batch_size * world_size`` samples in the seeded epoch order, so a resume at any world
    size continues at the exact sample. Fetching the next batch marks the previous step done,
    checkpoints when due (``$TRAINSCALE_CHECKPOINT_INTERVAL_SECONDS``) and stops the process
    cleanly (checkpoint first) when torchrun or Kubernetes asks it to.

    ``global_batch_size`` instead of ``batch_size`` keeps the global batch constant across
    world sizes (shares then differ by at most one sample between ranks).

    ``num_workers`` > 0 builds the batches in a standard ``DataLoader``'s worker processes
    (with ``prefetch_factor`` and ``pin_memory``, persistent for the process's life), driven
    by :class:`~trainscale.trainer.runtime.sampler.ElasticBatchSampler`: the same exact order
    from the resume position. :attr:`last_indices` are the dataset indices of the last batch.

    It records the trainer's metrics (:attr:`metrics`: samples, step time split into data,
    communication and the rest, progress, resumes, checkpoints; the step time is from one
    fetch to the next, the user's forward/backward included) and serves them like a trainer
    worker on ``$TRAINSCALE_METRICS_PORT`` + ``$LOCAL_RANK``: with ``metrics=None`` (default)
    when that variable is set (a TrainingJob pod), ``True`` always, ``False`` never.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        state: Mapping[str, Stateful],
        epochs: int,
        batch_size: int | None = None,
        global_batch_size: int | None = None,
        seed: int = 0,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        device: torch.device | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        prefetch_factor: int | None = None,
        metrics: bool | None = None,
    ) -> None:
        if (batch_size is None) == (global_batch_size is None):
            raise ValueError("give exactly one of batch_size and global_batch_size")
        # Resize phases seen from here: process start (the user's imports, process group and
        # model, from the process's creation), restore, first step.
        restart = RestartClock.start(None)
        restart.setup_done = restart.runtime_ready
        self._restart: RestartClock | None = restart
        policy = checkpoint_policy_from_env(os.environ)
        if checkpoint_dir is not None:
            policy = CheckpointPolicy(
                directory=Path(checkpoint_dir),
                keep=policy.keep,
                interval_seconds=policy.interval_seconds,
                every_steps=policy.every_steps,
            )
        self.dataset = dataset
        self.collate_fn = collate_fn or torch.utils.data.default_collate
        if device is None and dist.is_available() and dist.is_initialized():
            device = torch.device("cuda") if dist.get_backend() == "nccl" else None
        self.metrics = serve_loader_metrics(os.environ, metrics)
        self.session = ElasticSession(
            dataset_length=len(dataset),
            objects=state,
            epochs=epochs,
            seed=seed,
            policy=policy,
            device=device,
            on_checkpoint_saved=self.metrics.record_checkpoint,
        )
        self.session.install_signal_handlers()
        self.metrics.record_world(
            self.session.world_size, int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        )
        self.global_batch = (
            global_batch_size
            if global_batch_size is not None
            else int(batch_size or 0) * self.session.world_size
        )
        if self.session.resume():
            self.metrics.record_resume(self.session.global_step)
        restart.restore_done, restart.resumed_step = time.time(), self.session.global_step
        self._pending: data_order.StepSlice | None = None
        self._timing = _StepTiming()
        self._loader_settings = (num_workers, pin_memory, prefetch_factor)
        self._batches: StepBatches | None = None
        self.last_indices = np.zeros(0, dtype=np.int64)

    def _step_batches(self) -> StepBatches:
        # Built at the first batch (after the resume), so the sampler starts there.
        if self._batches is None:
            workers, pin_memory, prefetch_factor = self._loader_settings
            loader = None
            if workers > 0:
                sampler = ElasticBatchSampler.from_session(self.session, self.global_batch)
                loader = build_loader(
                    self.dataset,
                    sampler,
                    collate=self.collate_fn,
                    workers=workers,
                    pin_memory=pin_memory,
                    prefetch_factor=prefetch_factor,
                )
            self._batches = StepBatches(self.dataset, self.collate_fn, loader)
        return self._batches

    @property
    def epoch(self) -> int:
        """Current epoch (0-based)."""
        return self.session.epoch

    @property
    def step(self) -> int:
        """Optimizer steps completed by the job."""
        return self.session.global_step

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self._pending is not None:
            self.session.commit(self._pending)
            samples, self._pending = len(self.last_indices), None
            started = time.perf_counter()
            stop = self.session.coordinate(0.0, 0)
            self._record_step(samples, time.perf_counter() - started)
            if stop:
                self.session.stop()
        batches = self._step_batches()
        if self.session.finished:
            self.session.finish()
            batches.close()
            raise StopIteration
        self._timing.fetch_started = time.perf_counter()
        step, ids = self.session.next_step(self.global_batch)
        self._pending = step
        batch = batches.next(ids) if len(ids) else self.collate_fn([])
        self.last_indices = batches.take_trained()
        self._timing.data_seconds = time.perf_counter() - self._timing.fetch_started
        return batch

    def _record_step(self, samples: int, communication_seconds: float) -> None:
        """Record the step that just ended: from its batch's fetch until now."""
        record_session_step(
            self.metrics,
            self.session,
            self._restart,
            samples=samples,
            step_seconds=time.perf_counter() - self._timing.fetch_started,
            data_seconds=self._timing.data_seconds,
            communication_seconds=communication_seconds,
        )
        self._restart = None


def record_session_step(
    metrics: TrainerMetrics,
    session: ElasticSession,
    restart: RestartClock | None,
    *,
    samples: int,
    step_seconds: float,
    data_seconds: float,
    communication_seconds: float,
) -> None:
    """Record a step of ``session`` that just ended (the rest of the step is compute) and,
    with the ``restart`` clock of a process's first step, its resize phases."""
    metrics.record_step(
        samples=samples,
        step_seconds=step_seconds,
        compute_seconds=step_seconds - data_seconds - communication_seconds,
        communication_seconds=communication_seconds,
        data_seconds=data_seconds,
        global_step=session.global_step,
        epoch=session.epoch,
        epoch_progress=session.position / session.dataset_length,
        loss=session.last_loss,
        remaining_samples=session.remaining_samples,
    )
    if restart is not None:
        metrics.record_restart(*restart.phases())


@dataclass
class _StepTiming:
    fetch_started: float = 0.0
    data_seconds: float = 0.0


def serve_loader_metrics(env: Mapping[str, str], serve: bool | None) -> TrainerMetrics:
    """The metrics of an :class:`ElasticLoader`, served on the trainer's port when asked
    (``serve``) or, for None, when the operator set ``TRAINSCALE_METRICS_PORT``."""
    if serve is False:
        return NullMetrics()
    metrics = TrainerMetrics()
    if serve or (serve is None and env.get(ENV_METRICS_PORT, "").strip()):
        settings = metrics_settings_from_env(env)
        metrics.serve(
            settings, compute_metrics_port(settings.port, int(env.get("LOCAL_RANK", "0")))
        )
    return metrics
