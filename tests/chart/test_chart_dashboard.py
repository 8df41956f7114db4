"""The Grafana dashboard declared in trainscale.operator.observability.dashboard.

Behaviours covered:

* the committed ``charts/trainscale/dashboards/trainscale.json`` is exactly what the module
  renders (``TRAINSCALE_UPDATE_GOLDEN=1`` rewrites it);
* every query uses only metric names that the trainer or the operator define, and every
  trainer metric that matters for scaling is charted;
* the operator labels the dashboard filters on are the labels the operator's gauges carry;
* panel ids are unique, every panel has a query, and the grid never overflows 24 columns;
* the key queries, evaluated by Prometheus' own engine (``promtool test rules``) on series
  shaped like the trainer's, dcgm-exporter's (``pod`` or ``exported_pod`` labels, ratio or
  percent) and the operator's, give each job's throughput, GPU busy and desired replicas;
* the module imports no prometheus_client, kopf or torch itself.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from trainscale.operator.observability import dashboard
from trainscale.operator.observability import metric_names as op
from trainscale.operator.observability import metrics as operator_metrics
from trainscale.trainer.contract import metric_names as tr

REPO_ROOT = Path(__file__).resolve().parents[2]
GOLDEN = REPO_ROOT / "charts" / "trainscale" / "dashboards" / "trainscale.json"
UPDATE_GOLDEN = os.environ.get("TRAINSCALE_UPDATE_GOLDEN") == "1"

_METRIC_TOKEN = re.compile(r"\b(trainscale_[a-z_]+|DCGM_FI_[A-Z_]+)\b")
_HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def _exprs(model: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in model["panels"] if p["type"] != "row" for t in p["targets"]]


def _known_names() -> set[str]:
    names = {m.name for m in tr.ALL_METRICS}
    names |= {v for k, v in vars(op).items() if k.endswith("_NAME") and isinstance(v, str)}
    names |= {dashboard.DCGM_ENGINE_ACTIVE, dashboard.DCGM_GPU_UTIL}
    return names


def test_committed_dashboard_matches_the_module() -> None:
    text = dashboard.render_dashboard_json()
    if UPDATE_GOLDEN:
        GOLDEN.write_text(text, encoding="utf-8")
    assert GOLDEN.read_text(encoding="utf-8") == text, (
        f"{GOLDEN.relative_to(REPO_ROOT)} is stale: run "
        "`trainscale dashboard -o charts/trainscale/dashboards/trainscale.json`"
    )
    json.loads(text)


def test_every_query_uses_only_defined_metric_names() -> None:
    known = _known_names()
    used = set()
    for expr in _exprs(dashboard.build_dashboard()):
        for token in _METRIC_TOKEN.findall(expr):
            base = token
            for suffix in _HISTOGRAM_SUFFIXES:
                if token.endswith(suffix) and token.removesuffix(suffix) in known:
                    base = token.removesuffix(suffix)
            assert base in known, f"{token!r} in {expr!r} is defined by neither component"
            used.add(base)
    must_chart = {
        tr.SAMPLES_TOTAL,
        tr.STEP_SECONDS,
        tr.COMMUNICATION_SECONDS_TOTAL,
        tr.WORLD_SIZE,
        op.DESIRED_REPLICAS_NAME,
        op.JOB_COST_PER_HOUR_NAME,
        op.SCALING_DECISIONS_NAME,
        op.RECONCILE_TOTAL_NAME,
        op.PROMETHEUS_QUERY_ERRORS_NAME,
        dashboard.DCGM_ENGINE_ACTIVE,
        dashboard.DCGM_GPU_UTIL,
    }
    assert must_chart <= used, f"not charted: {sorted(must_chart - used)}"


def test_operator_job_labels_are_the_gauges_labels() -> None:
    metrics = operator_metrics.OperatorMetrics(registry=CollectorRegistry())
    for gauge in (metrics.desired_replicas, metrics.managed_pods, metrics.job_cost_per_hour):
        labels = set(gauge._labelnames)
        assert {dashboard.OPERATOR_NAMESPACE_LABEL, dashboard.OPERATOR_JOB_LABEL} <= labels


def test_layout_ids_and_targets() -> None:
    model = dashboard.build_dashboard()
    ids = [p["id"] for p in model["panels"]]
    assert len(ids) == len(set(ids))
    for panel in model["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert panel["description"], panel["title"]
            ref_ids = [t["refId"] for t in panel["targets"]]
            assert len(ref_ids) == len(set(ref_ids))
    assert {v["name"] for v in model["templating"]["list"]} == {"datasource", "namespace", "job"}


def test_module_imports_no_frameworks() -> None:
    tree = ast.parse(Path(dashboard.__file__).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"prometheus_client", "kopf", "torch", "kubernetes"}


# -- the queries, evaluated by Prometheus' engine ----------------------------------------------


def _panel(title: str) -> dict[str, Any]:
    model = dashboard.build_dashboard()
    return next(p for p in model["panels"] if p["title"] == title)


def _concrete(expr: str) -> str:
    """Replace Grafana's variables as Grafana would for namespace=ml, job=All."""
    return (
        expr.replace("$__rate_interval", "2m")
        .replace('"$namespace"', '"ml"')
        .replace("($job)", "(.+)")
        .replace('=~"$job"', '=~".+"')
    )


def _promtool(*args: str) -> None:
    done = subprocess.run(
        ["promtool", *args], check=False, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _expect(
    tmp_path: Path,
    panel: str,
    series: dict[str, str],
    expected: Mapping[str, float],
    eval_time: str = "5m",
    target: int = 0,
) -> None:
    """Evaluate query ``target`` (the first by default) of ``panel`` on ``series`` (selector
    -> promtool values notation, one sample a minute) with ``promtool test rules`` and compare
    the result (labels -> value) at ``eval_time``."""
    expr = _concrete(_panel(panel)["targets"][target]["expr"])
    rules = tmp_path / "rules.yaml"
    rules.write_text("groups: []\n")
    case = {
        "expr": expr,
        "eval_time": eval_time,
        "exp_samples": [{"labels": k, "value": v} for k, v in expected.items()],
    }
    spec = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": k, "values": v} for k, v in series.items()],
                "promql_expr_test": [case],
            }
        ],
    }
    path = tmp_path / "test.yaml"
    path.write_text(yaml.safe_dump(spec))
    _promtool("test", "rules", str(path))


def test_throughput_sums_each_jobs_workers(tmp_path: Path) -> None:
    samples = tr.SAMPLES_TOTAL
    series = {
        # digits: two workers at 60 and 120 samples per minute -> 1 + 2 samples/s.
        f'{samples}{{namespace="ml",pod="digits-worker-0"}}': "0+60x10",
        f'{samples}{{namespace="ml",pod="digits-worker-1"}}': "0+120x10",
        # Another job in the namespace is kept apart; the same job name elsewhere is ignored.
        f'{samples}{{namespace="ml",pod="big-model-worker-3"}}': "0+600x10",
        f'{samples}{{namespace="other",pod="digits-worker-0"}}': "0+6000x10",
        # Not a worker pod of any job.
        f'{samples}{{namespace="ml",pod="digits-rdzv"}}': "0+6000x10",
    }
    expected = {'{trainingjob="digits"}': 3, '{trainingjob="big-model"}': 10}
    _expect(tmp_path, "Throughput", series, expected, eval_time="10m")


def test_time_left_is_the_samples_left_over_the_jobs_throughput(tmp_path: Path) -> None:
    samples, left = tr.SAMPLES_TOTAL, tr.REMAINING_SAMPLES
    series = {
        # digits: 3 samples/s; its workers say 5,400 and 5,460 left (one lags): 1,800 s
        f'{samples}{{namespace="ml",pod="digits-worker-0"}}': "0+60x10",
        f'{samples}{{namespace="ml",pod="digits-worker-1"}}': "0+120x10",
        f'{left}{{namespace="ml",pod="digits-worker-0"}}': "5400x10",
        f'{left}{{namespace="ml",pod="digits-worker-1"}}': "5460x10",
        # big-model has not stepped yet (NaN): no line, not NaN; the same job elsewhere and
        # a pod of no job are ignored
        f'{samples}{{namespace="ml",pod="big-model-worker-0"}}': "0+600x10",
        f'{left}{{namespace="ml",pod="big-model-worker-0"}}': " ".join(["NaN"] * 11),
        f'{left}{{namespace="other",pod="digits-worker-0"}}': "1x10",
        f'{left}{{namespace="ml",pod="digits-rdzv"}}': "1x10",
    }
    _expect(tmp_path, "Time left", series, {'{trainingjob="digits"}': 1800}, eval_time="10m")


@pytest.mark.parametrize(
    ("metric", "value", "pod_label", "ns_label", "expected"),
    [
        pytest.param(dashboard.DCGM_ENGINE_ACTIVE, "0.8", "pod", "namespace", 0.8, id="ratio-pod"),
        pytest.param(
            dashboard.DCGM_ENGINE_ACTIVE, "0.6", "exported_pod", "exported_namespace", 0.6,
            id="ratio-exported-pod",
        ),
        pytest.param(dashboard.DCGM_GPU_UTIL, "70", "pod", "namespace", 0.7, id="percent-pod"),
        pytest.param(
            dashboard.DCGM_GPU_UTIL, "50", "exported_pod", "exported_namespace", 0.5,
            id="percent-exported-pod",
        ),
    ],
)  # fmt: skip
def test_gpu_busy_reads_dcgm_under_either_label_pair(
    tmp_path: Path, metric: str, value: str, pod_label: str, ns_label: str, expected: float
) -> None:
    series = {
        f'{metric}{{{ns_label}="ml",{pod_label}="digits-worker-{i}",gpu="0"}}': f"{value}x10"
        for i in range(2)
    }
    _expect(tmp_path, "GPU busy (dcgm-exporter)", series, {'{trainingjob="digits"}': expected})


def test_gpu_busy_prefers_the_profiling_ratio(tmp_path: Path) -> None:
    labels = 'namespace="ml",pod="digits-worker-0",gpu="0"'
    series = {
        f"{dashboard.DCGM_ENGINE_ACTIVE}{{{labels}}}": "0.4x10",
        f"{dashboard.DCGM_GPU_UTIL}{{{labels}}}": "95x10",
    }
    _expect(tmp_path, "GPU busy (dcgm-exporter)", series, {'{trainingjob="digits"}': 0.4})


def test_desired_replicas_come_from_the_operator(tmp_path: Path) -> None:
    series = {
        f'{op.DESIRED_REPLICAS_NAME}{{namespace="ml",trainingjob="digits"}}': "4x10",
        f'{op.DESIRED_REPLICAS_NAME}{{namespace="other",trainingjob="digits"}}': "9x10",
    }
    _expect(tmp_path, "Desired vs running workers", series, {'{trainingjob="digits"}': 4})


def test_job_loops_are_summed_over_operator_replicas_by_kind(tmp_path: Path) -> None:
    series = {
        f'{op.JOB_LOOPS_NAME}{{pod="trainscale-0",loop="reconcile"}}': "3x10",
        f'{op.JOB_LOOPS_NAME}{{pod="trainscale-1",loop="reconcile"}}': "2x10",
        f'{op.JOB_LOOPS_NAME}{{pod="trainscale-0",loop="autoscale"}}': "3x10",
    }
    expected = {'{loop="reconcile"}': 5, '{loop="autoscale"}': 3}
    _expect(tmp_path, "Job loops", series, expected)


def test_operator_memory_is_the_operators_and_its_limit(tmp_path: Path) -> None:
    """The resident memory of targets that export the operator's limit, not of every process
    (workers and exporters export it too); a limit of +Inf (none) is not drawn."""
    rss, limit = op.RESIDENT_MEMORY_NAME, op.MEMORY_LIMIT_NAME
    series = {
        f'{rss}{{job="trainscale-metrics",pod="trainscale-0"}}': "4e8x10",
        f'{limit}{{job="trainscale-metrics",pod="trainscale-0"}}': "1e9x10",
        f'{rss}{{job="trainscale-metrics",pod="trainscale-1"}}': "2e8x10",
        f'{limit}{{job="trainscale-metrics",pod="trainscale-1"}}': " ".join(["+Inf"] * 11),
        f'{rss}{{job="workers",pod="digits-worker-0"}}': "9e9x10",
    }
    _expect(tmp_path, "Operator memory", series, {
        f'{{__name__="{rss}",job="trainscale-metrics",pod="trainscale-0"}}': 4e8,
        f'{{__name__="{rss}",job="trainscale-metrics",pod="trainscale-1"}}': 2e8})  # fmt: skip
    _expect(tmp_path, "Operator memory", series, {
        f'{{__name__="{limit}",job="trainscale-metrics",pod="trainscale-0"}}': 1e9}, target=1)  # fmt: skip


def test_every_query_parses(tmp_path: Path) -> None:
    """promtool checks the syntax of every expression as a recording rule."""
    exprs = _exprs(dashboard.build_dashboard())
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": _concrete(e)}
                    for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    _promtool("check", "rules", str(path))
