r"""A PyTorch Lightning job made elastic-safe by one callback (``pip install 'trainscale[lightning]'``).

A tiny regression ``LightningModule`` on a synthetic dataset (nothing is downloaded). Run it
like any torchrun script; an elastic job of 1 to 4 workers on one machine, around a rendezvous
store of its own (like a TrainingJob's rendezvous pod)::

    trainscale-train --serve-rendezvous &  # the job's store on 127.0.0.1:29400
    export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 TRAINSCALE_CHECKPOINT_DIR=/tmp/ckpt
    torchrun --nnodes 1:4 --max-restarts 100 --rdzv-backend c10d \
        --rdzv-endpoint 127.0.0.1:29400 --rdzv-id demo --rdzv-conf is_host=false \
        examples/lightning_module.py

then the same ``torchrun`` command in a second terminal (the job grows to 2 workers), and
Ctrl-C there (it shrinks back): every resize checkpoints at a step boundary and resumes at the
exact sample, whatever the new world size. In a TrainingJob pod, run it as
``torchrun examples/lightning_module.py``: the operator sets the PET_* and TRAINSCALE_*
environment. The trainscale lines are the ``ElasticTraining`` callback, its
``trainer_settings()`` and its ``train_dataloader()``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn

from trainscale.trainer.integrations.lightning import ElasticTraining

FEATURES = 8


def synthetic_dataset(samples: int) -> torch.utils.data.TensorDataset:
    """``y = x . w + noise`` with a fixed seed: the same dataset on every rank."""
    generator = torch.Generator().manual_seed(1234)
    x = torch.randn(samples, FEATURES, generator=generator)
    w = torch.randn(FEATURES, 1, generator=generator)
    y = x @ w + 0.01 * torch.randn(samples, 1, generator=generator)
    return torch.utils.data.TensorDataset(x, y)


class Regression(pl.LightningModule):
    """A two-layer MLP trained with SGD and a per-epoch LR schedule.

    ``step_delay_file``: a file holding milliseconds to sleep in every training step, read at
    each step (paces demos and tests; None: no delay).
    """

    def __init__(self, lr: float = 0.05, step_delay_file: str | None = None) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(FEATURES, 32), nn.ReLU(), nn.Linear(32, 1))
        self.lr = lr
        self.step_delay_file = Path(step_delay_file) if step_delay_file else None

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        if self.step_delay_file is not None:
            time.sleep(float(self.step_delay_file.read_text() or 0) / 1000)
        return loss

    def configure_optimizers(self) -> dict[str, object]:
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--global-batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers per rank")
    parser.add_argument(
        "--step-delay-file", help="milliseconds to sleep per step, re-read each step"
    )
    args = parser.parse_args(argv)

    dataset = synthetic_dataset(args.samples)
    # First: from here on a SIGTERM (a deleted pod, a resize) becomes a checkpointed stop.
    elastic = ElasticTraining(
        dataset, global_batch_size=args.global_batch_size, num_workers=args.num_workers
    )
    torch.manual_seed(0)
    model = Regression(step_delay_file=args.step_delay_file)
    trainer = pl.Trainer(
        accelerator="cpu" if not torch.cuda.is_available() else "auto",
        max_epochs=args.epochs,
        callbacks=[elastic],
        logger=False,
        enable_checkpointing=False,  # the callback checkpoints (TRAINSCALE_CHECKPOINT_DIR)
        enable_progress_bar=False,
        enable_model_summary=False,
        **elastic.trainer_settings(),
    )
    trainer.fit(model, train_dataloaders=elastic.train_dataloader())
    if trainer.is_global_zero:
        print(f"finished at step {trainer.global_step}, epoch {trainer.current_epoch}", flush=True)


if __name__ == "__main__":
    main()
