"""The TrainingJob API: pydantic models that are the single source of truth for the CRD.

Why this module exists: the CRD's OpenAPI schema, its descriptions (what ``kubectl explain``
prints), its defaults and its CEL rules are all generated from these models by
:mod:`trainscale.operator.api.crd`, and the operator parses every object it sees with the same
models. One definition means the apiserver, the operator and the docs can never disagree.

Field names are snake_case in Python and camelCase on the wire (``minReplicas``);
``TrainingJobSpec.model_validate(obj["spec"])`` takes the CRD's dict as it is.
"""

from __future__ import annotations

import enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

GROUP = "trainscale.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TrainingJob"
PLURAL = "trainingjobs"
SINGULAR = "trainingjob"
SHORT_NAMES = ("tj",)
CRD_NAME = f"{PLURAL}.{GROUP}"

GPU_RESOURCE = "nvidia.com/gpu"


class _Model(BaseModel):
    """Base for every API model: camelCase on the wire, unknown fields rejected, immutable."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_enum_values=False,
    )


class Objective(enum.StrEnum):
    """What the autoscaler optimises."""

    EFFICIENCY = "efficiency"
    BUDGET = "budget"
    UTILIZATION = "utilization"


class PrometheusSpec(_Model):
    """Where the autoscaler reads metrics, and how."""

    url: str | None = Field(
        default=None,
        description=(
            "Base URL of the Prometheus HTTP API (e.g. http://prometheus.monitoring:9090). "
            "Empty means the operator's --prometheus-url."
        ),
    )
    gpu_utilization_query: str | None = Field(
        default=None,
        description=(
            "PromQL override for the job's mean GPU busy fraction (0..1). The placeholders "
            "{namespace} and {job} are replaced with the job's escaped namespace and name."
        ),
    )
    throughput_query: str | None = Field(
        default=None,
        description=(
            "PromQL override for the job's training throughput in samples per second. "
            "Placeholders as for gpuUtilizationQuery."
        ),
    )
    timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        le=60,
        description="Timeout of each Prometheus query, in seconds.",
    )


class AutoscalingSpec(_Model):
    """How the operator resizes the job from its metrics."""

    enabled: bool = Field(
        default=False,
        description=(
            "When true the autoscaler owns spec.replicas and rewrites it every intervalSeconds; "
            "when false spec.replicas is yours (kubectl scale, HPA, KEDA)."
        ),
    )
    objective: Objective = Field(
        default=Objective.EFFICIENCY,
        description=(
            "efficiency: the highest predicted throughput whose scaling efficiency stays at or "
            "above minEfficiency. budget: the highest predicted throughput that costs at most "
            "maxCostPerHour. utilization: the largest count whose predicted GPU utilization "
            "stays at or above targetGpuUtilization."
        ),
    )
    min_efficiency: float = Field(
        default=0.7,
        gt=0,
        le=1,
        description=(
            "Floor on scaling efficiency (throughput per replica relative to the best "
            "throughput per replica) for the efficiency objective, in (0, 1]."
        ),
    )
    cost_per_gpu_hour: float = Field(
        default=1.0,
        ge=0,
        description="Price of one GPU for one hour, in your currency; used for cost reporting and the budget objective.",
    )
    max_cost_per_hour: float | None = Field(
        default=None,
        gt=0,
        description="Budget ceiling per hour for the budget objective (required by it).",
    )
    target_gpu_utilization: float = Field(
        default=0.8,
        gt=0,
        le=1,
        description="Floor on predicted GPU utilization for the utilization objective, in (0, 1].",
    )
    interval_seconds: int = Field(
        default=30,
        ge=1,
        le=3600,
        description="How often the autoscaler observes and decides, in seconds.",
    )
    scale_up_stabilization_seconds: int = Field(
        default=0,
        ge=0,
        le=86400,
        description="A scale-up must be recommended continuously this long before it is applied.",
    )
    scale_down_stabilization_seconds: int = Field(
        default=300,
        ge=0,
        le=86400,
        description="A scale-down must be recommended continuously this long before it is applied.",
    )
    settle_seconds: int = Field(
        default=75,
        ge=0,
        le=3600,
        description=(
            "Metrics are used only once the number of running workers has been stable this "
            "long, so that rate() windows and restarts never mix two sizes. Keep it at least "
            "the throughput query's rate() window (1m by default) plus a scrape interval."
        ),
    )
    restart_cost_seconds: float | None = Field(
        default=None,
        ge=0,
        description=(
            "Seconds of training lost to one rescale (rendezvous + resume). Empty means learned "
            "from observed restarts."
        ),
    )
    prometheus: PrometheusSpec = Field(
        default_factory=PrometheusSpec,
        description="Where and how to read the job's metrics.",
    )

    @model_validator(mode="after")
    def _budget_needs_a_ceiling(self) -> AutoscalingSpec:
        if self.objective is Objective.BUDGET and self.max_cost_per_hour is None:
            raise ValueError("maxCostPerHour is required when objective is 'budget'")
        return self


class CheckpointSpec(_Model):
    """Where the trainer keeps its checkpoints so that workers can resume at any world size."""

    claim_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        description=(
            "Name of a PersistentVolumeClaim (ReadWriteMany for more than one node) mounted into "
            "every worker at path. Empty means the template's own volumes provide path."
        ),
    )
    path: str = Field(
        default="/checkpoints",
        pattern=r"^/.*",
        description="Absolute directory inside the worker where checkpoints are written (TRAINSCALE_CHECKPOINT_DIR).",
    )
    interval_seconds: int = Field(
        default=300,
        ge=1,
        description="The trainer checkpoints at least this often, and on SIGTERM.",
    )
    keep: int = Field(
        default=3, ge=1, le=100, description="How many checkpoints the trainer keeps."
    )


class RendezvousSpec(_Model):
    """The per-job c10d rendezvous store that outlives every worker."""

    image: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "Image of the rendezvous pod; it needs python and torch. Empty means the image of "
            "the template's first container."
        ),
    )
    port: int = Field(default=29400, ge=1024, le=65535, description="TCP port of the store.")
    last_call_timeout_seconds: int = Field(
        default=1,
        ge=1,
        le=600,
        description="torchrun rendezvous last-call timeout: how long to wait for late joiners.",
    )
    join_timeout_seconds: int = Field(
        default=900,
        ge=1,
        description="torchrun rendezvous join timeout.",
    )


def _template_schema(schema: dict[str, Any]) -> None:
    schema.clear()
    schema.update(
        {
            "type": "object",
            "description": (
                "The worker PodTemplateSpec, exactly as in a Deployment: any pod field works "
                "(image, command, resources incl. nvidia.com/gpu, volumes, tolerations, "
                "nodeSelector, ...). The operator adds the torchrun (PET_*) environment."
            ),
            "x-kubernetes-preserve-unknown-fields": True,
            "required": ["spec"],
            "properties": {
                "metadata": {
                    "type": "object",
                    "description": "Labels and annotations copied onto every worker pod.",
                    "x-kubernetes-preserve-unknown-fields": True,
                },
                "spec": {
                    "type": "object",
                    "description": "The worker PodSpec.",
                    "x-kubernetes-preserve-unknown-fields": True,
                    "required": ["containers"],
                    "properties": {
                        "containers": {
                            "type": "array",
                            "minItems": 1,
                            "description": "Worker containers; the first runs torchrun.",
                            "items": {
                                "type": "object",
                                "x-kubernetes-preserve-unknown-fields": True,
                                "required": ["name", "image"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "image": {"type": "string", "minLength": 1},
                                },
                            },
                        }
                    },
                },
            },
        }
    )


class TrainingJobSpec(_Model):
    """Desired state of an elastic data-parallel training job."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "self.minReplicas >= 1", "message": "minReplicas must be >= 1"},
                {
                    "rule": "self.minReplicas <= self.maxReplicas",
                    "message": "minReplicas must be <= maxReplicas",
                },
                {
                    "rule": "self.minReplicas <= self.replicas && self.replicas <= self.maxReplicas",
                    "message": "replicas must be within [minReplicas, maxReplicas]",
                },
            ]
        }
    )

    replicas: int = Field(
        default=1,
        ge=0,
        le=10000,
        description=(
            "Desired number of worker pods. Written by the autoscaler when autoscaling.enabled, "
            "by you (kubectl scale) otherwise."
        ),
    )
    min_replicas: int = Field(
        default=1,
        ge=1,
        le=10000,
        description="Fewest workers the job may run with (torchrun --nnodes MIN).",
    )
    max_replicas: int = Field(
        ge=1,
        le=10000,
        description="Most workers the job may run with (torchrun --nnodes MAX).",
    )
    template: dict[str, Any] = Field(
        json_schema_extra=_template_schema,
        description="The worker PodTemplateSpec.",
    )
    autoscaling: AutoscalingSpec = Field(
        default_factory=AutoscalingSpec,
        description="Metrics-driven resizing of the job.",
    )
    checkpoint: CheckpointSpec = Field(
        default_factory=CheckpointSpec,
        description="Where the trainer keeps checkpoints.",
    )
    rendezvous: RendezvousSpec = Field(
        default_factory=RendezvousSpec,
        description="The job's rendezvous store.",
    )
    max_restarts: int = Field(
        default=10,
        ge=0,
        le=10000,
        description=(
            "How many failed or evicted worker pods are replaced before the job is Failed. "
            "(torchrun's own restart budget, spent on every scale-down, is set much higher.)"
        ),
    )

    @model_validator(mode="after")
    def _replicas_within_bounds(self) -> TrainingJobSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"minReplicas ({self.min_replicas}) must be <= maxReplicas ({self.max_replicas})"
            )
        if not self.min_replicas <= self.replicas <= self.max_replicas:
            raise ValueError(
                f"replicas ({self.replicas}) must be within "
                f"[minReplicas={self.min_replicas}, maxReplicas={self.max_replicas}]"
            )
        return self

    @model_validator(mode="after")
    def _template_has_a_container(self) -> TrainingJobSpec:
        spec = self.template.get("spec")
        containers = spec.get("containers") if isinstance(spec, dict) else None
        if not isinstance(containers, list) or not containers:
            raise ValueError("template.spec.containers must list at least one container")
        for i, container in enumerate(containers):
            if not isinstance(container, dict) or not container.get("image"):
                raise ValueError(f"template.spec.containers[{i}].image is required")
            if not container.get("name"):
                raise ValueError(f"template.spec.containers[{i}].name is required")
        return self

    @property
    def gpus_per_replica(self) -> int:
        """GPUs one worker asks for: the sum of nvidia.com/gpu limits (or requests) of its containers."""
        total = 0
        for container in self.template["spec"]["containers"]:
            resources = container.get("resources") or {}
            amount = (resources.get("limits") or {}).get(GPU_RESOURCE)
            if amount is None:
                amount = (resources.get("requests") or {}).get(GPU_RESOURCE)
            if amount is not None:
                total += int(amount)
        return total


class Phase(enum.StrEnum):
    """Lifecycle of a TrainingJob, as shown in `kubectl get tj`."""

    PENDING = "Pending"
    RUNNING = "Running"
    SCALING = "Scaling"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class Condition(_Model):
    """A standard Kubernetes condition (metav1.Condition)."""

    type: str = Field(description="Condition type, e.g. Ready, Degraded, ScalingLimited.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(default="", description="CamelCase machine-readable reason.")
    message: str = Field(default="", description="Human-readable detail.")
    last_transition_time: str | None = Field(
        default=None, description="When status last changed (RFC 3339)."
    )
    observed_generation: int | None = Field(
        default=None, description="metadata.generation this condition was computed from."
    )


class Decision(_Model):
    """One autoscaling decision, kept in status for `kubectl describe`."""

    time: str = Field(description="When the decision was taken (RFC 3339).")
    from_replicas: int = Field(description="Replicas before the decision.")
    to_replicas: int = Field(description="Replicas the autoscaler asked for.")
    reason: str = Field(description="Why, in words.")


class MeasuredPointStatus(_Model):
    """One settled measurement the autoscaler remembers: a count at a node span."""

    replicas: int = Field(ge=1, description="Workers.")
    nodes: int = Field(ge=1, description="Nodes the workers spanned.")
    samples_per_second: float | None = Field(
        default=None, description="Median job throughput of the settled samples."
    )
    gpu_utilization: float | None = Field(
        default=None, description="Median GPU busy fraction (0..1) of the settled samples."
    )
    samples: int = Field(ge=1, description="Settled samples the medians are of.")


class AutoscalerMemoryStatus(_Model):
    """The autoscaler's compact memory: an operator restart resumes from it without exploring."""

    points: list[MeasuredPointStatus] = Field(
        default_factory=list, description="Settled measurements, one per (replicas, nodes)."
    )
    relative_noise: float | None = Field(
        default=None, description="Relative noise of one settled sample, as measured."
    )
    restart_cost_seconds: float | None = Field(
        default=None, description="Restart cost learned from observed restarts (seconds)."
    )
    last_scale_time: float | None = Field(
        default=None, description="When spec.replicas last changed (Unix seconds)."
    )
    forced_from: list[int] = Field(
        default_factory=list,
        description="Counts the job was pushed off (unschedulable pods, a ceiling); it returns "
        "to them when the cap lifts.",
    )
    left_downwards: list[int] = Field(
        default_factory=list, description="Counts the job chose to leave for fewer replicas."
    )


class AutoscalingStatus(_Model):
    """What the autoscaler saw and decided last."""

    gpu_utilization: float | None = Field(
        default=None, description="Job mean GPU busy fraction (0..1) at the last observation."
    )
    throughput: float | None = Field(
        default=None, description="Job throughput in samples per second at the last observation."
    )
    efficiency: float | None = Field(
        default=None, description="Scaling efficiency at the current replica count (0..1)."
    )
    cost_per_hour: float | None = Field(
        default=None, description="replicas x GPUs per replica x costPerGpuHour."
    )
    recommended_replicas: int | None = Field(
        default=None, description="What the policy recommends now (before stabilization)."
    )
    reason: str | None = Field(default=None, description="Why, in words.")
    step: str | None = Field(
        default=None,
        description="The step of the decision that decided (hard limits, metrics freshness, "
        "settling, fit, objective, exploration, pending pods, restart payback, confidence, "
        "stabilization).",
    )
    model: dict[str, float] = Field(
        default_factory=dict,
        description="Fitted speedup model parameters (e.g. computeSeconds, syncSecondsPerReplica).",
    )
    last_observation_time: str | None = Field(
        default=None, description="Timestamp of the last usable observation (RFC 3339)."
    )
    last_scale_time: str | None = Field(
        default=None, description="When the autoscaler last changed spec.replicas (RFC 3339)."
    )
    decisions: list[Decision] = Field(
        default_factory=list, description="The most recent rescale decisions, newest last."
    )
    memory: AutoscalerMemoryStatus | None = Field(
        default=None,
        description="What the autoscaler learned (settled measurements, restart cost), kept "
        "so that an operator restart resumes without exploring again.",
    )


class TrainingJobStatus(_Model):
    """Observed state of a TrainingJob, written by the operator."""

    phase: Phase = Field(
        default=Phase.PENDING, description="Pending, Running, Scaling, Succeeded or Failed."
    )
    replicas: int = Field(
        default=0, ge=0, description="Worker pods that exist and are not terminating."
    )
    ready_replicas: int = Field(default=0, ge=0, description="Worker pods that are Ready.")
    pending_replicas: int = Field(
        default=0, ge=0, description="Worker pods not yet running (e.g. unschedulable)."
    )
    selector: str = Field(
        default="", description="Label selector of the workers (scale subresource)."
    )
    restarts: int = Field(default=0, ge=0, description="Failed or evicted workers replaced so far.")
    observed_generation: int | None = Field(
        default=None, description="metadata.generation last reconciled."
    )
    gpu_utilization: float | None = Field(
        default=None, description="Job mean GPU busy fraction (0..1), for kubectl get."
    )
    throughput: float | None = Field(
        default=None, description="Job throughput in samples per second, for kubectl get."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Standard conditions: Ready, Degraded, ScalingLimited, ...",
    )
    autoscaling: AutoscalingStatus | None = Field(
        default=None, description="The autoscaler's last observation, model and decisions."
    )
