"""Environment variables the operator sets on a worker pod and the trainer reads, defined once.

Why this module exists: a worker pod is configured only through its environment, so a name
the operator writes and the trainer reads differently is a job that silently ignores its
setting. Both sides import the names from here; the trainer's
:mod:`~trainscale.trainer.runtime.settings` parses the values, the operator's
:mod:`~trainscale.operator.controller.builders` writes them. Standard library only.

Two families:

* ``PET_*`` — torchrun's own flags as environment (``PET_<FLAG>``), read by torchrun and by
  ``trainscale-train``'s agent exactly as torchrun reads them;
* ``TRAINSCALE_*`` — trainscale's own settings, read by :mod:`trainscale.trainer`.
"""

from __future__ import annotations

# -- torchrun (PET_*) ----------------------------------------------------------------------------
PET_NNODES = "PET_NNODES"  # "MIN:MAX" workers (pods)
PET_NPROC_PER_NODE = "PET_NPROC_PER_NODE"  # worker processes per pod (its GPUs)
PET_RDZV_BACKEND = "PET_RDZV_BACKEND"
PET_RDZV_ENDPOINT = "PET_RDZV_ENDPOINT"  # host:port of the job's rendezvous store
PET_RDZV_ID = "PET_RDZV_ID"
PET_RDZV_CONF = "PET_RDZV_CONF"  # see trainscale.trainer.contract.rendezvous.build_rdzv_conf
PET_MAX_RESTARTS = "PET_MAX_RESTARTS"
PET_LOCAL_ADDR = "PET_LOCAL_ADDR"  # the address other nodes reach this one at
PET_MONITOR_INTERVAL = "PET_MONITOR_INTERVAL"
# Seconds the agent gives its workers to stop (checkpoint) after SIGTERM before it SIGKILLs
# them (torchrun's --shutdown-timeout, 30 s by default): the operator derives it from the
# pod's terminationGracePeriodSeconds (shutdown_timeout_for_grace below).
PET_SHUTDOWN_TIMEOUT = "PET_SHUTDOWN_TIMEOUT"
# Joining a running job hangs when the agent shares the rendezvous TCP store (torch's switch).
TORCH_DISABLE_SHARE_RDZV_TCP_STORE = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"

# -- trainscale (TRAINSCALE_*) -------------------------------------------------------------------
ENV_JOB_NAME = "TRAINSCALE_JOB_NAME"
ENV_NAMESPACE = "TRAINSCALE_NAMESPACE"
ENV_REPLICA_INDEX = "TRAINSCALE_REPLICA_INDEX"
ENV_POD_NAME = "TRAINSCALE_POD_NAME"
ENV_CHECKPOINT_DIR = "TRAINSCALE_CHECKPOINT_DIR"
ENV_CHECKPOINT_INTERVAL_SECONDS = "TRAINSCALE_CHECKPOINT_INTERVAL_SECONDS"
ENV_CHECKPOINT_EVERY_STEPS = "TRAINSCALE_CHECKPOINT_EVERY_STEPS"
ENV_CHECKPOINT_KEEP = "TRAINSCALE_CHECKPOINT_KEEP"
ENV_METRICS_PORT = "TRAINSCALE_METRICS_PORT"
ENV_METRICS_ADDRESS = "TRAINSCALE_METRICS_ADDRESS"
ENV_AUDIT_LOG_DIR = "TRAINSCALE_AUDIT_LOG_DIR"
ENV_FAST_RESIZE = "TRAINSCALE_FAST_RESIZE"
ENV_AGENT_START_METHOD = "TRAINSCALE_AGENT_START_METHOD"
# Read by the rendezvous pod's store (trainscale.trainer.contract.rendezvous.STORE_SCRIPT).
ENV_RDZV_PORT = "TRAINSCALE_RDZV_PORT"

#: Port of the worker pod's one ``/metrics`` endpoint, served by its agent with the sum of all
#: its local ranks; the operator declares it on the worker pod and annotates it for Prometheus.
#: (A worker started without our agent, e.g. by plain torchrun, serves on this + local rank.)
DEFAULT_METRICS_PORT = 9400


# The kubelet's default terminationGracePeriodSeconds, and what the agent keeps of a pod's
# grace period for itself: leaving the rendezvous and exiting after its workers stopped.
DEFAULT_TERMINATION_GRACE_SECONDS = 30
AGENT_EXIT_SECONDS = 5


def shutdown_timeout_for_grace(grace_seconds: int) -> int:
    """The agent's ``PET_SHUTDOWN_TIMEOUT`` for a pod with this termination grace period:
    the workers get all of it but the agent's own exit (at least 1 s). A checkpoint that takes
    longer than torchrun's default 30 s then completes when the pod allows it."""
    return max(1, grace_seconds - AGENT_EXIT_SECONDS)
