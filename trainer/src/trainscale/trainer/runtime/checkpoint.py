"""Checkpoints that a crash can never corrupt: atomic writes, keep-last-K, newest-first loads.

Why this module exists: every resize restarts the workers, and they resume from the newest
checkpoint, so a checkpoint must be loadable no matter when a worker is killed (SIGKILL
mid-write included). Each checkpoint is one file ``step-<step>.pt``, written to a unique
temporary name in the same directory, flushed and fsynced, renamed over its final name
(atomic on POSIX), and the directory is fsynced so the rename itself survives a power cut. A
reader therefore sees either the whole file or none of it; temporary files are ignored.
A sharded checkpoint (:mod:`trainscale.trainer.runtime.sharded_checkpoint`) is a directory
``step-<step>.dcp`` published the same way: written under a temporary name, renamed when
complete; the names, listing, pruning and loading here cover both kinds.

The naming, ordering and pruning decisions are pure functions; :class:`CheckpointWriter`
adds an optional background thread so that the training loop only pays for copying the state
to host memory, not for serialising and fsyncing it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
_NAME_RE = re.compile(r"^step-(\d{12})\.(?:pt|dcp)$")
_TMP_MARK = ".tmp-"
#: Suffix of a sharded (DCP) checkpoint directory; a single-file checkpoint ends in ``.pt``.
SHARDED_SUFFIX = ".dcp"
#: The file in a sharded checkpoint directory that holds what is not sharded (progress, RNG).
SHARDED_DOCUMENT = "trainscale.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or read."""


def build_checkpoint_name(step: int) -> str:
    """Return the file name of the checkpoint taken after optimizer step ``step``.

    Zero-padded so that names sort like steps.

    Raises:
        CheckpointError: for a negative step.
    """
    if step < 0:
        raise CheckpointError(f"checkpoint step must be >= 0, got {step}")
    return f"step-{step:012d}.pt"


def build_sharded_checkpoint_name(step: int) -> str:
    """Return the directory name of the sharded checkpoint taken after step ``step``."""
    return build_checkpoint_name(step).removesuffix(".pt") + SHARDED_SUFFIX


def build_temporary_name(final_name: str, token: str) -> str:
    """Return the name a checkpoint is written under before it is renamed to ``final_name``.

    Never parsed as a checkpoint; removed by :func:`remove_stale_temporaries`.
    """
    return f".{final_name}{_TMP_MARK}{token}"


def is_sharded_checkpoint(path: Path) -> bool:
    """True for a sharded (DCP directory) checkpoint, False for a single file."""
    return path.name.endswith(SHARDED_SUFFIX)


def parse_checkpoint_step(name: str) -> int | None:
    """Return the step of a checkpoint name (file or sharded directory), or None for any
    other name (temporaries)."""
    match = _NAME_RE.match(name)
    return int(match.group(1)) if match else None


def decide_checkpoints_to_prune(names: list[str], keep: int) -> list[str]:
    """Return the checkpoint names to delete so that only the newest ``keep`` remain.

    Names that are not checkpoints are never returned.

    Raises:
        CheckpointError: when ``keep`` < 1 (the newest checkpoint is never deleted).
    """
    if keep < 1:
        raise CheckpointError(f"checkpoint keep must be >= 1, got {keep}")
    steps = sorted(
        ((step, name) for name in names if (step := parse_checkpoint_step(name)) is not None),
        reverse=True,
    )
    return [name for _, name in steps[keep:]]


def decide_checkpoint_due(
    *,
    now: float,
    step: int,
    last_save_time: float,
    last_save_step: int,
    interval_seconds: float | None,
    every_steps: int | None,
) -> bool:
    """Return True when a periodic checkpoint is due after optimizer step ``step``.

    Due when ``every_steps`` steps passed since the last save, or ``interval_seconds``
    seconds did (``now`` and ``last_save_time`` from the same monotonic clock). Never due
    twice for the same step. None or 0 disables a trigger.
    """
    if step <= last_save_step:
        return False
    if every_steps and step - last_save_step >= every_steps:
        return True
    return bool(interval_seconds) and now - last_save_time >= float(interval_seconds or 0)


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """Return ``(step, path)`` of the complete checkpoints in ``directory``, newest first."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = [
        (step, directory / name)
        for name in names
        if (step := parse_checkpoint_step(name)) is not None
    ]
    return sorted(found, reverse=True)


def fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (survives a power cut)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, write: Callable[[Any], None]) -> None:
    """Write ``path`` so that readers see the old state or the whole new file, nothing between.

    ``write`` receives a binary file object. A temporary file in the same directory is
    written, flushed, fsynced and renamed over ``path``; then the directory is fsynced. On any
    error the temporary file is removed and the error re-raised.
    """
    tmp = path.with_name(build_temporary_name(path.name, f"{os.getpid()}-{uuid.uuid4().hex[:8]}"))
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_directory(path.parent)


def remove_path(path: Path) -> None:
    """Delete a checkpoint file or sharded checkpoint directory (gone already: fine)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete temporaries (files and sharded directories) left by writers that died
    mid-write; return what was removed.

    Call only when no writer can be active (a world's rank 0 at startup).
    """
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(directory):
            if _TMP_MARK in name and name.startswith("."):
                remove_path(directory / name)
                removed.append(directory / name)
    return removed


def prune_checkpoints(directory: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (both kinds) of ``directory``."""
    for name in decide_checkpoints_to_prune(os.listdir(directory), keep):
        remove_path(directory / name)


def save_checkpoint(directory: Path, step: int, payload: Mapping[str, Any], keep: int) -> Path:
    """Atomically write ``payload`` as the checkpoint of ``step``; prune to the newest ``keep``.

    Several workers may save the same step concurrently (after a failure every survivor may):
    each writes its own temporary file and the last rename wins; the contents are equivalent.

    Returns:
        The checkpoint's path.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / build_checkpoint_name(step)
    document = {"format": CHECKPOINT_FORMAT, "step": step, **payload}
    write_atomically(path, lambda fh: torch.save(document, fh))
    prune_checkpoints(directory, keep)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load one checkpoint onto the CPU (tensors only, no arbitrary pickles).

    For a sharded checkpoint this is its unsharded document (format, step, progress, RNG;
    no ``"state"``): the shards are loaded collectively by
    :func:`trainscale.trainer.runtime.sharded_checkpoint.load_sharded_state`.

    Raises:
        CheckpointError: when the file is unreadable or not a trainscale checkpoint.
    """
    source = path / SHARDED_DOCUMENT if is_sharded_checkpoint(path) else path
    try:
        document = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a bad file
        raise CheckpointError(f"checkpoint {path} is unreadable: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a trainscale checkpoint (format {CHECKPOINT_FORMAT})")
    return document


def load_newest_checkpoint(directory: Path) -> tuple[Path, dict[str, Any]] | None:
    """Return the newest loadable checkpoint in ``directory``, or None when there is none.

    A checkpoint that fails to load (which atomic writes make a storage fault, not a crash
    artefact) is logged and skipped in favour of the next older one.
    """
    for _, path in list_checkpoints(directory):
        try:
            return path, load_checkpoint(path)
        except (CheckpointError, FileNotFoundError) as exc:
            logger.warning("skipping checkpoint %s: %s", path, exc)
    return None


def snapshot_to_cpu(value: Any) -> Any:
    """Deep-copy a state tree with every tensor cloned to host memory.

    The copy is what a background writer serialises while training mutates the originals.
    """
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, Mapping):
        return {k: snapshot_to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [snapshot_to_cpu(v) for v in value]
    if isinstance(value, tuple):
        return tuple(snapshot_to_cpu(v) for v in value)
    return value


class BackgroundWrites:
    """What both checkpoint writers share: at most one write in flight on a background
    thread, its error raised by :meth:`wait`, ``on_saved(step, seconds)`` after each write."""

    def __init__(
        self, directory: Path, keep: int, on_saved: Callable[[int, float], None] | None
    ) -> None:
        if keep < 1:
            raise CheckpointError(f"checkpoint keep must be >= 1, got {keep}")
        self.directory = directory
        self.keep = keep
        self.last_saved_step = -1
        self._on_saved = on_saved
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _start(self, name: str, write: Callable[[], None]) -> None:
        def run() -> None:
            try:
                write()
            except BaseException as exc:  # surfaced by wait()
                self._error = exc

        self._thread = threading.Thread(target=run, name=name)
        self._thread.start()

    def _saved(self, step: int, started: float) -> None:
        self.last_saved_step = max(self.last_saved_step, step)
        if self._on_saved is not None:
            self._on_saved(step, time.perf_counter() - started)

    @property
    def in_flight(self) -> bool:
        """True while a background write has not completed."""
        return self._thread is not None and self._thread.is_alive()

    def wait(self) -> None:
        """Block until the background write (if any) is complete.

        Raises:
            CheckpointError: when that write failed.
        """
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise CheckpointError(f"background checkpoint write failed: {error}") from error


class CheckpointWriter(BackgroundWrites):
    """Writes single-file checkpoints of one directory (rank 0), optionally on a background
    thread that serialises a host-memory snapshot of the state."""

    #: Only rank 0 writes (the whole state is on every rank).
    all_ranks_write = False

    def __init__(
        self,
        directory: Path,
        keep: int,
        *,
        background: bool = True,
        on_saved: Callable[[int, float], None] | None = None,
    ) -> None:
        super().__init__(directory, keep, on_saved)
        self.background = background

    def _write(self, step: int, payload: Mapping[str, Any]) -> None:
        started = time.perf_counter()
        save_checkpoint(self.directory, step, payload, self.keep)
        self._saved(step, started)

    def save(self, step: int, payload: Mapping[str, Any], *, wait: bool = False) -> None:
        """Save ``payload`` as step ``step``; with ``wait`` (or no background) block until done.

        Raises:
            CheckpointError: when a previous background write failed.
        """
        self.wait()
        if wait or not self.background:
            self._write(step, payload)
            return
        snapshot = snapshot_to_cpu(payload)
        self._start("checkpoint-writer", lambda: self._write(step, snapshot))
