"""An ordinary torchrun DDP script, made elastic-safe by one line.

Run it like any torchrun script, e.g. two local processes::

    TRAINSCALE_CHECKPOINT_DIR=/tmp/ckpt torchrun --nproc-per-node 2 examples/elastic_torchrun.py

Stop it at any moment (Ctrl-C, SIGTERM) and start it again with any number of processes:
it resumes from the newest checkpoint at the exact sample where it stopped. In a TrainingJob
pod, run it as ``torchrun examples/elastic_torchrun.py``: the operator sets the PET_* and
TRAINSCALE_* environment.

The only trainscale line is the ``ElasticLoader`` that replaces the usual
``DataLoader(dataset, batch_size=..., sampler=DistributedSampler(dataset))``.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from trainscale.trainer.runtime.elastic import ElasticLoader


def main() -> None:
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(4096, 16), torch.randn(4096, 1))
    model = DistributedDataParallel(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    # The one line: resume + exact data order at any world size + checkpoints + clean stops.
    loader = ElasticLoader(
        data, batch_size=32, epochs=3, state={"model": model, "optimizer": optimizer}
    )

    for inputs, targets in loader:
        loss = nn.functional.mse_loss(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if dist.get_rank() == 0 and loader.step % 50 == 0:
            print(f"step {loader.step} epoch {loader.epoch} world {dist.get_world_size()} "
                  f"loss {loss.item():.4f}", flush=True)  # fmt: skip
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("TRAINSCALE_CHECKPOINT_INTERVAL_SECONDS", "30")
    main()
