"""The JSON Schema of the Helm chart's values (``charts/trainscale/values.schema.json``).

Why this module exists: helm checks ``--set`` and ``--values`` against the chart's
``values.schema.json`` before it renders anything, so a typo (``operater.replicas``), a wrong
type (``operator.replicas=abc``) or an unknown enum value (``image.pullPolicy=Sometimes``) fails
at ``helm install`` with the value's path instead of rendering a broken operator. The schema is
written here once, as data, and generated into the chart (``make chart-schema``); tests fail
when the committed file drifts from this module or when ``values.yaml`` does not validate
against it. Every value is typed; objects we own refuse unknown keys (where a typo is likely);
objects that are Kubernetes fields (resources, security contexts, affinity) are left open.
This is development tooling: the operator never imports it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

Schema = dict[str, Any]

# A Prometheus/prometheus-operator duration such as 30s, 1m30s.
_DURATION = r"^([0-9]+(ms|s|m|h|d|w|y))+$"
# A DNS-1123 subdomain (names of Kubernetes objects).
_DNS_1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


def obj(properties: dict[str, Schema]) -> Schema:
    """An object of ours: exactly these keys (a misspelt key is refused)."""
    return {"type": "object", "additionalProperties": False, "properties": properties}


def string(**bounds: Any) -> Schema:
    return {"type": "string", **bounds}


def integer(minimum: int | None = None, maximum: int | None = None) -> Schema:
    schema: Schema = {"type": "integer"}
    if minimum is not None:
        schema["minimum"] = minimum
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


BOOLEAN: Schema = {"type": "boolean"}
PORT = integer(1, 65535)
STRING_MAP: Schema = {"type": "object", "additionalProperties": {"type": "string"}}
# Kubernetes fields passed through as given (the apiserver validates them).
K8S_OBJECT: Schema = {"type": "object"}
K8S_LIST: Schema = {"type": "array", "items": {"type": "object"}}
DURATION = string(pattern=_DURATION)
# A Secret's name (empty: none) and a key in its data.
SECRET_NAME = string(pattern="^$|" + _DNS_1123_SUBDOMAIN, maxLength=253)
SECRET_KEY = string(pattern=r"^[-._a-zA-Z0-9]+$", maxLength=253)


def build_values_schema() -> Schema:
    """The chart's values schema (JSON Schema draft 7, which helm reads)."""
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "Values of the trainscale chart",
        **obj(
            {
                "global": {"type": "object"},  # helm passes it to every chart
                "nameOverride": string(maxLength=63),
                "fullnameOverride": string(maxLength=63),
                "commonLabels": STRING_MAP,
                "crds": obj({"enabled": BOOLEAN, "keep": BOOLEAN}),
                "image": obj(
                    {
                        "registry": string(),  # empty: the repository alone (Docker Hub)
                        "repository": string(minLength=1),
                        "tag": string(),
                        "pullPolicy": string(enum=["Always", "IfNotPresent", "Never"]),
                        "pullSecrets": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {"name": string(minLength=1)},
                            },
                        },
                    }
                ),
                "operator": obj(
                    {
                        "replicas": integer(0),
                        "watchNamespaces": {"type": "array", "items": string(minLength=1)},
                        "peering": obj(
                            {
                                "enabled": BOOLEAN,
                                "name": string(pattern=_DNS_1123_SUBDOMAIN, maxLength=253),
                            }
                        ),
                        "arbitration": obj(
                            {
                                "enabled": BOOLEAN,
                                "intervalSeconds": {"type": "number", "exclusiveMinimum": 0},
                                "preemption": {"enum": ["grow", "start"]},
                            }
                        ),
                        "clusterView": obj({"nodes": BOOLEAN, "pods": BOOLEAN}),
                        "extraArgs": {"type": "array", "items": string()},
                        "env": K8S_LIST,
                        "podAnnotations": STRING_MAP,
                        "podLabels": STRING_MAP,
                        "resources": K8S_OBJECT,
                        "podSecurityContext": K8S_OBJECT,
                        "securityContext": K8S_OBJECT,
                        "livenessProbe": obj(
                            {
                                "initialDelaySeconds": integer(0),
                                "periodSeconds": integer(1),
                                "timeoutSeconds": integer(1),
                                "failureThreshold": integer(1),
                            }
                        ),
                        "terminationGracePeriodSeconds": integer(0),
                        "priorityClassName": string(),
                        "nodeSelector": STRING_MAP,
                        "tolerations": K8S_LIST,
                        "affinity": K8S_OBJECT,
                        "topologySpreadConstraints": K8S_LIST,
                        "podDisruptionBudget": obj(
                            {
                                "enabled": BOOLEAN,
                                "minAvailable": {
                                    "type": ["integer", "string"],
                                    "minimum": 0,
                                    "pattern": r"^[0-9]+%?$",
                                },
                            }
                        ),
                    }
                ),
                "serviceAccount": obj(
                    {"create": BOOLEAN, "name": string(), "annotations": STRING_MAP}
                ),
                "rbac": obj({"create": BOOLEAN, "aggregateToDefaultRoles": BOOLEAN}),
                "prometheus": obj(
                    {
                        "url": string(pattern=r"^(https?://\S+)?$"),
                        "bearerToken": obj(
                            {
                                "serviceAccountToken": BOOLEAN,
                                "secretName": SECRET_NAME,
                                "secretKey": SECRET_KEY,
                            }
                        ),
                        "basicAuth": obj(
                            {
                                "secretName": SECRET_NAME,
                                "usernameKey": SECRET_KEY,
                                "passwordKey": SECRET_KEY,
                            }
                        ),
                        "tls": obj(
                            {
                                "caSecretName": SECRET_NAME,
                                "caKey": SECRET_KEY,
                                "clientCertSecretName": SECRET_NAME,
                                "insecureSkipVerify": BOOLEAN,
                            }
                        ),
                        "headers": {
                            "type": "object",
                            # RFC 9110 header names; values on one line (no header injection)
                            "propertyNames": {"pattern": r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$"},
                            "additionalProperties": string(pattern=r"^[^\r\n]*$"),
                        },
                    }
                ),
                "metrics": obj(
                    {
                        "port": PORT,
                        "service": obj(
                            {
                                "enabled": BOOLEAN,
                                "type": string(enum=["ClusterIP", "NodePort", "LoadBalancer"]),
                                "port": PORT,
                                "annotations": STRING_MAP,
                            }
                        ),
                        "serviceMonitor": obj(
                            {
                                "enabled": BOOLEAN,
                                "interval": DURATION,
                                "scrapeTimeout": DURATION,
                                "honorLabels": BOOLEAN,
                                "labels": STRING_MAP,
                            }
                        ),
                        "workerPodMonitor": obj(
                            {"enabled": BOOLEAN, "interval": DURATION, "labels": STRING_MAP}
                        ),
                    }
                ),
                "prometheusRule": obj(
                    {
                        "enabled": BOOLEAN,
                        "labels": STRING_MAP,
                        "alertLabels": STRING_MAP,
                        "scrapeJob": string(),
                        "degradedFor": DURATION,
                        "unschedulableFor": DURATION,
                        "metricsUnavailableFor": DURATION,
                        "arbitrationFailingFor": DURATION,
                        "operatorDownFor": DURATION,
                        "offPlanFor": DURATION,
                        "preemptionsPerHour": integer(1),
                        "memoryHighFor": DURATION,
                        "memoryHighShare": {
                            "type": "number",
                            "exclusiveMinimum": 0,
                            "maximum": 1,
                        },
                    }
                ),
                "health": obj({"port": PORT}),
                "grafana": obj(
                    {
                        "dashboard": obj(
                            {
                                "enabled": BOOLEAN,
                                "namespace": string(),
                                "labels": STRING_MAP,
                                "annotations": STRING_MAP,
                            }
                        )
                    }
                ),
            }
        ),
    }


def render_values_schema() -> str:
    """The schema as the committed ``values.schema.json`` text."""
    return json.dumps(build_values_schema(), indent=2) + "\n"


def run_generator(render: Callable[[], str], doc: str | None, argv: Sequence[str] | None) -> int:
    """Command line of a chart file generator: write ``render()`` to ``--output`` or stdout."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("-o", "--output", help="file to write instead of standard output")
    args = parser.parse_args(argv)
    text = render()
    if args.output in (None, "-"):
        sys.stdout.write(text)
    else:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m trainscale.testbed.chart_values [--output FILE]``."""
    return run_generator(render_values_schema, __doc__, argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
