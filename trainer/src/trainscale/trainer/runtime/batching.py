"""Batch semantics across world sizes: how big each worker's batch is and how the LR scales.

Why this module exists: when the autoscaler changes the number of workers, the optimisation
must not silently change with it. By default the *global* batch stays constant: each worker
takes its share of the same global batch, split into micro-batches with gradient accumulation
when the share exceeds what one forward pass may hold, and the learning rate is unchanged.
Users who prefer a fixed per-worker batch (global batch grows with the world) pick a learning
rate scaling rule: ``linear`` (Goyal et al., 2017) or ``sqrt`` (Krizhevsky, 2014; Hoffer et
al., 2017), relative to a reference world size.

Pure functions only; the runtime calls :func:`decide_batch_plan` after every rendezvous.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

BatchMode = Literal["constant-global", "fixed-per-worker"]
LrScaling = Literal["none", "linear", "sqrt"]

BATCH_MODES: tuple[BatchMode, ...] = ("constant-global", "fixed-per-worker")
LR_SCALINGS: tuple[LrScaling, ...] = ("none", "linear", "sqrt")


class BatchSettingsError(ValueError):
    """Batch settings that cannot work (the message names the field and value)."""


@dataclass(frozen=True)
class BatchSettings:
    """What the user asked for; validated by :func:`decide_batch_plan`.

    Attributes:
        mode: ``constant-global`` (default) or ``fixed-per-worker``.
        global_batch: samples per optimizer step over all workers (``constant-global``).
        per_worker_batch: samples per worker per step (``fixed-per-worker``).
        micro_batch: most samples in one forward/backward pass; None means a worker's whole
            share in one pass.
        lr_scaling: LR rule for ``fixed-per-worker``: none, linear or sqrt.
        reference_world_size: world size at which the task's LR is the right one.
    """

    mode: BatchMode = "constant-global"
    global_batch: int = 64
    per_worker_batch: int | None = None
    micro_batch: int | None = None
    lr_scaling: LrScaling = "none"
    reference_world_size: int = 1


@dataclass(frozen=True)
class BatchPlan:
    """How one world size trains.

    Attributes:
        world_size: the world size the plan is for.
        global_batch: samples per optimizer step over all workers.
        per_worker_batch: the largest share of one worker (shares differ by at most one).
        micro_batch: samples per forward/backward pass.
        accumulation_steps: micro-batches of the largest share (gradient accumulation).
        lr_scale: factor applied to the task's learning rate at this world size.
    """

    world_size: int
    global_batch: int
    per_worker_batch: int
    micro_batch: int
    accumulation_steps: int
    lr_scale: float


def compute_lr_scale(rule: LrScaling, world_size: int, reference_world_size: int) -> float:
    """Return the LR factor of ``rule`` at ``world_size`` relative to ``reference_world_size``.

    Raises:
        BatchSettingsError: on an unknown rule or a world size below 1.
    """
    if world_size < 1:
        raise BatchSettingsError(f"world_size must be >= 1, got {world_size}")
    if reference_world_size < 1:
        raise BatchSettingsError(f"reference_world_size must be >= 1, got {reference_world_size}")
    ratio = world_size / reference_world_size
    if rule == "none":
        return 1.0
    if rule == "linear":
        return ratio
    if rule == "sqrt":
        return math.sqrt(ratio)
    raise BatchSettingsError(f"lr_scaling must be one of {', '.join(LR_SCALINGS)}, got {rule!r}")


def decide_batch_plan(settings: BatchSettings, world_size: int) -> BatchPlan:
    """Decide the per-worker batch, accumulation and LR factor for ``world_size``.

    ``constant-global``: the global batch is ``settings.global_batch`` at every world size;
    each worker's share is at most ``ceil(global_batch / world_size)``. LR scaling rules
    other than ``none`` are refused there, since the batch does not change.

    ``fixed-per-worker``: each worker takes ``settings.per_worker_batch``; the global batch is
    ``per_worker_batch * world_size`` and the LR is scaled by ``settings.lr_scaling``.

    Raises:
        BatchSettingsError: naming the field whose value cannot work.
    """
    if world_size < 1:
        raise BatchSettingsError(f"world_size must be >= 1, got {world_size}")
    if settings.micro_batch is not None and settings.micro_batch < 1:
        raise BatchSettingsError(f"micro_batch must be >= 1, got {settings.micro_batch}")
    if settings.mode == "constant-global":
        if settings.global_batch < 1:
            raise BatchSettingsError(f"global_batch must be >= 1, got {settings.global_batch}")
        if settings.lr_scaling != "none":
            raise BatchSettingsError(
                f"lr_scaling {settings.lr_scaling!r} needs mode 'fixed-per-worker'; with "
                "'constant-global' the global batch never changes, so neither does the LR"
            )
        global_batch = settings.global_batch
        share = -(-global_batch // world_size)
    elif settings.mode == "fixed-per-worker":
        if settings.per_worker_batch is None or settings.per_worker_batch < 1:
            raise BatchSettingsError(
                "per_worker_batch must be >= 1 with mode 'fixed-per-worker', got "
                f"{settings.per_worker_batch}"
            )
        share = settings.per_worker_batch
        global_batch = share * world_size
    else:
        raise BatchSettingsError(
            f"mode must be one of {', '.join(BATCH_MODES)}, got {settings.mode!r}"
        )
    micro = min(share, settings.micro_batch) if settings.micro_batch else share
    return BatchPlan(
        world_size=world_size,
        global_batch=global_batch,
        per_worker_batch=share,
        micro_batch=micro,
        accumulation_steps=-(-share // micro),
        lr_scale=compute_lr_scale(settings.lr_scaling, world_size, settings.reference_world_size),
    )
