"""The ``trainscale-train`` command (also ``python -m trainscale.trainer``).

Why this module exists: one command serves every place the trainer runs, and picks its role
from where it is:

* under torchrun (``LOCAL_RANK`` and ``TORCHELASTIC_RUN_ID`` set): a **worker** that trains;
* with ``PET_RDZV_ENDPOINT`` set (a worker pod): the node's **agent**, which starts workers;
* ``--local --workers N``: a **local job** (rendezvous store + N agents on 127.0.0.1);
* ``--join HOST:PORT``: one more agent for a running local job (Ctrl-C removes it);
* ``--serve-rendezvous``: the standalone c10d store of a job (the rendezvous pod).

Heavy imports (torch) happen only in the role that needs them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from trainscale.trainer.contract import environment as env_names
from trainscale.trainer.contract import rendezvous

# Flags that configure the launcher only; everything else is forwarded to every worker.
_LAUNCHER_FLAGS = {
    "--local": 0,
    "--workers": 1,
    "--min-workers": 1,
    "--max-workers": 1,
    "--join": 1,
    "--serve-rendezvous": 0,
    "--rendezvous-host": 1,
    "--rendezvous-port": 1,
    "--start-method": 1,
    "--metrics-base-port": 1,
    "--nproc-per-node": 1,
}


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``trainscale-train``."""
    parser = argparse.ArgumentParser(
        prog="trainscale-train",
        description=(
            "Elastic data-parallel PyTorch training that survives any resize. Runs a task "
            "(a factory 'package.module:function' returning trainscale.trainer.runtime.task.Task)."
        ),
    )
    parser.add_argument("--task", help="task factory, e.g. trainscale.trainer.examples.digits:task")
    train = parser.add_argument_group("training (override the task's defaults)")
    train.add_argument("--epochs", type=int, help="passes over the training data")
    train.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    train.add_argument(
        "--global-batch-size", type=int, help="samples per step over all workers (kept constant)"
    )
    train.add_argument(
        "--per-worker-batch-size",
        type=int,
        help="fixed samples per worker per step instead (global batch grows with the world)",
    )
    train.add_argument("--micro-batch-size", type=int, help="most samples per forward pass")
    train.add_argument(
        "--lr-scaling",
        choices=("none", "linear", "sqrt"),
        default="none",
        help="LR rule with --per-worker-batch-size (default: none)",
    )
    train.add_argument(
        "--reference-world-size",
        type=int,
        default=1,
        help="world size at which the task's LR is right (for --lr-scaling)",
    )
    train.add_argument("--seed", type=int, default=0, help="seeds weights and data order")
    ckpt = parser.add_argument_group("checkpoints (default: TRAINSCALE_CHECKPOINT_* variables)")
    ckpt.add_argument("--checkpoint-dir", help="shared checkpoint directory")
    ckpt.add_argument("--checkpoint-interval", type=float, help="seconds between checkpoints")
    ckpt.add_argument("--checkpoint-every-steps", type=int, help="steps between checkpoints")
    ckpt.add_argument("--checkpoint-keep", type=int, help="newest checkpoints kept")
    run = parser.add_argument_group("runtime")
    run.add_argument("--no-metrics", action="store_true", help="no Prometheus metrics")
    run.add_argument(
        "--log-interval", type=float, default=2.0, help="seconds between progress lines"
    )
    run.add_argument(
        "--collective-timeout",
        type=float,
        default=120.0,
        help="seconds before a stuck collective fails",
    )
    run.add_argument(
        "--peer-stop-grace",
        type=float,
        default=1.0,
        help="seconds a worker stopped by a leaving peer waits for its own agent's signal",
    )
    run.add_argument(
        "--loader-workers",
        type=int,
        default=0,
        help="DataLoader worker processes per rank, in the exact data order (default 0: "
        "batches are fetched in the training process)",
    )
    run.add_argument(
        "--loader-prefetch", type=int, help="micro-batches each loader worker prefetches"
    )
    local = parser.add_argument_group("local jobs")
    local.add_argument("--local", action="store_true", help="run a local elastic job")
    local.add_argument("--workers", type=int, default=1, help="agents to start (--local)")
    local.add_argument("--min-workers", type=int, default=1, help="elastic minimum (--local)")
    local.add_argument("--max-workers", type=int, default=8, help="elastic maximum (--local)")
    local.add_argument(
        "--metrics-base-port",
        type=int,
        default=0,
        help="agent i serves its pod's metrics on this port + i (--local; default 0 = off)",
    )
    local.add_argument(
        "--nproc-per-node",
        type=int,
        default=1,
        help="worker processes per agent, like a pod's GPUs (--local; default 1)",
    )
    local.add_argument("--join", metavar="HOST:PORT", help="add an agent to a running local job")
    local.add_argument(
        "--start-method",
        choices=("forkserver", "spawn"),
        default=os.environ.get(env_names.ENV_AGENT_START_METHOD) or "forkserver",
        help="how agents start workers (forkserver: torch preloaded, fast restarts)",
    )
    local.add_argument("--serve-rendezvous", action="store_true", help="run a rendezvous store")
    local.add_argument("--rendezvous-host", default="127.0.0.1", help="store address")
    local.add_argument(
        "--rendezvous-port", type=int, default=rendezvous.DEFAULT_PORT, help="store port"
    )
    return parser


def decide_role(args: argparse.Namespace, env: Mapping[str, str]) -> str:
    """Return ``worker``, ``agent``, ``local``, ``join`` or ``rendezvous`` (see module doc)."""
    if args.serve_rendezvous:
        return "rendezvous"
    if "LOCAL_RANK" in env and "TORCHELASTIC_RUN_ID" in env:
        return "worker"
    if args.join:
        return "join"
    if args.local:
        return "local"
    if env.get(env_names.PET_RDZV_ENDPOINT):
        return "agent"
    return "local"


def build_worker_argv(argv: Sequence[str]) -> list[str]:
    """Drop the launcher-only flags from ``argv``; the rest goes to every worker."""
    out: list[str] = []
    skip = 0
    for arg in argv:
        if skip:
            skip -= 1
            continue
        name = arg.split("=", 1)[0]
        if name in _LAUNCHER_FLAGS:
            skip = 0 if "=" in arg else _LAUNCHER_FLAGS[name]
            continue
        out.append(arg)
    return out


def task_of(argv: Sequence[str]) -> str:
    """Return the ``--task`` value of a worker argv."""
    return str(build_parser().parse_args(list(argv)).task)


def _run_local(args: argparse.Namespace, worker_argv: list[str]) -> int:
    import signal

    from trainscale.trainer.launch.local import LocalCluster, LocalClusterConfig

    checkpoint_dir = (
        Path(args.checkpoint_dir)
        if args.checkpoint_dir
        else Path(
            os.environ.get(env_names.ENV_CHECKPOINT_DIR) or tempfile.mkdtemp(prefix="trainscale-")
        )
    )
    config = LocalClusterConfig(
        worker_args=(*worker_argv, "--checkpoint-dir", str(checkpoint_dir)),
        min_workers=args.min_workers,
        max_workers=max(args.max_workers, args.workers),
        checkpoint_dir=checkpoint_dir,
        metrics_base_port=args.metrics_base_port or None,
        nproc_per_node=args.nproc_per_node,
        start_method=args.start_method,
    )
    cluster = LocalCluster(config)
    print(
        f"[local] rendezvous store at {cluster.endpoint}, checkpoints in {checkpoint_dir}\n"
        f"[local] add a worker:    trainscale-train --join {cluster.endpoint}   "
        "(Ctrl-C there removes it)\n"
        f"[local] starting {args.workers} worker(s); Ctrl-C here stops all (checkpoint first)",
        flush=True,
    )
    stopping: list[int] = []

    def _stop(signum: int, frame: object) -> None:
        stopping.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    try:
        cluster.start(args.workers)
        code = cluster.wait()
    except KeyboardInterrupt:
        print("[local] stopping: workers checkpoint, then exit", flush=True)
        cluster.stop()
        return 130
    finally:
        cluster.stop()
    print(f"[local] done (exit {code}); checkpoints in {checkpoint_dir}", flush=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``trainscale-train``; return the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    role = decide_role(args, os.environ)
    if role == "rendezvous":
        from trainscale.trainer.launch.local import serve_rendezvous

        return serve_rendezvous(args.rendezvous_host, args.rendezvous_port)
    if role == "join":
        from trainscale.trainer.launch.local import join_local_cluster

        return join_local_cluster(args.join)
    if not args.task:
        parser.error("--task is required (e.g. --task trainscale.trainer.examples.digits:task)")
    worker_argv = build_worker_argv(argv)
    if role == "worker":
        from trainscale.trainer.launch.worker_entry import worker_main

        return worker_main(worker_argv)
    if role == "agent":
        if args.start_method == "forkserver":
            from trainscale.trainer.launch.preload import preload_forkserver

            preload_forkserver(args.task)  # before torch: both imports run in parallel
        import faulthandler
        import signal

        faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <agent>` prints its stacks
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        from trainscale.trainer.launch.agent import run_agent

        return run_agent(worker_argv, args.task, args.start_method)
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if args.nproc_per_node < 1:
        parser.error(f"--nproc-per-node must be >= 1, got {args.nproc_per_node}")
    from trainscale.trainer.runtime.task import TaskError, resolve_factory

    try:
        resolve_factory(args.task)  # fail here, not once per worker
    except TaskError as exc:
        parser.error(str(exc))
    return _run_local(args, worker_argv)
