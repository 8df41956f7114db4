"""The exact data order as a ``torch.utils.data`` batch sampler, for loaders with workers.

Why this module exists: the runtime's data order (:mod:`trainscale.trainer.runtime.data_order`)
says which samples each rank trains on at every step, at any world size, from any resume
position. Fetching them one by one in the training process starves a real input pipeline
(decode, augment). :class:`ElasticBatchSampler` yields the very same order, as this rank's
micro-batches from the resume position to the end of training, so that a standard
``DataLoader`` with ``num_workers``, prefetch, ``pin_memory`` and persistent workers builds the
batches in parallel while the order (and with it the no-skip/no-repeat guarantee across
resizes) stays the runtime's. A world's size and rank never change during a worker process's
life (every resize restarts the workers), so one sampler serves the whole process.

:class:`IndexedBatches` is the dataset side: the loader's workers fetch a whole micro-batch at
once (``__getitems__``) and hand back the dataset indices with the batch, so the training loop
can record exactly which samples it trained on. :class:`StepBatches` is what the loop reads:
the micro-batches of each step, from a loader or (0 workers) fetched in process.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np
import torch

from trainscale.trainer.runtime import data_order
from trainscale.trainer.runtime.task import Dataset

Collate = Callable[[list[Any]], Any]


class SessionPosition(Protocol):
    """What a sampler needs of an :class:`~trainscale.trainer.runtime.elastic.ElasticSession`."""

    dataset_length: int
    seed: int
    epochs: int
    max_steps: int | None
    world_size: int
    rank: int
    epoch: int
    position: int
    global_step: int


class ElasticBatchSampler(torch.utils.data.Sampler[list[int]]):
    """This rank's micro-batches of dataset indices, step after step, in the exact data order.

    Starts at ``(epoch, position)`` (a resume point, taken at any world size) and ends when
    ``epochs`` are done or ``max_steps`` optimizer steps (counted from ``global_step``) are.
    Step ``k`` is :func:`~data_order.compute_step_slice` of ``global_batch`` samples split
    between ``world_size`` ranks by :func:`~data_order.compute_rank_range`; this rank's share
    is cut into micro-batches of at most ``micro_batch`` (None: the whole share). A step in
    which this rank's share is empty yields nothing.

    Raises:
        DataOrderError: naming the value when the world, rank, position or sizes cannot work.
    """

    def __init__(
        self,
        *,
        dataset_length: int,
        global_batch: int,
        world_size: int,
        rank: int,
        epochs: int,
        seed: int = 0,
        epoch: int = 0,
        position: int = 0,
        micro_batch: int | None = None,
        global_step: int = 0,
        max_steps: int | None = None,
    ) -> None:
        data_order.compute_rank_range(data_order.StepSlice(0, 0, 0), world_size, rank)
        if global_batch < 1:
            raise data_order.DataOrderError(f"global_batch must be >= 1, got {global_batch}")
        if micro_batch is not None and micro_batch < 1:
            raise data_order.DataOrderError(f"micro_batch must be >= 1, got {micro_batch}")
        if not 0 <= position < dataset_length:
            raise data_order.DataOrderError(
                f"position {position} is outside the epoch of {dataset_length} samples"
            )
        self.dataset_length = dataset_length
        self.global_batch = global_batch
        self.world_size = world_size
        self.rank = rank
        self.epochs = epochs
        self.seed = seed
        self.epoch = epoch
        self.position = position
        self.micro_batch = micro_batch
        self.global_step = global_step
        self.max_steps = max_steps

    @classmethod
    def from_session(
        cls, session: SessionPosition, global_batch: int, micro_batch: int | None = None
    ) -> ElasticBatchSampler:
        """The sampler that continues where ``session`` stands (after its resume)."""
        return cls(
            dataset_length=session.dataset_length,
            global_batch=global_batch,
            world_size=session.world_size,
            rank=session.rank,
            epochs=session.epochs,
            seed=session.seed,
            epoch=session.epoch,
            position=session.position,
            micro_batch=micro_batch,
            global_step=session.global_step,
            max_steps=session.max_steps,
        )

    def step_slices(self) -> Iterator[data_order.StepSlice]:
        """The remaining optimizer steps of the job, as slices of their epoch's order."""
        epoch, position, step = self.epoch, self.position, self.global_step
        while epoch < self.epochs and (self.max_steps is None or step < self.max_steps):
            slice_ = data_order.compute_step_slice(
                epoch, position, self.dataset_length, self.global_batch
            )
            yield slice_
            epoch, position = data_order.compute_advance(
                epoch, position, slice_.size, self.dataset_length
            )
            step += 1

    def steps(self) -> Iterator[tuple[data_order.StepSlice, np.ndarray]]:
        """Each remaining step with the dataset indices this rank trains on in it."""
        permutation: tuple[int, np.ndarray] | None = None
        for slice_ in self.step_slices():
            if permutation is None or permutation[0] != slice_.epoch:
                permutation = (
                    slice_.epoch,
                    data_order.compute_epoch_permutation(
                        self.dataset_length, self.seed, slice_.epoch
                    ),
                )
            start, stop = data_order.compute_rank_range(slice_, self.world_size, self.rank)
            yield slice_, permutation[1][start:stop]

    def _micro_batches(self, share: int) -> list[tuple[int, int]]:
        return data_order.compute_micro_batches(0, share, self.micro_batch or max(share, 1))

    def __iter__(self) -> Iterator[list[int]]:
        for _, ids in self.steps():
            for a, b in self._micro_batches(len(ids)):
                yield ids[a:b].tolist()

    def __len__(self) -> int:
        total = 0
        for slice_ in self.step_slices():
            start, stop = data_order.compute_rank_range(slice_, self.world_size, self.rank)
            total += len(self._micro_batches(stop - start))
        return total


def fetch_items(dataset: Dataset, collate: Collate | None, ids: np.ndarray) -> Any:
    """Collate the dataset items ``ids`` into one batch (fast path for a TensorDataset)."""
    if collate is None and isinstance(dataset, torch.utils.data.TensorDataset):
        index = torch.from_numpy(np.ascontiguousarray(ids))
        return tuple(t[index] for t in dataset.tensors)
    return (collate or torch.utils.data.default_collate)([dataset[int(i)] for i in ids])


class IndexedBatches(torch.utils.data.Dataset[Any]):
    """A dataset view whose batch fetch returns ``(indices, batch)``: one call per micro-batch.

    ``DataLoader`` (torch >= 2.1) calls ``__getitems__`` with a whole batch of indices from
    the batch sampler, so a loader worker builds the micro-batch with :func:`fetch_items`
    (one indexing of a TensorDataset's tensors, or ``collate`` over the items).
    """

    def __init__(self, dataset: Dataset, collate: Collate | None = None) -> None:
        self.dataset = dataset
        self.collate = collate

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index]

    def __getitems__(self, ids: list[int]) -> tuple[torch.Tensor, Any]:
        array = np.asarray(ids, dtype=np.int64)
        return torch.from_numpy(array), fetch_items(self.dataset, self.collate, array)


def _as_is(batch: Any) -> Any:
    return batch


def _loader_worker_init(worker_id: int) -> None:
    # A loader worker must not outlive its training process (which may be SIGKILLed or end
    # with os._exit): it holds copies of the process group's sockets.
    from trainscale.trainer.runtime.worker import die_with_parent

    die_with_parent()
    # Stock torchrun stops a worker by signalling its whole process group (so does a
    # terminal's Ctrl-C): a loader worker ended by that SIGTERM would fail the training
    # process (torch raises on a worker's death) before its coordinated stop and checkpoint.
    # In a group of its own it is ended by its training process, or by die_with_parent.
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)


def build_loader(
    dataset: Dataset,
    sampler: torch.utils.data.Sampler[list[int]],
    *,
    collate: Collate | None = None,
    workers: int,
    pin_memory: bool = False,
    prefetch_factor: int | None = None,
    combine: Callable[[Any], Any] = _as_is,
) -> torch.utils.data.DataLoader[Any]:
    """A ``DataLoader`` over ``sampler`` yielding ``(indices tensor, batch)`` per micro-batch
    (or what ``combine`` makes of that pair, in the loader's worker: the framework
    integrations put the indices into the batch they hand to a foreign training loop).

    Raises:
        DataOrderError: for a negative worker count or a prefetch factor without workers.
    """
    if workers < 0:
        raise data_order.DataOrderError(f"loader workers must be >= 0, got {workers}")
    if prefetch_factor is not None and (workers == 0 or prefetch_factor < 1):
        raise data_order.DataOrderError(
            f"prefetch_factor {prefetch_factor} needs loader workers >= 1 and a value >= 1"
        )
    return torch.utils.data.DataLoader(
        IndexedBatches(dataset, collate),
        batch_sampler=sampler,
        collate_fn=combine,
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=prefetch_factor if workers else None,
        persistent_workers=workers > 0,
        worker_init_fn=_loader_worker_init if workers else None,
        # Forked from this process, whatever the default start method (a trainer worker
        # started by a forkserver would otherwise start its loader workers from that
        # forkserver too): they are then this process's children, die with it
        # (_loader_worker_init) and do not outlive the job.
        multiprocessing_context="fork" if workers else None,
    )


class StepBatches:
    """The training loop's micro-batches, and the indices it actually trained on.

    With a loader (``loader`` not None) each :meth:`next` takes the loader's next
    micro-batch, which by construction holds the planned indices; without one it fetches the
    planned indices in process. :meth:`take_trained` returns the indices of the micro-batches
    handed out since the last call (what the audit records).
    """

    def __init__(
        self,
        dataset: Dataset,
        collate: Collate | None,
        loader: torch.utils.data.DataLoader[Any] | None = None,
    ) -> None:
        self.dataset = dataset
        self.collate = collate
        self._batches = iter(loader) if loader is not None else None
        self._trained: list[np.ndarray] = []

    def next(self, planned: np.ndarray) -> Any:
        """Return the next micro-batch (``planned``: the indices the data order expects)."""
        if self._batches is None:
            self._trained.append(planned)
            return fetch_items(self.dataset, self.collate, planned)
        try:
            ids, batch = next(self._batches)
        except StopIteration:
            raise RuntimeError("the data loader ended before the training plan") from None
        self._trained.append(ids.numpy())
        return batch

    def take_trained(self) -> np.ndarray:
        """The indices of the micro-batches returned since the last call, in order."""
        trained, self._trained = self._trained, []
        return np.concatenate(trained) if trained else np.zeros(0, dtype=np.int64)

    def close(self) -> None:
        """Stop the loader's workers (persistent workers otherwise live until exit)."""
        batches, self._batches = self._batches, None
        with contextlib.suppress(Exception):
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
