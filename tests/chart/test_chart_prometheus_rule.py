"""The chart's optional PrometheusRule (prometheusRule.enabled), checked by the real promtool.

Behaviours covered:

* off by default; on, one PrometheusRule with the alerts TrainScaleJobDegraded,
  TrainScaleWorkersUnschedulable, TrainScaleWorkersOffPlan, TrainScaleJobPreemptedOften,
  TrainScaleMetricsUnavailable, TrainScaleArbitrationFailing, TrainScaleJobFailed,
  TrainScaleOperatorMemoryHigh and TrainScaleOperatorDown, the ``for`` durations and extra alert labels from values, every
  expression selecting the operator's scrape job;
* every metric an expression reads is one the operator exports (names from
  ``metric_names`` and ``condition_metric``, not retyped; the resident memory is
  prometheus_client's, checked in the registry the operator serves);
* ``promtool check rules`` accepts the rules, and ``promtool test rules`` shows each alert
  firing on the series that should fire it, only after its ``for`` duration, and not on
  healthy series.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from tests.chart.conftest import CHART_DIR
from tests.chart.test_chart_render import by_kind, one
from trainscale.operator.observability import metric_names
from trainscale.operator.observability.condition_metric import CONDITION_LABEL, JOB_CONDITION_NAME

JOB = "trainscale-metrics"  # the metrics Service of release "trainscale"
ON = {"prometheusRule": {"enabled": True, "alertLabels": {"team": "ml"}}}
ALERTS = [
    "TrainScaleJobDegraded",
    "TrainScaleWorkersUnschedulable",
    "TrainScaleWorkersOffPlan",
    "TrainScaleJobPreemptedOften",
    "TrainScaleMetricsUnavailable",
    "TrainScaleArbitrationFailing",
    "TrainScaleJobFailed",
    "TrainScaleOperatorMemoryHigh",
    "TrainScaleOperatorDown",
]


def rules(render: Any, values: dict[str, Any] = ON) -> list[dict[str, Any]]:
    (group,) = one(render(values), "PrometheusRule")["spec"]["groups"]
    found: list[dict[str, Any]] = group["rules"]
    return found


def test_off_by_default(render: Any) -> None:
    assert not by_kind(render({}), "PrometheusRule")


def test_lint_strict_with_the_rule(helm: Any) -> None:
    helm.run("lint", "--strict", str(CHART_DIR), "--set", "prometheusRule.enabled=true",
             "--set", "prometheusRule.alertLabels.team=ml")  # fmt: skip


def test_alerts_durations_and_labels(render: Any) -> None:
    found = {r["alert"]: r for r in rules(render)}
    assert list(found) == ALERTS
    assert found["TrainScaleJobDegraded"]["for"] == "10m"
    assert found["TrainScaleWorkersUnschedulable"]["for"] == "15m"
    assert found["TrainScaleWorkersOffPlan"]["for"] == "30m"
    assert found["TrainScaleMetricsUnavailable"]["for"] == "10m"
    assert found["TrainScaleArbitrationFailing"]["for"] == "10m"
    assert found["TrainScaleOperatorDown"]["for"] == "5m"
    assert found["TrainScaleOperatorDown"]["labels"]["severity"] == "critical"
    assert found["TrainScaleOperatorMemoryHigh"]["for"] == "10m"
    assert found["TrainScaleOperatorMemoryHigh"]["expr"].endswith("> 0.8")
    for rule in found.values():
        assert f'job="{JOB}"' in rule["expr"], rule
        assert rule["labels"]["team"] == "ml" and rule["annotations"]["summary"]
    custom = {r["alert"]: r for r in rules(render, {"prometheusRule": {
        "enabled": True, "degradedFor": "30m", "scrapeJob": "my-operator"}})}  # fmt: skip
    assert custom["TrainScaleJobDegraded"]["for"] == "30m"
    memory = {r["alert"]: r for r in rules(render, {"prometheusRule": {
        "enabled": True, "memoryHighShare": 0.9, "memoryHighFor": "5m"}})}["TrainScaleOperatorMemoryHigh"]  # fmt: skip
    assert memory["for"] == "5m" and memory["expr"].endswith("> 0.9")
    assert 'up{job="my-operator"}' in custom["TrainScaleOperatorDown"]["expr"]


def test_expressions_read_only_exported_metrics(render: Any) -> None:
    exported = {value for key, value in vars(metric_names).items() if key.endswith("_NAME")} | {
        JOB_CONDITION_NAME
    }
    for rule in rules(render):
        for name in re.findall(r"trainscale_operator_\w+", rule["expr"]):
            stem = name.removesuffix("_count")  # a histogram's series
            assert name in exported or stem in exported, (rule["alert"], name)
    expr = {r["alert"]: r["expr"] for r in rules(render)}
    # The resident memory is prometheus_client's process collector, in the default registry
    # that serve_metrics serves.
    assert metric_names.RESIDENT_MEMORY_NAME in expr["TrainScaleOperatorMemoryHigh"]
    assert metric_names.RESIDENT_MEMORY_NAME in {m.name for m in REGISTRY.collect()}
    assert f'{CONDITION_LABEL}="Degraded"' in expr["TrainScaleJobDegraded"]
    assert 'phase="Failed"' in expr["TrainScaleJobFailed"]


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is missing: run scripts/install-system-deps.sh")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip


def _write_rules(render: Any, tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    spec = one(render(ON), "PrometheusRule")["spec"]
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.prometheus
def test_promtool_checks_the_rules(render: Any, tmp_path: Path) -> None:
    done = _promtool("check", "rules", str(_write_rules(render, tmp_path)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in done.stdout, done.stdout


def _series(metric: str, values: str, **labels: str) -> dict[str, str]:
    text = ",".join(f'{k}="{v}"' for k, v in {"job": JOB, **labels}.items())
    return {"series": f"{metric}{{{text}}}", "values": values}


def _fires(alert: str, at: str, *expected: dict[str, str], value: str = "1") -> dict[str, Any]:
    """``value``: the alert's $value as its annotations print it (not sent to promtool)."""
    return {"eval_time": at, "alertname": alert,
            "exp_alerts": [{"exp_labels": labels, "value": value} for labels in expected]}  # fmt: skip


def _expand(text: str, labels: dict[str, str], value: str) -> str:
    """An annotation as Prometheus fills it in (its only variables: $labels.x and $value,
    plain or as a percentage)."""
    text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], text)
    return text.replace("{{ $value }}", value).replace("{{ $value | humanizePercentage }}", value)


JOB_LABELS = {"job": JOB, "namespace": "ml", "trainingjob": "bert", "team": "ml"}
COND = JOB_CONDITION_NAME
ERRORS = metric_names.PROMETHEUS_QUERY_ERRORS_NAME
QUERIES = metric_names.PROMETHEUS_QUERY_DURATION_NAME + "_count"
PASSES = metric_names.ARBITRATION_PASSES_NAME
RSS = metric_names.RESIDENT_MEMORY_NAME
LIMIT = metric_names.MEMORY_LIMIT_NAME
POD = "10.0.0.5:8080"

CASES = [
    # A job Degraded for 20 minutes: pending until 10m, then firing.
    ([_series(COND, "1x20", namespace="ml", trainingjob="bert", condition="Degraded")],
     [_fires("TrainScaleJobDegraded", "9m"),
      _fires("TrainScaleJobDegraded", "11m",
             {**JOB_LABELS, "condition": "Degraded", "severity": "warning"})]),
    # Degraded=False: never.
    ([_series(COND, "0x20", namespace="ml", trainingjob="bert", condition="Degraded")],
     [_fires("TrainScaleJobDegraded", "20m")]),
    ([_series(COND, "0x20", namespace="ml", trainingjob="bert", condition="Schedulable")],
     [_fires("TrainScaleWorkersUnschedulable", "14m"),
      _fires("TrainScaleWorkersUnschedulable", "16m",
             {**JOB_LABELS, "condition": "Schedulable", "severity": "warning"})]),
    # One worker off its plan for 40 minutes: firing after 30; back on plan: never.
    ([_series(metric_names.WORKERS_OFF_PLAN_NAME, "1x40", namespace="ml", trainingjob="bert")],
     [_fires("TrainScaleWorkersOffPlan", "29m"),
      _fires("TrainScaleWorkersOffPlan", "31m", {**JOB_LABELS, "severity": "warning"})]),
    ([_series(metric_names.WORKERS_OFF_PLAN_NAME, "0x40", namespace="ml", trainingjob="bert")],
     [_fires("TrainScaleWorkersOffPlan", "40m")]),
    # Preempted at minutes 10, 21 and 32 (the counter starts at 0): firing from the third
    # within the hour; two in an hour: never; the third an hour after the first: never.
    ([_series(metric_names.PREEMPTIONS_NAME, "0x9 1x10 2x10 3x40", namespace="ml",
              trainingjob="bert")],
     [_fires("TrainScaleJobPreemptedOften", "25m"),
      _fires("TrainScaleJobPreemptedOften", "35m", {**JOB_LABELS, "severity": "warning"})]),
    ([_series(metric_names.PREEMPTIONS_NAME, "0x9 1x10 2x60", namespace="ml",
              trainingjob="bert")],
     [_fires("TrainScaleJobPreemptedOften", "60m")]),
    ([_series(metric_names.PREEMPTIONS_NAME, "0x9 1x61 2x10 3x30", namespace="ml",
              trainingjob="bert")],
     [_fires("TrainScaleJobPreemptedOften", "85m")]),
    # Every query fails: firing once the 10 m have passed; half of them fail: never.
    ([_series(ERRORS, "0+6x30", kind="http"), _series(QUERIES, "0+6x30")],
     [_fires("TrainScaleMetricsUnavailable", "5m"),
      _fires("TrainScaleMetricsUnavailable", "16m", {"severity": "warning", "team": "ml"})]),
    ([_series(ERRORS, "0+3x30", kind="http"), _series(QUERIES, "0+6x30")],
     [_fires("TrainScaleMetricsUnavailable", "30m")]),
    # Every arbitration pass fails (6 a minute) from minute 0: firing once the 10 m have
    # passed; every other pass fails: never; failing until minute 8, then working: never.
    ([_series(PASSES, "0+6x30", outcome="error"), _series(PASSES, "0x30", outcome="ok")],
     [_fires("TrainScaleArbitrationFailing", "5m"),
      _fires("TrainScaleArbitrationFailing", "16m", {"severity": "warning", "team": "ml"})]),
    ([_series(PASSES, "0+3x30", outcome="error"), _series(PASSES, "0+3x30", outcome="ok")],
     [_fires("TrainScaleArbitrationFailing", "30m")]),
    ([_series(PASSES, "0+6x8 48x22", outcome="error"), _series(PASSES, "0x8 0+6x22", outcome="ok")],
     [_fires("TrainScaleArbitrationFailing", "12m"),
      _fires("TrainScaleArbitrationFailing", "25m")]),
    ([_series(metric_names.MANAGED_JOBS_NAME, "0 0 1 1", phase="Failed")],
     [_fires("TrainScaleJobFailed", "1m"),
      _fires("TrainScaleJobFailed", "2m", {"job": JOB, "phase": "Failed", "severity": "warning",
                                           "team": "ml"})]),
    # The operator at 90 % of its memory limit from minute 0: firing after 10 m; at 70 %,
    # without a limit (+Inf) or where no cgroup says (NaN): never.
    ([_series(RSS, "9e8x20", instance=POD), _series(LIMIT, "1e9x20", instance=POD)],
     [_fires("TrainScaleOperatorMemoryHigh", "9m"),
      _fires("TrainScaleOperatorMemoryHigh", "11m",
             {"job": JOB, "instance": POD, "severity": "warning", "team": "ml"}, value="90%")]),
    ([_series(RSS, "7e8x20", instance=POD), _series(LIMIT, "1e9x20", instance=POD)],
     [_fires("TrainScaleOperatorMemoryHigh", "20m")]),
    ([_series(RSS, "9e8x20", instance=POD), _series(LIMIT, " ".join(["+Inf"] * 21), instance=POD)],
     [_fires("TrainScaleOperatorMemoryHigh", "20m")]),
    ([_series(RSS, "9e8x20", instance=POD), _series(LIMIT, " ".join(["NaN"] * 21), instance=POD)],
     [_fires("TrainScaleOperatorMemoryHigh", "20m")]),
    # The scrape fails (up 0) from minute 3.
    ([_series("up", "1 1 1 0x10")],
     [_fires("TrainScaleOperatorDown", "4m"),
      _fires("TrainScaleOperatorDown", "9m", {"severity": "critical", "team": "ml"})]),
]  # fmt: skip


@pytest.mark.prometheus
def test_promtool_fires_each_alert_when_it_should(render: Any, tmp_path: Path) -> None:
    cases = copy.deepcopy(CASES)
    annotations = {r["alert"]: r["annotations"] for r in rules(render)}
    for _, checks in cases:
        for check in checks:
            for alert in check["exp_alerts"]:
                value = alert.pop("value")
                alert["exp_annotations"] = {
                    key: _expand(text, alert["exp_labels"], value)
                    for key, text in annotations[check["alertname"]].items()
                }
    covered = {check["alertname"] for _, checks in cases for check in checks}
    assert covered == set(ALERTS)
    tests = [
        {"interval": "1m", "input_series": series, "alert_rule_test": checks}
        for series, checks in cases
    ]
    rule_file = _write_rules(render, tmp_path)
    suite = tmp_path / "tests.yaml"
    suite.write_text(yaml.safe_dump({"rule_files": [rule_file.name], "evaluation_interval": "1m",
                                     "tests": tests}))  # fmt: skip
    done = _promtool("test", "rules", str(suite))
    assert done.returncode == 0, done.stdout + done.stderr
