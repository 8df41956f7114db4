"""How many samples a session has left: the gauge the operator turns into the time a job
has left (a rescale's restart must pay back within it).

Covers (single process, the real session's data order): the epochs not done, across an
epoch boundary; a step limit at the last step's global batch, when it ends first; a global
batch that changes with the world size; nothing left at the end; unknown (NaN) before a
step-limited session's first step.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from trainscale.trainer.runtime.elastic import ElasticSession
from trainscale.trainer.runtime.settings import CheckpointPolicy


def session(
    tmp_path: Path, *, epochs: int, max_steps: int | None = None, length: int = 40
) -> ElasticSession:
    policy = CheckpointPolicy(directory=tmp_path, every_steps=None, interval_seconds=None)
    model = torch.nn.Linear(1, 1)
    return ElasticSession(
        dataset_length=length, objects={"model": model}, epochs=epochs, policy=policy,
        max_steps=max_steps,
    )  # fmt: skip


def train(s: ElasticSession, steps: int, global_batch: int) -> None:
    for _ in range(steps):
        step, _indices = s.next_step(global_batch)
        s.commit(step)


@pytest.mark.parametrize(
    ("epochs", "max_steps", "steps", "batch", "left"),
    [
        pytest.param(2, None, 0, 8, 80, id="nothing-trained"),
        pytest.param(2, None, 3, 8, 80 - 24, id="the-epochs-not-done"),
        pytest.param(2, None, 6, 8, 80 - 48, id="across-the-epoch-boundary"),
        pytest.param(2, None, 10, 8, 0, id="done"),
        pytest.param(2, 7, 3, 8, (7 - 3) * 8, id="the-step-limit-ends-first"),
        pytest.param(1, 100, 3, 8, 40 - 24, id="the-epochs-end-first"),
        pytest.param(2, 7, 7, 8, 0, id="the-step-limit-reached"),
    ],
)  # fmt: skip
def test_samples_left(
    tmp_path: Path, epochs: int, max_steps: int | None, steps: int, batch: int, left: int
) -> None:
    s = session(tmp_path, epochs=epochs, max_steps=max_steps)
    train(s, steps, batch)
    assert s.remaining_samples == left


def test_a_step_limit_counts_at_the_last_steps_global_batch(tmp_path: Path) -> None:
    # a job that resized from a global batch of 8 to one of 16 (per-worker batch kept)
    s = session(tmp_path, epochs=100, max_steps=10, length=4000)
    train(s, 2, 8)
    assert s.remaining_samples == 8 * 8
    train(s, 2, 16)
    assert s.remaining_samples == 6 * 16


def test_a_step_limit_is_unknown_before_the_first_step(tmp_path: Path) -> None:
    assert math.isnan(session(tmp_path, epochs=100, max_steps=10).remaining_samples)
