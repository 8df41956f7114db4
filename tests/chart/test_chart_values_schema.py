"""The chart's values schema (charts/trainscale/values.schema.json), checked by the real helm.

Behaviours covered:

* the committed schema is the one trainscale.testbed.chart_values generates (no drift) and
  is valid JSON Schema draft 7;
* values.yaml validates against it, and the schema declares exactly the keys values.yaml has;
* ``helm template`` refuses, naming the value: a misspelt key (``operater.replicas``), a
  string for a number (``operator.replicas=abc``, ``metrics.port=foo``), a value outside an
  enum (``image.pullPolicy=Sometimes``) or a bound (``metrics.port=70000``), a malformed
  duration, a misspelt nested key; valid ``--set`` values still render.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
import yaml

from tests.chart.conftest import CHART_DIR, RELEASE
from trainscale.testbed.chart_values import build_values_schema, render_values_schema

SCHEMA_FILE = CHART_DIR / "values.schema.json"


def test_committed_schema_is_the_generated_one() -> None:
    assert SCHEMA_FILE.read_text() == render_values_schema(), "run `make chart-schema`"
    jsonschema.Draft7Validator.check_schema(json.loads(SCHEMA_FILE.read_text()))


def _paths(node: Any, prefix: str = "") -> set[str]:
    """Key paths of a values tree (dicts only: opaque Kubernetes objects count as leaves)."""
    found = set()
    for key, value in node.items():
        found.add(prefix + key)
        if isinstance(value, dict):
            found |= _paths(value, f"{prefix}{key}.")
    return found


def _schema_paths(schema: dict[str, Any], prefix: str = "") -> set[str]:
    found = set()
    for key, sub in (schema.get("properties") or {}).items():
        found.add(prefix + key)
        found |= _schema_paths(sub, f"{prefix}{key}.")
    return found


def test_values_yaml_validates_and_every_key_is_declared() -> None:
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    schema = build_values_schema()
    jsonschema.Draft7Validator(schema).validate(values)
    declared = _schema_paths(schema) - {"global"}
    # Opaque Kubernetes objects (resources, security contexts) have defaults inside them.
    opaque = _opaque(schema)
    given = {p for p in _paths(values) if not any(p.startswith(o + ".") for o in opaque)}
    assert declared == given


def _opaque(schema: dict[str, Any], prefix: str = "") -> set[str]:
    """Paths of objects the schema leaves open (their keys are Kubernetes' or the user's)."""
    found = set()
    for key, sub in (schema.get("properties") or {}).items():
        if sub.get("type") == "object" and "properties" not in sub:
            found.add(prefix + key)
        found |= _opaque(sub, f"{prefix}{key}.")
    return found


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        pytest.param("operater.replicas=2", "additional properties 'operater' not allowed",
                     id="misspelt-key"),
        pytest.param("operator.replicas=abc", "at '/operator/replicas': got string, want integer",
                     id="replicas-not-a-number"),
        pytest.param("metrics.port=foo", "at '/metrics/port': got string, want integer",
                     id="port-not-a-number"),
        pytest.param("metrics.port=70000", "at '/metrics/port'", id="port-out-of-range"),
        pytest.param("image.pullPolicy=Sometimes", "at '/image/pullPolicy': value must be one of",
                     id="pull-policy-enum"),
        pytest.param("metrics.serviceMonitor.interval=30", "at '/metrics/serviceMonitor/interval'",
                     id="duration"),
        pytest.param("operator.arbitration.preemption=always",
                     "at '/operator/arbitration/preemption': value must be one of",
                     id="preemption-enum"),
        pytest.param("operator.livenessProbe.periodSecond=5",
                     "additional properties 'periodSecond' not allowed", id="misspelt-nested-key"),
    ],
)  # fmt: skip
def test_bad_set_values_are_refused_naming_the_value(helm: Any, setting: str,
                                                     message: str) -> None:  # fmt: skip
    done = helm.run("template", RELEASE, str(CHART_DIR), "--set", setting, check=False)
    assert done.returncode != 0, done.stdout[:500]
    assert "values don't meet the specifications of the schema" in done.stderr
    assert message in done.stderr, done.stderr


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param(["image.pullPolicy=Always", "metrics.port=9090"], id="enum-and-port"),
        pytest.param(["operator.replicas=2", "operator.peering.enabled=true"], id="replicas"),
        pytest.param(["operator.podDisruptionBudget.minAvailable=50%"], id="percent"),
    ],
)
def test_good_set_values_render(helm: Any, settings: list[str]) -> None:
    args = [a for s in settings for a in ("--set", s)]
    done = helm.run("template", RELEASE, str(CHART_DIR), *args, check=False)
    assert done.returncode == 0, done.stderr
