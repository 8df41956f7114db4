"""What a TrainingJob reports: status conditions, Events and timestamps, the same way from
every loop.

Why this module exists: the reconcile loop and the autoscale loop both write conditions into
one ``status.conditions`` list and post Events on the job. They must agree on how a condition
keeps its ``lastTransitionTime``, how one loop's conditions survive the other's patch, and how
times are written, so those rules live here once, below both loops.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pydantic

from trainscale.operator.api.models import (
    CONDITION_MESSAGE_MAX_LENGTH,
    Condition,
    ConditionStatus,
)


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
    status: ConditionStatus,
    reason: str,
    message: str,
    now: dt.datetime,
    generation: int | None,
) -> Condition:
    """A condition whose lastTransitionTime only moves when its status changes.

    Every field metav1.Condition requires is written; a message longer than the schema allows
    is cut (the apiserver would refuse the whole status patch).
    """
    old = next((c for c in previous if c.get("type") == type_), None)
    changed = old is None or old.get("status") != status or not old.get("lastTransitionTime")
    if len(message) > CONDITION_MESSAGE_MAX_LENGTH:
        message = message[: CONDITION_MESSAGE_MAX_LENGTH - 3] + "..."
    return Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=(
            str(old["lastTransitionTime"]) if old is not None and not changed else format_time(now)
        ),
        observed_generation=generation,
    )


def merge_conditions(
    previous: Sequence[Mapping[str, Any]], updates: Sequence[Condition]
) -> list[Condition]:
    """Replace conditions of the same type, keep the others (written by other loops).

    A kept condition is parsed as it was read, so it is written back with exactly its own
    fields; one that is not a valid metav1.Condition (written before the schema required every
    field) is dropped rather than written back, since the apiserver would refuse the whole
    patch; the loop that owns it writes it again in full.
    """
    by_type = {c.type: c for c in updates}
    merged: list[Condition] = []
    for old in previous:
        update = by_type.pop(str(old.get("type")), None)
        if update is not None:
            merged.append(update)
            continue
        try:
            merged.append(Condition.model_validate(old))
        except pydantic.ValidationError:
            continue
    merged.extend(by_type.values())
    return merged


def is_noop_merge_patch(current: Mapping[str, Any], patch: Mapping[str, Any]) -> bool:
    """Whether a JSON merge patch would leave ``current`` exactly as it is.

    A loop that writes only what changed costs the apiserver nothing when nothing changed,
    and never moves the object's resourceVersion under a concurrent writer (kopf lifting its
    finalizer tests that version). Rules of RFC 7386: null deletes a key, an object merges
    key by key, anything else (lists included) replaces.
    """
    for key, value in patch.items():
        if value is None:
            if current.get(key) is not None:
                return False
        elif isinstance(value, Mapping):
            existing = current.get(key)
            if not isinstance(existing, Mapping) or not is_noop_merge_patch(existing, value):
                return False
        elif current.get(key, _MISSING) != value:
            return False
    return True


def replace_map(
    patch: Mapping[str, Any], current: Mapping[str, Any], path: Sequence[str]
) -> dict[str, Any]:
    """``patch`` with the map at ``path`` written whole: every key the map has in ``current``
    and not in the patch is set to null.

    A JSON merge patch merges maps key by key, so a map written as a whole (the nodes a plan
    holds, a model's parameters) kept every key written before: a plan that moved a job
    from one node to another said both nodes, for good. ``patch`` is returned as it is when
    it does not write that map.
    """
    *parents, leaf = path
    out = copy.deepcopy(dict(patch))
    node: Any = out
    old: Any = current
    for key in parents:
        node = node.get(key) if isinstance(node, dict) else None
        old = old.get(key) if isinstance(old, Mapping) else None
    if not isinstance(node, dict) or not isinstance(node.get(leaf), dict):
        return out
    written: dict[str, Any] = node[leaf]
    stale = old.get(leaf) if isinstance(old, Mapping) else None
    for key in stale if isinstance(stale, Mapping) else ():
        written.setdefault(key, None)
    return out


_MISSING = object()
