"""Generates the TrainingJob CustomResourceDefinition from the API models.

Why this module exists: the CRD must say exactly what :mod:`trainscale.operator.api` says —
types, bounds, defaults, enums, descriptions and CEL rules — so it is derived, never written
by hand. Pydantic's JSON Schema is turned into a Kubernetes *structural* schema: ``$ref``
inlined, ``anyOf [T, null]`` collapsed to ``T``, titles dropped, and only the keywords the
apiserver accepts kept. ``trainscale crd`` writes the result to
``manifests/crd/trainingjobs.trainscale.dev.yaml``; a test fails when that file drifts.
"""

from __future__ import annotations

import copy
from typing import Any

import pydantic
import yaml

from trainscale.operator import api

# JSON-Schema keywords a structural CRD schema may carry (others are dropped).
_KEPT_KEYWORDS = frozenset(
    {
        "type",
        "format",
        "description",
        "default",
        "enum",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minLength",
        "maxLength",
        "pattern",
        "minItems",
        "maxItems",
        "items",
        "properties",
        "required",
        "additionalProperties",
        "nullable",
        "x-kubernetes-preserve-unknown-fields",
        "x-kubernetes-validations",
        "x-kubernetes-list-type",
        "x-kubernetes-list-map-keys",
        "x-kubernetes-int-or-string",
    }
)

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {
        "name": "Replicas",
        "type": "integer",
        "jsonPath": ".status.replicas",
        "description": "Worker pods that exist",
    },
    {
        "name": "Ready",
        "type": "integer",
        "jsonPath": ".status.readyReplicas",
        "description": "Worker pods that are Ready",
    },
    {
        "name": "Desired",
        "type": "integer",
        "jsonPath": ".spec.replicas",
        "description": "Desired workers (spec.replicas)",
    },
    {
        "name": "Share",
        "type": "integer",
        "jsonPath": ".status.arbitration.ceiling",
        "description": "Most workers cluster arbitration allows the job now",
    },
    {"name": "Min", "type": "integer", "jsonPath": ".spec.minReplicas", "priority": 0},
    {"name": "Max", "type": "integer", "jsonPath": ".spec.maxReplicas", "priority": 0},
    {
        "name": "GPU-Util",
        "type": "number",
        "jsonPath": ".status.gpuUtilization",
        "description": "Mean GPU busy fraction (0..1)",
    },
    {
        "name": "Throughput",
        "type": "number",
        "jsonPath": ".status.throughput",
        "description": "Samples per second",
    },
    {
        "name": "Efficiency",
        "type": "number",
        "jsonPath": ".status.autoscaling.efficiency",
        "description": "Scaling efficiency at the current count (0..1), from the autoscaler",
        "priority": 1,
    },
    {
        "name": "Time-Left(s)",
        "type": "integer",
        "jsonPath": ".status.autoscaling.timeLeftSeconds",
        "description": "Seconds of training left at the current throughput, where the "
        "trainer says how many samples it has left (empty otherwise)",
        "priority": 1,
    },
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """Inline ``$ref``s and simplify pydantic's JSON Schema into structural OpenAPI."""
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").rsplit("/", 1)[-1]])
        target.update({k: v for k, v in node.items() if k in ("description", "default")})
        return _resolve(target, defs)
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express anyOf with {len(options)} options structurally")
        merged = dict(_resolve(options[0], defs))
        merged.update({k: v for k, v in node.items() if k in ("description", "default")})
        node = {**node, **merged}
        if node.get("default", ...) is None:
            del node["default"]
    if "const" in node:
        node["enum"] = [node.pop("const")]
    # JSON Schema 2020-12 writes exclusive bounds as numbers; OpenAPI 3.0 (Kubernetes) as a
    # boolean beside minimum/maximum.
    for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(exclusive), int | float) and not isinstance(node[exclusive], bool):
            node[bound] = node.pop(exclusive)
            node[exclusive] = True
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key not in _KEPT_KEYWORDS:
            continue
        if key == "additionalProperties" and value is False:
            # extra="forbid": structural schemas prune unknown fields instead.
            continue
        if key == "properties":
            out[key] = {name: _resolve(sub, defs) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            resolved = _resolve(value, defs)
            if key == "additionalProperties" and resolved == {}:
                continue
            out[key] = resolved
        else:
            out[key] = copy.deepcopy(value)
    if (
        out.get("type") == "object"
        and "properties" not in out
        and "additionalProperties" not in out
    ):
        out["x-kubernetes-preserve-unknown-fields"] = True
    if out.get("default") == {} or out.get("default") == []:
        # Object/list defaults come from the nested field defaults instead.
        del out["default"]
    return out


def build_openapi_schema(model: type[pydantic.BaseModel]) -> dict[str, Any]:
    """Return the structural OpenAPI v3 schema of a pydantic model (by alias, inlined)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    result: dict[str, Any] = _resolve(raw, defs)
    return result


def build_name_validations() -> list[dict[str, Any]]:
    """CEL rules on ``metadata.name``, so ``kubectl apply`` refuses a name the operator cannot use.

    The job's children are named ``{name}-rdzv`` and ``{name}-worker-{index}`` and must be
    DNS-1035 labels (at most 63 characters), hence :data:`api.MAX_JOB_NAME_LENGTH`.
    """
    most = api.MAX_JOB_NAME_LENGTH
    return [
        {
            "rule": f"size(self.metadata.name) <= {most}",
            "message": (
                f"metadata.name must be at most {most} characters: the job's Service and pods "
                "are named {name}-rdzv and {name}-worker-{index}, at most 63 characters"
            ),
            "reason": "FieldValueInvalid",
        },
    ]


def build_crd() -> dict[str, Any]:
    """Return the TrainingJob CustomResourceDefinition as a dict."""
    spec_schema = build_openapi_schema(api.TrainingJobSpec)
    status_schema = build_openapi_schema(api.TrainingJobStatus)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": api.CRD_NAME,
            "labels": {
                "app.kubernetes.io/name": "trainscale",
                "app.kubernetes.io/part-of": "trainscale",
            },
        },
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": list(api.SHORT_NAMES),
                "categories": ["all", "trainscale"],
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": (
                                "An elastic data-parallel PyTorch training job whose worker count "
                                "trainscale resizes to the throughput its cost justifies."
                            ),
                            "required": ["spec"],
                            "x-kubernetes-validations": build_name_validations(),
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                }
            ],
        },
    }


def render_crd_yaml() -> str:
    """Return the CRD as the YAML document committed under manifests/crd/."""
    header = (
        "# Generated by `trainscale crd` from trainscale.operator.api. Do not edit by hand:\n"
        "# change the models and run `make crd`.\n"
    )
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=100)
