"""One side of the FSDP resharding test, run under torchrun (gloo, CPU).

``save DIR``: train an FSDP2 model (Adam) a few steps, save a sharded checkpoint
asynchronously, keep training while it is written, and (rank 0) write the full model and
optimizer state *of the save moment* to ``DIR/reference.pt``.
``load DIR``: build the same model with other weights at this world size, load the
checkpoint (resharded) and check, on rank 0, that the full state equals the reference.
Prints ``RESHARD OK <world size>`` on success.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
)

from trainscale.trainer.examples.fsdp import build_model, shard
from trainscale.trainer.runtime.checkpoint import build_sharded_checkpoint_name, snapshot_to_cpu
from trainscale.trainer.runtime.sharded_checkpoint import (
    ShardedCheckpointWriter,
    build_sharded_state,
    load_sharded_state,
)

STEP = 3
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def _objects(seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = shard(build_model(8, 24, 3))
    return {"model": model, "optimizer": torch.optim.Adam(model.parameters(), lr=0.01)}


def _train_step(objects: dict[str, Any], seed: int) -> None:
    gen = torch.Generator().manual_seed(seed * 100 + dist.get_rank())
    x, y = torch.randn(16, 8, generator=gen), torch.randn(16, 1, generator=gen)
    torch.nn.functional.mse_loss(objects["model"](x), y).backward()
    objects["optimizer"].step()
    objects["optimizer"].zero_grad()


def _full(objects: dict[str, Any]) -> dict[str, Any]:
    model, optimizer = objects["model"], objects["optimizer"]
    return snapshot_to_cpu(
        {  # cloned: Adam's step counters are the live tensors
            "model": get_model_state_dict(model, options=FULL),
            "optimizer": get_optimizer_state_dict(model, optimizer, options=FULL).get(
                "state", {}
            ),  # rank 0 only
        }
    )


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): tree}


def main(mode: str, directory: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    group = dist.new_group(backend="gloo")
    if mode == "save":
        objects = _objects(seed=0)
        for step in range(STEP):
            _train_step(objects, step)
        writer = ShardedCheckpointWriter(directory, keep=2, rank=rank, process_group=group)
        writer.save(STEP, {"state": build_sharded_state(objects), "progress": {}})
        reference = _full(objects)  # collective; the async write is in flight meanwhile
        _train_step(objects, STEP)  # training goes on while the shards are written
        writer.wait()
        if rank == 0:
            torch.save(reference, directory / "reference.pt")
    else:
        objects = _objects(seed=1)
        load_sharded_state(directory / build_sharded_checkpoint_name(STEP), objects, group)
        loaded = _flatten(_full(objects))
        if rank == 0:
            expected = _flatten(torch.load(directory / "reference.pt", weights_only=True))
            assert sorted(loaded) == sorted(expected), (sorted(loaded), sorted(expected))
            for key, value in expected.items():
                assert torch.equal(torch.as_tensor(loaded[key]), torch.as_tensor(value)), (
                    key,
                    loaded[key],
                    value,
                )
    dist.barrier()
    if rank == 0:
        print(f"RESHARD OK {dist.get_world_size()}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
