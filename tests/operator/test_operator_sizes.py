"""Allowed worker counts: ``spec.allowedReplicas`` in the models and the helpers the policy calls.

Covers:
- each form (values, multipleOf, powersOfTwo) and their combination (all must hold);
- the models refuse replicas, minReplicas or maxReplicas outside the allowed counts, naming
  the field, its value and the forms; duplicate values and empty lists are refused;
- a spec without allowedReplicas allows every count in [minReplicas, maxReplicas];
- ``allowed_sizes``, ``is_allowed`` and ``nearest_allowed`` (down, up, nearest; clamped to
  the bounds) for the policy; placement.packWorkers defaults to true;
- the CRD's CEL rule is the same test as the models' (evaluated here on every count).
"""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from trainscale.operator.api import (
    AllowedReplicas,
    TrainingJobSpec,
    allowed_sizes,
    is_allowed,
    nearest_allowed,
)
from trainscale.operator.api.crd import build_crd
from trainscale.operator.controller.reconcile import describe_validation_errors


def make_spec(spec_dict: dict[str, Any], allowed: dict[str, Any] | None,
              replicas: int, low: int, high: int) -> TrainingJobSpec:  # fmt: skip
    spec_dict.update(replicas=replicas, minReplicas=low, maxReplicas=high)
    if allowed is not None:
        spec_dict["allowedReplicas"] = allowed
    return TrainingJobSpec.model_validate(spec_dict)


@pytest.mark.parametrize(
    ("allowed", "bounds", "sizes"),
    [
        pytest.param(None, (1, 10), tuple(range(1, 11)), id="absent-every-count"),
        pytest.param({}, (1, 10), tuple(range(1, 11)), id="empty-every-count"),
        pytest.param({"values": [1, 2, 4, 6, 8]}, (1, 8), (1, 2, 4, 6, 8), id="values"),
        pytest.param({"values": [8, 2, 4]}, (2, 8), (2, 4, 8), id="values-any-order"),
        pytest.param({"multipleOf": 8}, (8, 40), (8, 16, 24, 32, 40), id="multiple-of"),
        pytest.param({"powersOfTwo": True}, (1, 64), (1, 2, 4, 8, 16, 32, 64), id="powers"),
        pytest.param({"powersOfTwo": False}, (3, 5), (3, 4, 5), id="powers-false"),
        pytest.param({"multipleOf": 4, "powersOfTwo": True}, (4, 64), (4, 8, 16, 32, 64),
                     id="multiple-and-powers"),
        pytest.param({"values": [4, 6, 8, 12], "multipleOf": 4}, (4, 12), (4, 8, 12),
                     id="values-and-multiple"),
    ],
)  # fmt: skip
def test_allowed_sizes_per_form(
    spec_dict: dict[str, Any], allowed: dict[str, Any] | None, bounds: tuple[int, int],
    sizes: tuple[int, ...],
) -> None:  # fmt: skip
    spec = make_spec(spec_dict, allowed, bounds[0], *bounds)
    assert allowed_sizes(spec) == sizes
    assert [n for n in range(0, bounds[1] + 3) if is_allowed(spec, n)] == list(sizes)


@pytest.mark.parametrize(
    ("allowed", "counts", "message"),
    [
        pytest.param({"multipleOf": 4}, (6, 4, 8),
                     "replicas (6) is not one of the counts allowedReplicas allows (multipleOf 4)",
                     id="replicas"),
        pytest.param({"multipleOf": 4}, (4, 2, 8), "minReplicas (2) is not one of the counts",
                     id="min"),
        pytest.param({"powersOfTwo": True}, (4, 1, 12),
                     "maxReplicas (12) is not one of the counts allowedReplicas allows "
                     "(powersOfTwo)", id="max"),
        pytest.param({"values": [2, 4]}, (3, 2, 4), "(values [2, 4])", id="values"),
        pytest.param({"values": [2, 2, 4]}, (2, 2, 4), "spec.allowedReplicas: values [2, 2, 4] "
                     "lists a count twice", id="duplicate-values"),
        pytest.param({"values": []}, (2, 2, 4), "spec.allowedReplicas.values", id="empty-values"),
        pytest.param({"values": [0, 2]}, (2, 2, 4), "spec.allowedReplicas.values.0",
                     id="zero-value"),
        pytest.param({"multipleOf": 0}, (2, 2, 4), "spec.allowedReplicas.multipleOf",
                     id="multiple-of-zero"),
        pytest.param({"multiple": 2}, (2, 2, 4), "spec.allowedReplicas.multiple", id="typo"),
    ],
)  # fmt: skip
def test_models_refuse_counts_that_are_not_allowed(
    spec_dict: dict[str, Any], allowed: dict[str, Any], counts: tuple[int, int, int], message: str
) -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        make_spec(spec_dict, allowed, *counts)
    assert message in describe_validation_errors(info.value.errors())


def test_every_wrong_field_is_named_at_once(spec_dict: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        make_spec(spec_dict, {"multipleOf": 8}, 12, 4, 12)
    text = describe_validation_errors(info.value.errors())
    assert "replicas (12)" in text and "minReplicas (4)" in text and "maxReplicas (12)" in text


@pytest.mark.parametrize(
    ("replicas", "direction", "expected"),
    [
        pytest.param(13, "down", 8, id="down"),
        pytest.param(13, "up", 16, id="up"),
        pytest.param(16, "down", 16, id="down-allowed-stays"),
        pytest.param(16, "up", 16, id="up-allowed-stays"),
        pytest.param(11, "nearest", 8, id="nearest-below"),
        pytest.param(13, "nearest", 16, id="nearest-above"),
        pytest.param(12, "nearest", 8, id="nearest-tie-fewer"),
        pytest.param(2, "up", 8, id="below-min-clamped"),
        pytest.param(2, "down", 8, id="below-min-down-still-min"),
        pytest.param(99, "up", 32, id="above-max-clamped"),
    ],
)
def test_nearest_allowed(
    spec_dict: dict[str, Any], replicas: int, direction: Any, expected: int
) -> None:
    spec = make_spec(spec_dict, {"multipleOf": 8}, 8, 8, 32)
    assert nearest_allowed(spec, replicas, direction) == expected


def test_nearest_allowed_without_a_rule_is_a_clamp(spec_dict: dict[str, Any]) -> None:
    spec = make_spec(spec_dict, None, 2, 1, 4)
    assert [nearest_allowed(spec, n, "nearest") for n in range(7)] == [1, 1, 2, 3, 4, 4, 4]


def test_spec_defaults_for_sizes_and_placement(spec_dict: dict[str, Any]) -> None:
    spec = TrainingJobSpec.model_validate(spec_dict)
    assert spec.allowed_replicas == AllowedReplicas()
    assert spec.placement.pack_workers is True
    again = TrainingJobSpec.model_validate(spec.model_dump(by_alias=True, exclude_none=True))
    assert again == spec


# -- the CEL rule says what the models say --------------------------------------------------


def _cel_rules() -> dict[str, str]:
    rules = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return {r["fieldPath"]: r for r in rules["x-kubernetes-validations"] if "fieldPath" in r}


def test_cel_rules_name_each_sized_field() -> None:
    rules = _cel_rules()
    assert set(rules) == {".replicas", ".minReplicas", ".maxReplicas"}
    for path, rule in rules.items():
        assert rule["message"] == f"{path[1:]} is not one of the counts allowedReplicas allows"


def _cel_as_python(rule: str, allowed: dict[str, Any] | None) -> Any:
    """Our (small) CEL rule as compiled Python: the subset it uses maps one to one."""
    expr = (rule.replace("!has(self.allowedReplicas.values)", str("values" not in (allowed or {})))
            .replace("!has(self.allowedReplicas.multipleOf)",
                     str("multipleOf" not in (allowed or {})))
            .replace("!has(self.allowedReplicas.powersOfTwo)",
                     str("powersOfTwo" not in (allowed or {})))
            .replace("!has(self.allowedReplicas)", str(allowed is None))
            .replace("!self.allowedReplicas.powersOfTwo", "not A['powersOfTwo']")
            .replace("self.allowedReplicas.", "A.")
            .replace("A.values", "A['values']").replace("A.multipleOf", "A['multipleOf']")
            .replace("self.replicas", "N").replace("||", " or ").replace("&&", " and "))  # fmt: skip
    return compile(expr, "<cel>", "eval")


@pytest.mark.parametrize(
    "allowed",
    [None, {}, {"values": [3, 5, 16]}, {"multipleOf": 3}, {"powersOfTwo": True},
     {"powersOfTwo": False}, {"multipleOf": 2, "powersOfTwo": True, "values": [2, 6, 8, 64]}],
)  # fmt: skip
def test_cel_rule_agrees_with_the_models(allowed: dict[str, Any] | None) -> None:
    code = _cel_as_python(_cel_rules()[".replicas"]["rule"], allowed)
    model = AllowedReplicas.model_validate(allowed or {})
    for n in range(1, 10001):
        cel = eval(code, {"A": allowed or {}, "N": n})  # our own rule, built above
        assert cel == model.allows(n), n


def test_nearest_allowed_refuses_a_spec_that_allows_nothing(spec_dict: dict[str, Any]) -> None:
    spec = make_spec(spec_dict, None, 2, 1, 4)
    broken = spec.model_copy(update={"allowed_replicas": AllowedReplicas(values=[8])})
    assert allowed_sizes(broken) == ()
    with pytest.raises(ValueError, match=r"allowedReplicas \(values \[8\]\) allows no count"):
        nearest_allowed(broken, 2, "nearest")
