"""Where a worker's (re)start spends its time, and how many steps it trains again.

Why this module exists: a resize stops every worker and starts a new world; the time until
the first step at the new size is spread over several processes (the old workers, the pod's
agent, the new workers), and no single one of them sees it all. Each process therefore leaves
a wall-clock mark where the next one can read it, in the pod's metrics directory (which the
agent creates and which outlives every restart of its workers):

* the old world's local rank 0 writes :data:`WORLD_END_FILE` (its last step and when it
  ended) just before it stops;
* the agent, after each rendezvous, moves that mark into :data:`AGENT_FILE` together with
  when its rendezvous started and ended (so a mark is used by exactly one restart);
* the new worker adds its own marks (runtime ready, process group, setup, restore, first
  step) and, once its first step is done, records the phases
  (:data:`~trainscale.trainer.contract.metric_names.RESIZE_PHASES`) in its metrics.

Turning marks into phases is the pure function :func:`compute_restart_phases`; the file
reads and writes around it are small and never raise (a missing mark only leaves a phase out).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Written by the old world's local rank 0 as it stops: ``{"step": int, "time": float}``.
WORLD_END_FILE = "world-ended.json"
#: Written by the agent after each rendezvous: its start and end, and the consumed world end.
AGENT_FILE = "agent-rendezvous.json"


@dataclass(frozen=True)
class RestartMarks:
    """Wall-clock marks (``time.time()``) of one worker (re)start; None: not known."""

    world_end: float | None  # the previous world's last step on this pod ended
    rendezvous_started: float | None
    rendezvous_done: float | None
    process_created: float | None  # fallback start when no agent marks exist
    runtime_ready: float
    process_group_ready: float
    setup_done: float
    restore_done: float
    first_step_done: float


def compute_restart_phases(marks: RestartMarks) -> dict[str, float]:
    """Seconds of each phase whose two ends are known (never negative: clocks are wall
    clocks of one host, a phase that the marks put below zero took no time)."""
    started = marks.rendezvous_done if marks.rendezvous_done is not None else marks.process_created
    spans = {
        "stop": (marks.world_end, marks.rendezvous_started),
        "rendezvous": (marks.rendezvous_started, marks.rendezvous_done),
        "process_start": (started, marks.runtime_ready),
        "process_group": (marks.runtime_ready, marks.process_group_ready),
        "setup": (marks.process_group_ready, marks.setup_done),
        "restore": (marks.setup_done, marks.restore_done),
        "first_step": (marks.restore_done, marks.first_step_done),
    }
    return {
        phase: max(end - begin, 0.0)
        for phase, (begin, end) in spans.items()
        if begin is not None and end is not None and math.isfinite(end - begin)
    }


def compute_steps_lost(previous_step: int | None, resumed_step: int) -> int | None:
    """Steps the new world trains again: the previous world's last step minus the step it
    resumed from (0 for a fresh start); None when the previous world is unknown."""
    if previous_step is None:
        return None
    return max(previous_step - resumed_step, 0)


def _write_json(path: Path, document: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(document), encoding="utf-8")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


def note_world_end(directory: str | None, step: int, when: float | None = None) -> None:
    """Leave the mark of this world's end (call on local rank 0 just before stopping)."""
    if not directory:
        return
    with contextlib.suppress(OSError):
        _write_json(
            Path(directory) / WORLD_END_FILE,
            {"step": step, "time": time.time() if when is None else when},
        )


def note_rendezvous(directory: str, started: float, done: float) -> None:
    """The agent's mark after a rendezvous: its span plus the (consumed) world-end mark."""
    if not directory:
        return
    world_end_path = Path(directory) / WORLD_END_FILE
    world_end = _read_json(world_end_path)
    with contextlib.suppress(OSError):
        world_end_path.unlink(missing_ok=True)
        _write_json(
            Path(directory) / AGENT_FILE,
            {"rendezvous_started": started, "rendezvous_done": done, "world_end": world_end},
        )


def read_agent_marks(directory: str | None) -> dict[str, Any]:
    """What the agent noted at this restart's rendezvous ({} without an agent)."""
    return _read_json(Path(directory) / AGENT_FILE) if directory else {}


def process_created_at() -> float | None:
    """Wall-clock time this process was created (Linux ``/proc``; None elsewhere)."""
    try:
        fields = Path("/proc/self/stat").read_text().rpartition(")")[2].split()
        ticks = int(fields[19])  # field 22 (starttime), counted after "pid (comm)"
        since_boot = time.clock_gettime(time.CLOCK_BOOTTIME)
        return time.time() - since_boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


@dataclass
class RestartClock:
    """Collects one worker's marks as it starts; :meth:`phases` once its first step is done."""

    directory: str | None
    runtime_ready: float
    process_group_ready: float = math.nan
    setup_done: float = math.nan
    restore_done: float = math.nan
    resumed_step: int = 0

    @classmethod
    def start(cls, directory: str | None) -> RestartClock:
        """Start at "runtime ready" (torch imported, the training function running)."""
        return cls(directory=directory, runtime_ready=time.time())

    def phases(self) -> tuple[dict[str, float], int | None]:
        """The phases up to now (the first step just completed) and the steps lost."""
        agent = read_agent_marks(self.directory)
        world_end = agent.get("world_end") or {}
        marks = RestartMarks(
            world_end=_number(world_end.get("time")),
            rendezvous_started=_number(agent.get("rendezvous_started")),
            rendezvous_done=_number(agent.get("rendezvous_done")),
            process_created=process_created_at(),
            runtime_ready=self.runtime_ready,
            process_group_ready=self.process_group_ready,
            setup_done=self.setup_done,
            restore_done=self.restore_done,
            first_step_done=time.time(),
        )
        previous = world_end.get("step")
        lost = compute_steps_lost(
            previous if isinstance(previous, int) else None, self.resumed_step
        )
        return compute_restart_phases(marks), lost


def describe_restart(phases: dict[str, float], steps_lost: int | None) -> str:
    """One log line of a restart's phases, e.g. ``stop 0.31s | rendezvous 1.20s | ...``."""
    shown = [f"{phase} {seconds:.2f}s" for phase, seconds in phases.items()]
    shown.append(f"steps lost {'?' if steps_lost is None else steps_lost}")
    return " | ".join(shown)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None
