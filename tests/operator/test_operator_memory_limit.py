"""The operator's container memory limit, read from its cgroup and exported next to its RSS.

Behaviours covered:

* the limit is parsed from cgroup v2's ``memory.max`` (a number, or ``max``: none) and v1's
  ``memory.limit_in_bytes`` (a number, the largest page-aligned value when there is none);
  text that is neither is refused by value;
* the reader prefers v2, falls back to v1, says NaN where no cgroup file says (and skips a
  file it cannot parse);
* ``trainscale_operator_memory_limit_bytes`` reports the limit at every scrape, so an
  in-place resize of the operator's pod shows at once; the chart's
  TrainScaleOperatorMemoryHigh reads it (tests/chart/test_chart_prometheus_rule.py).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from trainscale.operator.observability.container import memory_limit_bytes, parse_memory_limit
from trainscale.operator.observability.metric_names import MEMORY_LIMIT_NAME
from trainscale.operator.observability.metrics import OperatorMetrics


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("1073741824\n", 1073741824.0),  # v2 or v1, 1Gi
        ("536870912", 536870912.0),
        ("max\n", math.inf),  # v2: no limit
        ("9223372036854771712\n", math.inf),  # v1 on 64-bit: no limit
        (str(2**62), math.inf),
        (str(2**62 - 4096), float(2**62 - 4096)),
    ],
)
def test_a_limit_is_parsed_from_either_cgroup_version(text: str, limit: float) -> None:
    assert parse_memory_limit(text) == limit


@pytest.mark.parametrize("text", ["", "unlimited", "-1", "0", "1.5G"])
def test_text_that_is_no_limit_is_refused_by_value(text: str) -> None:
    with pytest.raises(ValueError, match="not a cgroup memory limit") as raised:
        parse_memory_limit(text)
    assert repr(text.strip()) in str(raised.value)


def _cgroup(root: Path, v2: str | None = None, v1: str | None = None) -> Path:
    if v2 is not None:
        (root / "memory.max").write_text(v2)
    if v1 is not None:
        (root / "memory").mkdir()
        (root / "memory" / "memory.limit_in_bytes").write_text(v1)
    return root


@pytest.mark.parametrize(
    ("v2", "v1", "limit"),
    [
        ("805306368\n", None, 805306368.0),
        ("max\n", None, math.inf),
        (None, "805306368\n", 805306368.0),
        (None, "9223372036854771712\n", math.inf),
        ("805306368\n", "1073741824\n", 805306368.0),  # v2 first
        ("garbled\n", "1073741824\n", 1073741824.0),  # an unreadable file is skipped
    ],
)
def test_the_reader_prefers_v2_then_v1(
    tmp_path: Path, v2: str | None, v1: str | None, limit: float
) -> None:
    assert memory_limit_bytes(_cgroup(tmp_path, v2, v1)) == limit


def test_no_cgroup_file_says_nan(tmp_path: Path) -> None:
    assert math.isnan(memory_limit_bytes(tmp_path))


def test_the_gauge_reads_the_limit_at_every_scrape(tmp_path: Path) -> None:
    root = _cgroup(tmp_path, v2="536870912\n")
    registry = CollectorRegistry()
    OperatorMetrics(registry, memory_limit=lambda: memory_limit_bytes(root))
    assert registry.get_sample_value(MEMORY_LIMIT_NAME) == 536870912.0
    (root / "memory.max").write_text("1073741824\n")  # the pod resized in place
    assert registry.get_sample_value(MEMORY_LIMIT_NAME) == 1073741824.0
    (root / "memory.max").write_text("max\n")
    assert registry.get_sample_value(MEMORY_LIMIT_NAME) == math.inf
