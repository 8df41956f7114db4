"""What a TrainingJob reports: status conditions, Events and timestamps, the same way from
every loop.

Why this module exists: the reconcile loop and the autoscale loop both write conditions into
one ``status.conditions`` list and post Events on the job. They must agree on how a condition
keeps its ``lastTransitionTime``, how one loop's conditions survive the other's patch, and how
times are written, so those rules live here once, below both loops.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EventSpec:
    """A Kubernetes Event to post on the job."""

    type: str  # Normal or Warning
    reason: str
    message: str


def parse_time(value: str | None) -> dt.datetime | None:
    """Parse an RFC 3339 time as Kubernetes writes it; None for a missing value."""
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def format_time(moment: dt.datetime) -> str:
    """RFC 3339 in UTC with a Z, as Kubernetes writes times."""
    return moment.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def build_condition(
    previous: Iterable[Mapping[str, Any]],
    type_: str,
    status: str,
    reason: str,
    message: str,
    now: dt.datetime,
    generation: int | None,
) -> dict[str, Any]:
    """A condition dict whose lastTransitionTime only moves when its status changes."""
    old = next((c for c in previous if c.get("type") == type_), None)
    changed = old is None or old.get("status") != status
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": (
            old.get("lastTransitionTime") if old is not None and not changed else format_time(now)
        ),
        "observedGeneration": generation,
    }


def merge_conditions(
    previous: Sequence[Mapping[str, Any]], updates: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Replace conditions of the same type, keep the others (written by other loops)."""
    by_type = {c["type"]: c for c in updates}
    merged = [dict(by_type.pop(c.get("type"), c)) for c in previous]
    merged.extend(by_type.values())
    return merged
