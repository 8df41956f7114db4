"""The trainer's settings: the operator's environment contract and the command-line flags.

Why this module exists: a worker pod is configured by environment variables the operator
injects (``TRAINSCALE_*``, named in :mod:`trainscale.trainer.contract.environment`) and by the
flags of its command; both are parsed here, once, into frozen dataclasses, with errors that
name the variable or flag and its bad value. Pure: the environment is passed in as a mapping;
nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainscale.trainer.contract.environment import (
    DEFAULT_METRICS_PORT,
    ENV_AGENT_START_METHOD,
    ENV_AUDIT_LOG_DIR,
    ENV_CHECKPOINT_DIR,
    ENV_CHECKPOINT_EVERY_STEPS,
    ENV_CHECKPOINT_INTERVAL_SECONDS,
    ENV_CHECKPOINT_KEEP,
    ENV_FAST_RESIZE,
    ENV_JOB_NAME,
    ENV_METRICS_ADDRESS,
    ENV_METRICS_PORT,
    ENV_REPLICA_INDEX,
)

DEFAULT_CHECKPOINT_INTERVAL_SECONDS = 300.0
DEFAULT_CHECKPOINT_KEEP = 3

#: Every environment variable the trainer reads, with its meaning (rendered in docs/trainer.md).
ENVIRONMENT: tuple[tuple[str, str], ...] = (
    (ENV_CHECKPOINT_DIR, "Shared checkpoint directory; unset disables checkpoints and resumes."),
    (ENV_CHECKPOINT_INTERVAL_SECONDS, "Checkpoint at least this often (default 300; 0: never)."),
    (ENV_CHECKPOINT_EVERY_STEPS, "Also checkpoint every N optimizer steps (default: off)."),
    (ENV_CHECKPOINT_KEEP, "Number of newest checkpoints kept (default 3)."),
    (
        ENV_METRICS_PORT,
        "Prometheus port of the pod: its agent serves the sum of its ranks (0: off).",
    ),
    (ENV_METRICS_ADDRESS, "Address the metrics server binds (default 0.0.0.0)."),
    (ENV_JOB_NAME, "TrainingJob name, shown in progress lines."),
    (ENV_REPLICA_INDEX, "Index of this worker pod, shown in progress lines."),
    (ENV_AUDIT_LOG_DIR, "If set, every rank appends the sample ids of each step here (JSONL)."),
    (ENV_FAST_RESIZE, "0 gives torchrun's stock resize behaviour (benchmark baseline)."),
    (ENV_AGENT_START_METHOD, "Default of --start-method: forkserver (default) or spawn."),
)


class SettingsError(ValueError):
    """A setting with a value that cannot work; the message names it."""


@dataclass(frozen=True)
class CheckpointPolicy:
    """When and where to write checkpoints.

    Attributes:
        directory: shared checkpoint directory (None disables checkpoints and resumes).
        keep: number of newest checkpoints to keep.
        interval_seconds: write one at most this often (None/0: never by time).
        every_steps: write one every N optimizer steps (None/0: never by steps).
        background: serialise and fsync on a background thread (rank 0 only pays the copy).
    """

    directory: Path | None = None
    keep: int = DEFAULT_CHECKPOINT_KEEP
    interval_seconds: float | None = DEFAULT_CHECKPOINT_INTERVAL_SECONDS
    every_steps: int | None = None
    background: bool = True


@dataclass(frozen=True)
class MetricsSettings:
    """Where the worker serves ``/metrics`` (port None: not at all)."""

    port: int | None = DEFAULT_METRICS_PORT
    address: str = "0.0.0.0"


def _parse(env: Mapping[str, str], name: str, default: float, minimum: float, kind: type) -> Any:
    raw = env.get(name, "")
    if raw.strip() == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise SettingsError(
            f"{name}={raw!r} is not {'an integer' if kind is int else 'a number'}"
        ) from None
    if value < minimum:
        raise SettingsError(f"{name}={raw!r} must be >= {minimum:g}")
    return value


def _number(env: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    return float(_parse(env, name, default, minimum, float))


def _integer(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    return int(_parse(env, name, default, minimum, int))


def checkpoint_policy_from_env(env: Mapping[str, str]) -> CheckpointPolicy:
    """Build the checkpoint policy from the ``TRAINSCALE_CHECKPOINT_*`` variables.

    Raises:
        SettingsError: naming the variable whose value is invalid.
    """
    directory = env.get(ENV_CHECKPOINT_DIR, "").strip()
    every = _integer(env, ENV_CHECKPOINT_EVERY_STEPS, 0, 0)
    interval = _number(
        env, ENV_CHECKPOINT_INTERVAL_SECONDS, DEFAULT_CHECKPOINT_INTERVAL_SECONDS, 0.0
    )
    return CheckpointPolicy(
        directory=Path(directory) if directory else None,
        keep=_integer(env, ENV_CHECKPOINT_KEEP, DEFAULT_CHECKPOINT_KEEP, 1),
        interval_seconds=interval or None,
        every_steps=every or None,
    )


def metrics_settings_from_env(env: Mapping[str, str]) -> MetricsSettings:
    """Build the metrics server settings from ``TRAINSCALE_METRICS_*``.

    Raises:
        SettingsError: for a port outside 0..65535.
    """
    port = _integer(env, ENV_METRICS_PORT, DEFAULT_METRICS_PORT, 0)
    if port > 65535:
        raise SettingsError(f"{ENV_METRICS_PORT}={port} must be <= 65535")
    return MetricsSettings(
        port=port or None, address=env.get(ENV_METRICS_ADDRESS, "").strip() or "0.0.0.0"
    )


def compute_metrics_port(base: int | None, local_rank: int) -> int | None:
    """Return the metrics port of ``local_rank`` (ranks of one pod use consecutive ports)."""
    return None if base is None else base + local_rank


def build_worker_label(env: Mapping[str, str]) -> str:
    """Return ``job/replica`` for progress lines, from the operator's variables."""
    job = env.get(ENV_JOB_NAME, "").strip() or "local"
    replica = env.get(ENV_REPLICA_INDEX, "").strip()
    return f"{job}/{replica}" if replica else job
