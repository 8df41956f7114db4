"""The job's c10d rendezvous, as both sides must configure it.

Why this module exists: the operator writes the rendezvous settings into every worker pod
(``PET_RDZV_CONF``) and runs the standalone store; ``trainscale-train --local`` starts the
same kind of job on one machine. Settings that differ between the two would make the local
job a poor model of the cluster, so they are written here once. Standard library only.

Workers join with ``is_host=false``: the store lives in its own process (the rendezvous pod),
so removing *any* worker never kills it.
"""

from __future__ import annotations

BACKEND = "c10d"
DEFAULT_PORT = 29400
DEFAULT_LAST_CALL_TIMEOUT_SECONDS = 1
DEFAULT_JOIN_TIMEOUT_SECONDS = 900

# torchrun rendezvous keep-alive measured stable on loopback with torch 2.13 (1 s x 2 split
# jobs in two; 2 s x 3 did not).
KEEP_ALIVE_INTERVAL_SECONDS = 2
KEEP_ALIVE_MAX_ATTEMPTS = 3

# Run by the rendezvous pod (``python -c``): a standalone c10d TCPStore that outlives every
# worker. It needs only python and torch, so the worker image can serve. The port comes from
# TRAINSCALE_RDZV_PORT (trainscale.trainer.contract.environment.ENV_RDZV_PORT).
STORE_SCRIPT = """\
import os, signal, sys, time
from torch.distributed import TCPStore
port = int(os.environ["TRAINSCALE_RDZV_PORT"])
store = TCPStore("0.0.0.0", port, is_master=True, wait_for_workers=False)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print(f"trainscale rendezvous store listening on :{port}", flush=True)
while True:
    time.sleep(3600)
"""


def build_store_command() -> list[str]:
    """The rendezvous pod's command: :data:`STORE_SCRIPT` run by the image's ``python``."""
    return ["python", "-c", STORE_SCRIPT]


def build_rdzv_conf(
    last_call_timeout_seconds: int = DEFAULT_LAST_CALL_TIMEOUT_SECONDS,
    join_timeout_seconds: int = DEFAULT_JOIN_TIMEOUT_SECONDS,
) -> str:
    """The value of ``PET_RDZV_CONF``: torchrun's ``--rdzv-conf`` for a job with a separate store."""
    return ",".join(
        [
            "is_host=false",
            f"last_call_timeout={last_call_timeout_seconds}",
            f"join_timeout={join_timeout_seconds}",
            f"keep_alive_interval={KEEP_ALIVE_INTERVAL_SECONDS}",
            f"keep_alive_max_attempt={KEEP_ALIVE_MAX_ATTEMPTS}",
        ]
    )
