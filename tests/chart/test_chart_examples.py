"""The example manifests under examples/.

Behaviours covered:

* every TrainingJob validates against the API models (``TrainingJobSpec``, the operator's own
  parser) and against the generated CRD's OpenAPI schema;
* every worker pod template is a valid Pod (strict Kubernetes 1.35 schema: a misspelt pod
  field would otherwise pass the CRD, which preserves unknown template fields);
* every other object (the checkpoint claim) is a valid Kubernetes object, and a job's
  ``checkpoint.claimName`` names a claim the same file defines;
* every worker runs ``trainscale-train`` with flags the trainer's own parser
  accepts and a ``--task`` whose module exists;
* names are unique and no namespace is hard-coded (``kubectl apply -n`` decides);
* the jobs fit the test-bed (2 nodes x 8 GPUs): at most 4 one-GPU workers each;
* the examples cover what the docs promise: each objective, autoscaling off, a checkpoint
  claim, and a budget that actually binds below maxReplicas.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from trainscale.operator import api
from trainscale.operator.api.crd import build_crd

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO_ROOT / "examples").glob("*.yaml"))
KUBE_VERSION = "1.35.0"
TESTBED_GPUS_PER_NODE = 8


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def _jobs(path: Path) -> list[dict[str, Any]]:
    return [d for d in _documents(path) if d.get("kind") == api.KIND]


def _all_jobs() -> list[dict[str, Any]]:
    return [job for path in EXAMPLES for job in _jobs(path)]


def _spec(job: dict[str, Any]) -> api.TrainingJobSpec:
    return api.TrainingJobSpec.model_validate(job["spec"])


def test_there_are_examples() -> None:
    assert len(_all_jobs()) >= 4


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_training_jobs_validate_against_the_models_and_the_crd(path: Path) -> None:
    crd_schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    jobs = _jobs(path)
    assert jobs, f"{path.name} holds no TrainingJob"
    for job in jobs:
        assert job["apiVersion"] == api.API_VERSION
        assert "namespace" not in job["metadata"], "leave the namespace to kubectl apply -n"
        _spec(job)
        # OpenAPI v3.0 schemas use JSON Schema draft 4 semantics (boolean exclusiveMinimum).
        jsonschema.Draft4Validator(crd_schema).validate(job)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_pod_templates_and_other_objects_are_valid_kubernetes(path: Path) -> None:
    for doc in _documents(path):
        if doc["kind"] == api.KIND:
            template = doc["spec"]["template"]
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "template", **template.get("metadata", {})},
                "spec": template["spec"],
            }
            kubernetes_validate.validate(pod, KUBE_VERSION, strict=True)
        else:
            assert "namespace" not in doc["metadata"]
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_checkpoint_claims_are_defined_beside_the_job(path: Path) -> None:
    claims = {
        d["metadata"]["name"] for d in _documents(path) if d["kind"] == "PersistentVolumeClaim"
    }
    for job in _jobs(path):
        claim = _spec(job).checkpoint.claim_name
        assert claim is None or claim in claims, f"{path.name}: claim {claim!r} is not defined"


@pytest.mark.parametrize("job", _all_jobs(), ids=lambda j: j["metadata"]["name"])
def test_workers_run_the_trainer_with_valid_flags(job: dict[str, Any]) -> None:
    from trainscale.trainer.launch.cli import build_parser

    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[0] == "trainscale-train", command
    args = build_parser().parse_args(command[1:])
    module = args.task.partition(":")[0]
    assert importlib.util.find_spec(module) is not None, f"--task {args.task}: no module {module}"


def test_names_are_unique() -> None:
    names = [(d["kind"], d["metadata"]["name"]) for p in EXAMPLES for d in _documents(p)]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("job", _all_jobs(), ids=lambda j: j["metadata"]["name"])
def test_jobs_fit_the_testbed(job: dict[str, Any]) -> None:
    spec = _spec(job)
    assert spec.gpus_per_replica == 1
    assert spec.max_replicas <= 4
    assert spec.max_replicas * spec.gpus_per_replica <= 2 * TESTBED_GPUS_PER_NODE


def test_examples_cover_every_mode() -> None:
    specs = [_spec(j) for j in _all_jobs()]
    enabled = [s for s in specs if s.autoscaling.enabled]
    assert {s.autoscaling.objective for s in enabled} == set(api.Objective)
    assert any(not s.autoscaling.enabled for s in specs)
    assert any(s.checkpoint.claim_name for s in specs)
    for spec in enabled:
        if spec.autoscaling.objective is api.Objective.BUDGET:
            ceiling = spec.autoscaling.max_cost_per_hour
            assert ceiling is not None
            affordable = math.floor(
                ceiling / (spec.gpus_per_replica * spec.autoscaling.cost_per_gpu_hour)
            )
            assert spec.min_replicas <= affordable < spec.max_replicas, "the budget must bind"
