"""The digits task on a pretend accelerator: scikit-learn's digits (real data, held-out
accuracy printed after every epoch) with a fixed sleep per micro-batch.

Why this module exists: ``make demo`` runs an autoscaled job whose workers really train on
the test-bed's process nodes. On a shared CPU the digits step costs next to nothing and its
throughput measures how loaded the machine is, not how the job scales, so the autoscaler's
decisions would change from run to run. A fixed delay per micro-batch (a sleep, standing in
for a GPU's forward/backward) gives the job a throughput curve that repeats: with the global
batch of 64 and micro-batches of 16 (``--micro-batch-size 16``), one worker runs 4 micro-batches
a step, two run 2 each, three still 2 each (22 = 16 + 6), so throughput doubles from 1 to 2
workers and stays flat at 3. The operator is told none of this: it measures it through
Prometheus. It is dev tooling (a demo prop), so it lives with the test-bed, not in the product.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from trainscale.trainer.examples import digits
from trainscale.trainer.runtime.task import Task

#: Milliseconds each micro-batch sleeps (default :data:`DEFAULT_DELAY_MS`).
ENV_DELAY_MS = "TRAINSCALE_DEMO_DELAY_MS"
DEFAULT_DELAY_MS = 100


def delay_seconds(environ: Mapping[str, str] = os.environ) -> float:
    """The per-micro-batch delay from :data:`ENV_DELAY_MS`, in seconds.

    Raises:
        ValueError: the variable is not a non-negative integer (named in the message).
    """
    raw = environ.get(ENV_DELAY_MS, "")
    try:
        millis = int(raw) if raw else DEFAULT_DELAY_MS
    except ValueError:
        raise ValueError(f"{ENV_DELAY_MS}={raw!r} is not an integer") from None
    if millis < 0:
        raise ValueError(f"{ENV_DELAY_MS}={raw!r} must be >= 0")
    return millis / 1000


def task() -> Task:
    """The digits task (:func:`trainscale.trainer.examples.digits.task`) whose loss first
    sleeps :data:`ENV_DELAY_MS` milliseconds per micro-batch."""
    base = digits.task()
    seconds = delay_seconds()

    def loss(model: nn.Module, batch: Any) -> torch.Tensor:
        time.sleep(seconds)
        return base.loss(model, batch)

    return dataclasses.replace(base, loss=loss)
