"""The training loop of one worker process (what torchrun starts on every rank).

Why this module exists: it turns a user's :class:`~trainscale.trainer.runtime.task.Task` into elastic
DDP training: process group (NCCL on GPU, gloo on CPU), the batch plan for the current world
size, gradient accumulation weighted so that the gradient is the mean over the whole global
batch at any world size, the LR scaling rule, metrics, progress lines, and the
:class:`~trainscale.trainer.runtime.elastic.ElasticSession` that resumes, checkpoints and stops.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import signal
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed import GradBucket  # type: ignore[attr-defined]
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from trainscale.trainer.contract.audit import audit_file_name
from trainscale.trainer.contract.environment import ENV_AUDIT_LOG_DIR
from trainscale.trainer.runtime import data_order
from trainscale.trainer.runtime.batching import (
    BatchPlan,
    BatchSettings,
    decide_batch_plan,
)
from trainscale.trainer.runtime.elastic import ElasticSession, record_session_step
from trainscale.trainer.runtime.metrics import NullMetrics, TrainerMetrics
from trainscale.trainer.runtime.phases import RestartClock, describe_restart, note_world_end
from trainscale.trainer.runtime.sampler import (
    ElasticBatchSampler,
    StepBatches,
    build_loader,
    fetch_items,
)
from trainscale.trainer.runtime.settings import (
    CheckpointPolicy,
    build_worker_label,
    checkpoint_policy_from_env,
    compute_metrics_port,
    metrics_settings_from_env,
)
from trainscale.trainer.runtime.sharded_checkpoint import is_sharded_module
from trainscale.trainer.runtime.task import Task, TaskError, load_task

logger = logging.getLogger("trainscale.trainer")

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (an agent killed by SIGKILL).

    A pod's containers die together; on a laptop or in tests nothing else would stop a
    worker whose agent vanished, and it would keep a stale rank in the next world.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclass(frozen=True)
class WorkerOptions:
    """The flags the worker reads (see :func:`trainscale.trainer.launch.cli.build_parser`)."""

    task: str
    epochs: int | None = None
    max_steps: int | None = None
    global_batch_size: int | None = None
    per_worker_batch_size: int | None = None
    micro_batch_size: int | None = None
    lr_scaling: str = "none"
    reference_world_size: int = 1
    seed: int = 0
    checkpoint_dir: str | None = None
    checkpoint_interval: float | None = None
    checkpoint_every_steps: int | None = None
    checkpoint_keep: int | None = None
    no_metrics: bool = False
    log_interval: float = 2.0
    collective_timeout: float = 120.0
    peer_stop_grace: float = 1.0
    metrics_dir: str | None = None  # set by the agent: publish there, the agent serves the pod
    loader_workers: int = 0
    loader_prefetch: int | None = None


def build_worker_options(ns: argparse.Namespace) -> WorkerOptions:
    """Pick the worker's fields out of the parsed command line."""
    fields = WorkerOptions.__dataclass_fields__
    return WorkerOptions(**{k: getattr(ns, k) for k in fields if hasattr(ns, k)})


def build_batch_settings(task: Task, options: WorkerOptions) -> BatchSettings:
    """Combine the task's batch defaults with the command line's overrides."""
    if options.per_worker_batch_size is not None:
        return BatchSettings(
            mode="fixed-per-worker",
            per_worker_batch=options.per_worker_batch_size,
            micro_batch=options.micro_batch_size or task.micro_batch_size,
            lr_scaling=options.lr_scaling,  # type: ignore[arg-type]
            reference_world_size=options.reference_world_size,
        )
    return BatchSettings(
        mode="constant-global",
        global_batch=options.global_batch_size or task.global_batch_size,
        micro_batch=options.micro_batch_size or task.micro_batch_size,
        lr_scaling=options.lr_scaling,  # type: ignore[arg-type]
        reference_world_size=options.reference_world_size,
    )


def build_checkpoint_policy(env: Mapping[str, str], options: WorkerOptions) -> CheckpointPolicy:
    """The operator's ``TRAINSCALE_CHECKPOINT_*`` variables, overridden by explicit flags."""
    policy = checkpoint_policy_from_env(env)
    if options.checkpoint_dir is not None:
        policy = replace(policy, directory=Path(options.checkpoint_dir))
    if options.checkpoint_interval is not None:
        policy = replace(policy, interval_seconds=options.checkpoint_interval or None)
    if options.checkpoint_every_steps is not None:
        policy = replace(policy, every_steps=options.checkpoint_every_steps or None)
    if options.checkpoint_keep is not None:
        policy = replace(policy, keep=options.checkpoint_keep)
    return policy


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor of a (nested) batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def fetch_batch(task: Task, ids: np.ndarray) -> Any:
    """Collate the dataset items ``ids`` into one batch (fast path for TensorDataset)."""
    return fetch_items(task.train_data, task.collate, ids)


def build_step_batches(
    task: Task,
    session: ElasticSession,
    plan: BatchPlan,
    options: WorkerOptions,
    pin_memory: bool,
) -> StepBatches:
    """Where the loop's micro-batches come from: fetched in process (``--loader-workers 0``)
    or a DataLoader whose workers follow the exact data order from the resume position."""
    if options.loader_workers == 0:
        return StepBatches(task.train_data, task.collate)
    sampler = ElasticBatchSampler.from_session(session, plan.global_batch, plan.micro_batch)
    loader = build_loader(
        task.train_data,
        sampler,
        collate=task.collate,
        workers=options.loader_workers,
        pin_memory=pin_memory,
        prefetch_factor=options.loader_prefetch,
    )
    return StepBatches(task.train_data, task.collate, loader)


@contextlib.contextmanager
def scaled_lr(optimizer: torch.optim.Optimizer, scale: float) -> Iterator[None]:
    """Multiply every param group's LR by ``scale`` for one optimizer step.

    Applied around ``step()`` only, so schedulers and checkpoints keep seeing the task's own
    (unscaled) learning rate and a resume at another world size rescales correctly.
    """
    if scale == 1.0:
        yield
        return
    saved = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * scale
    try:
        yield
    finally:
        for group, lr in zip(optimizer.param_groups, saved, strict=True):
            group["lr"] = lr


class CommTimer:
    """Measures the exposed (not overlapped) part of DDP's gradient all-reduce.

    The comm hook notes when the last gradient bucket is handed to the all-reduce (local
    backward compute is then done); what ``backward()`` still waits after that is time blocked
    on communication.
    """

    def __init__(self) -> None:
        self.last_bucket_at = 0.0

    def reset(self) -> None:
        self.last_bucket_at = 0.0

    @staticmethod
    def hook(state: CommTimer, bucket: GradBucket) -> torch.futures.Future[torch.Tensor]:
        """DDP comm hook: plain all-reduce (as DDP's default), timestamped."""
        state.last_bucket_at = time.perf_counter()
        return default_hooks.allreduce_hook(None, bucket)  # type: ignore[arg-type]


# DDP checks the hook's annotations as objects; this module's are strings (PEP 563).
CommTimer.hook.__annotations__ = {
    "state": object,
    "bucket": GradBucket,
    "return": torch.futures.Future[torch.Tensor],
}


class AuditLog:
    """Appends the sample ids of every step to a per-process JSONL file (data-order audit)."""

    def __init__(self, directory: Path, world_id: str, rank: int, loader_workers: int = 0) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._fh: TextIO = open(  # noqa: SIM115 - closed in close()
            directory / audit_file_name(world_id, rank), "a", encoding="utf-8"
        )
        self.world_id = world_id
        self.rank = rank
        self.loader_workers = loader_workers

    @classmethod
    def for_world(
        cls, directory: Path, rank: int, *, distributed: bool, loader_workers: int = 0
    ) -> AuditLog:
        """This rank's log in a world whose id rank 0 draws and broadcasts (a collective:
        every rank of the world calls it)."""
        world_id = [uuid.uuid4().hex[:12]]
        if distributed:
            dist.broadcast_object_list(world_id, src=0)
        return cls(directory, world_id[0], rank, loader_workers)

    def record(
        self,
        *,
        step: int,
        slice_: data_order.StepSlice,
        world_size: int,
        ids: np.ndarray,
        loss: float,
    ) -> None:
        entry = {
            "world_id": self.world_id,
            "rank": self.rank,
            "world_size": world_size,
            "step": step,
            "epoch": slice_.epoch,
            "start": slice_.start,
            "stop": slice_.stop,
            "ids": ids.tolist(),
            "loss": loss,
            "loader_workers": self.loader_workers,
            "time": time.time(),
        }
        self._fh.write(json.dumps(entry) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


class Progress:
    """Rank 0's progress lines: step, epoch, world size, loss, samples/s, checkpoint."""

    def __init__(self, label: str, interval: float, total_steps_hint: str) -> None:
        self.label = label
        self.interval = interval
        self.total = total_steps_hint
        self._last_time = time.monotonic()
        self._last_samples = 0

    def start(self, samples_total: int) -> None:
        self._last_time = time.monotonic()
        self._last_samples = samples_total

    def maybe_print(self, session: ElasticSession, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_time < self.interval:
            return
        elapsed = max(now - self._last_time, 1e-9)
        rate = (session.samples_total - self._last_samples) / elapsed
        self._last_time, self._last_samples = now, session.samples_total
        done = session.position / session.dataset_length
        ckpt = session.last_saved_step
        print(
            f"[{self.label}] step {session.global_step}{self.total} | epoch {session.epoch} "
            f"{done:4.0%} | world {session.world_size} | loss {session.last_loss:.4f} | "
            f"{rate:,.0f} samples/s | checkpoint {'-' if ckpt < 0 else ckpt}",
            flush=True,
        )


def _evaluate(task: Task, model: torch.nn.Module, label: str, what: str) -> None:
    if task.evaluate is None:
        return
    was_training = model.training
    model.eval()
    with torch.no_grad():
        results = task.evaluate(model)
    model.train(was_training)
    shown = " | ".join(f"{k} {v:.4f}" for k, v in results.items())
    print(f"[{label}] {what} | {shown}", flush=True)


def _zero_loss(model: torch.nn.Module) -> torch.Tensor:
    """A loss touching every parameter with weight 0: lets a rank without samples join the
    gradient all-reduce (DDP needs every rank in every bucket)."""
    return sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0  # type: ignore[return-value]


# Objects whose destructor must not run in a worker (see the end of :func:`train`).
_KEEP_UNTIL_EXIT: list[object] = []


def train(
    options: WorkerOptions, env: Mapping[str, str], step_times: list[float] | None = None
) -> int:
    """Run the task on this rank until done or stopped; return the process exit code.

    ``step_times``, when given, receives the wall time of every step (benchmarks).
    """
    stop_signal: list[int] = []

    def _early(signum: int, frame: Any) -> None:
        stop_signal.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _early)
    restart = RestartClock.start(options.metrics_dir)

    local_rank = int(env.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    distributed = "WORLD_SIZE" in env
    if distributed:
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=timedelta(seconds=options.collective_timeout),
        )
    restart.process_group_ready = time.time()
    rank = dist.get_rank() if distributed else 0
    world_size = dist.get_world_size() if distributed else 1
    label = build_worker_label(env)

    metrics: TrainerMetrics = NullMetrics() if options.no_metrics else TrainerMetrics()
    if not options.no_metrics:
        msettings = metrics_settings_from_env(env)
        if options.metrics_dir:
            metrics.publish_to(Path(options.metrics_dir), local_rank)
        else:
            metrics.serve(msettings, compute_metrics_port(msettings.port, local_rank))
        if use_cuda:
            metrics.watch_gpu(local_rank)
    metrics.record_world(world_size, int(env.get("TORCHELASTIC_RESTART_COUNT", "0")))

    seed = options.seed
    torch.manual_seed(seed)
    task = load_task(options.task)  # seeded: identical initial weights on every rank
    if options.epochs is not None:
        task = replace(task, epochs=options.epochs)
    plan: BatchPlan = decide_batch_plan(build_batch_settings(task, options), world_size)

    model = task.model.to(device)
    net: torch.nn.Module = model
    timer = CommTimer()
    sharded = is_sharded_module(model)  # FSDP2: no DDP; checkpointed with DCP
    if sharded and task.evaluate is not None:
        raise TaskError("Task.evaluate runs on rank 0 alone, which an FSDP model cannot do")
    if sharded and plan.accumulation_steps > 1:  # shares differing by one: unequal counts
        raise TaskError(
            f"an FSDP model needs one micro-batch per step on every rank (its collectives run "
            f"in each forward); micro-batch {plan.micro_batch} < share {plan.per_worker_batch}"
        )
    if distributed and world_size > 1 and not sharded:
        ddp = DistributedDataParallel(model, device_ids=[local_rank] if use_cuda else None)
        ddp.register_comm_hook(timer, CommTimer.hook)
        net = ddp
    optimizer = task.optimizer(model.parameters())
    scheduler = task.scheduler(optimizer) if task.scheduler else None
    objects: dict[str, Any] = {"model": model, "optimizer": optimizer}
    if scheduler is not None:
        objects["scheduler"] = scheduler
    restart.setup_done = time.time()

    session = ElasticSession(
        dataset_length=len(task.train_data),
        objects=objects,
        epochs=task.epochs,
        seed=seed,
        policy=build_checkpoint_policy(env, options),
        max_steps=options.max_steps,
        device=device,
        peer_stop_grace_seconds=options.peer_stop_grace,
        on_checkpoint_saved=metrics.record_checkpoint,
    )
    session.install_signal_handlers()
    if stop_signal:
        session.note_signal(stop_signal[0])
    if session.resume():
        metrics.record_resume(session.global_step)
    restart.restore_done, restart.resumed_step = time.time(), session.global_step
    audit = None
    if env.get(ENV_AUDIT_LOG_DIR):
        audit = AuditLog.for_world(
            Path(env[ENV_AUDIT_LOG_DIR]),
            rank,
            distributed=distributed,
            loader_workers=max(options.loader_workers, 0),
        )

    batches = build_step_batches(task, session, plan, options, pin_memory=use_cuda)
    total = f"/{options.max_steps}" if options.max_steps else ""
    progress = Progress(label, options.log_interval, total)
    if rank == 0:
        where = (
            f"resumed from step {session.global_step} (epoch {session.epoch}, sample "
            f"{session.position}/{session.dataset_length})"
            if session.resumed_from
            else "starting fresh"
        )
        print(
            f"[{label}] {where} | world {world_size} | global batch {plan.global_batch} = "
            f"{world_size} x <={plan.per_worker_batch} (micro-batch {plan.micro_batch}, "
            f"accumulation {plan.accumulation_steps}) | lr x{plan.lr_scale:.3g} | "
            f"{'cuda/nccl' if use_cuda else 'cpu/gloo'}",
            flush=True,
        )
    progress.start(session.samples_total)
    net.train()
    unrecorded: RestartClock | None = restart

    def record(step: data_order.StepSlice, samples: int, loss_sum: float) -> None:
        """This rank's audit record of the step, written before the backward whose collective
        commits it: a rank killed after that collective (a peer may still commit the step and
        checkpoint it) has its record written; one killed before it leaves a step no rank
        commits, which the next world runs again."""
        trained = batches.take_trained()
        if audit is not None:
            audit.record(step=session.global_step + 1, slice_=step, world_size=world_size,
                         ids=trained, loss=loss_sum / max(samples, 1))  # fmt: skip

    try:
        while not session.finished:
            started = time.perf_counter()
            comm = data_time = 0.0
            step, ids = session.next_step(plan.global_batch)
            chunks = data_order.compute_micro_batches(0, len(ids), plan.micro_batch)
            loss_sum = 0.0
            if not chunks and sharded:  # FSDP's collectives need a forward: one sample, weight 0
                one = to_device(fetch_batch(task, np.zeros(1, dtype=np.int64)), device)
                zero = task.loss(net, one) * 0.0
                record(step, len(ids), loss_sum)
                zero.backward()  # type: ignore[no-untyped-call]
            elif not chunks:
                record(step, len(ids), loss_sum)
                _zero_loss(net).backward()  # type: ignore[no-untyped-call]
            for i, (a, b) in enumerate(chunks):
                t_data = time.perf_counter()
                batch = to_device(batches.next(ids[a:b]), device)
                data_time += time.perf_counter() - t_data
                last = i == len(chunks) - 1
                sync = contextlib.nullcontext() if last or net is model else net.no_sync()  # type: ignore[operator]
                with sync:
                    timer.reset()
                    loss = task.loss(net, batch)
                    loss_sum += float(loss.detach()) * (b - a)
                    if last:
                        record(step, len(ids), loss_sum)
                    ((b - a) * world_size / step.size * loss).backward()  # type: ignore[no-untyped-call]
                    if last and timer.last_bucket_at:
                        comm += time.perf_counter() - timer.last_bucket_at
            with scaled_lr(optimizer, plan.lr_scale):
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if scheduler is not None:
                scheduler.step()
            epoch_before = session.epoch
            session.commit(step)
            t_coord = time.perf_counter()
            stop = session.coordinate(loss_sum, len(ids))
            comm += time.perf_counter() - t_coord
            elapsed = time.perf_counter() - started
            if step_times is not None:
                step_times.append(elapsed)
            record_session_step(
                metrics,
                session,
                None,
                samples=len(ids),
                step_seconds=elapsed,
                data_seconds=data_time,
                communication_seconds=comm,
            )
            if unrecorded is not None:  # the first step at this world size is done
                phases, lost = unrecorded.phases()
                metrics.record_restart(phases, lost)
                if local_rank == 0:  # each pod's view (a job's phase is its slowest pod's)
                    print(
                        f"[{label}] restart phases (world {world_size}): "
                        f"{describe_restart(phases, lost)}",
                        flush=True,
                    )
                unrecorded = None
            if stop:
                if local_rank == 0:
                    note_world_end(options.metrics_dir, session.global_step)
                if rank == 0:
                    progress.maybe_print(session, force=True)
                    print(
                        f"[{label}] stopping at step {session.global_step} for a resize", flush=True
                    )
                session.stop()
            if rank == 0:
                progress.maybe_print(session)
                if session.epoch != epoch_before and task.evaluate is not None:
                    _evaluate(task, model, label, f"epoch {epoch_before} done")
    except RuntimeError:
        # A peer died mid-collective: keep the last committed step, then let the agent restart.
        session.emergency_save()
        if local_rank == 0:
            note_world_end(options.metrics_dir, session.global_step)
        raise
    session.finish()
    batches.close()
    if rank == 0:
        progress.maybe_print(session, force=True)
        _evaluate(task, model, label, f"finished at step {session.global_step}")
    if audit is not None:
        audit.close()
    if distributed:
        dist.barrier()
        # The DDP wrapper holds the process group; letting it be freed when this function
        # returns can deadlock with gloo: the group's destructor joins its thread while
        # holding the GIL, and that thread may still be freeing the barrier's tensors, which
        # needs the GIL (seen as a worker that never exits after "finished at step", its
        # agent waiting at the exit barrier). A worker process ends with os._exit
        # (multiprocessing), so what is kept here is never destroyed.
        _KEEP_UNTIL_EXIT.append(net)
        dist.destroy_process_group()
    metrics.shutdown()
    return 0
