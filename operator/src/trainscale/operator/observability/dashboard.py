"""The trainscale Grafana dashboard, declared as Python constants and rendered to JSON.

Why this module exists: a dashboard edited in Grafana's UI is a 2,000-line JSON diff nobody
reviews, and its PromQL silently rots when a metric is renamed. Here (as in Ray's
``dashboards/``) every panel is a small frozen dataclass whose queries are built from the
metric names the trainer (:mod:`trainscale.trainer.contract.metric_names`) and the operator
(:mod:`trainscale.operator.observability.metric_names`) define once, so a rename is a one-line, reviewed change.
:func:`build_dashboard` is pure (constants in, JSON-able dict out); the rendered file is
committed at ``charts/trainscale/dashboards/trainscale.json`` and a test fails when it drifts::

    trainscale dashboard -o charts/trainscale/dashboards/trainscale.json

Where the series come from:

* trainer metrics, scraped from each worker pod (``{job}-worker-{i}``, named in
  :mod:`trainscale.trainer.contract.naming`); the job is recovered from the ``pod`` label with
  ``label_replace`` into a ``trainingjob`` label;
* dcgm-exporter's GPU busy series, matched by ``pod``/``namespace`` or, behind a
  ServiceMonitor without ``honorLabels``, by ``exported_pod``/``exported_namespace`` —
  ``DCGM_FI_PROF_GR_ENGINE_ACTIVE`` (a ratio) preferred, ``DCGM_FI_DEV_GPU_UTIL`` (percent)
  as the fallback, as the autoscaler reads them (names in :mod:`trainscale.operator.api.dcgm`);
* the operator's own metrics, whose per-job series carry ``namespace`` and ``job`` labels
  (scraped with ``honorLabels: true``, as the chart's ServiceMonitor does).

It imports no prometheus_client, kopf or torch of its own: names only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trainscale.operator.api.dcgm import DCGM_ENGINE_ACTIVE, DCGM_GPU_UTIL
from trainscale.operator.observability import metric_names as op
from trainscale.trainer.contract import metric_names as tr
from trainscale.trainer.contract.naming import worker_pod_pattern

UID = "trainscale"
TITLE = "trainscale: elastic training"

# Labels of the operator's per-job series (trainscale.operator.observability.metric_names); a test checks them.
OPERATOR_NAMESPACE_LABEL = op.NAMESPACE_LABEL
OPERATOR_JOB_LABEL = op.JOB_LABEL

# Label the dashboard derives from worker pod names, so trainer and DCGM series group by job.
JOB_LABEL = "trainingjob"
_WORKER_POD_REGEX = worker_pod_pattern("(.+)")

# Grafana template variables.
_DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
_RATE = "$__rate_interval"


@dataclass(frozen=True)
class Target:
    """One PromQL query of a panel and its legend."""

    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    """One time-series panel.

    Attributes:
        title: Panel title.
        description: What the panel shows and how to read it (Grafana's hover text).
        unit: Grafana unit id (``short``, ``percentunit``, ``s``, ``reqps``, ...).
        targets: The queries.
        stack: Stack the series (parts of a whole, e.g. step-time breakdown).
        min: Lower bound of the y axis, if fixed.
        max: Upper bound of the y axis, if fixed.
        width: Width in Grafana's 24-column grid.
    """

    title: str
    description: str
    unit: str
    targets: tuple[Target, ...]
    stack: bool = False
    min: float | None = None
    max: float | None = None
    width: int = 12


@dataclass(frozen=True)
class Row:
    """A collapsible group of panels."""

    title: str
    panels: tuple[Panel, ...]


# -- PromQL building blocks (pure string builders) --------------------------------------------


def _pod_selector(pod_label: str = "pod", namespace_label: str = "namespace") -> str:
    return f'{namespace_label}="$namespace",{pod_label}=~"{worker_pod_pattern("($job)")}"'


def _by_job(expr: str, pod_label: str = "pod") -> str:
    """Attach a ``trainingjob`` label derived from the worker pod name."""
    return f'label_replace({expr}, "{JOB_LABEL}", "$1", "{pod_label}", "{_WORKER_POD_REGEX}")'


def _job_rate(metric: str) -> str:
    """Per-job sum of a trainer counter's rate."""
    return f"sum by ({JOB_LABEL}) ({_by_job(f'rate({metric}{{{_pod_selector()}}}[{_RATE}])')})"


def _gpu_busy(metric: str, scale: str = "") -> str:
    """Per-job mean of a DCGM series, under either pair of pod labels."""
    parts = []
    for pod_label, ns_label in (("pod", "namespace"), ("exported_pod", "exported_namespace")):
        series = f"{metric}{{{_pod_selector(pod_label, ns_label)}}}"
        parts.append(f"avg by ({JOB_LABEL}) ({_by_job(series, pod_label)}){scale}")
    return " or ".join(parts)


def _operator_job_selector() -> str:
    return f'{OPERATOR_NAMESPACE_LABEL}="$namespace",{OPERATOR_JOB_LABEL}=~"$job"'


def _quantile(q: float, histogram: str, *, per_job: bool = False) -> str:
    """The ``q`` quantile of a histogram: per job over worker pods, or over everything."""
    if per_job:
        rate = _by_job(f"rate({histogram}_bucket{{{_pod_selector()}}}[{_RATE}])")
        return f"histogram_quantile({q}, sum by ({JOB_LABEL}, le) ({rate}))"
    return f"histogram_quantile({q}, sum by (le) (rate({histogram}_bucket[{_RATE}])))"


_STEP_COUNT = f"{tr.STEP_SECONDS}_count"
_TRAINER_LEGEND = "{{" + JOB_LABEL + "}}"
_OPERATOR_LEGEND = "{{" + OPERATOR_JOB_LABEL + "}}"

# -- The panels -----------------------------------------------------------------------------

JOB_ROW = Row(
    title="Training jobs",
    panels=(
        Panel(
            title="Throughput",
            description=(
                "Training samples per second of each job: the sum over its workers of "
                f"rate({tr.SAMPLES_TOTAL}). This is what the autoscaler maximises."
            ),
            unit="short",
            targets=(Target(_job_rate(tr.SAMPLES_TOTAL), _TRAINER_LEGEND),),
            min=0,
        ),
        Panel(
            title="Throughput per worker process",
            description=(
                "Samples per second divided by the worker processes exporting metrics. A falling "
                "line as workers are added is the scaling efficiency dropping."
            ),
            unit="short",
            targets=(
                Target(
                    f"{_job_rate(tr.SAMPLES_TOTAL)} / count by ({JOB_LABEL}) "
                    f"({_by_job(f'{tr.SAMPLES_TOTAL}{{{_pod_selector()}}}')})",
                    _TRAINER_LEGEND,
                ),
            ),
            min=0,
        ),
        Panel(
            title="GPU busy (dcgm-exporter)",
            description=(
                f"Mean GPU busy fraction of each job's workers: {DCGM_ENGINE_ACTIVE} when the "
                f"profiling metrics are enabled, else {DCGM_GPU_UTIL} / 100."
            ),
            unit="percentunit",
            targets=(
                Target(
                    _gpu_busy(DCGM_ENGINE_ACTIVE) + " or " + _gpu_busy(DCGM_GPU_UTIL, " / 100"),
                    _TRAINER_LEGEND,
                ),
            ),
            min=0,
            max=1,
        ),
        Panel(
            title="GPU utilization (trainer, NVML)",
            description="The trainer's own NVML reading, for clusters without dcgm-exporter.",
            unit="percentunit",
            targets=(
                Target(
                    f"avg by ({JOB_LABEL}) "
                    f"({_by_job(f'{tr.GPU_UTILIZATION_RATIO}{{{_pod_selector()}}}')})",
                    _TRAINER_LEGEND,
                ),
            ),
            min=0,
            max=1,
        ),
        Panel(
            title="Step time breakdown",
            description=(
                "Seconds per optimizer step spent computing, blocked on communication and "
                "loading data. Communication growing with the worker count is what limits "
                "scaling."
            ),
            unit="s",
            stack=True,
            targets=tuple(
                Target(
                    f"{_job_rate(metric)} / {_job_rate(_STEP_COUNT)}", f"{part} {_TRAINER_LEGEND}"
                )
                for part, metric in (
                    ("compute", tr.COMPUTE_SECONDS_TOTAL),
                    ("communication", tr.COMMUNICATION_SECONDS_TOTAL),
                    ("data", tr.DATA_SECONDS_TOTAL),
                )
            ),
            min=0,
        ),
        Panel(
            title="Step time p50 / p95",
            description=f"Quantiles of {tr.STEP_SECONDS} over each job's workers.",
            unit="s",
            targets=tuple(
                Target(
                    _quantile(q, tr.STEP_SECONDS, per_job=True),
                    f"p{round(q * 100)} {_TRAINER_LEGEND}",
                )
                for q in (0.5, 0.95)
            ),
            min=0,
        ),
        Panel(
            title="World size",
            description="Worker processes in each job's current torchrun world.",
            unit="short",
            targets=(
                Target(
                    f"max by ({JOB_LABEL}) ({_by_job(f'{tr.WORLD_SIZE}{{{_pod_selector()}}}')})",
                    _TRAINER_LEGEND,
                ),
            ),
            min=0,
        ),
        Panel(
            title="Loss",
            description="Training loss of the last step, averaged over the global batch.",
            unit="short",
            targets=(
                Target(
                    f"avg by ({JOB_LABEL}) ({_by_job(f'{tr.LOSS}{{{_pod_selector()}}}')})",
                    _TRAINER_LEGEND,
                ),
            ),
        ),
        Panel(
            title="Progress",
            description="Optimizer steps completed and the newest checkpoint's step.",
            unit="short",
            targets=(
                Target(
                    f"max by ({JOB_LABEL}) ({_by_job(f'{tr.GLOBAL_STEP}{{{_pod_selector()}}}')})",
                    f"step {_TRAINER_LEGEND}",
                ),
                Target(
                    f"max by ({JOB_LABEL}) "
                    f"({_by_job(f'{tr.CHECKPOINT_STEP}{{{_pod_selector()}}}')})",
                    f"checkpoint {_TRAINER_LEGEND}",
                ),
            ),
            min=0,
        ),
        Panel(
            title="Time left",
            description="The samples the trainer has left until its configured epochs or "
            "step limit, over the job's throughput now: how long it will still train at this "
            "size. The autoscaler's restart payback horizon (status.autoscaling.timeLeftSeconds"
            " is its figure at each decision). Empty for a trainer that does not say.",
            unit="s",
            targets=(
                Target(
                    f"min by ({JOB_LABEL}) "
                    f"({_by_job(f'{tr.REMAINING_SAMPLES}{{{_pod_selector()}}} >= 0')})"
                    f" / ({_job_rate(tr.SAMPLES_TOTAL)} > 0)",
                    _TRAINER_LEGEND,
                ),
            ),
            min=0,
        ),
        Panel(
            title="Restarts and checkpoint writes",
            description=(
                "Restarts of the torchrun agents (one per scale-down or failure) and the p95 "
                "time to write a checkpoint (rank 0)."
            ),
            unit="short",
            targets=(
                Target(
                    f"max by ({JOB_LABEL}) "
                    f"({_by_job(f'{tr.AGENT_RESTARTS}{{{_pod_selector()}}}')})",
                    f"agent restarts {_TRAINER_LEGEND}",
                ),
                Target(
                    _quantile(0.95, tr.CHECKPOINT_SAVE_SECONDS, per_job=True),
                    f"checkpoint p95 seconds {_TRAINER_LEGEND}",
                ),
            ),
            min=0,
        ),
    ),
)


def _resize_phase(phase: str) -> str:
    """Per-job seconds of one phase of the latest resize (the slowest pod: all wait for it)."""
    selector = f'{_pod_selector()},{tr.RESIZE_PHASE_LABEL}="{phase}"'
    return f"max by ({JOB_LABEL}) ({_by_job(f'{tr.RESIZE_PHASE_SECONDS}{{{selector}}}')})"


RESIZE_ROW = Row(
    title="Resizes",
    panels=(
        Panel(
            title="Where resizes spend their time",
            description=(
                "Seconds each phase of the latest resize (or start) took, stacked in order: "
                "stop (the old world's last step -> checkpoint written, processes gone), "
                "rendezvous (waiting for every node of the new world), process start, "
                "process group init, setup (model, DDP), checkpoint restore, first step at "
                "the new size. Each worker records them at its first step; a job shows its "
                "slowest pod (a pod that just joined waits through the old world's stop in its "
                "rendezvous, so on a scale-up the stack counts that stop twice). The stack "
                "changes at each resize; its height is about the pause, from the last step "
                "before to the first step after (a new pod's boot before it joins is not in "
                "it: benchmarks/realloop_resize.py measures it)."
            ),
            unit="s",
            stack=True,
            targets=tuple(
                Target(_resize_phase(phase), f"{phase} {_TRAINER_LEGEND}")
                for phase in tr.RESIZE_PHASES
            ),
            min=0,
            width=16,
        ),
        Panel(
            title="Steps lost per resize",
            description=(
                "Optimizer steps the latest resize trains again: the previous world's last "
                "step minus the step the new world resumed from (0 when every stop writes a "
                "checkpoint). Only pods that were in the previous world know it."
            ),
            unit="short",
            targets=(
                Target(
                    f"max by ({JOB_LABEL}) "
                    f"({_by_job(f'{tr.RESIZE_STEPS_LOST}{{{_pod_selector()}}}')})",
                    _TRAINER_LEGEND,
                ),
            ),
            min=0,
            width=8,
        ),
    ),
)

AUTOSCALER_ROW = Row(
    title="Autoscaler",
    panels=(
        Panel(
            title="Desired vs running workers",
            description=(
                "spec.replicas as the operator last saw it (written by the autoscaler when "
                "autoscaling is enabled) against the worker pods that exist, the workers "
                "cluster arbitration grants the job (its ceiling; 0 while Queued), and the "
                "workers running off the node it planned for them."
            ),
            unit="short",
            targets=(
                Target(
                    f"max by ({OPERATOR_JOB_LABEL}) "
                    f"({op.DESIRED_REPLICAS_NAME}{{{_operator_job_selector()}}})",
                    f"desired {_OPERATOR_LEGEND}",
                ),
                Target(
                    f"max by ({OPERATOR_JOB_LABEL}) "
                    f"({op.MANAGED_PODS_NAME}{{{_operator_job_selector()}}})",
                    f"pods {_OPERATOR_LEGEND}",
                ),
                Target(
                    f"max by ({OPERATOR_JOB_LABEL}) "
                    f"({op.ARBITRATION_CEILING_NAME}{{{_operator_job_selector()}}})",
                    f"granted {_OPERATOR_LEGEND}",
                ),
                Target(
                    f"max by ({OPERATOR_JOB_LABEL}) "
                    f"({op.WORKERS_OFF_PLAN_NAME}{{{_operator_job_selector()}}})",
                    f"off plan {_OPERATOR_LEGEND}",
                ),
            ),
            min=0,
        ),
        Panel(
            title="Preemptions",
            description=(
                "Running jobs cluster arbitration stopped for a job of higher priority "
                "(PriorityClass), per job, over the rate window; the job's Preempted Event "
                "and status.arbitration.reason name which."
            ),
            unit="short",
            stack=True,
            targets=(
                Target(
                    f"max by ({OPERATOR_JOB_LABEL}) (increase("
                    f"{op.PREEMPTIONS_NAME}{{{_operator_job_selector()}}}[{_RATE}]))",
                    _OPERATOR_LEGEND,
                ),
            ),
            min=0,
        ),
        Panel(
            title="Cost per hour",
            description="replicas x GPUs per replica x costPerGpuHour of each job.",
            unit="currencyUSD",
            targets=(
                Target(
                    f"max by ({OPERATOR_JOB_LABEL}) "
                    f"({op.JOB_COST_PER_HOUR_NAME}{{{_operator_job_selector()}}})",
                    _OPERATOR_LEGEND,
                ),
            ),
            min=0,
        ),
        Panel(
            title="Scaling decisions",
            description="Autoscaler decisions per second, by direction and reason class.",
            unit="ops",
            stack=True,
            targets=(
                Target(
                    f"sum by (direction, reason) (rate({op.SCALING_DECISIONS_NAME}[{_RATE}]))",
                    "{{direction}} ({{reason}})",
                ),
            ),
            min=0,
        ),
        Panel(
            title="TrainingJobs by phase",
            description="Jobs the operator manages, by phase (max over operator replicas).",
            unit="short",
            stack=True,
            targets=(Target(f"max by (phase) ({op.MANAGED_JOBS_NAME})", "{{phase}}"),),
            min=0,
        ),
    ),
)

OPERATOR_ROW = Row(
    title="Operator",
    panels=(
        Panel(
            title="Reconciles",
            description="Reconcile passes per second, by outcome (ok, invalid, error).",
            unit="ops",
            stack=True,
            targets=(
                Target(
                    f"sum by (outcome) (rate({op.RECONCILE_TOTAL_NAME}[{_RATE}]))",
                    "{{outcome}}",
                ),
            ),
            min=0,
            width=8,
        ),
        Panel(
            title="Reconcile latency",
            description="p50 and p95 wall time of one reconcile pass.",
            unit="s",
            targets=tuple(
                Target(_quantile(q, op.RECONCILE_DURATION_NAME), f"p{round(q * 100)}")
                for q in (0.5, 0.95)
            ),
            min=0,
            width=8,
        ),
        Panel(
            title="Prometheus queries",
            description=(
                "Failed autoscaler queries per second by kind (timeout, http, parse, empty), and "
                "the p95 query latency."
            ),
            unit="short",
            targets=(
                Target(
                    f"sum by (kind) (rate({op.PROMETHEUS_QUERY_ERRORS_NAME}[{_RATE}]))",
                    "errors/s {{kind}}",
                ),
                Target(
                    _quantile(0.95, op.PROMETHEUS_QUERY_DURATION_NAME),
                    "p95 latency seconds",
                ),
            ),
            min=0,
            width=8,
        ),
        Panel(
            title="Cluster arbitration",
            description=(
                "Arbitration passes per second by outcome (ok, error: jobs keep their last "
                "shares, the operator log says why), and the p95 wall time of one pass."
            ),
            unit="short",
            targets=(
                Target(
                    f"sum by (outcome) (rate({op.ARBITRATION_PASSES_NAME}[{_RATE}]))",
                    "passes/s {{outcome}}",
                ),
                Target(
                    _quantile(0.95, op.ARBITRATION_PASS_DURATION_NAME),
                    "p95 pass seconds",
                ),
            ),
            min=0,
            width=8,
        ),
        Panel(
            title="Job loops",
            description=(
                "Live per-job loops by kind, over every operator replica: one reconcile and one "
                "autoscale loop per TrainingJob; more is a loop that outlived its job. And the "
                "loops kopf had to cancel in the last hour (they ignored its stop flag)."
            ),
            unit="short",
            targets=(
                Target(f"sum by (loop) ({op.JOB_LOOPS_NAME})", "{{loop}} loops"),
                Target(
                    f"sum by (loop) (increase({op.JOB_LOOPS_CANCELLED_NAME}[1h]))",
                    "cancelled in 1 h {{loop}}",
                ),
            ),
            min=0,
            width=8,
        ),
        Panel(
            title="Watch relistings",
            description=(
                "Times in the last hour the watch of the operator's pods and Services listed "
                "them afresh (a 410 Gone after an apiserver restart, or a failed connection): "
                "each wakes every job's reconcile loop, as events may have been lost, so a "
                "steady rate costs a pass a job each time and says the watch keeps breaking."
            ),
            unit="short",
            targets=(Target(f"sum(increase({op.WATCH_RELISTS_NAME}[1h]))", "relistings in 1 h"),),
            min=0,
            width=8,
        ),
        Panel(
            title="Operator memory",
            description=(
                "Resident memory of each operator replica and its container's memory limit "
                "(none drawn without a limit). Over the limit the kernel kills the operator; "
                "it needs about 80 MiB plus 0.4 MiB a job at the peak of a burst of new jobs "
                "(docs/install.md, Sizing the operator; alert TrainScaleOperatorMemoryHigh)."
            ),
            unit="bytes",
            targets=(
                # Only the operator exports its limit: "and" keeps the resident memory of the
                # targets that do (every Python or Go process exports the other).
                Target(f"{op.RESIDENT_MEMORY_NAME} and {op.MEMORY_LIMIT_NAME}", "resident {{pod}}"),
                Target(f"{op.MEMORY_LIMIT_NAME} < +Inf", "limit {{pod}}"),
            ),
            min=0,
            width=8,
        ),
    ),
)

ROWS: tuple[Row, ...] = (JOB_ROW, RESIZE_ROW, AUTOSCALER_ROW, OPERATOR_ROW)


# -- Rendering ------------------------------------------------------------------------------


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "unit": panel.unit,
        "custom": {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 20 if panel.stack else 10,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if panel.stack else "none", "group": "A"},
        },
    }
    if panel.min is not None:
        defaults["min"] = panel.min
    if panel.max is not None:
        defaults["max"] = panel.max
    return {
        "id": panel_id,
        "type": "timeseries",
        "title": panel.title,
        "description": panel.description,
        "datasource": _DATASOURCE,
        "gridPos": {"h": 8, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": [
            {
                "datasource": _DATASOURCE,
                "expr": target.expr,
                "legendFormat": target.legend,
                "refId": chr(ord("A") + i),
            }
            for i, target in enumerate(panel.targets)
        ],
    }


def _templating() -> dict[str, Any]:
    def query_var(name: str, label: str, query: str, multi: bool) -> dict[str, Any]:
        return {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": _DATASOURCE,
            "query": {"query": query, "refId": f"{name}-variable"},
            "definition": query,
            "refresh": 2,
            "sort": 1,
            "multi": multi,
            "includeAll": multi,
            **({"allValue": ".+"} if multi else {}),
        }

    return {
        "list": [
            {
                "name": "datasource",
                "label": "Prometheus",
                "type": "datasource",
                "query": "prometheus",
                "refresh": 1,
            },
            query_var(
                "namespace",
                "Namespace",
                f"label_values({op.DESIRED_REPLICAS_NAME}, {OPERATOR_NAMESPACE_LABEL})",
                multi=False,
            ),
            query_var(
                "job",
                "TrainingJob",
                f'label_values({op.DESIRED_REPLICAS_NAME}{{{OPERATOR_NAMESPACE_LABEL}="$namespace"}}, '
                f"{OPERATOR_JOB_LABEL})",
                multi=True,
            ),
        ]
    }


def build_dashboard(rows: Sequence[Row] = ROWS) -> dict[str, Any]:
    """Return the Grafana dashboard model (a JSON-able dict) of ``rows``.

    Panels are laid out left to right in Grafana's 24-column grid, 8 units high, each row
    starting on a new line under a row header. Panel ids are assigned in order from 1.
    """
    panels: list[dict[str, Any]] = []
    next_id = 1
    y = 0
    for row in rows:
        panels.append(
            {
                "id": next_id,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        next_id += 1
        y += 1
        x = 0
        for panel in row.panels:
            if x + panel.width > 24:
                x, y = 0, y + 8
            panels.append(_panel_json(panel, next_id, x, y))
            next_id += 1
            x += panel.width
        y += 8
    return {
        "uid": UID,
        "title": TITLE,
        "description": (
            "Throughput, GPU busy, step-time breakdown, where resizes spend their time and "
            "autoscaler decisions of trainscale "
            "TrainingJobs. Generated by trainscale.operator.observability.dashboard; do not edit by hand."
        ),
        "tags": ["trainscale", "pytorch", "gpu", "autoscaling"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "timezone": "browser",
        "templating": _templating(),
        "annotations": {"list": []},
        "links": [],
        "panels": panels,
    }


def render_dashboard_json(rows: Sequence[Row] = ROWS) -> str:
    """Return the dashboard as the JSON text committed in the chart (stable, newline-ended)."""
    return json.dumps(build_dashboard(rows), indent=2, ensure_ascii=False) + "\n"
