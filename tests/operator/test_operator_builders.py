"""The pure object builders: worker pods, the rendezvous pod and service.

Covers: names, labels, owner references; the template's fields preserved; torchrun's PET_*
settings and which of the user's env may override them; GPU count -> PET_NPROC_PER_NODE;
checkpoint claim mounting; restartPolicy; job-name validation; rendezvous store script.
"""

from __future__ import annotations

import ast
from typing import Any

import pytest

from trainscale.operator.api import TrainingJobSpec
from trainscale.operator.controller import builders

JOB = builders.JobRef(name="resnet", namespace="ml", uid="uid-123")


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_worker_pod_identity_and_ownership(spec_dict: dict[str, Any]) -> None:
    pod = builders.build_worker_pod(JOB, TrainingJobSpec.model_validate(spec_dict), 3)
    meta = pod["metadata"]
    assert (meta["name"], meta["namespace"]) == ("resnet-worker-3", "ml")
    assert meta["labels"]["trainscale.dev/job-name"] == "resnet"
    assert meta["labels"]["trainscale.dev/replica-index"] == "3"
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "trainscale"
    assert meta["labels"]["app.kubernetes.io/component"] == "worker"
    assert meta["labels"]["team"] == "vision"  # the template's own labels survive
    (owner,) = meta["ownerReferences"]
    assert owner == {
        "apiVersion": "trainscale.dev/v1alpha1", "kind": "TrainingJob", "name": "resnet",
        "uid": "uid-123", "controller": True, "blockOwnerDeletion": True,
    }  # fmt: skip


def test_worker_pod_keeps_every_template_field(spec_dict: dict[str, Any]) -> None:
    spec_dict["template"]["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
    spec_dict["template"]["spec"]["priorityClassName"] = "high"
    pod = builders.build_worker_pod(JOB, TrainingJobSpec.model_validate(spec_dict), 0)
    pod_spec = pod["spec"]
    assert pod_spec["nodeSelector"] == {"gpu": "a100"}
    assert pod_spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    assert pod_spec["volumes"] == [{"name": "data", "emptyDir": {}}]
    assert pod_spec["priorityClassName"] == "high"
    assert pod_spec["containers"][0]["resources"] == {"limits": {"nvidia.com/gpu": 2}}
    assert pod_spec["restartPolicy"] == "Never"


def test_builder_does_not_mutate_the_spec(spec_dict: dict[str, Any]) -> None:
    spec = TrainingJobSpec.model_validate(spec_dict)
    builders.build_worker_pod(JOB, spec, 0)
    assert "ports" not in spec.template["spec"]["containers"][0]
    assert len(spec.template["spec"]["containers"][0]["env"]) == 1


def test_torchrun_elastic_settings(spec_dict: dict[str, Any]) -> None:
    pod = builders.build_worker_pod(JOB, TrainingJobSpec.model_validate(spec_dict), 1)
    env = _env(pod["spec"]["containers"][0])
    assert env["PET_NNODES"] == "1:4"
    assert env["PET_RDZV_BACKEND"] == "c10d"
    assert env["PET_RDZV_ENDPOINT"] == "resnet-rdzv:29400"
    assert env["PET_RDZV_ID"] == "ml-resnet-uid-123"
    assert env["PET_MAX_RESTARTS"] == str(builders.TORCHRUN_MAX_RESTARTS)
    assert env["PET_LOCAL_ADDR"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["PET_NPROC_PER_NODE"] == "2"
    conf = dict(item.split("=") for item in env["PET_RDZV_CONF"].split(","))
    assert conf["is_host"] == "false"
    assert conf["last_call_timeout"] == "1"
    assert env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"
    assert env["TRAINSCALE_REPLICA_INDEX"] == "1"
    assert env["TRAINSCALE_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["EPOCHS"] == "3"
    ports = pod["spec"]["containers"][0]["ports"]
    assert {"name": "metrics", "containerPort": 9400, "protocol": "TCP"} in ports


def test_user_env_overrides_defaults_but_not_rendezvous(spec_dict: dict[str, Any]) -> None:
    spec_dict["template"]["spec"]["containers"][0]["env"] = [
        {"name": "PET_RDZV_ENDPOINT", "value": "elsewhere:1"},
        {"name": "PET_NPROC_PER_NODE", "value": "1"},
    ]
    pod = builders.build_worker_pod(JOB, TrainingJobSpec.model_validate(spec_dict), 0)
    env_list = pod["spec"]["containers"][0]["env"]
    names = [e["name"] for e in env_list]
    assert len(names) == len(set(names)), "no variable may appear twice"
    env = _env(pod["spec"]["containers"][0])
    assert env["PET_RDZV_ENDPOINT"] == "resnet-rdzv:29400"
    assert env["PET_NPROC_PER_NODE"] == "1"


def test_torchrun_budget_does_not_follow_the_jobs_failure_budget(spec_dict: dict[str, Any]) -> None:
    # Every scale-down costs each surviving agent one torchrun restart; maxRestarts counts
    # replaced pods instead.
    spec_dict["maxRestarts"] = 0
    pod = builders.build_worker_pod(JOB, TrainingJobSpec.model_validate(spec_dict), 0)
    assert int(_env(pod["spec"]["containers"][0])["PET_MAX_RESTARTS"]) >= 100


def test_checkpoint_claim_is_mounted(spec_dict: dict[str, Any]) -> None:
    spec_dict["checkpoint"] = {"claimName": "ckpt", "path": "/ckpt"}
    pod = builders.build_worker_pod(JOB, TrainingJobSpec.model_validate(spec_dict), 0)
    assert {
        "name": "trainscale-checkpoints",
        "persistentVolumeClaim": {"claimName": "ckpt"},
    } in pod["spec"]["volumes"]
    container = pod["spec"]["containers"][0]
    assert {"name": "trainscale-checkpoints", "mountPath": "/ckpt"} in container["volumeMounts"]
    assert _env(container)["TRAINSCALE_CHECKPOINT_DIR"] == "/ckpt"


def test_rendezvous_pod_and_service(spec_dict: dict[str, Any]) -> None:
    spec = TrainingJobSpec.model_validate(spec_dict)
    pod = builders.build_rendezvous_pod(JOB, spec)
    svc = builders.build_rendezvous_service(JOB, spec)
    assert pod["metadata"]["name"] == svc["metadata"]["name"] == "resnet-rdzv"
    container = pod["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/example/train:1"
    assert "nvidia.com/gpu" not in str(container["resources"])
    assert pod["spec"]["tolerations"] == spec_dict["template"]["spec"]["tolerations"]
    assert "nodeSelector" not in pod["spec"]
    # The service selects exactly the rendezvous pod's labels.
    labels = pod["metadata"]["labels"]
    assert all(labels[k] == v for k, v in svc["spec"]["selector"].items())
    assert svc["spec"]["ports"][0]["port"] == 29400
    # The inline store script is valid Python that starts a master TCPStore.
    script = container["command"][2]
    ast.parse(script)
    assert "is_master=True" in script


def test_rendezvous_image_override(spec_dict: dict[str, Any]) -> None:
    spec_dict["rendezvous"] = {"image": "python-torch:2.13", "port": 30000}
    spec = TrainingJobSpec.model_validate(spec_dict)
    pod = builders.build_rendezvous_pod(JOB, spec)
    assert pod["spec"]["containers"][0]["image"] == "python-torch:2.13"
    assert builders.build_rendezvous_endpoint(JOB, spec) == "resnet-rdzv:30000"


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("a" * 48, id="too-long"),
        pytest.param("Resnet", id="uppercase"),
        pytest.param("1job", id="leading-digit"),
        pytest.param("job.v1", id="dot"),
    ],
)
def test_job_names_that_cannot_name_children_are_rejected(name: str) -> None:
    with pytest.raises(builders.InvalidJobError, match=r"metadata\.name"):
        builders.validate_job_name(name)


def test_selector_string_is_sorted_and_exact() -> None:
    assert builders.build_selector_string(builders.build_worker_selector("j")) == (
        "app.kubernetes.io/component=worker,trainscale.dev/job-name=j"
    )
