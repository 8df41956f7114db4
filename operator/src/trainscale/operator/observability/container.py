"""The memory limit of the operator's own container, read from its cgroup.

Why this module exists: the operator's memory grows with the jobs it manages (about 0.4 MiB
a job at the peak of a burst, docs/install.md, "Sizing the operator"), and a container over
its limit is killed by the kernel (OOMKilled) and restarted: while it restarts no job is
reconciled or autoscaled, and its restart lists every job anew, which may take it over the
limit again (a crash loop; not measured) — nothing says so until it happens. Exported next
to the process's resident memory (``process_resident_memory_bytes``, prometheus_client's),
the limit lets one alert say how close the operator is, before the kernel does (the chart's
``TrainScaleOperatorMemoryHigh``). Read on each scrape, as an in-place pod resize may
change it.
"""

from __future__ import annotations

import math
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
"""Where the container's cgroup is mounted: its own, under cgroup v2 (``memory.max``), or
the memory controller's folder under v1 (``memory/memory.limit_in_bytes``)."""

_V1_UNLIMITED = 2**62
"""cgroup v1 reports no limit as the largest page-aligned value (9223372036854771712 on
64-bit kernels); anything this large is no limit."""


def parse_memory_limit(text: str) -> float:
    """The limit in bytes from the text of ``memory.max`` (v2: a number or ``max``) or
    ``memory.limit_in_bytes`` (v1: a number, huge when unlimited); ``inf`` for no limit.

    Raises:
        ValueError: the text is neither (named in the message).
    """
    value = text.strip()
    if value == "max":
        return math.inf
    try:
        limit = int(value)
    except ValueError:
        raise ValueError(f"not a cgroup memory limit: {value!r}") from None
    if limit <= 0:
        raise ValueError(f"not a cgroup memory limit: {value!r}")
    return math.inf if limit >= _V1_UNLIMITED else float(limit)


def memory_limit_bytes(root: Path = CGROUP_ROOT) -> float:
    """This container's memory limit in bytes: ``inf`` when it has none, NaN when no cgroup
    file says (not Linux, or no memory controller mounted)."""
    for path in (root / "memory.max", root / "memory" / "memory.limit_in_bytes"):
        try:
            return parse_memory_limit(path.read_text())
        except (OSError, ValueError):
            continue
    return math.nan
