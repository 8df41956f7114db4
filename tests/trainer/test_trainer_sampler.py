"""The elastic batch sampler yields exactly the runtime's data order, with or without workers.

Covers (single process; the multi-process resize audit is test_trainer_loader_elastic.py,
ElasticLoader with loader workers is in test_trainer_resume.py):
- at several (world, rank, resume position, micro-batch) combinations the sampler's batches
  are this rank's share of each step of the data order, cut into micro-batches;
- a job resumed mid-epoch at another world size trains every sample of every epoch exactly
  once (the shares of all ranks of both worlds);
- ``max_steps`` ends the sampler at the job's step budget, ``len()`` matches the iteration;
- a real ``DataLoader`` with 2 worker processes over it returns the planned indices and the
  matching items, in order;
- a bad world, rank, position or worker count is refused, naming the value.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainscale.trainer.runtime import data_order
from trainscale.trainer.runtime.sampler import ElasticBatchSampler, StepBatches, build_loader

N, SEED = 103, 7


def _reference(
    world: int, rank: int, epoch: int, position: int, global_batch: int, micro: int, epochs: int
) -> list[list[int]]:
    """The data order as the runtime's loop walks it (data_order's functions, step by step)."""
    out = []
    while epoch < epochs:
        step = data_order.compute_step_slice(epoch, position, N, global_batch)
        start, stop = data_order.compute_rank_range(step, world, rank)
        ids = data_order.compute_epoch_permutation(N, SEED, epoch)[start:stop]
        out += [ids[a:b].tolist() for a, b in data_order.compute_micro_batches(0, len(ids), micro)]
        epoch, position = data_order.compute_advance(epoch, position, step.size, N)
    return out


@pytest.mark.parametrize(
    ("world", "rank", "epoch", "position", "micro"),
    [(1, 0, 0, 0, 16), (2, 1, 0, 0, 16), (3, 2, 0, 40, 5), (3, 0, 1, 99, 3), (5, 4, 0, 17, 16)],
)
def test_order_equals_the_data_order(
    world: int, rank: int, epoch: int, position: int, micro: int
) -> None:
    sampler = ElasticBatchSampler(
        dataset_length=N, global_batch=16, world_size=world, rank=rank, epochs=2, seed=SEED,
        epoch=epoch, position=position, micro_batch=micro,
    )  # fmt: skip
    expected = _reference(world, rank, epoch, position, 16, micro, epochs=2)
    assert list(sampler) == expected
    assert len(sampler) == len(expected)


def _shares(sampler_args: dict, world: int) -> list[int]:
    """All ranks' samples of the sampled steps, step by step, rank by rank."""
    per_rank = [
        list(ElasticBatchSampler(world_size=world, rank=r, **sampler_args).steps())
        for r in range(world)
    ]
    return [int(i) for step in zip(*per_rank, strict=True) for _, ids in step for i in ids]


def test_resume_mid_epoch_at_another_world_size_is_exact() -> None:
    common = dict(dataset_length=N, global_batch=12, epochs=2, seed=SEED, micro_batch=4)
    first = _shares({**common, "max_steps": 5}, world=2)  # 60 samples at world 2
    assert len(first) == 60
    rest = _shares({**common, "epoch": 0, "position": 60, "global_step": 5}, world=3)
    epoch0, epoch1 = (first + rest)[:N], (first + rest)[N:]
    assert sorted(epoch0) == list(range(N)) and sorted(epoch1) == list(range(N))
    assert first + rest[: N - 60] == data_order.compute_epoch_permutation(N, SEED, 0).tolist()


def test_max_steps_ends_the_sampler() -> None:
    sampler = ElasticBatchSampler(
        dataset_length=N, global_batch=10, world_size=2, rank=0, epochs=5, global_step=3,
        max_steps=7, micro_batch=2,
    )  # fmt: skip
    assert len(list(sampler.step_slices())) == 4
    assert len(sampler) == len(list(sampler)) == 4 * 3  # shares of 5 in micro-batches of 2


def test_a_loader_with_workers_returns_the_planned_batches() -> None:
    items = torch.arange(N) * 10
    data = torch.utils.data.TensorDataset(items)
    sampler = ElasticBatchSampler(
        dataset_length=N, global_batch=9, world_size=2, rank=1, epochs=2, seed=SEED,
        position=50, micro_batch=2,
    )  # fmt: skip
    batches = StepBatches(data, None, build_loader(data, sampler, workers=2, prefetch_factor=3))
    try:
        for planned in sampler:
            (values,) = batches.next(np.asarray(planned))
            assert batches.take_trained().tolist() == planned
            assert values.tolist() == [10 * i for i in planned]
        with pytest.raises(RuntimeError, match="ended before the training plan"):
            batches.next(np.asarray([0]))
    finally:
        batches.close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(world_size=0, rank=0), "world_size must be >= 1, got 0"),
        (dict(world_size=2, rank=2), r"rank 2 is not in \[0, 2\)"),
        (dict(world_size=2, rank=0, position=N), f"position {N} is outside"),
        (dict(world_size=2, rank=0, global_batch=0), "global_batch must be >= 1, got 0"),
        (dict(world_size=2, rank=0, micro_batch=0), "micro_batch must be >= 1, got 0"),
    ],
)
def test_bad_settings_are_refused_by_name(kwargs: dict, message: str) -> None:
    args = {"dataset_length": N, "global_batch": 8, "epochs": 1, **kwargs}
    with pytest.raises(data_order.DataOrderError, match=message):
        ElasticBatchSampler(**args)


def test_bad_loader_workers_are_refused_by_name() -> None:
    sampler = ElasticBatchSampler(dataset_length=N, global_batch=8, world_size=1, rank=0, epochs=1)
    with pytest.raises(data_order.DataOrderError, match="loader workers must be >= 0, got -1"):
        build_loader([0] * N, sampler, workers=-1)
