"""The generated CRD: committed file in sync, structural schema, API surface.

Covers: drift between the models and manifests/crd; names, scale and status subresources;
printer columns; CEL rules; descriptions for `kubectl explain`; no keyword a structural
schema forbids; `trainscale crd` prints the same document.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from trainscale.operator.api.crd import build_crd, render_crd_yaml

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "manifests" / "crd" / "trainingjobs.trainscale.dev.yaml"


def _walk(node: Any, path: str = "") -> Any:
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


def test_committed_crd_matches_the_models() -> None:
    assert CRD_FILE.read_text() == render_crd_yaml(), "run `make crd` and commit the result"


def test_cli_prints_the_crd() -> None:
    out = subprocess.run(
        [str(Path(sys.executable).parent / "trainscale"), "crd"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert out == render_crd_yaml()


def test_names_and_subresources() -> None:
    crd = build_crd()
    assert crd["metadata"]["name"] == "trainingjobs.trainscale.dev"
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == (
        "TrainingJob",
        "trainingjobs",
        ["tj"],
    )
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1"
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == [
        "Replicas",
        "Ready",
        "Desired",
        "Share",
        "Min",
        "Max",
        "GPU-Util",
        "Throughput",
        "Efficiency",
        "Time-Left(s)",
        "Phase",
        "Age",
    ]


def test_cel_rules_guard_the_replica_bounds() -> None:
    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules = {r["rule"] for r in spec["x-kubernetes-validations"]}
    assert "self.minReplicas >= 1" in rules
    assert "self.minReplicas <= self.replicas && self.replicas <= self.maxReplicas" in rules
    assert spec["required"] == ["maxReplicas", "template"]


def test_schema_is_structural() -> None:
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert "$ref" not in node and "anyOf" not in node and "title" not in node, path
        if "properties" in node:
            assert "additionalProperties" not in node, path
            assert node.get("type") == "object", path
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True and "minimum" in node, path


def test_every_spec_field_is_described_for_kubectl_explain() -> None:
    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for section in ("autoscaling", "checkpoint", "rendezvous"):
        props = spec["properties"][section]["properties"]
        missing = [name for name, node in props.items() if not node.get("description")]
        assert not missing, f"{section}: {missing}"
    assert spec["properties"]["autoscaling"]["properties"]["objective"]["enum"] == [
        "efficiency", "budget", "utilization",
    ]  # fmt: skip


def test_crd_file_is_one_yaml_document() -> None:
    docs = list(yaml.safe_load_all(CRD_FILE.read_text()))
    assert len(docs) == 1 and docs[0]["kind"] == "CustomResourceDefinition"


def test_the_name_rule_is_the_operators_own_bound() -> None:
    """The CEL bound on metadata.name is the longest name whose children's names fit 63."""
    from trainscale.operator.api import MAX_JOB_NAME_LENGTH
    from trainscale.operator.api.models import MAX_REPLICAS_LIMIT
    from trainscale.operator.controller.builders import (
        InvalidJobError,
        rendezvous_name,
        validate_job_name,
    )
    from trainscale.trainer.contract.naming import worker_pod_name

    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    (rule,) = schema["x-kubernetes-validations"]
    assert rule["rule"] == f"size(self.metadata.name) <= {MAX_JOB_NAME_LENGTH}"
    assert "metadata.name" in rule["message"]
    longest = "j" * MAX_JOB_NAME_LENGTH
    validate_job_name(longest)
    assert len(worker_pod_name(longest, MAX_REPLICAS_LIMIT - 1)) <= 63
    assert len(rendezvous_name(longest)) <= 63
    with pytest.raises(InvalidJobError, match=r"metadata\.name"):
        validate_job_name(longest + "j")
