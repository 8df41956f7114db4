"""The pure object builders: worker pods, the rendezvous pod and service.

Covers: names, labels, owner references; the template's fields preserved; torchrun's PET_*
settings and which of the user's env may override them; GPU count -> PET_NPROC_PER_NODE;
checkpoint claim mounting; restartPolicy; job-name validation; rendezvous store script.
"""

from __future__ import annotations

import ast
import copy
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


@pytest.mark.parametrize(
    ("grace", "user", "timeout"),
    [
        pytest.param(None, None, "25", id="the kubelet's default 30 s grace"),
        pytest.param(
            300, None, "295", id="a long grace: the workers get it, less the agent's exit"
        ),
        pytest.param(3, None, "1", id="a grace shorter than the agent's exit: at least 1 s"),
        pytest.param(300, "42", "42", id="the user's own PET_SHUTDOWN_TIMEOUT wins"),
    ],
)
def test_workers_get_the_pods_grace_period_to_stop(
    spec_dict: dict[str, Any], grace: int | None, user: str | None, timeout: str
) -> None:
    pod_spec = spec_dict["template"]["spec"]
    if grace is not None:
        pod_spec["terminationGracePeriodSeconds"] = grace
    if user is not None:
        pod_spec["containers"][0]["env"] = [{"name": "PET_SHUTDOWN_TIMEOUT", "value": user}]
    pod = builders.build_worker_pod(JOB, TrainingJobSpec.model_validate(spec_dict), 0)
    assert _env(pod["spec"]["containers"][0])["PET_SHUTDOWN_TIMEOUT"] == timeout


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


# -- packing: a preferred affinity to the job's own workers, merged with the template's ------

PACK = {
    "weight": 100,
    "podAffinityTerm": {
        "labelSelector": {"matchLabels": {"trainscale.dev/job-name": "resnet",
                                          "app.kubernetes.io/component": "worker"}},
        "topologyKey": "kubernetes.io/hostname",
    },
}  # fmt: skip
NODE_AFFINITY = {
    "requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "gpu", "operator": "In", "values": ["h100"]}]}]}
}  # fmt: skip
USER_PREFERRED = {"weight": 10, "podAffinityTerm": {
    "labelSelector": {"matchLabels": {"app": "dataset-cache"}}, "topologyKey": "zone"}}  # fmt: skip
USER_REQUIRED = [{"labelSelector": {"matchLabels": {"app": "feature-store"}},
                  "topologyKey": "kubernetes.io/hostname"}]  # fmt: skip
ANTI = {"requiredDuringSchedulingIgnoredDuringExecution": [
    {"labelSelector": {"matchLabels": {"trainscale.dev/job-name": "resnet"}},
     "topologyKey": "kubernetes.io/hostname"}]}  # fmt: skip


@pytest.mark.parametrize(
    ("user", "pack", "expected"),
    [
        pytest.param(None, True, {"podAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [PACK]}}, id="none-given"),
        pytest.param({}, True, {"podAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [PACK]}}, id="empty-given"),
        pytest.param({"nodeAffinity": NODE_AFFINITY}, True, {
            "nodeAffinity": NODE_AFFINITY,
            "podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [PACK]}},
            id="node-affinity-kept"),
        pytest.param({"podAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": USER_REQUIRED,
            "preferredDuringSchedulingIgnoredDuringExecution": [USER_PREFERRED]}}, True,
            {"podAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": USER_REQUIRED,
                "preferredDuringSchedulingIgnoredDuringExecution": [USER_PREFERRED, PACK]}},
            id="pod-affinity-terms-kept-ours-appended"),
        pytest.param({"podAntiAffinity": ANTI}, True, {
            "podAntiAffinity": ANTI,
            "podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [PACK]}},
            id="anti-affinity-kept"),
        pytest.param({"podAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [PACK]}}, True,
            {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [PACK]}},
            id="same-term-not-doubled"),
        pytest.param(None, False, None, id="opted-out-none-given"),
        pytest.param({"podAntiAffinity": ANTI}, False, {"podAntiAffinity": ANTI},
                     id="opted-out-user-affinity-untouched"),
    ],
)  # fmt: skip
def test_worker_affinity_adds_packing_and_keeps_the_templates(
    user: dict[str, Any] | None, pack: bool, expected: dict[str, Any] | None
) -> None:
    before = copy.deepcopy(user)
    assert builders.build_worker_affinity(user, "resnet", pack=pack) == expected
    assert user == before  # the template is never mutated


@pytest.mark.parametrize("pack", [True, False])
def test_worker_pod_carries_the_packing_preference_unless_opted_out(
    spec_dict: dict[str, Any], pack: bool
) -> None:
    spec_dict["template"]["spec"]["affinity"] = {"nodeAffinity": NODE_AFFINITY}
    spec_dict["placement"] = {"packWorkers": pack}
    spec = TrainingJobSpec.model_validate(spec_dict)
    affinity = builders.build_worker_pod(JOB, spec, 1)["spec"]["affinity"]
    assert affinity["nodeAffinity"] == NODE_AFFINITY
    preferred = (affinity.get("podAffinity") or {}).get(
        "preferredDuringSchedulingIgnoredDuringExecution", []
    )
    assert preferred == ([PACK] if pack else [])
    assert spec.template["spec"]["affinity"] == {"nodeAffinity": NODE_AFFINITY}


def test_packing_is_on_by_default(spec_dict: dict[str, Any]) -> None:
    pod = builders.build_worker_pod(JOB, TrainingJobSpec.model_validate(spec_dict), 0)
    assert pod["spec"]["affinity"] == {
        "podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [PACK]}}  # fmt: skip
    rdzv = builders.build_rendezvous_pod(JOB, TrainingJobSpec.model_validate(spec_dict))
    assert "affinity" not in rdzv["spec"]
