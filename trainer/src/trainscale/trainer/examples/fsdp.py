"""An FSDP2 example: the synthetic regression task with its model sharded by ``fully_shard``.

Why this module exists: it shows (and the tests resize) the shape of a sharded job. The
factory runs after the runtime has created the process group, so it shards the model
itself: every ``Linear`` layer is its own FSDP unit, then the root. The runtime sees an FSDP2
module, trains it without DDP (FSDP reduce-scatters the gradients) and checkpoints it with
DCP, every rank writing its shard asynchronously; a resize reshards on load.

Sizes via ``TRAINSCALE_SYNTHETIC_SAMPLES`` / ``_FEATURES`` and ``TRAINSCALE_FSDP_HIDDEN`` /
``TRAINSCALE_FSDP_LAYERS`` (hidden layers); the per-batch delay as in the synthetic task.
FSDP runs collectives in every forward and backward, so every rank must run the same number
of micro-batches: keep the default micro-batch (the whole share) or one that divides every
share evenly. Evaluation would run on rank 0 alone, so this task has none; the loss shows
progress.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard

from trainscale.trainer.examples.synthetic import build_loss, int_env, make_data
from trainscale.trainer.runtime.task import Task


def build_model(features: int, hidden: int, layers: int) -> nn.Sequential:
    """An MLP ``features -> hidden x layers -> 1`` (ReLU), not yet sharded."""
    blocks: list[nn.Module] = [nn.Linear(features, hidden), nn.ReLU()]
    for _ in range(layers - 1):
        blocks += [nn.Linear(hidden, hidden), nn.ReLU()]
    blocks.append(nn.Linear(hidden, 1))
    return nn.Sequential(*blocks)


def shard(model: nn.Module) -> nn.Module:
    """Apply FSDP2 to each ``Linear`` and then the root (a no-op without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return model
    for layer in model.modules():
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model


def task() -> Task:
    """The FSDP2 task (3,072 samples, 48 per step, Adam)."""
    features = int_env("TRAINSCALE_SYNTHETIC_FEATURES", 32)
    model = build_model(
        features, int_env("TRAINSCALE_FSDP_HIDDEN", 128), int_env("TRAINSCALE_FSDP_LAYERS", 3)
    )
    return Task(
        model=shard(model),
        train_data=make_data(int_env("TRAINSCALE_SYNTHETIC_SAMPLES", 3072), features),
        loss=build_loss(),
        optimizer=functools.partial(torch.optim.Adam, lr=3e-3),
        global_batch_size=48,
        epochs=2,
    )
