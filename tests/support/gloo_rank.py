"""One rank of a real gloo world running the trainer's own loop, in a spawned process.

Why this exists: tests that need the loop's exact behaviour at a given world size (the
gradient scale of the constant global batch, a rank killed mid-step) start their ranks with
``multiprocessing``; each rank needs the same torchrun-like environment and the same exit
without teardown. One definition for them.
"""

from __future__ import annotations

import os
import traceback
from typing import Any, NoReturn


def run_rank(
    rank: int, world_size: int, port: int, env: dict[str, str], **options: Any
) -> NoReturn:
    """Run :func:`~trainscale.trainer.runtime.worker.train` as rank ``rank`` of ``world_size``
    (rendezvous on 127.0.0.1:``port``, ``env`` on top), then exit with its code."""
    from trainscale.trainer.runtime.worker import WorkerOptions, train

    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "OMP_NUM_THREADS": "1",
            **env,
        }
    )
    try:
        code = train(WorkerOptions(**options), os.environ)
    except BaseException:
        traceback.print_exc()
        code = 1
    # Like a torchrun worker: the DDP wrapper is never destroyed (see train), and nothing is
    # torn down against a peer that may be dead.
    os._exit(code)
