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
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator
from pydantic.alias_generators import to_camel

from trainscale.trainer.contract import rendezvous

GROUP = "trainscale.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TrainingJob"
PLURAL = "trainingjobs"
SINGULAR = "trainingjob"
SHORT_NAMES = ("tj",)
CRD_NAME = f"{PLURAL}.{GROUP}"

GPU_RESOURCE = "nvidia.com/gpu"
# Every object the operator creates carries this label (the arbiter tells ours from foreign
# pods by it, the pod watch selects by it).
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "trainscale"
# The job's pods carry its name, their role and, for a worker, its replica index: the
# reconcile loop builds and reads them, the arbiter reads which of a job's pods are workers
# and in what order they leave (the highest indexes first).
LABEL_JOB_NAME = "trainscale.dev/job-name"
LABEL_REPLICA_INDEX = "trainscale.dev/replica-index"
LABEL_COMPONENT = "app.kubernetes.io/component"
COMPONENT_WORKER = "worker"
COMPONENT_RENDEZVOUS = "rendezvous"
# A worker created with a node planned for it by cluster arbitration carries that node's name
# here (the pod also prefers the node, :mod:`.planned_nodes`): while it is Pending, its slot
# in the plan is taken, so the next worker is not planned onto the same GPUs.
ANNOTATION_PLANNED_NODE = "trainscale.dev/planned-node"

# The bounds every replica count lives in (spec.replicas, minReplicas, maxReplicas).
MAX_REPLICAS_LIMIT = 10000

# Kubernetes names: the rendezvous Service name must be a DNS-1035 label (<= 63 chars), and
# "{job}-rdzv" / "{job}-worker-{index}" must fit, so job names are capped well below 63. The
# CRD's CEL rule (api/crd.py) and the operator (controller/builders.py) both read these.
MAX_JOB_NAME_LENGTH = 47
JOB_NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"


def count_gpus(containers: Iterable[Mapping[str, Any]]) -> int:
    """GPUs a pod (or pod template) asks for: the sum of its containers' ``nvidia.com/gpu``
    limits, or requests where no limit is set (for an extended resource the two are equal
    when both are given)."""
    total = 0
    for container in containers:
        resources = container.get("resources") or {}
        amount = (resources.get("limits") or {}).get(GPU_RESOURCE)
        if amount is None:
            amount = (resources.get("requests") or {}).get(GPU_RESOURCE)
        if amount is not None:
            total += int(amount)
    return total


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
            "Placeholders as for gpuUtilizationQuery. The job's time left (samples left over "
            "this throughput) is read only where it is plainly the summed rate() of "
            "trainscale_trainer_samples_total; a query in another unit (tokens, the counter "
            "scaled or averaged) leaves the job's age as the payback horizon."
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
    forget_after_seconds: int | None = Field(
        default=None,
        ge=1,
        le=30 * 86400,
        description=(
            "What was measured at a larger worker count is forgotten when the job has not "
            "run there for this long, so a job whose scaling changed (a new phase, a new data "
            "pipeline, a noisy neighbour gone) explores again instead of trusting old "
            "numbers; smaller counts are kept as the efficiency reference. Empty: "
            "measurements are kept for the job's life, unless the count the job runs at "
            "measures a changed curve (then all that was measured before it is forgotten)."
        ),
    )
    prometheus: PrometheusSpec = Field(
        default_factory=PrometheusSpec,
        description="Where and how to read the job's metrics.",
    )
    cluster_arbitration: bool = Field(
        default=True,
        description=(
            "Share the cluster's GPUs with the other arbitrated jobs: the operator gives each "
            "job a ceiling from what every job would gain per GPU, admits jobs whose "
            "minReplicas fit (others wait as Queued, creating no pods) and honours "
            "PriorityClass values. false: this job autoscales on its own and its GPUs are "
            "subtracted like any other pod's."
        ),
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
    port: int = Field(
        default=rendezvous.DEFAULT_PORT, ge=1024, le=65535, description="TCP port of the store."
    )
    last_call_timeout_seconds: int = Field(
        default=rendezvous.DEFAULT_LAST_CALL_TIMEOUT_SECONDS,
        ge=1,
        le=600,
        description="torchrun rendezvous last-call timeout: how long to wait for late joiners.",
    )
    join_timeout_seconds: int = Field(
        default=rendezvous.DEFAULT_JOIN_TIMEOUT_SECONDS,
        ge=1,
        description="torchrun rendezvous join timeout.",
    )


class AllowedReplicas(_Model):
    """Worker counts the job may run with, for schedulers, batch sizes or sharding schemes that
    accept only some sizes. Every form given must hold (they combine as AND); none given means
    every count in [minReplicas, maxReplicas]."""

    values: list[Annotated[int, Field(ge=1, le=MAX_REPLICAS_LIMIT)]] | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="An explicit list of allowed worker counts, e.g. [1, 2, 4, 6, 8].",
    )
    multiple_of: int | None = Field(
        default=None,
        ge=1,
        le=MAX_REPLICAS_LIMIT,
        description=(
            "Only multiples of this count, e.g. 8 for whole 8-GPU nodes of 1-GPU workers."
        ),
    )
    powers_of_two: bool = Field(
        default=False,
        description="When true, only 1, 2, 4, 8, ... workers.",
    )

    def allows(self, replicas: int) -> bool:
        """Whether ``replicas`` satisfies every form given (bounds are checked elsewhere)."""
        if replicas < 1:
            return False
        if self.values is not None and replicas not in self.values:
            return False
        if self.multiple_of is not None and replicas % self.multiple_of:
            return False
        return not self.powers_of_two or replicas & (replicas - 1) == 0

    @model_validator(mode="after")
    def _values_are_a_set(self) -> AllowedReplicas:
        if self.values is not None and len(set(self.values)) != len(self.values):
            raise ValueError(f"values {self.values} lists a count twice")
        return self

    def describe(self) -> str:
        """The forms given, as a user wrote them (``multipleOf 8, powersOfTwo``)."""
        forms = []
        if self.values is not None:
            forms.append(f"values {sorted(self.values)}")
        if self.multiple_of is not None:
            forms.append(f"multipleOf {self.multiple_of}")
        if self.powers_of_two:
            forms.append("powersOfTwo")
        return ", ".join(forms) or "any count"


class PlacementSpec(_Model):
    """Where the scheduler should put the workers."""

    pack_workers: bool = Field(
        default=True,
        description=(
            "When true, every worker pod gets a preferred podAffinity (weight 100) to the job's "
            "other workers on kubernetes.io/hostname, so that the scheduler fills one node "
            "before the next: all-reduce inside a node is far cheaper than across nodes; and, "
            "while cluster arbitration plans the job's nodes (status.arbitration.preferredNodes), "
            "a preferred nodeAffinity (weight 100) to the node planned for each new worker, "
            "named in its annotation trainscale.dev/planned-node. Both are added to the "
            "template's own affinity (podAffinity, podAntiAffinity, nodeAffinity all stay). A "
            "required podAntiAffinity of the template's on kubernetes.io/hostname that selects "
            "the job's own workers is read: arbitration then plans one worker per node; so is "
            "a topologySpreadConstraints entry on kubernetes.io/hostname (DoNotSchedule) "
            "selecting them: a node runs at most maxSkew more of them than the node it counts "
            "holding the fewest. Set "
            "false to leave placement to the template and the scheduler alone."
        ),
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


# The counts allowedReplicas constrains, by their wire names.
_SIZED_FIELDS = ("replicas", "minReplicas", "maxReplicas")
_NOT_ALLOWED = "is not one of the counts allowedReplicas allows"


def _allowed_replicas_rule(field: str) -> dict[str, JsonValue]:
    """The CEL rule on the spec that ``field`` is a count ``allowedReplicas`` allows.

    The same test as :meth:`AllowedReplicas.allows`, written out per field (CEL has no user
    functions); powers of two as a literal list because CEL has no bit operations. The message
    is static: a ``messageExpression`` quoting the value (``string(self.replicas)``) is
    estimated by the apiserver at over 100x the CRD's CEL cost budget and refused.
    """
    value = f"self.{field}"
    allowed = "self.allowedReplicas"
    powers = ", ".join(str(2**k) for k in range(MAX_REPLICAS_LIMIT.bit_length()))
    rule = (
        f"!has({allowed}) || ("
        f"(!has({allowed}.values) || {value} in {allowed}.values) && "
        f"(!has({allowed}.multipleOf) || {value} % {allowed}.multipleOf == 0) && "
        f"(!has({allowed}.powersOfTwo) || !{allowed}.powersOfTwo || {value} in [{powers}]))"
    )
    return {
        "rule": rule,
        "message": f"{field} {_NOT_ALLOWED}",
        "fieldPath": f".{field}",
    }


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
                *[_allowed_replicas_rule(name) for name in _SIZED_FIELDS],
            ]
        }
    )

    replicas: int = Field(
        default=1,
        ge=0,
        le=MAX_REPLICAS_LIMIT,
        description=(
            "Desired number of worker pods. Written by the autoscaler when autoscaling.enabled, "
            "by you (kubectl scale) otherwise."
        ),
    )
    min_replicas: int = Field(
        default=1,
        ge=1,
        le=MAX_REPLICAS_LIMIT,
        description="Fewest workers the job may run with (torchrun --nnodes MIN).",
    )
    max_replicas: int = Field(
        ge=1,
        le=MAX_REPLICAS_LIMIT,
        description="Most workers the job may run with (torchrun --nnodes MAX).",
    )
    allowed_replicas: AllowedReplicas = Field(
        default_factory=AllowedReplicas,
        description=(
            "Worker counts the job may run with: an explicit list (values), multiples of a "
            "count (multipleOf) and/or powers of two (powersOfTwo); every form given must hold. "
            "replicas, minReplicas and maxReplicas must each be allowed (so kubectl scale to "
            "another count is refused), and the autoscaler only picks allowed counts."
        ),
    )
    placement: PlacementSpec = Field(
        default_factory=PlacementSpec,
        description=(
            "Placement of the workers: by default they prefer the nodes of the job's other "
            "workers (placement.packWorkers)."
        ),
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
    suspend: bool = Field(
        default=False,
        description=(
            "When true the job runs nothing: its workers are deleted gracefully (SIGTERM: the "
            "trainer writes a checkpoint), then its rendezvous pod; the job, its Service and "
            "its checkpoints stay, the phase is Suspended and the autoscaler pauses. Set it "
            "back to false to recreate spec.replicas workers, which resume from the "
            "checkpoint. Queue controllers such as Kueue admit a job by setting it to false."
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
    def _replicas_allowed(self) -> TrainingJobSpec:
        allowed = self.allowed_replicas
        wrong = [
            f"{name} ({count}) {_NOT_ALLOWED} ({allowed.describe()})"
            for name, count in zip(
                _SIZED_FIELDS,
                (self.replicas, self.min_replicas, self.max_replicas),
                strict=True,
            )
            if not allowed.allows(count)
        ]
        if wrong:
            raise ValueError("; ".join(wrong))
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
        return count_gpus(self.template["spec"]["containers"])


class Phase(enum.StrEnum):
    """Lifecycle of a TrainingJob, as shown in `kubectl get tj`."""

    PENDING = "Pending"
    QUEUED = "Queued"
    RUNNING = "Running"
    SCALING = "Scaling"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


ConditionStatus = Literal["True", "False", "Unknown"]


# metav1.Condition's validation, as the apiserver's own types declare it
# (k8s.io/apimachinery/pkg/apis/meta/v1/types.go): the CRD says what `kubectl` users of any
# standard condition tooling expect.
CONDITION_TYPE_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
CONDITION_REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
CONDITION_MESSAGE_MAX_LENGTH = 32768


class Condition(_Model):
    """A standard Kubernetes condition (metav1.Condition: the same fields, bounds and patterns)."""

    type: str = Field(
        max_length=316,
        pattern=CONDITION_TYPE_PATTERN,
        description="Condition type, e.g. Ready, Degraded, ScalingLimited.",
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=CONDITION_REASON_PATTERN,
        description="CamelCase machine-readable reason.",
    )
    message: str = Field(
        max_length=CONDITION_MESSAGE_MAX_LENGTH, description="Human-readable detail (may be empty)."
    )
    last_transition_time: str = Field(
        json_schema_extra={"format": "date-time"},
        description="When status last changed (RFC 3339).",
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation this condition was computed from."
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
    sync_fraction: float | None = Field(
        default=None,
        ge=0,
        lt=1,
        description="Median share (0..1) of the settled samples' step time spent blocked on "
        "gradient synchronisation.",
    )


class SchedulableCapStatus(_Model):
    """Pods beyond a count were unschedulable: the job asks for no more until a time."""

    replicas: int = Field(ge=1, description="Workers that ran when the others were unschedulable.")
    until: float = Field(description="When the job asks for more workers again (Unix seconds).")
    tries: int = Field(
        ge=1,
        description="Tries in a row that found pods beyond it unschedulable; each doubles the "
        "wait (5 minutes after the first, at most an hour).",
    )
    room: int | None = Field(
        default=None,
        ge=0,
        description="Workers of the job the cluster had free GPUs for when the last try "
        "failed; more room than that ends the wait at once (absent: not known).",
    )


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
    schedulable: SchedulableCapStatus | None = Field(
        default=None,
        description="The most workers the cluster placed when pods beyond them were "
        "unschedulable, and until when the job asks for no more.",
    )
    running_since: float | None = Field(
        default=None,
        description="When the autoscaler first decided for the job (Unix seconds): a move "
        "must pay back its restart within as long as the job has run, at least 30 minutes.",
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
    time_left_seconds: int | None = Field(
        default=None,
        ge=0,
        description="Seconds of training the job has left at its throughput, where its "
        "trainer says how many samples it has left (trainscale_trainer_remaining_samples, "
        "from its epochs or step limit): a rescale's restart must pay back within it. Empty "
        "where the trainer does not say, or where prometheus.throughputQuery is not plainly "
        "the summed rate() of its samples counter (the job's age is the horizon then).",
    )
    restart_cost_seconds: float | None = Field(
        default=None,
        ge=0,
        description="What a rescale costs the job in training time, as the decision used it: "
        "a rescale must gain enough to pay it back.",
    )
    restart_cost_source: str | None = Field(
        default=None,
        description="Where restartCostSeconds came from: spec (autoscaling.restartCostSeconds), "
        "learned (the throughput missed across a rescale), measured (the trainer's own "
        "measure of its restarts: trainscale_trainer_resize_phase_seconds and steps lost), "
        "remembered (an earlier operator's, kept in status) or default (60 s).",
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


class ArbitrationStatus(_Model):
    """The job's share of the cluster, as cluster arbitration decided it last."""

    ceiling: int | None = Field(
        default=None,
        ge=0,
        description="Most workers the job may run now (its autoscaler never asks for more).",
    )
    queued: bool = Field(
        default=False, description="The job waits for GPUs for its minReplicas: no pods."
    )
    wanted: int | None = Field(
        default=None, ge=0, description="Workers the job would take on an empty cluster."
    )
    reason: str = Field(default="", description="Why, in words.")
    preempted_by: str | None = Field(
        default=None,
        description="The job (namespace/name) of a higher priority that cluster arbitration "
        "stopped this one for; kept while this job waits, cleared once it is admitted.",
    )
    preferred_nodes: dict[str, int] = Field(
        default_factory=dict, description="Preferred packing: node name -> workers."
    )
    waiting_jobs: int = Field(default=0, ge=0, description="Jobs queued cluster-wide.")
    last_update_time: str | None = Field(
        default=None, description="When arbitration last decided (RFC 3339)."
    )


METRICS_UNAVAILABLE = "MetricsUnavailable"
SCALING_LIMITED = "ScalingLimited"
AUTOSCALER_CONDITIONS = (METRICS_UNAVAILABLE, SCALING_LIMITED)
"""The status conditions only the autoscale loop writes (and nothing else reads)."""
AUTOSCALER_STATUS_FIELDS = ("gpuUtilization", "throughput", "autoscaling")
"""The status fields only the autoscale loop writes: every pass with metrics changes them
(throughput, times), and the reconcile loop needs none of them."""


class TrainingJobStatus(_Model):
    """Observed state of a TrainingJob, written by the operator."""

    phase: Phase = Field(
        default=Phase.PENDING,
        description="Pending, Queued, Running, Scaling, Suspended, Succeeded or Failed.",
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
    last_failure_time: str | None = Field(
        default=None,
        description=(
            "When a worker last failed or was evicted (RFC 3339); missing workers are recreated "
            "only after an exponential backoff from this time (5 s doubling per restart, at "
            "most 5 min)."
        ),
    )
    create_failures: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Consecutive passes in which the apiserver refused to create a worker pod, the "
            "rendezvous pod or its Service (quota, admission, invalid template); absent once "
            "creation works again."
        ),
    )
    last_create_failure_time: str | None = Field(
        default=None,
        description=(
            "When the apiserver last refused a creation (RFC 3339); the next attempt waits an "
            "exponential backoff from this time (2 s doubling per failure, at most 5 min)."
        ),
    )
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
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
        description="Standard conditions: Ready, Degraded, ScalingLimited, ...",
    )
    autoscaling: AutoscalingStatus | None = Field(
        default=None, description="The autoscaler's last observation, model and decisions."
    )
    arbitration: ArbitrationStatus | None = Field(
        default=None, description="Cluster arbitration's ceiling for this job, or why it waits."
    )

    def to_merge_patch(self) -> dict[str, Any]:
        """This status as a JSON merge patch of the status subresource, camelCase on the wire.

        Only the fields given when the model was built are in the patch (at every depth), so
        each loop patches just the fields it owns and leaves the other loop's alone; a field
        given as None is written as null, which a merge patch reads as "delete this field".
        """
        patch: dict[str, Any] = self.model_dump(mode="json", by_alias=True, exclude_unset=True)
        return patch
