"""The task contract: what a user hands the runtime, and how the runtime finds it.

Why this module exists: the runtime owns everything elastic (rendezvous, DDP, data order,
checkpoints, metrics); the user owns only *what* is trained. A task is a factory named
``package.module:function`` that returns a :class:`Task`; every worker process calls it once
at startup, after ``torch.manual_seed(--seed)``, so the initial weights are the same
everywhere (DDP would broadcast rank 0's anyway) and reproducible.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch


class Dataset(Protocol):
    """A map-style dataset: ``len()`` and integer indexing (torch Datasets, lists, ...)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int, /) -> Any: ...


#: ``loss(model, batch) -> scalar`` averaged over the batch's samples.
LossFn = Callable[[torch.nn.Module, Any], torch.Tensor]


class TaskError(ValueError):
    """A task spec or factory result that cannot be used (the message says which)."""


@dataclass(frozen=True)
class Task:
    """What to train. Returned by the user's factory.

    Attributes:
        model: the model, on the CPU; the runtime moves it to the worker's device.
        train_data: a map-style dataset (``len()`` and ``[index]``); each item is collated
            into a batch with ``collate`` (default: ``torch.utils.data.default_collate``).
        loss: ``loss(model, batch) -> tensor``, the *mean* loss over the batch's samples. The
            runtime weights it so that the gradient is the mean over the whole global batch
            whatever the world size.
        optimizer: ``optimizer(params) -> torch.optim.Optimizer`` (e.g. a ``functools.partial``
            of ``torch.optim.SGD`` with its learning rate).
        global_batch_size: samples per optimizer step over all workers (kept constant by
            default when the world size changes).
        epochs: passes over ``train_data``.
        scheduler: optional ``scheduler(optimizer) -> LRScheduler``, stepped once per
            optimizer step.
        evaluate: optional ``evaluate(model) -> {"accuracy": 0.97, ...}``, run by rank 0 at the
            end of each epoch and of training; results are printed.
        micro_batch_size: most samples per forward pass (gradient accumulation above it).
        collate: turns a list of items into a batch.
    """

    model: torch.nn.Module
    train_data: Dataset
    loss: LossFn
    optimizer: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]
    global_batch_size: int = 64
    epochs: int = 1
    scheduler: Callable[[torch.optim.Optimizer], Any] | None = None
    evaluate: Callable[[torch.nn.Module], Mapping[str, float]] | None = None
    micro_batch_size: int | None = None
    collate: Callable[[list[Any]], Any] | None = None


def resolve_factory(spec: str) -> Callable[[], Task]:
    """Import ``package.module:function`` and return the function.

    Raises:
        TaskError: when the spec is malformed, the module cannot be imported or the attribute
            is missing or not callable.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise TaskError(f"--task must look like 'package.module:function', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TaskError(f"--task {spec!r}: cannot import module {module_name!r}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise TaskError(f"--task {spec!r}: {module_name} has no callable {attr!r}")
    return factory  # type: ignore[no-any-return]


def load_task(spec: str) -> Task:
    """Call the factory named by ``spec`` and check what it returned.

    Raises:
        TaskError: when the factory does not return a usable :class:`Task`.
    """
    try:
        task = resolve_factory(spec)()
    except TaskError:
        raise
    except Exception as exc:  # a factory that fails will fail the same way on every retry
        raise TaskError(f"--task {spec!r}: the factory raised {exc!r}") from exc
    if not isinstance(task, Task):
        raise TaskError(f"--task {spec!r} returned {type(task).__name__}, expected Task")
    if not isinstance(task.model, torch.nn.Module):
        raise TaskError(f"--task {spec!r}: Task.model is {type(task.model).__name__}, not a Module")
    if len(task.train_data) < 1:
        raise TaskError(f"--task {spec!r}: Task.train_data is empty")
    if task.global_batch_size < 1:
        raise TaskError(f"--task {spec!r}: global_batch_size must be >= 1")
    if task.epochs < 1:
        raise TaskError(f"--task {spec!r}: epochs must be >= 1")
    return task
