"""The sample audit log: what the trainer writes when ``TRAINSCALE_AUDIT_LOG_DIR`` is set, and
how tests and benchmarks read it back.

Why this module exists: the log is how the exactly-once data order is proved across resizes
(tests) and where a resize's first step at a new size is timed (benchmarks); its file names
and reader live in one torch-free place. Each process appends one JSON object per step to
its own file: ``world_id``, ``rank``, ``world_size``, ``step``, ``epoch``, ``start``,
``stop``, ``ids`` (the sample ids it trained), ``loss``, ``loader_workers`` and ``time``
(wall clock, seconds). A rank writes its record once the step's forward passes are done and
before the backward whose collective commits the step, so every rank of a committed step has
its record, even one killed right after that collective.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def audit_file_name(world_id: str, rank: int) -> str:
    """The file one rank of one world appends to."""
    return f"samples-{world_id}-rank{rank}.jsonl"


def read_audit(directory: Path) -> list[dict[str, Any]]:
    """Every step record every rank wrote into ``directory`` (a line being written right now
    is skipped)."""
    entries = []
    for path in sorted(directory.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    entries.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    return entries
