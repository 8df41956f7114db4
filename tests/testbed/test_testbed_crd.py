"""The generated TrainingJob CRD against the real kube-apiserver.

Covers:
- the apiserver accepts the CRD (structural schema) and serves the scale subresource and
  the printer columns we declare;
- invalid TrainingJobs are rejected with the CEL / OpenAPI messages (a table of cases);
- a valid one is accepted with defaults filled in by the apiserver;
- ``kubectl get tj`` prints the printer columns; ``kubectl explain`` shows our descriptions;
- ``kubectl scale tj`` goes through the scale subresource and the CEL bounds guard it;
- ``spec.allowedReplicas``: ``kubectl apply`` of a job whose replicas, minReplicas or
  maxReplicas is not allowed is refused naming the field, and so are ``kubectl scale`` and a
  patch of the scale subresource to a count it does not allow (CEL on the TrainingJob
  applies to /scale writes: the apiserver validates the updated TrainingJob).
- the autoscaler's memory written to status is kept (declared in the schema, not pruned).
- ``kubectl apply`` of a job whose name is too long for its pods' and Service's names is
  refused by the CEL rule, naming ``metadata.name``; the longest allowed name is accepted.
- status conditions are metav1.Conditions: the operator's round-trip; one without a required
  field, with a time that is not a date-time, a reason off metav1's pattern or a duplicate
  type is refused.
"""

from __future__ import annotations

import copy
import datetime as dt
import itertools
import json
import re
from typing import Any

import pytest
import yaml

from trainscale.operator.api import MAX_JOB_NAME_LENGTH
from trainscale.operator.api.crd import PRINTER_COLUMNS
from trainscale.testbed.cluster import TestbedError

pytestmark = pytest.mark.testbed


def make_job(name: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "replicas": 2,
        "minReplicas": 1,
        "maxReplicas": 4,
        "template": {
            "spec": {
                "containers": [
                    {
                        "name": "trainer",
                        "image": "ghcr.io/example/train:1",
                        "resources": {"limits": {"nvidia.com/gpu": 1}},
                    }
                ]
            }
        },
    }
    base.update(spec)
    return {
        "apiVersion": "trainscale.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": base,
    }


def test_crd_is_established_with_scale_subresource_and_columns(crd: dict[str, Any]) -> None:
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions.get("NamesAccepted") == "True"
    assert conditions.get("Established") == "True"
    # A non-structural schema would be reported here instead of refused outright.
    assert "NonStructuralSchema" not in conditions
    (version,) = crd["spec"]["versions"]
    scale = version["subresources"]["scale"]
    assert scale["specReplicasPath"] == ".spec.replicas"
    assert scale["statusReplicasPath"] == ".status.replicas"
    assert version["subresources"]["status"] == {}
    served = [c["name"] for c in version["additionalPrinterColumns"]]
    assert served == [c["name"] for c in PRINTER_COLUMNS]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        pytest.param({"replicas": 5, "maxReplicas": 4},
                     "replicas must be within [minReplicas, maxReplicas]",
                     id="replicas-above-max"),
        pytest.param({"minReplicas": 3, "maxReplicas": 2, "replicas": 2},
                     "minReplicas must be <= maxReplicas", id="min-above-max"),
        pytest.param({"minReplicas": 0}, "should be greater than or equal to 1",
                     id="min-zero"),
        pytest.param({"autoscaling": {"objective": "cheapest"}}, "Unsupported value: \"cheapest\"",
                     id="unknown-objective"),
        pytest.param({"template": {"spec": {"containers": []}}},
                     "should have at least 1 items", id="no-containers"),
        pytest.param({"replicas": 3, "allowedReplicas": {"powersOfTwo": True}},
                     "spec.replicas: Invalid value: replicas is not one of the counts "
                     "allowedReplicas allows", id="replicas-not-a-power-of-two"),
        pytest.param({"minReplicas": 2, "replicas": 4, "maxReplicas": 8,
                      "allowedReplicas": {"multipleOf": 4}},
                     "spec.minReplicas: Invalid value: minReplicas is not one of the counts "
                     "allowedReplicas allows", id="min-not-a-multiple"),
        pytest.param({"minReplicas": 2, "replicas": 2, "maxReplicas": 4,
                      "allowedReplicas": {"values": [2, 3]}},
                     "spec.maxReplicas: Invalid value: maxReplicas is not one of the counts "
                     "allowedReplicas allows", id="max-not-listed"),
        pytest.param({"allowedReplicas": {"values": [1, 2, 2]}}, "Duplicate value: 2",
                     id="values-twice"),
        pytest.param({"allowedReplicas": {"multipleOf": 0}},
                     "should be greater than or equal to 1", id="multiple-of-zero"),
    ],
)  # fmt: skip
def test_invalid_job_is_rejected_with_its_message(
    crd: dict[str, Any], kubectl: Any, namespace: str, spec: dict[str, Any], message: str
) -> None:
    job = make_job("bad", **spec)
    done = kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(job), check=False)
    assert done.returncode != 0, done.stdout
    assert message in done.stderr
    assert kubectl("get", "tj", "-n", namespace, "-o", "name").stdout.strip() == ""


def test_valid_job_gets_defaults_and_printer_columns(
    crd: dict[str, Any], kubectl: Any, namespace: str
) -> None:
    job = make_job("good", autoscaling={"enabled": False})
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(job))
    stored = json.loads(kubectl("get", "tj/good", "-n", namespace, "-o", "json").stdout)
    # Defaults come from the schema, applied by the apiserver.
    assert stored["spec"]["autoscaling"]["objective"] == "efficiency"
    assert stored["spec"]["autoscaling"]["scaleDownStabilizationSeconds"] == 300
    assert stored["spec"]["maxRestarts"] == 10
    table = kubectl("get", "tj", "-n", namespace).stdout.splitlines()
    header = table[0].split()
    assert header[0] == "NAME"
    assert header[1:] == [c["name"].upper() for c in PRINTER_COLUMNS if c.get("priority", 0) == 0]
    assert table[1].split()[0] == "good"
    # The short name and the categories resolve too.
    assert "trainingjob.trainscale.dev/good" in kubectl("get", "all", "-n", namespace,
                                                         "-o", "name").stdout  # fmt: skip


def test_wide_columns_show_the_autoscalers_efficiency_and_time_left(
    crd: dict[str, Any], kubectl: Any, namespace: str
) -> None:
    """``kubectl get tj -o wide`` adds the priority-1 columns, read from the status the
    operator writes (a JSONPath typo would print an empty cell, not fail)."""
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(make_job("wide")))
    patch = {"status": {"autoscaling": {"efficiency": 0.83, "timeLeftSeconds": 5400}}}
    kubectl("patch", "-n", namespace, "tj/wide", "--subresource=status", "--type=merge",
            "-p", json.dumps(patch))  # fmt: skip
    narrow = kubectl("get", "tj/wide", "-n", namespace).stdout.splitlines()[0].split()
    assert "EFFICIENCY" not in narrow and "TIME-LEFT(S)" not in narrow
    header, line = kubectl("get", "tj/wide", "-n", namespace, "-o", "wide").stdout.splitlines()
    assert header.split()[1:] == [c["name"].upper() for c in PRINTER_COLUMNS]
    # Columns are aligned, and a cell with nothing in it is blank: slice by the header.
    starts = [m.start() for m in re.finditer(r"\S+", header)] + [len(line)]
    cells = {header[a:b].strip(): line[a:b].strip() for a, b in itertools.pairwise(starts)}
    assert (cells["EFFICIENCY"], cells["TIME-LEFT(S)"]) == ("0.83", "5400")


def test_kubectl_explain_shows_field_descriptions(crd: dict[str, Any], kubectl: Any) -> None:
    text = kubectl("explain", "trainingjob.spec.autoscaling").stdout
    assert "Metrics-driven resizing" in text
    for field in ("objective", "minEfficiency", "maxCostPerHour", "intervalSeconds"):
        assert field in text
    replicas = kubectl("explain", "tj.spec.replicas").stdout
    assert "kubectl scale" in replicas
    allowed = " ".join(kubectl("explain", "tj.spec.allowedReplicas").stdout.split())
    for field in ("values", "multipleOf", "powersOfTwo", "every form given must hold"):
        assert field in allowed
    assert "packWorkers" in kubectl("explain", "tj.spec.placement").stdout


def test_kubectl_scale_uses_the_scale_subresource_within_bounds(
    crd: dict[str, Any], kubectl: Any, namespace: str
) -> None:
    job = copy.deepcopy(make_job("scaled"))
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(job))
    kubectl("scale", "-n", namespace, "tj/scaled", "--replicas=4")
    spec = yaml.safe_load(kubectl("get", "tj/scaled", "-n", namespace, "-o", "yaml").stdout)
    assert spec["spec"]["replicas"] == 4
    with pytest.raises(TestbedError, match=r"replicas must be within"):
        kubectl("scale", "-n", namespace, "tj/scaled", "--replicas=9")


def test_scale_subresource_refuses_counts_allowed_replicas_does_not_allow(
    crd: dict[str, Any], kubectl: Any, namespace: str
) -> None:
    job = make_job("sized", replicas=8, minReplicas=8, maxReplicas=32,
                   allowedReplicas={"multipleOf": 8})  # fmt: skip
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(job))
    kubectl("scale", "-n", namespace, "tj/sized", "--replicas=16")
    message = r"spec.replicas: Invalid value: replicas is not one of the counts allowedReplicas"
    with pytest.raises(TestbedError, match=message):
        kubectl("scale", "-n", namespace, "tj/sized", "--replicas=12")
    # Any writer of /scale (HPA, KEDA, a controller) meets the same rule, not only kubectl.
    with pytest.raises(TestbedError, match=message):
        kubectl("patch", "-n", namespace, "tj/sized", "--subresource=scale", "--type=merge",
                "-p", json.dumps({"spec": {"replicas": 20}}))  # fmt: skip
    scale = json.loads(kubectl("get", "-n", namespace, "tj/sized", "--subresource=scale",
                               "-o", "json").stdout)  # fmt: skip
    assert scale["spec"]["replicas"] == 16


def test_autoscaler_memory_in_status_is_kept_not_pruned(
    crd: dict[str, Any], kubectl: Any, namespace: str
) -> None:
    from trainscale.operator.autoscaling import AutoscalerMemory
    from trainscale.operator.autoscaling.autoscaler import MeasuredPoint, SchedulableCap

    memory = AutoscalerMemory(
        points=(MeasuredPoint(4, 1, 390.5, 0.91, 20, 0.25), MeasuredPoint(8, 2, None, 0.7, 6)),
        relative_noise=0.031,
        restart_cost_seconds=55.0,
        last_scale_time=1234.5,
        forced_from=(8,),
        left_downwards=(16,),
        schedulable=SchedulableCap(6, 1534.5, 2, room=1),
    ).to_dict()
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(make_job("remembers")))
    patch = {"status": {"autoscaling": {"memory": memory, "step": "confidence"}}}
    kubectl("patch", "-n", namespace, "tj/remembers", "--subresource=status", "--type=merge",
            "-p", json.dumps(patch))  # fmt: skip
    stored = json.loads(kubectl("get", "tj/remembers", "-n", namespace, "-o", "json").stdout)
    autoscaling = stored["status"]["autoscaling"]
    assert autoscaling["step"] == "confidence"
    assert autoscaling["memory"] == memory
    assert AutoscalerMemory.from_dict(autoscaling["memory"]) == AutoscalerMemory.from_dict(memory)


def test_a_name_too_long_for_the_children_is_refused_at_apply(
    crd: dict[str, Any], kubectl: Any, namespace: str
) -> None:
    longest, too_long = "j" * MAX_JOB_NAME_LENGTH, "j" * (MAX_JOB_NAME_LENGTH + 1)
    ok = kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(make_job(longest)))
    assert ok.returncode == 0
    done = kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(make_job(too_long)),
                   check=False)  # fmt: skip
    assert done.returncode != 0, done.stdout
    assert f"metadata.name must be at most {MAX_JOB_NAME_LENGTH} characters" in done.stderr
    assert kubectl("get", "tj", "-n", namespace, "-o", "name").stdout.split() == [
        f"trainingjob.trainscale.dev/{longest}"
    ]


def test_conditions_are_standard_metav1_conditions(
    crd: dict[str, Any], kubectl: Any, namespace: str
) -> None:
    """What the operator writes round-trips; what metav1.Condition forbids is refused."""
    from trainscale.operator.api import TrainingJobStatus
    from trainscale.operator.api.reporting import build_condition

    now = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)
    written = TrainingJobStatus(conditions=[
        build_condition([], "Ready", "False", "WaitingForWorkers", "0 of 2 ready", now, 1),
        build_condition([], "Degraded", "False", "SpecValid", "", now, 1),
    ]).to_merge_patch()  # fmt: skip
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(make_job("conds")))

    def patch(status: dict[str, Any]) -> Any:
        return kubectl("patch", "-n", namespace, "tj/conds", "--subresource=status",
                       "--type=merge", "-p", json.dumps({"status": status}), check=False)  # fmt: skip

    assert patch(written).returncode == 0
    stored = json.loads(kubectl("get", "tj/conds", "-n", namespace, "-o", "json").stdout)
    assert stored["status"]["conditions"] == written["conditions"]

    good = written["conditions"][0]
    for broken, message in (
        ({k: v for k, v in good.items() if k != "reason"}, "reason: Required value"),
        ({k: v for k, v in good.items() if k != "lastTransitionTime"},
         "lastTransitionTime: Required value"),
        ({**good, "lastTransitionTime": "yesterday"}, "lastTransitionTime"),
        ({**good, "reason": "not a reason"}, "reason: Invalid value"),
    ):  # fmt: skip
        done = patch({"conditions": [broken]})
        assert done.returncode != 0 and message in done.stderr, (broken, done.stderr)
    duplicate = patch({"conditions": [good, {**good, "status": "True"}]})
    assert duplicate.returncode != 0 and "Duplicate value" in duplicate.stderr, duplicate.stderr
