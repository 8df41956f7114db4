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

import torch
from torch import nn

from trainscale.trainer.task import Task


def _int_env(name: str, default: int) -> int:
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


def _slowed(
    seconds: float,
) -> Callable[[nn.Module, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    # Tests drive resizes at given steps; a fixed per-batch delay keeps steps from racing
    # past them on an idle machine (it stands in for a bigger model's compute).
    def loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        time.sleep(seconds)
        return _mse(model, batch)

    return loss


def task() -> Task:
    """The synthetic task. Size via TRAINSCALE_SYNTHETIC_SAMPLES / _FEATURES / _HIDDEN; a
    per-micro-batch delay via TRAINSCALE_SYNTHETIC_DELAY_MS."""
    samples = _int_env("TRAINSCALE_SYNTHETIC_SAMPLES", 4096)
    features = _int_env("TRAINSCALE_SYNTHETIC_FEATURES", 32)
    hidden = _int_env("TRAINSCALE_SYNTHETIC_HIDDEN", 64)
    delay_ms = _int_env("TRAINSCALE_SYNTHETIC_DELAY_MS", 0)
    model = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, 1))
    return Task(
        model=model,
        train_data=make_data(samples, features),
        loss=_slowed(delay_ms / 1000) if delay_ms else _mse,
        optimizer=functools.partial(torch.optim.SGD, lr=0.02, momentum=0.9),
        global_batch_size=64,
        epochs=2,
    )
