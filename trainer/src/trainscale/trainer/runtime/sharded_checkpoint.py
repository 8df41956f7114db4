"""Sharded, asynchronous checkpoints with ``torch.distributed.checkpoint`` (DCP).

Why this module exists: a model sharded with FSDP2 (``fully_shard``) is held by no single
rank, so rank 0 cannot write it as one file, and a large model's write should not stall
training. Here every rank writes its own shard, and the write runs in the background
(``dcp.async_save``: the training thread only copies its shard to host memory). A checkpoint
saved at one world size loads at any other (DCP reshards on load).

A sharded checkpoint is the directory ``step-<step>.dcp`` holding DCP's shard files and
``.metadata`` plus ``trainscale.pt`` (progress and RNG states, written by rank 0). It becomes
visible only when complete: every rank writes into the temporary directory
``.step-<step>.dcp.tmp-shards``; DCP's coordinator (rank 0) finishes only after every rank's
shard is written and fsynced, and then rank 0 writes ``trainscale.pt`` and renames the
directory to its final name (atomic; the parent directory is fsynced). Listing and loading
(:mod:`trainscale.trainer.runtime.checkpoint`) see only final names, so a reader finds the
previous checkpoint until the new one is whole, and a world killed mid-write leaves only a
temporary that the next world's rank 0 deletes.

DCP's collectives run on a process group of their own (gloo), so a background write never
interleaves with the training loop's collectives.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.filesystem import FileSystemWriter
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import AsyncSaveResponse
from torch.distributed.checkpoint.state_dict_saver import async_save as dcp_async_save
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save
from torch.distributed.checkpoint.storage import StorageWriter
from torch.distributed.fsdp import FSDPModule

from trainscale.trainer.runtime.checkpoint import (
    CHECKPOINT_FORMAT,
    SHARDED_DOCUMENT,
    BackgroundWrites,
    CheckpointError,
    build_sharded_checkpoint_name,
    build_temporary_name,
    fsync_directory,
    prune_checkpoints,
    remove_path,
    write_atomically,
)

logger = logging.getLogger(__name__)

#: Token of the temporary directory every rank of a world writes its shard into.
_SHARDS_TOKEN = "shards"

#: ``storage(path) -> StorageWriter``: where DCP writes a checkpoint's shards.
StorageFactory = Callable[[Path], StorageWriter]


def is_sharded_module(obj: object) -> bool:
    """True for a module sharded with FSDP2 ``fully_shard`` (checkpointed with DCP)."""
    return isinstance(obj, FSDPModule)


def _model_of(objects: Mapping[str, Any]) -> torch.nn.Module:
    models = [obj for obj in objects.values() if isinstance(obj, torch.nn.Module)]
    if len(models) != 1:
        raise CheckpointError(
            f"a sharded checkpoint needs exactly one nn.Module among the checkpointed objects "
            f"(its optimizers' state is keyed by its parameter names), got {len(models)}"
        )
    return models[0]


def build_sharded_state(objects: Mapping[str, Any]) -> dict[str, Any]:
    """Return the DCP state dict of ``objects``: the model's (sharded) parameters, each
    optimizer's state keyed by parameter name, and any other object's ``state_dict()``."""
    model = _model_of(objects)
    state: dict[str, Any] = {}
    for name, obj in objects.items():
        if obj is model:
            state[name] = get_model_state_dict(model)
        elif isinstance(obj, torch.optim.Optimizer):
            state[name] = get_optimizer_state_dict(model, obj)
        else:
            state[name] = obj.state_dict()
    return state


def load_sharded_state(
    path: Path, objects: Mapping[str, Any], process_group: dist.ProcessGroup | None = None
) -> None:
    """Load the sharded checkpoint ``path`` into ``objects`` at the current world size.

    Collective: every rank calls it. DCP reads the pieces of each tensor this rank holds now,
    whatever the world size at save time.

    Raises:
        CheckpointError: when the checkpoint lacks one of the objects or cannot be read.
    """
    model = _model_of(objects)
    state = build_sharded_state(objects)
    try:
        dcp_load(state, checkpoint_id=path, process_group=process_group)
    except Exception as exc:  # DCP wraps per-rank failures in CheckpointException
        raise CheckpointError(f"sharded checkpoint {path} cannot be loaded: {exc}") from exc
    for name, obj in objects.items():
        if obj is model:
            set_model_state_dict(model, state[name])
        elif isinstance(obj, torch.optim.Optimizer):
            set_optimizer_state_dict(model, obj, state[name])
        else:
            obj.load_state_dict(state[name])


class ShardedCheckpointWriter(BackgroundWrites):
    """Writes sharded checkpoints of one directory; every rank of the world calls ``save``.

    ``save`` with ``asynchronous`` returns once this rank's shard is copied to host memory;
    the write and the publication (rank 0) complete on a background thread. At most one
    save is in flight; a new one first waits for it. ``on_saved(step, seconds)`` is called on
    every rank after its part is done (rank 0: after the rename).

    Args:
        directory: the shared checkpoint directory.
        keep: newest checkpoints kept (rank 0 prunes after each publication).
        rank: this process's rank (rank 0 publishes).
        process_group: the group DCP coordinates on (use one that the training loop does not
            use while an asynchronous save runs); None: the default group, or no group at all
            when torch.distributed is not initialised.
        asynchronous: write in the background (else ``save`` blocks until published).
        storage: builds the DCP storage writer for a directory (default: ``FileSystemWriter``).
    """

    #: Every rank writes (the session then has all ranks save at the same step).
    all_ranks_write = True

    def __init__(
        self,
        directory: Path,
        keep: int,
        *,
        rank: int,
        process_group: dist.ProcessGroup | None = None,
        asynchronous: bool = True,
        on_saved: Callable[[int, float], None] | None = None,
        storage: StorageFactory = FileSystemWriter,
    ) -> None:
        super().__init__(directory, keep, on_saved)
        self.rank = rank
        self.process_group = process_group
        self.asynchronous = asynchronous
        self._storage = storage

    def _paths(self, step: int) -> tuple[Path, Path]:
        final = build_sharded_checkpoint_name(step)
        return self.directory / build_temporary_name(final, _SHARDS_TOKEN), self.directory / final

    def save(self, step: int, payload: Mapping[str, Any], *, wait: bool = False) -> None:
        """Save ``payload`` (``{"state": objects' DCP state, ...rest}``) as step ``step``.

        ``payload["state"]`` is written sharded; everything else goes into the checkpoint's
        ``trainscale.pt`` (rank 0's). With ``wait`` (or not asynchronous) block until done.

        Raises:
            CheckpointError: when a previous background write failed.
        """
        self.wait()
        started = time.perf_counter()
        tmp, final = self._paths(step)
        if self.rank == 0:
            self.directory.mkdir(parents=True, exist_ok=True)
        state = payload["state"]
        document = {"format": CHECKPOINT_FORMAT, "step": step}
        document.update((k, v) for k, v in payload.items() if k != "state")
        if wait or not self.asynchronous:
            dcp_save(state, storage_writer=self._storage(tmp), process_group=self.process_group)
            self._publish(step, document, tmp, final, started)
            return
        response = dcp_async_save(
            state, storage_writer=self._storage(tmp), process_group=self.process_group
        )
        # the default stager copies to host memory before returning; a staging stager would
        # answer with both futures
        future = response.upload_completion if isinstance(response, AsyncSaveResponse) else response

        def complete() -> None:
            future.result()
            self._publish(step, document, tmp, final, started)

        self._start("sharded-checkpoint-writer", complete)

    def _publish(
        self, step: int, document: dict[str, Any], tmp: Path, final: Path, started: float
    ) -> None:
        # DCP's save returns on the coordinator only after every rank's shard is written.
        if self.rank == 0:
            write_atomically(tmp / SHARDED_DOCUMENT, lambda fh: torch.save(document, fh))
            if final.exists():  # the same step saved again (a resumed world): replace it
                remove_path(final)
            os.replace(tmp, final)
            fsync_directory(self.directory)
            prune_checkpoints(self.directory, self.keep)
        self._saved(step, started)
