"""The Helm chart's README (``charts/trainscale/README.md``), generated from ``values.yaml``.

Why this module exists: ``helm show readme`` and Artifact Hub show a chart's README.md, and the
one place each value is explained is its ``# --`` comment in ``values.yaml`` (helm-docs style).
This writes the README from those comments, the defaults, the types of the values schema
(:mod:`trainscale.testbed.chart_values`) and ``Chart.yaml``, so the three can never disagree
(``make chart-readme``); a test fails when the committed README drifts from them. Development
tooling: the operator never imports it.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from trainscale.testbed.chart_values import build_values_schema, run_generator
from trainscale.testbed.cluster import REPO_ROOT

CHART_DIR = REPO_ROOT / "charts" / "trainscale"
DOC_MARK = "# --"
_KEY_LINE = re.compile(r"^( *)([A-Za-z0-9_]+):")


@dataclass(frozen=True)
class Value:
    """One documented value: its dotted path, type, default (JSON) and description."""

    path: str
    type: str
    default: str
    description: str


def documented_keys(values_text: str) -> Iterator[tuple[str, str]]:
    """(dotted key path, description) of every key whose comment block has a ``# --`` line,
    in file order. The description is that line and the comment lines after it, joined."""
    stack: list[str] = []
    block: list[str] = []
    for line in values_text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            block.append(stripped)
            continue
        match = _KEY_LINE.match(line)
        if match:
            depth = len(match.group(1)) // 2
            stack = [*stack[:depth], match.group(2)]
            marks = [i for i, text in enumerate(block) if text.startswith(DOC_MARK)]
            if marks:
                lines = [block[marks[-1]].removeprefix(DOC_MARK), *block[marks[-1] + 1 :]]
                text = " ".join(part.lstrip("#").strip() for part in lines)
                yield ".".join(stack), text.strip()
        block = []


def _lookup(tree: Mapping[str, Any], path: str) -> Any:
    node: Any = tree
    for key in path.split("."):
        node = node[key]
    return node


def _schema_type(schema: Mapping[str, Any], path: str, default: Any) -> str:
    node: Mapping[str, Any] = schema
    for key in path.split("."):
        node = (node.get("properties") or {}).get(key) or {}
    declared = node.get("type")
    if isinstance(declared, list):
        return " or ".join(declared)
    if declared:
        return str(declared)
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array"}.get(
        type(default), "object"
    )


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def collect_values(values_text: str) -> list[Value]:
    """Every documented value of ``values_text`` (the text of values.yaml)."""
    tree = yaml.safe_load(values_text)
    schema = build_values_schema()
    found = []
    for path, description in documented_keys(values_text):
        default = _lookup(tree, path)
        found.append(
            Value(path, _schema_type(schema, path, default), json.dumps(default), description)
        )
    return found


_INTRO = """\
# {name}

{description}

**Chart version** {version} · **App version** {app_version} · **Kubernetes** `{kube_version}`

<!-- Generated from values.yaml and Chart.yaml by `make chart-readme`
     (python -m trainscale.testbed.chart_readme); do not edit. -->

## Install

```sh
helm install trainscale charts/trainscale --namespace trainscale-system --create-namespace
```

Without Helm: `kubectl apply --server-side -f manifests/install.yaml` (this chart rendered with
its defaults). `helm install` checks every value against `values.schema.json` first, so a
misspelt key or a wrong type fails with the value's path.

The chart installs the TrainingJob CRD, the operator Deployment, its ServiceAccount and
least-privilege RBAC, a metrics Service and, by default, two ClusterRoles aggregated into the
built-in `view`, `edit` and `admin` roles so that namespace users manage TrainingJobs without
cluster-admin; optionally a ServiceMonitor, a worker PodMonitor, a PrometheusRule with
alerts, a PodDisruptionBudget and a Grafana dashboard.

Documentation: [install]({home}/blob/main/docs/install.md),
[security model]({home}/blob/main/docs/security.md),
[Prometheus access]({home}/blob/main/docs/prometheus-access.md).

## Values

| Key | Type | Default | Description |
| --- | --- | --- | --- |
"""


def render_readme(values_text: str, chart: Mapping[str, Any]) -> str:
    """The README for the chart with this values.yaml text and parsed Chart.yaml."""
    head = _INTRO.format(
        name=chart["name"],
        description=" ".join(str(chart["description"]).split()),
        version=chart["version"],
        app_version=chart["appVersion"],
        kube_version=chart.get("kubeVersion", "any"),
        home=chart["home"],
    )
    rows = [
        f"| `{v.path}` | {v.type} | `{_cell(v.default)}` | {_cell(v.description)} |"
        for v in collect_values(values_text)
    ]
    return head + "\n".join(rows) + "\n"


def render_chart_readme(chart_dir: Path = CHART_DIR) -> str:
    """The README of the chart in ``chart_dir`` as it should be committed."""
    values_text = (chart_dir / "values.yaml").read_text(encoding="utf-8")
    chart = yaml.safe_load((chart_dir / "Chart.yaml").read_text(encoding="utf-8"))
    return render_readme(values_text, chart)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m trainscale.testbed.chart_readme [--output FILE]``."""
    return run_generator(render_chart_readme, __doc__, argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
