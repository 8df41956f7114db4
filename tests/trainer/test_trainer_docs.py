"""docs/trainer.md documents every metric name and every environment variable the trainer reads.

Covers: drift between the single sources of truth (metric_names.ALL_METRICS,
settings.ENVIRONMENT) and the user documentation.
"""

from __future__ import annotations

from pathlib import Path

from trainscale.trainer.contract.metric_names import ALL_METRICS
from trainscale.trainer.runtime.settings import ENVIRONMENT

DOC = Path(__file__).resolve().parents[2] / "docs" / "trainer.md"


def test_every_metric_is_documented_with_its_type() -> None:
    text = DOC.read_text(encoding="utf-8")
    for metric in ALL_METRICS:
        assert f"| `{metric.name}` | {metric.type} |" in text, metric.name


def test_every_environment_variable_is_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    for name, _ in ENVIRONMENT:
        assert f"| `{name}` |" in text, name
