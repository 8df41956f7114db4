"""The TrainingJob API: the pydantic models that are the single source of truth for the CRD
(:mod:`.models`), and the generator that turns them into the CustomResourceDefinition
(:mod:`.crd`); the worker counts a spec allows (:mod:`.sizes`); the node the arbitration plan
holds for each new worker (:mod:`.planned_nodes`); how a job reports (:mod:`.reporting`:
conditions, events, times); and the names of the dcgm-exporter series the operator reads
(:mod:`.dcgm`). Everything else in the operator imports its types from here; this package
imports nothing else of the operator's (only the trainer's standard-library contract, for the
rendezvous defaults)."""

from trainscale.operator.api.models import (
    ANNOTATION_PLANNED_NODE as ANNOTATION_PLANNED_NODE,
)
from trainscale.operator.api.models import (
    API_VERSION as API_VERSION,
)
from trainscale.operator.api.models import (
    AUTOSCALER_CONDITIONS as AUTOSCALER_CONDITIONS,
)
from trainscale.operator.api.models import (
    AUTOSCALER_STATUS_FIELDS as AUTOSCALER_STATUS_FIELDS,
)
from trainscale.operator.api.models import (
    COMPONENT_RENDEZVOUS as COMPONENT_RENDEZVOUS,
)
from trainscale.operator.api.models import (
    COMPONENT_WORKER as COMPONENT_WORKER,
)
from trainscale.operator.api.models import (
    CRD_NAME as CRD_NAME,
)
from trainscale.operator.api.models import (
    GPU_RESOURCE as GPU_RESOURCE,
)
from trainscale.operator.api.models import (
    GROUP as GROUP,
)
from trainscale.operator.api.models import (
    JOB_NAME_PATTERN as JOB_NAME_PATTERN,
)
from trainscale.operator.api.models import (
    KIND as KIND,
)
from trainscale.operator.api.models import (
    LABEL_COMPONENT as LABEL_COMPONENT,
)
from trainscale.operator.api.models import (
    LABEL_JOB_NAME as LABEL_JOB_NAME,
)
from trainscale.operator.api.models import (
    LABEL_MANAGED_BY as LABEL_MANAGED_BY,
)
from trainscale.operator.api.models import (
    LABEL_REPLICA_INDEX as LABEL_REPLICA_INDEX,
)
from trainscale.operator.api.models import (
    MANAGED_BY as MANAGED_BY,
)
from trainscale.operator.api.models import (
    MAX_JOB_NAME_LENGTH as MAX_JOB_NAME_LENGTH,
)
from trainscale.operator.api.models import (
    PLURAL as PLURAL,
)
from trainscale.operator.api.models import (
    SHORT_NAMES as SHORT_NAMES,
)
from trainscale.operator.api.models import (
    SINGULAR as SINGULAR,
)
from trainscale.operator.api.models import (
    VERSION as VERSION,
)
from trainscale.operator.api.models import (
    AllowedReplicas as AllowedReplicas,
)
from trainscale.operator.api.models import (
    ArbitrationStatus as ArbitrationStatus,
)
from trainscale.operator.api.models import (
    AutoscalerMemoryStatus as AutoscalerMemoryStatus,
)
from trainscale.operator.api.models import (
    AutoscalingSpec as AutoscalingSpec,
)
from trainscale.operator.api.models import (
    AutoscalingStatus as AutoscalingStatus,
)
from trainscale.operator.api.models import (
    CheckpointSpec as CheckpointSpec,
)
from trainscale.operator.api.models import (
    Condition as Condition,
)
from trainscale.operator.api.models import (
    ConditionStatus as ConditionStatus,
)
from trainscale.operator.api.models import (
    Decision as Decision,
)
from trainscale.operator.api.models import (
    MeasuredPointStatus as MeasuredPointStatus,
)
from trainscale.operator.api.models import (
    Objective as Objective,
)
from trainscale.operator.api.models import (
    Phase as Phase,
)
from trainscale.operator.api.models import (
    PlacementSpec as PlacementSpec,
)
from trainscale.operator.api.models import (
    PrometheusSpec as PrometheusSpec,
)
from trainscale.operator.api.models import (
    RendezvousSpec as RendezvousSpec,
)
from trainscale.operator.api.models import (
    SchedulableCapStatus as SchedulableCapStatus,
)
from trainscale.operator.api.models import (
    TrainingJobSpec as TrainingJobSpec,
)
from trainscale.operator.api.models import (
    TrainingJobStatus as TrainingJobStatus,
)
from trainscale.operator.api.models import (
    count_gpus as count_gpus,
)
from trainscale.operator.api.planned_nodes import (
    assign_planned_nodes as assign_planned_nodes,
)
from trainscale.operator.api.planned_nodes import (
    choose_moves as choose_moves,
)
from trainscale.operator.api.planned_nodes import (
    read_plan as read_plan,
)
from trainscale.operator.api.sizes import (
    allowed_sizes as allowed_sizes,
)
from trainscale.operator.api.sizes import (
    is_allowed as is_allowed,
)
from trainscale.operator.api.sizes import (
    nearest_allowed as nearest_allowed,
)
