"""Start the worker forkserver early, with torch and the task preloaded.

Why this module exists: every resize restarts every worker process, and a fresh Python
process needs seconds to import torch (and DDP's first use imports ``torch._dynamo``). The
agent therefore starts workers from a ``multiprocessing`` forkserver that imports all of that
once; workers forked from it start in milliseconds. This module is stdlib-only so that the
agent can start the forkserver *before* importing torch itself: both imports then run in
parallel while the first rendezvous is still forming.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver

#: Modules every worker needs; imported once by the forkserver.
PRELOAD_MODULES = (
    "torch",
    "torch.distributed",
    "torch._dynamo",
    "torch.nn.parallel",
    "trainscale.trainer.runtime.worker",
)


def preload_forkserver(task_spec: str) -> None:
    """Start the forkserver now, importing :data:`PRELOAD_MODULES` and the task's module."""
    module = task_spec.partition(":")[0]
    multiprocessing.set_forkserver_preload([*PRELOAD_MODULES, *([module] if module else [])])
    multiprocessing.forkserver.ensure_running()


def _noop() -> None:
    """Target of the process that proves the forkserver is ready."""


def wait_for_forkserver() -> None:
    """Block until the forkserver has finished its preload (it serves requests only then).

    An agent calls this before joining the rendezvous: joining makes every running worker
    stop for the new world, so the job should not pause while this node is still importing.
    """
    process = multiprocessing.get_context("forkserver").Process(target=_noop, daemon=True)
    process.start()
    process.join()
