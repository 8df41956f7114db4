"""A synthetic regression task: no dataset to download, deterministic, fast.

Why this module exists: tests and benchmarks need a task whose loss visibly falls within a
few dozen steps on a CPU and whose cost can be dialled (``TRAINSCALE_SYNTHETIC_*`` variables),
so that resize and overhead measurements are about the runtime, not about data loading.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from trainscale.trainer.runtime.task import Task


def int_env(name: str, default: int) -> int:
    """The integer environment variable ``name`` (``default`` when unset or empty)."""
    raw = os.environ.get(name, "")
    try:
        return int(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None


def make_data(samples: int, features: int, seed: int = 1234) -> torch.utils.data.TensorDataset:
    """A linear target plus noise, identical on every rank (fixed seed, own generator)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, features, generator=gen)
    w = torch.randn(features, 1, generator=gen)
    y = x @ w / features**0.5 + 0.1 * torch.randn(samples, 1, generator=gen)
    return torch.utils.data.TensorDataset(x, y)


def _mse(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def _delayed(delay: Callable[[], float]) -> Callable[[nn.Module, Any], torch.Tensor]:
    # A per-batch delay stands in for a bigger model's compute. Tests that resize a running
    # job set it through a file, to slow training down while a new worker boots and speed it
    # up afterwards, so that the job neither ends before the resize nor drags on after it.
    def loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        seconds = delay()
        if seconds > 0:
            time.sleep(seconds)
        return _mse(model, batch)

    return loss


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _per_extra_worker(delay: Callable[[], float]) -> Callable[[], float]:
    # A cost that grows with the workers, like communication: the job's speedup curve itself
    # changes when the file does (a benchmark of the autoscaler's reaction on real training).
    return lambda: delay() * (_world_size() - 1)


def _sum(*delays: Callable[[], float]) -> Callable[[], float]:
    return lambda: sum(d() for d in delays)


def _file_delay(path: str) -> Callable[[], float]:
    def delay() -> float:
        try:
            with open(path, encoding="utf-8") as fh:
                return float(fh.read().strip() or 0) / 1000
        except (OSError, ValueError):
            return 0.0

    return delay


def build_loss() -> Callable[[nn.Module, Any], torch.Tensor]:
    """The mean squared error, after the per-micro-batch delay that TRAINSCALE_SYNTHETIC_DELAY_MS
    (milliseconds) or the file named by TRAINSCALE_SYNTHETIC_DELAY_FILE (read at every batch)
    asks for, plus a per-micro-batch delay for each worker beyond the first (milliseconds, a
    stand-in for communication) read from the file named by TRAINSCALE_SYNTHETIC_SYNC_FILE at
    every batch."""
    delay_ms = int_env("TRAINSCALE_SYNTHETIC_DELAY_MS", 0)
    delay_file = os.environ.get("TRAINSCALE_SYNTHETIC_DELAY_FILE", "")
    sync_file = os.environ.get("TRAINSCALE_SYNTHETIC_SYNC_FILE", "")
    if not (delay_file or delay_ms or sync_file):
        return _mse
    compute = _file_delay(delay_file) if delay_file else (lambda: delay_ms / 1000)
    delay = _sum(compute, _per_extra_worker(_file_delay(sync_file))) if sync_file else compute
    return _delayed(delay)


def task() -> Task:
    """The synthetic task. Size via TRAINSCALE_SYNTHETIC_SAMPLES / _FEATURES / _HIDDEN; a
    per-micro-batch delay as :func:`build_loss` reads it."""
    samples = int_env("TRAINSCALE_SYNTHETIC_SAMPLES", 4096)
    features = int_env("TRAINSCALE_SYNTHETIC_FEATURES", 32)
    hidden = int_env("TRAINSCALE_SYNTHETIC_HIDDEN", 64)
    model = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, 1))
    return Task(
        model=model,
        train_data=make_data(samples, features),
        loss=build_loss(),
        optimizer=functools.partial(torch.optim.SGD, lr=0.02, momentum=0.9),
        global_batch_size=64,
        epochs=2,
    )
