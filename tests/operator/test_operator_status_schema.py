"""Every status field the operator writes is declared in the CRD's status schema, and back.

A real apiserver prunes status fields its structural schema does not declare, silently: a
field written but undeclared is lost on the way (``lastFailureTime`` once was, and with it the
failed-worker backoff). These tests walk the merge patches the real decide functions produce
over a table of situations — both loops, the nested ``autoscaling`` block, the conditions and
decisions lists — against the status schema of the CRD, generated and committed.

Covers: every key written is declared, with its declared type (None only as a merge patch's
"delete"); every declared field is written by some situation, so the table and the schema
cannot drift apart unnoticed.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from trainscale.operator.api import TrainingJobSpec
from trainscale.operator.api.crd import build_crd
from trainscale.operator.autoscaling.arbiter import Capacity
from trainscale.operator.autoscaling.autoscaler import (
    AutoscalerMemory,
    MeasuredPoint,
    SchedulableCap,
)
from trainscale.operator.autoscaling.cluster import ManagedJob, decide_arbitration
from trainscale.operator.autoscaling.policy import (
    LimitedBy,
    ModelSource,
    Observation,
    Recommendation,
    RestartCostSource,
    SpeedupModel,
)
from trainscale.operator.autoscaling.status import build_settling_status, decide_autoscale
from trainscale.operator.controller.reconcile import (
    WorkerPod,
    build_invalid_spec_status,
    decide_reconcile,
)

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "manifests" / "crd" / "trainingjobs.trainscale.dev.yaml"
NOW = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)
GENERATION = 7
JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def _status_schema(crd: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    status: dict[str, Any] = schema["properties"]["status"]
    return status


SCHEMAS = {
    "generated": _status_schema(build_crd()),
    "committed": _status_schema(yaml.safe_load(CRD_FILE.read_text())),
}


def running(index: int, ready: bool = True) -> WorkerPod:
    return WorkerPod(name=f"j-worker-{index}", index=index, phase="Running", ready=ready)


def _spec(spec_dict: dict[str, Any], **changes: Any) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate({**spec_dict, **changes})


def reconcile_patches(spec_dict: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(situation, status patch) for the reconcile loop's situations."""
    spec = _spec(spec_dict, replicas=2)

    def decide(workers: list[WorkerPod], status: dict[str, Any], s: TrainingJobSpec = spec,
               now: dt.datetime = NOW) -> dict[str, Any]:  # fmt: skip
        plan = decide_reconcile(s, "j", GENERATION, status, workers, True, True, now)
        return plan.status

    yield "new job", decide([], {})
    steady = decide([running(0), running(1)], {"phase": "Running"})
    yield "steady", steady
    yield "scale down", decide([running(0), running(1), running(2)], steady)
    failed = WorkerPod(name="j-worker-1", index=1, phase="Failed", reason="Evicted", message="m")
    failure = decide([running(0), failed], steady)
    yield "worker failed", failure
    later = NOW + dt.timedelta(seconds=2)
    yield "in backoff", decide([running(0)], failure, now=later)
    gave_up = decide([running(0), failed], {**steady, "restarts": spec.max_restarts})
    yield "too many failures", gave_up
    yield "stays failed", decide([], gave_up)
    done = [WorkerPod(name=f"j-worker-{i}", index=i, phase="Succeeded") for i in range(2)]
    yield "succeeded", decide(done, steady)
    stuck = WorkerPod(name="j-worker-1", index=1, phase="Pending", unschedulable=True,
                      message="0/2 nodes are available")  # fmt: skip
    yield "unschedulable", decide([running(0), stuck], steady)
    yield "invalid spec", build_invalid_spec_status(steady, "spec.replicas: bad", GENERATION, NOW)
    queued = decide_reconcile(spec, "j", GENERATION, steady, [running(0)], True, True, NOW,
                              queued="queued: needs 4 GPUs, 2 free")  # fmt: skip
    yield "queued by arbitration", queued.status
    suspended = _spec(spec_dict, replicas=2, suspend=True)
    suspending = decide([running(0), running(1)], steady, s=suspended)
    yield "suspending", suspending
    yield "suspended", decide([], suspending, s=suspended)
    yield "resumed", decide([], {**suspending, "phase": "Suspended"})


def arbitration_patches(spec_dict: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(situation, status patch) for the cluster arbitration pass."""
    spec = _spec(spec_dict, autoscaling={"enabled": True})
    running_job = ManagedJob("d/a", spec, created=1.0, worker_nodes=("n1", "n1"),
                             throughput={1: 1.0, 2: 2.0, 4: 3.5})  # fmt: skip
    waiting = ManagedJob("d/b", _spec(spec_dict, replicas=4, minReplicas=4,
                                      autoscaling={"enabled": True}), created=2.0)  # fmt: skip
    results = decide_arbitration([running_job, waiting], Capacity({"n1": 8}), {}, NOW)
    yield "arbitrated", results["d/a"].status_patch
    yield "queued", results["d/b"].status_patch
    blind = decide_arbitration([running_job], Capacity({}), {}, NOW)
    yield "no GPUs visible", blind["d/a"].status_patch


def autoscale_patches(spec_dict: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(situation, status patch) for the autoscale loop's situations."""
    spec = _spec(spec_dict, autoscaling={"enabled": True, "costPerGpuHour": 2.5})
    obs = Observation(timestamp=1.0, replicas=2, gpu_utilization=0.81, samples_per_second=412.3)
    model = SpeedupModel(seconds_per_sample=0.01, sync_per_replica=0.05, sync_quadratic=0.001,
                         compute_fraction=0.9, source=ModelSource.THROUGHPUT, counts=(1, 2),
                         level=2)  # fmt: skip

    def rec(replicas: int, **kw: Any) -> Recommendation:
        return Recommendation(replicas=replicas, target=replicas, current_replicas=2,
                              reason="why", **kw)  # fmt: skip

    memory = AutoscalerMemory(
        points=(MeasuredPoint(2, 1, 412.3, 0.81, 5, 0.2), MeasuredPoint(4, 1, None, 0.7, 3)),
        relative_noise=0.03,
        restart_cost_seconds=55.0,
        last_scale_time=1.0,
        forced_from=(8,),
        left_downwards=(6,),
        schedulable=SchedulableCap(6, 1301.0, 2, room=0),
        running_since=0.5,
    ).to_dict()
    up = decide_autoscale(spec, {}, obs, (), rec(4, efficiency=0.9, model=model, step="objective"),
                          NOW, GENERATION, memory=memory)  # fmt: skip
    yield "rescale up", up.status
    hold = decide_autoscale(spec, up.status, obs, (), rec(2, model=model), NOW, GENERATION)
    yield "hold after a rescale", hold.status
    told = decide_autoscale(spec, hold.status, obs, (), rec(2, time_left_seconds=3725.4), NOW)
    assert told.status["autoscaling"]["timeLeftSeconds"] == 3725  # whole seconds
    yield "a job that says the time it has left", told.status
    measured = rec(2, restart_cost_seconds=9.04, restart_cost_source=RestartCostSource.MEASURED)
    learned = decide_autoscale(spec, told.status, obs, (), measured, NOW)
    assert (learned.status["autoscaling"]["restartCostSeconds"],
            learned.status["autoscaling"]["restartCostSource"]) == (9.0, "measured")  # fmt: skip
    yield "a restart cost the trainer measured", learned.status
    empty = Observation(timestamp=1.0, replicas=2)
    errors = ("gpu utilization: connection refused",)
    stale = rec(2, metrics_stale=True)
    yield "prometheus down", decide_autoscale(spec, {}, empty, errors, stale, NOW).status
    yield "no workers", decide_autoscale(spec, hold.status, None, (), stale, NOW).status
    for limit in LimitedBy:
        limited = decide_autoscale(spec, {}, obs, (), rec(2, limited_by=limit), NOW, GENERATION)
        yield f"limited by {limit.value}", limited.status
    yield "settling", build_settling_status("settling: 2 workers running for 3 s")


@pytest.fixture
def patches(spec_dict: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        *reconcile_patches(spec_dict),
        *autoscale_patches(spec_dict),
        *arbitration_patches(spec_dict),
    ]


def undeclared(value: Any, schema: dict[str, Any], path: str) -> Iterator[str]:
    """Every place in ``value`` the schema does not declare, or declares with another type."""
    if value is None:
        return  # a merge patch's null deletes the field; the key itself is checked above
    expected = schema.get("type")
    if expected is not None and (
        not isinstance(value, JSON_TYPES[expected])
        or (isinstance(value, bool) and expected != "boolean")
    ):
        yield f"{path}: {value!r} is not of the declared type {expected}"
    if "enum" in schema and value not in schema["enum"]:
        yield f"{path}: {value!r} is not one of {schema['enum']}"
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, sub in value.items():
            if key in properties:
                yield from undeclared(sub, properties[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                yield from undeclared(sub, extra, f"{path}.{key}")
            else:
                yield f"{path}.{key}: not declared (a real apiserver prunes it)"
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from undeclared(item, schema.get("items") or {}, f"{path}[{i}]")


def written_paths(value: Any, path: str = "status") -> Iterator[str]:
    """Paths of every key written, list indices as ``[]`` and map keys as ``*``."""
    if isinstance(value, dict):
        for key, sub in value.items():
            yield f"{path}.{key}"
            yield from written_paths(sub, f"{path}.{key}")
    elif isinstance(value, list):
        for item in value:
            yield from written_paths(item, f"{path}[]")


def declared_paths(schema: dict[str, Any], path: str = "status") -> Iterator[str]:
    for key, sub in (schema.get("properties") or {}).items():
        yield f"{path}.{key}"
        yield from declared_paths(sub, f"{path}.{key}")
    if isinstance(schema.get("items"), dict):
        yield from declared_paths(schema["items"], f"{path}[]")


@pytest.mark.parametrize("source", sorted(SCHEMAS))
def test_every_written_field_is_declared(
    patches: list[tuple[str, dict[str, Any]]], source: str
) -> None:
    problems = [
        f"{situation}: {problem}"
        for situation, patch in patches
        for problem in undeclared(patch, SCHEMAS[source], "status")
    ]
    assert not problems, "\n".join(problems)


def test_every_declared_field_is_written(patches: list[tuple[str, dict[str, Any]]]) -> None:
    written = {p for _, patch in patches for p in written_paths(patch)}
    # The fitted model and the preferred packing are free-form maps; their keys are data.
    written = {
        p
        for p in written
        if not re.match(r"status\.(autoscaling\.model|arbitration\.preferredNodes)\.", p)
    }
    declared = set(declared_paths(SCHEMAS["generated"]))
    assert declared - written == set(), "declared but never written by any situation"
    assert written - declared == set(), "written but not declared"


def test_the_backoff_clock_is_written(patches: list[tuple[str, dict[str, Any]]]) -> None:
    failure = dict(patches)["worker failed"]
    assert failure["lastFailureTime"] == "2026-11-21T12:00:00Z"
    assert failure["restarts"] == 1
