"""Benchmark: how long a checkpoint stalls training, single file vs sharded (DCP), sync vs async.

Why this script exists: the issue asks for the training stall per checkpoint of a model of a
few hundred MB with synchronous and asynchronous saves, and for evidence behind the automatic
choice between the single-file path (unsharded models) and DCP (FSDP models). One process
(a gloo process group of size 1, so DCP runs with its collectives) trains an MLP with SGD and
momentum and checkpoints it the way the runtime does (``ElasticSession.checkpoint_payload``
handed to the writer the session would use) in four modes:

* ``file-sync``: rank 0's single file, serialised and fsynced on the training thread;
* ``file-async``: the same, the training thread only copies the state to host memory and a
  background thread writes it (the runtime's default for unsharded models);
* ``dcp-sync``: ``dcp.save`` of every rank's shard, then the rename that publishes it;
* ``dcp-async``: ``dcp.async_save`` (the runtime's default for FSDP models): staging copy on
  the training thread, write and publication in the background.

For each checkpoint it reports the **stall** (the time ``save`` blocks the training thread),
the **write** time (from ``save`` until the checkpoint is published) and the **slowdown**
of the training steps that ran while a background write was in flight (their time above the
median step time just before it: on a 2-core machine the writer competes for the CPU). The
training time a checkpoint costs is stall + slowdown. The modes take turns (rotating order)
for ``--rounds`` rounds, so that they share the machine's noise; medians per mode.

Usage::

    .venv/bin/python benchmarks/checkpoint_stall.py                       # ~270 MB model
    .venv/bin/python benchmarks/checkpoint_stall.py --hidden 256 --layers 2  # a small model
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from trainscale.trainer.examples.fsdp import build_model
from trainscale.trainer.runtime.checkpoint import CheckpointWriter
from trainscale.trainer.runtime.elastic import ElasticSession
from trainscale.trainer.runtime.sharded_checkpoint import ShardedCheckpointWriter

MODES = ("file-sync", "file-async", "dcp-sync", "dcp-async")


def _writer(mode: str, directory: Path, group: Any) -> CheckpointWriter | ShardedCheckpointWriter:
    asynchronous = mode.endswith("async")
    if mode.startswith("file"):
        return CheckpointWriter(directory, keep=1, background=asynchronous)
    return ShardedCheckpointWriter(
        directory, keep=1, rank=0, process_group=group, asynchronous=asynchronous
    )


def checkpoint_once(
    writer: CheckpointWriter | ShardedCheckpointWriter,
    session: ElasticSession,
    step: Callable[[], float],
    args: argparse.Namespace,
) -> dict[str, float]:
    """Train a little, checkpoint once, train on until the write is published."""
    baseline = statistics.median(step() for _ in range(args.steps_between))
    session.global_step += 1
    started = time.perf_counter()
    writer.save(session.global_step, session.checkpoint_payload())
    stall = time.perf_counter() - started
    slowdown = 0.0
    while writer.in_flight:  # steps above the median (noise averages out, either sign)
        slowdown += step() - baseline
    writer.wait()
    return {
        "step": baseline,
        "stall": stall,
        "write": time.perf_counter() - started,
        "slowdown": slowdown,
    }


def _train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor) -> float:
    started = time.perf_counter()
    model(x).square().mean().backward()  # type: ignore[no-untyped-call]
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=4096, help="MLP width (default 4096)")
    parser.add_argument("--layers", type=int, default=4, help="hidden layers (default 4)")
    parser.add_argument("--batch", type=int, default=8, help="samples per step")
    parser.add_argument("--rounds", type=int, default=5, help="saves per mode (interleaved)")
    parser.add_argument("--steps-between", type=int, default=3, help="steps before each save")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--directory", type=Path, help="where to write (default: a temp dir)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.directory) as tmp:
        base = Path(tmp)
        dist.init_process_group(
            "gloo", init_method=f"file://{base / 'store'}", rank=0, world_size=1
        )
        group = dist.new_group(backend="gloo")
        torch.manual_seed(0)
        model = build_model(args.hidden, args.hidden, args.layers)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        step = functools.partial(
            _train_step, model, optimizer, torch.randn(args.batch, args.hidden)
        )
        step()  # momentum buffers exist from here on
        params = sum(p.numel() for p in model.parameters())
        session = ElasticSession(
            dataset_length=1, objects={"model": model, "optimizer": optimizer}, epochs=1
        )
        print(
            f"model {params / 1e6:.1f} M parameters = {params * 4 / 1e6:.0f} MB "
            f"(+ {params * 4 / 1e6:.0f} MB momentum) | torch {torch.__version__} | "
            f"{os.cpu_count()} CPUs | load {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
            flush=True,
        )
        writers = {mode: _writer(mode, base / mode, group) for mode in args.modes}
        results: dict[str, list[dict[str, float]]] = {mode: [] for mode in args.modes}
        for round_ in range(args.rounds):  # interleaved, rotating order: shared noise
            shift = round_ % len(args.modes)
            for mode in args.modes[shift:] + args.modes[:shift]:
                # DCP's default planner stores the plain tensors of an unsharded model as it
                # stores an FSDP rank's shards; the payload is the session's own.
                session.sharded = mode.startswith("dcp")
                results[mode].append(checkpoint_once(writers[mode], session, step, args))
        print(f"{'mode':<11} {'step':>8} {'stall':>9} {'write':>9} {'slowdown':>9}  (ms, medians)")
        for mode, rows in results.items():
            m = {k: 1000 * statistics.median(r[k] for r in rows) for k in rows[0]}
            print(
                f"{mode:<11} {m['step']:8.1f} {m['stall']:9.1f} {m['write']:9.1f} "
                f"{m['slowdown']:9.1f}"
            )
        print(f"load after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
