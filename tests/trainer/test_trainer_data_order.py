"""The data order: exact coverage of every epoch at any sequence of world sizes.

Covers:
- the epoch permutation is a permutation, deterministic per (seed, epoch), different per epoch;
- a step's rank ranges partition the step, shares differ by at most one, empty ones allowed;
- micro-batches partition a share;
- property: stepping through several epochs while the world size changes at arbitrary steps
  visits every sample of every epoch exactly once (the "zero lost work" invariant);
- bad inputs raise DataOrderError naming the value.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainscale.trainer.runtime import data_order as do


def test_permutation_is_deterministic_and_per_epoch() -> None:
    a = do.compute_epoch_permutation(100, seed=7, epoch=0)
    assert sorted(a.tolist()) == list(range(100))
    assert a.tolist() == do.compute_epoch_permutation(100, seed=7, epoch=0).tolist()
    assert a.tolist() != do.compute_epoch_permutation(100, seed=7, epoch=1).tolist()
    assert a.tolist() != do.compute_epoch_permutation(100, seed=8, epoch=0).tolist()


@given(size=st.integers(0, 500), world=st.integers(1, 64), start=st.integers(0, 1000))
def test_rank_ranges_partition_the_step(size: int, world: int, start: int) -> None:
    step = do.StepSlice(epoch=0, start=start, stop=start + size)
    ranges = [do.compute_rank_range(step, world, r) for r in range(world)]
    assert ranges[0][0] == start and ranges[-1][1] == start + size
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    shares = [b - a for a, b in ranges]
    assert min(shares) >= 0 and max(shares) - min(shares) <= 1


@given(share=st.integers(0, 300), micro=st.integers(1, 64))
def test_micro_batches_partition_a_share(share: int, micro: int) -> None:
    chunks = do.compute_micro_batches(10, 10 + share, micro)
    assert [i for a, b in chunks for i in range(a, b)] == list(range(10, 10 + share))
    assert all(0 < b - a <= micro for a, b in chunks)
    assert len(chunks) == -(-share // micro)


def _run(epoch_length: int, global_batch: int, worlds: list[tuple[int, int]], epochs: int):
    """Simulate a job: (world_size, steps) segments, each resuming from (epoch, position)."""
    epoch, position = 0, 0
    seen: dict[int, list[int]] = {}
    for world, steps in worlds:
        for _ in range(steps):
            if epoch >= epochs:
                return seen, epoch
            step = do.compute_step_slice(epoch, position, epoch_length, global_batch)
            perm = do.compute_epoch_permutation(epoch_length, seed=3, epoch=step.epoch)
            for rank in range(world):
                a, b = do.compute_rank_range(step, world, rank)
                seen.setdefault(step.epoch, []).extend(perm[a:b].tolist())
            epoch, position = do.compute_advance(epoch, position, step.size, epoch_length)
    return seen, epoch


@settings(max_examples=60, deadline=None)
@given(
    epoch_length=st.integers(1, 200),
    global_batch=st.integers(1, 70),
    worlds=st.lists(st.tuples(st.integers(1, 9), st.integers(1, 15)), min_size=1, max_size=8),
)
def test_any_sequence_of_world_sizes_sees_each_sample_once_per_epoch(
    epoch_length: int, global_batch: int, worlds: list[tuple[int, int]]
) -> None:
    # Finish with enough steps at a last world size to complete 2 epochs.
    worlds = [*worlds, (worlds[-1][0] % 5 + 1, 2 * -(-epoch_length // global_batch) + 1)]
    seen, epoch = _run(epoch_length, global_batch, worlds, epochs=2)
    assert epoch == 2
    for e in (0, 1):
        assert sorted(seen[e]) == list(range(epoch_length)), f"epoch {e}"


def test_advance_moves_to_next_epoch_at_the_end() -> None:
    assert do.compute_advance(0, 90, 10, 100) == (1, 0)
    assert do.compute_advance(0, 80, 10, 100) == (0, 90)
    assert do.compute_steps_per_epoch(100, 32) == 4


@pytest.mark.parametrize(
    ("call", "message"),
    [
        pytest.param(lambda: do.compute_epoch_permutation(0, 0, 0), "num_samples", id="empty"),
        pytest.param(lambda: do.compute_epoch_permutation(5, -1, 0), "seed", id="seed"),
        pytest.param(lambda: do.compute_step_slice(0, 100, 100, 8), "position 100", id="pos"),
        pytest.param(lambda: do.compute_step_slice(0, 0, 100, 0), "global_batch", id="batch"),
        pytest.param(
            lambda: do.compute_rank_range(do.StepSlice(0, 0, 4), 2, 2), "rank 2", id="rank"
        ),
        pytest.param(lambda: do.compute_micro_batches(0, 4, 0), "micro_batch", id="micro"),
        pytest.param(lambda: do.compute_advance(0, 95, 10, 100), "cannot consume", id="past"),
    ],
)
def test_bad_input_is_named(call, message: str) -> None:
    with pytest.raises(do.DataOrderError, match=message):
        call()


def test_permutation_dtype_indexes_numpy() -> None:
    perm = do.compute_epoch_permutation(10, 0, 0)
    assert perm.dtype == np.int64
