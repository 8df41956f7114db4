"""Names of every Prometheus metric the trainer exports, defined once.

Why this module exists: the trainer's exporter, the operator's PromQL and the Grafana
dashboard must agree on each name, so all three import them from here. It imports nothing
(no torch, no prometheus_client) so the operator can use it.

Names follow Prometheus conventions: a ``trainscale_trainer_`` prefix, the unit last
(``_seconds``, ``_ratio``), ``_total`` for counters. Each worker pod serves them once, on ``TRAINSCALE_METRICS_PORT``:
its agent sums the pod's local ranks (counters include the ranks that exited since the
agent started, so a resize is not a counter reset; a restarted container is).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

PREFIX = "trainscale_trainer_"

# Counter: training samples this pod's worker processes have processed (optimizer-step
# granularity).
# rate() of the sum over a job's workers is the job's throughput in samples per second.
SAMPLES_TOTAL = PREFIX + "samples_total"

# Histogram: wall time of one optimizer step on this worker (data, compute, communication).
STEP_SECONDS = PREFIX + "step_seconds"
# Its ``_sum`` series, a counter of the seconds this pod's steps took: the rate() of
# COMMUNICATION_SECONDS_TOTAL over the rate() of this, each summed over a job's workers, is
# the job's sync share (the operator's build_sync_fraction_query).
STEP_SECONDS_SUM = STEP_SECONDS + "_sum"
# Its count series: steps finished (a worker's mean step is the sum's rate over this one's).
STEP_SECONDS_COUNT = STEP_SECONDS + "_count"

# Counter: seconds this worker spent computing (forward, backward, optimizer), excluding
# time blocked on gradient all-reduce.
COMPUTE_SECONDS_TOTAL = PREFIX + "compute_seconds_total"

# Counter: seconds this worker spent blocked on communication (the exposed part of the
# gradient all-reduce plus the per-step coordination all-reduce).
COMMUNICATION_SECONDS_TOTAL = PREFIX + "communication_seconds_total"

# Counter: seconds this worker spent fetching and collating its samples.
DATA_SECONDS_TOTAL = PREFIX + "data_seconds_total"

# Gauge: number of worker processes in the current world (ranks over all nodes).
WORLD_SIZE = PREFIX + "world_size"

# Gauge: optimizer steps completed by the job (same on every rank; survives resumes).
GLOBAL_STEP = PREFIX + "global_step"

# Gauge: current epoch (0-based) and fraction of it done.
EPOCH = PREFIX + "epoch"
EPOCH_PROGRESS_RATIO = PREFIX + "epoch_progress_ratio"

# Gauge: training samples the job has left until its configured end (the epochs not done,
# or with a step limit the steps left at the last step's global batch, whichever ends
# first); the same on every rank. The operator divides it by the job's throughput: how long
# the job has left is how long a rescale's gain has to pay back its restart. NaN (unknown)
# until the first step.
REMAINING_SAMPLES = PREFIX + "remaining_samples"

# Gauge: training loss of the last step, averaged over all samples of the global batch.
LOSS = PREFIX + "loss"

# Counter: resumes from a checkpoint by this pod's worker processes (0 or 1 per process, one
# process per local rank; increase() over the job counts resumes x processes).
RESUMES_TOTAL = PREFIX + "resumes_total"

# Gauge: restarts torchrun's elastic agent has done for this worker (TORCHELASTIC_RESTART_COUNT;
# a scale-down or failure is one restart, a scale-up is not).
AGENT_RESTARTS = PREFIX + "agent_restarts"

# Histogram: wall time of writing one checkpoint (serialise, fsync, rename), rank 0 only.
CHECKPOINT_SAVE_SECONDS = PREFIX + "checkpoint_save_seconds"

# Gauge: optimizer step of the newest checkpoint this worker knows of.
CHECKPOINT_STEP = PREFIX + "checkpoint_step"

# Gauge with a ``phase`` label (:data:`RESIZE_PHASES`): seconds each phase of this worker's
# latest (re)start took, recorded once its first step is done; a pod reports its slowest local
# rank (all ranks wait for each other), a job its slowest pod (``max by (phase)``). While a
# restart is under way the pod keeps serving the previous one.
RESIZE_PHASE_SECONDS = PREFIX + "resize_phase_seconds"
RESIZE_PHASE_LABEL = "phase"

# The phases of a (re)start, in order (the times between consecutive marks):
#   stop           the previous world's last step on this pod -> its agent starts the
#                  rendezvous (stop at the step boundary, checkpoint, processes exit);
#   rendezvous     the agent's rendezvous (waiting for every node of the new world);
#   process_start  rendezvous done (or, without our agent, process creation) -> the worker's
#                  training function runs (fork from the preloaded forkserver, or imports);
#   process_group  torch.distributed.init_process_group;
#   setup          task, model, DDP wrapper and optimizer built;
#   restore        resume from the newest checkpoint;
#   first_step     restore done -> the first optimizer step at the new size completed.
RESIZE_PHASES: tuple[str, ...] = (
    "stop",
    "rendezvous",
    "process_start",
    "process_group",
    "setup",
    "restore",
    "first_step",
)

# Gauge: optimizer steps the latest restart trains again (the previous world's last step on
# this pod minus the step it resumed from; 0 with a checkpoint at every stop). Unknown (NaN)
# on a pod that was not part of the previous world: a job's figure is its ``max`` over pods.
RESIZE_STEPS_LOST = PREFIX + "resize_steps_lost"

# Gauge: Unix time (seconds) at which this worker's latest (re)start ended, its first step at
# the new size done: when the two gauges above were recorded. It tells which restart they
# describe: the operator reads a rescale's cost only from pods whose latest restart ended
# after the rescale (a pod still serving an older restart, or an old-world pod on its way
# out, is left out). NaN until the first restart is recorded.
RESIZE_END_TIME = PREFIX + "resize_end_time_seconds"

# Gauge: mean utilization of the pod's GPUs (its live ranks') read through NVML (0..1);
# absent without CUDA.
GPU_UTILIZATION_RATIO = PREFIX + "gpu_utilization_ratio"


class MetricName(NamedTuple):
    """One documented metric: its name, Prometheus type and a one-line description."""

    name: str
    type: Literal["counter", "gauge", "histogram"]
    doc: str


#: Every metric the trainer exports, in documentation order. The exporter builds its
#: metrics from this list, and a test checks that ``/metrics`` serves each of them.
ALL_METRICS: tuple[MetricName, ...] = (
    MetricName(SAMPLES_TOTAL, "counter", "Training samples processed by this pod's workers."),
    MetricName(STEP_SECONDS, "histogram", "Wall time of one optimizer step."),
    MetricName(
        COMPUTE_SECONDS_TOTAL, "counter", "Seconds spent in forward, backward and optimizer."
    ),
    MetricName(
        COMMUNICATION_SECONDS_TOTAL, "counter", "Seconds blocked on all-reduce communication."
    ),
    MetricName(DATA_SECONDS_TOTAL, "counter", "Seconds spent fetching and collating samples."),
    MetricName(WORLD_SIZE, "gauge", "Worker processes in the current world."),
    MetricName(GLOBAL_STEP, "gauge", "Optimizer steps completed by the job."),
    MetricName(EPOCH, "gauge", "Current epoch, counted from 0."),
    MetricName(EPOCH_PROGRESS_RATIO, "gauge", "Fraction of the current epoch done (0..1)."),
    MetricName(
        REMAINING_SAMPLES, "gauge", "Training samples left until the configured epochs or steps."
    ),
    MetricName(LOSS, "gauge", "Loss of the last step, averaged over the global batch."),
    MetricName(RESUMES_TOTAL, "counter", "Resumes from a checkpoint by this pod's processes."),
    MetricName(AGENT_RESTARTS, "gauge", "Restarts done by this worker's torchrun agent."),
    MetricName(CHECKPOINT_SAVE_SECONDS, "histogram", "Wall time of writing one checkpoint."),
    MetricName(CHECKPOINT_STEP, "gauge", "Optimizer step of the newest known checkpoint."),
    MetricName(RESIZE_PHASE_SECONDS, "gauge", "Seconds each phase of the latest (re)start took."),
    MetricName(RESIZE_STEPS_LOST, "gauge", "Optimizer steps the latest restart trains again."),
    MetricName(RESIZE_END_TIME, "gauge", "Unix time the latest (re)start's first step ended."),
    MetricName(GPU_UTILIZATION_RATIO, "gauge", "GPU utilization from NVML (0..1), CUDA only."),
)

#: The names of :data:`ALL_METRICS` that are served only on CUDA workers.
CUDA_ONLY_METRICS: frozenset[str] = frozenset({GPU_UTILIZATION_RATIO})
