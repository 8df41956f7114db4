"""The TrainingJob models: what they accept, what they reject, and how they say why.

Covers: camelCase parsing and defaults; bounds on replicas; the budget objective's
required ceiling; template validation; GPU counting; error messages that name the field.
"""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from trainscale.operator.api import Objective, TrainingJobSpec
from trainscale.operator.controller.reconcile import describe_validation_errors


def test_parses_camel_case_and_fills_defaults(spec_dict: dict[str, Any]) -> None:
    spec = TrainingJobSpec.model_validate(spec_dict)
    assert (spec.replicas, spec.min_replicas, spec.max_replicas) == (2, 1, 4)
    assert spec.autoscaling.enabled is False
    assert spec.autoscaling.objective is Objective.EFFICIENCY
    assert spec.checkpoint.path == "/checkpoints"
    assert spec.rendezvous.port == 29400
    assert spec.gpus_per_replica == 2


def test_round_trips_by_alias(spec_dict: dict[str, Any]) -> None:
    spec = TrainingJobSpec.model_validate(spec_dict)
    again = TrainingJobSpec.model_validate(spec.model_dump(by_alias=True))
    assert again == spec
    assert "minReplicas" in spec.model_dump(by_alias=True)


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        pytest.param({"replicas": 5}, "replicas (5) must be within", id="replicas-above-max"),
        pytest.param({"minReplicas": 0}, "spec.minReplicas", id="min-zero"),
        pytest.param({"minReplicas": 5, "replicas": 5}, "minReplicas (5) must be <= maxReplicas", id="min-above-max"),
        pytest.param({"autoscaling": {"minEfficiency": 1.5}}, "spec.autoscaling.minEfficiency", id="efficiency-above-1"),
        pytest.param({"autoscaling": {"objective": "cheapest"}}, "spec.autoscaling.objective", id="unknown-objective"),
        pytest.param({"autoscaling": {"objective": "budget"}}, "maxCostPerHour is required", id="budget-without-ceiling"),
        pytest.param({"autoscaling": {"intervalSeconds": 0}}, "spec.autoscaling.intervalSeconds", id="interval-zero"),
        pytest.param({"checkpoint": {"path": "relative"}}, "spec.checkpoint.path", id="relative-checkpoint-path"),
        pytest.param({"replica": 3}, "spec.replica", id="typo-field"),
    ],
)  # fmt: skip
def test_rejects_bad_specs_naming_the_field(
    spec_dict: dict[str, Any], patch: dict[str, Any], field: str
) -> None:
    spec_dict.update(patch)
    with pytest.raises(pydantic.ValidationError) as info:
        TrainingJobSpec.model_validate(spec_dict)
    assert field in describe_validation_errors(info.value.errors())


def test_error_message_quotes_the_bad_value(spec_dict: dict[str, Any]) -> None:
    spec_dict["autoscaling"] = {"minEfficiency": 1.5}
    with pytest.raises(pydantic.ValidationError) as info:
        TrainingJobSpec.model_validate(spec_dict)
    assert "(got 1.5)" in describe_validation_errors(info.value.errors())


@pytest.mark.parametrize(
    ("template", "message"),
    [
        pytest.param({"spec": {"containers": []}}, "at least one container", id="no-containers"),
        pytest.param({"spec": {}}, "at least one container", id="no-containers-key"),
        pytest.param({"spec": {"containers": [{"name": "x"}]}}, "containers[0].image is required", id="no-image"),
        pytest.param({"spec": {"containers": [{"image": "x"}]}}, "containers[0].name is required", id="no-name"),
    ],
)  # fmt: skip
def test_template_needs_named_containers_with_images(
    spec_dict: dict[str, Any], template: dict[str, Any], message: str
) -> None:
    spec_dict["template"] = template
    with pytest.raises(
        pydantic.ValidationError, match=message.replace("[", r"\[").replace("]", r"\]")
    ):
        TrainingJobSpec.model_validate(spec_dict)


def test_gpus_counted_from_requests_when_no_limits(spec_dict: dict[str, Any]) -> None:
    container = spec_dict["template"]["spec"]["containers"][0]
    container["resources"] = {"requests": {"nvidia.com/gpu": "4"}}
    assert TrainingJobSpec.model_validate(spec_dict).gpus_per_replica == 4
    container["resources"] = {}
    assert TrainingJobSpec.model_validate(spec_dict).gpus_per_replica == 0
