"""Handwritten digits (scikit-learn's bundled 8x8 images): a real dataset that ships offline.

Why this module exists: it is the task a new user runs first (``make train``) and the one the
tests check accuracy on. 1,797 images of 10 classes, split 80/20 with a fixed seed; a small
MLP reaches about 97% held-out accuracy in 30 epochs on a CPU in seconds.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import torch
from torch import nn

from trainscale.trainer.runtime.task import Task

SPLIT_SEED = 0
TEST_FRACTION = 0.2


def load_split() -> tuple[torch.utils.data.TensorDataset, torch.utils.data.TensorDataset]:
    """Return ``(train, test)``: pixels scaled to [0, 1], a fixed stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(
        range(len(y)), test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=digits.target
    )
    tr, te = torch.tensor(idx_train), torch.tensor(idx_test)
    return (
        torch.utils.data.TensorDataset(x[tr], y[tr]),
        torch.utils.data.TensorDataset(x[te], y[te]),
    )


def build_model() -> nn.Module:
    """A 64-128-10 MLP with dropout."""
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, 10))


def _cross_entropy(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def accuracy(model: nn.Module, data: torch.utils.data.TensorDataset) -> float:
    """Fraction of ``data`` the model classifies correctly."""
    x, y = data.tensors
    device = next(model.parameters()).device
    with torch.no_grad():
        predicted = model(x.to(device)).argmax(dim=1).cpu()
    return float((predicted == y).float().mean())


def task() -> Task:
    """The digits task: 30 epochs, global batch 64, SGD with momentum, LR x0.3 every 10
    epochs' worth of steps."""
    train, test = load_split()
    epochs = 30
    steps_per_epoch = -(-len(train) // 64)

    def evaluate(model: nn.Module) -> Mapping[str, float]:
        return {"accuracy": accuracy(model, test)}

    return Task(
        model=build_model(),
        train_data=train,
        loss=_cross_entropy,
        optimizer=functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9),
        scheduler=functools.partial(
            torch.optim.lr_scheduler.StepLR, step_size=10 * steps_per_epoch, gamma=0.3
        ),
        evaluate=evaluate,
        global_batch_size=64,
        epochs=epochs,
    )
