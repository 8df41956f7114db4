"""The data order: which samples each worker trains on, at any world size, after any resume.

Why this module exists: "zero lost work" on resize means that, within an epoch, no sample is
skipped or seen twice whatever sequence of world sizes the job goes through. That is only
possible if the data order does not depend on the world size at all. So the order is one
permutation per epoch, derived from ``(seed, epoch)`` alone; the job's progress is one number,
the *position* (samples consumed so far in the epoch, over all workers); each optimizer step
takes the next ``global_batch`` samples of the permutation and splits them contiguously
between the ranks of the current world. A checkpoint stores ``(epoch, position)``; a resume at
any world size continues from exactly that sample.

Everything here is pure arithmetic (numpy only for the permutation), so it is unit-tested
with property tests and shared by the runtime and the elastic-safe loader.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


class DataOrderError(ValueError):
    """A data-order request that cannot be satisfied (names the offending value)."""


@dataclass(frozen=True)
class StepSlice:
    """The samples of one optimizer step, as positions in the epoch's permutation.

    Attributes:
        epoch: the epoch the step belongs to.
        start: position of the step's first sample (samples consumed before it).
        stop: one past the step's last sample; ``stop - start`` is the step's global batch
            (smaller than the configured one only for an epoch's last step).
    """

    epoch: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        """Number of samples in the step over all ranks."""
        return self.stop - self.start


def compute_epoch_permutation(num_samples: int, seed: int, epoch: int) -> npt.NDArray[np.int64]:
    """Return the order in which the epoch visits the dataset's sample indices.

    The permutation depends only on ``(seed, epoch)`` and the dataset length, never on the
    world size or rank, which is what makes resumes at another world size exact.

    Raises:
        DataOrderError: when ``num_samples`` is not positive or ``seed``/``epoch`` negative.
    """
    if num_samples <= 0:
        raise DataOrderError(f"num_samples must be positive, got {num_samples}")
    if seed < 0:
        raise DataOrderError(f"seed must be >= 0, got {seed}")
    if epoch < 0:
        raise DataOrderError(f"epoch must be >= 0, got {epoch}")
    rng = np.random.default_rng([seed, epoch])
    return rng.permutation(num_samples).astype(np.int64)


def compute_step_slice(
    epoch: int, position: int, epoch_length: int, global_batch: int
) -> StepSlice:
    """Return the slice of the permutation that the next optimizer step consumes.

    Args:
        epoch: current epoch.
        position: samples of this epoch already consumed (0 <= position < epoch_length).
        epoch_length: samples per epoch (the dataset length).
        global_batch: samples per optimizer step over all workers.

    Raises:
        DataOrderError: on a non-positive batch/length or a position outside the epoch.
    """
    if global_batch <= 0:
        raise DataOrderError(f"global_batch must be positive, got {global_batch}")
    if epoch_length <= 0:
        raise DataOrderError(f"epoch_length must be positive, got {epoch_length}")
    if not 0 <= position < epoch_length:
        raise DataOrderError(f"position {position} is outside the epoch of {epoch_length} samples")
    return StepSlice(epoch=epoch, start=position, stop=min(position + global_batch, epoch_length))


def compute_rank_range(step: StepSlice, world_size: int, rank: int) -> tuple[int, int]:
    """Return the ``[start, stop)`` positions of the step's samples that ``rank`` trains on.

    The step's samples are split contiguously; shares differ by at most one sample and
    every sample goes to exactly one rank. A rank's share may be empty when the step has
    fewer samples than there are ranks (the epoch's last step).

    Raises:
        DataOrderError: when ``world_size`` < 1 or ``rank`` is not in ``[0, world_size)``.
    """
    if world_size < 1:
        raise DataOrderError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise DataOrderError(f"rank {rank} is not in [0, {world_size})")
    size = step.size
    return (
        step.start + (size * rank) // world_size,
        step.start + (size * (rank + 1)) // world_size,
    )


def compute_micro_batches(start: int, stop: int, micro_batch: int) -> list[tuple[int, int]]:
    """Split a rank's ``[start, stop)`` share into gradient-accumulation micro-batches.

    Returns ``ceil((stop - start) / micro_batch)`` consecutive ranges of at most
    ``micro_batch`` samples (an empty list for an empty share).

    Raises:
        DataOrderError: when ``micro_batch`` < 1 or ``stop < start``.
    """
    if micro_batch < 1:
        raise DataOrderError(f"micro_batch must be >= 1, got {micro_batch}")
    if stop < start:
        raise DataOrderError(f"empty range reversed: start {start} > stop {stop}")
    return [(a, min(a + micro_batch, stop)) for a in range(start, stop, micro_batch)]


def compute_advance(epoch: int, position: int, consumed: int, epoch_length: int) -> tuple[int, int]:
    """Return ``(epoch, position)`` after a step that consumed ``consumed`` samples.

    Reaching the end of the epoch moves to position 0 of the next epoch.

    Raises:
        DataOrderError: when the step would run past the end of the epoch.
    """
    new_position = position + consumed
    if consumed <= 0 or new_position > epoch_length:
        raise DataOrderError(
            f"cannot consume {consumed} samples at position {position} of an epoch of "
            f"{epoch_length}"
        )
    if new_position == epoch_length:
        return epoch + 1, 0
    return epoch, new_position


def compute_steps_per_epoch(epoch_length: int, global_batch: int) -> int:
    """Return the number of optimizer steps of a whole epoch started at position 0."""
    if global_batch <= 0:
        raise DataOrderError(f"global_batch must be positive, got {global_batch}")
    return -(-epoch_length // global_batch)
