"""Names of the operator's own Prometheus metrics, defined once.

Why this module exists: the names are part of the product's interface (the Grafana dashboard
and users' alerts read them). The exporter (:mod:`trainscale.operator.observability.metrics`) and the
dashboard (:mod:`trainscale.operator.observability.dashboard`) both import them from here; this module
imports nothing, so the dashboard needs no prometheus_client.
"""

from __future__ import annotations

PREFIX = "trainscale_operator_"
RECONCILE_TOTAL_NAME = PREFIX + "reconcile_total"
RECONCILE_DURATION_NAME = PREFIX + "reconcile_duration_seconds"
MANAGED_JOBS_NAME = PREFIX + "managed_jobs"
MANAGED_PODS_NAME = PREFIX + "managed_pods"
DESIRED_REPLICAS_NAME = PREFIX + "desired_replicas"
WORKERS_OFF_PLAN_NAME = PREFIX + "workers_off_plan"
ARBITRATION_CEILING_NAME = PREFIX + "arbitration_ceiling"
PREEMPTIONS_NAME = PREFIX + "preemptions_total"
ARBITRATION_PASSES_NAME = PREFIX + "arbitration_passes_total"
ARBITRATION_PASS_DURATION_NAME = PREFIX + "arbitration_pass_duration_seconds"
JOB_COST_PER_HOUR_NAME = PREFIX + "job_cost_per_hour"
SCALING_DECISIONS_NAME = PREFIX + "scaling_decisions_total"
PROMETHEUS_QUERY_ERRORS_NAME = PREFIX + "prometheus_query_errors_total"
PROMETHEUS_QUERY_DURATION_NAME = PREFIX + "prometheus_query_duration_seconds"
JOB_LOOPS_NAME = PREFIX + "job_loops"
JOB_LOOPS_CANCELLED_NAME = PREFIX + "job_loops_cancelled_total"
JOB_STATE_NAME = PREFIX + "job_state_entries"
WATCH_RELISTS_NAME = PREFIX + "watch_relists_total"
MEMORY_LIMIT_NAME = PREFIX + "memory_limit_bytes"
# prometheus_client's process collector (on Linux, in the default registry the operator
# serves): the operator's resident memory, read against MEMORY_LIMIT_NAME.
RESIDENT_MEMORY_NAME = "process_resident_memory_bytes"

# The "store" label of the job-state series: each in-process store that keeps something per job.
STORE_LABEL = "store"

# The "loop" label of the job-loop series: each TrainingJob has one loop of each kind.
LOOP_LABEL = "loop"
RECONCILE_LOOP = "reconcile"
AUTOSCALE_LOOP = "autoscale"

# Labels of the per-job series. Not "job": Prometheus owns that label (the scrape job), and a
# target's own "job" label would be renamed to exported_job unless honor_labels is on.
NAMESPACE_LABEL = "namespace"
JOB_LABEL = "trainingjob"
