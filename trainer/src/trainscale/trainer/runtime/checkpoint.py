"""Checkpoints that a crash can never corrupt: atomic writes, keep-last-K, newest-first loads.

Why this module exists: every resize restarts the workers, and they resume from the newest
checkpoint, so a checkpoint must be loadable no matter when a worker is killed (SIGKILL
mid-write included). Each checkpoint is one file ``step-<step>.pt``, written to a unique
temporary name in the same directory, flushed and fsynced, renamed over its final name
(atomic on POSIX), and the directory is fsynced so the rename itself survives a power cut. A
reader therefore sees either the whole file or none of it; temporary files are ignored.

The naming, ordering and pruning decisions are pure functions; :class:`CheckpointWriter`
adds an optional background thread so that the training loop only pays for copying the state
to host memory, not for serialising and fsyncing it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
_NAME_RE = re.compile(r"^step-(\d{12})\.pt$")
_TMP_MARK = ".tmp-"


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


def parse_checkpoint_step(name: str) -> int | None:
    """Return the step of a checkpoint file name, or None for any other file (temporaries)."""
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


def _fsync_directory(directory: Path) -> None:
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
    tmp = path.with_name(f".{path.name}{_TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
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
    _fsync_directory(path.parent)


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete temporary files left by writers that died mid-write; return what was removed.

    Call only when no writer can be active (a world's rank 0 at startup).
    """
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(directory):
            if _TMP_MARK in name and name.startswith("."):
                with contextlib.suppress(FileNotFoundError):
                    (directory / name).unlink()
                    removed.append(directory / name)
    return removed


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
    for name in decide_checkpoints_to_prune(os.listdir(directory), keep):
        with contextlib.suppress(FileNotFoundError):
            (directory / name).unlink()
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load one checkpoint onto the CPU (tensors only, no arbitrary pickles).

    Raises:
        CheckpointError: when the file is unreadable or not a trainscale checkpoint.
    """
    try:
        document = torch.load(path, map_location="cpu", weights_only=True)
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


class CheckpointWriter:
    """Writes checkpoints of one directory, optionally on a background thread.

    At most one background write is in flight; a new save first waits for it. ``on_saved``
    is called with ``(step, seconds)`` after each completed write (for metrics).
    """

    def __init__(
        self,
        directory: Path,
        keep: int,
        *,
        background: bool = True,
        on_saved: Callable[[int, float], None] | None = None,
    ) -> None:
        if keep < 1:
            raise CheckpointError(f"checkpoint keep must be >= 1, got {keep}")
        self.directory = directory
        self.keep = keep
        self.background = background
        self.last_saved_step = -1
        self._on_saved = on_saved
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _write(self, step: int, payload: Mapping[str, Any]) -> None:
        started = time.perf_counter()
        save_checkpoint(self.directory, step, payload, self.keep)
        self.last_saved_step = max(self.last_saved_step, step)
        if self._on_saved is not None:
            self._on_saved(step, time.perf_counter() - started)

    def _write_in_thread(self, step: int, payload: Mapping[str, Any]) -> None:
        try:
            self._write(step, payload)
        except BaseException as exc:  # surfaced by wait()
            self._error = exc

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
        self._thread = threading.Thread(
            target=self._write_in_thread, args=(step, snapshot), name="checkpoint-writer"
        )
        self._thread.start()

    def wait(self) -> None:
        """Block until the background write (if any) is on disk.

        Raises:
            CheckpointError: when that write failed.
        """
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise CheckpointError(f"background checkpoint write failed: {error}") from error
