"""A Hugging Face ``Trainer`` script made elastic-safe: ``ElasticTrainer`` instead of ``Trainer``.

Run it like any torchrun script (needs ``pip install 'trainscale[hf]'``; nothing is
downloaded: the model is a tiny BERT built from a config, the data synthetic)::

    TRAINSCALE_CHECKPOINT_DIR=/tmp/hf-ckpt torchrun --nproc-per-node 2 examples/hf_trainer.py

Stop it at any moment (Ctrl-C, SIGTERM: it checkpoints the step it is in) and start it again
with any number of processes: it resumes at the exact sample where it stopped. In a
TrainingJob pod, run it as ``torchrun examples/hf_trainer.py``: the operator sets the PET_*
and TRAINSCALE_* environment (rendezvous, checkpoint directory, metrics port, grace period).

The task: sequences of 8 tokens, labelled 1 when the first token is in the lower half of the
vocabulary, which the tiny model learns within the first epoch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformers import BertConfig, BertForSequenceClassification, TrainingArguments

from trainscale.trainer.integrations.hf import ElasticTrainer

VOCAB, LENGTH = 64, 8


class FirstTokenTask(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Synthetic sequence classification, the same on every rank (seeded)."""

    def __init__(self, samples: int, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.tokens = torch.randint(0, VOCAB, (samples, LENGTH), generator=generator)
        self.labels = (self.tokens[:, 0] < VOCAB // 2).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.tokens[index],
            "attention_mask": torch.ones(LENGTH, dtype=torch.long),
            "labels": self.labels[index],
        }


def build_trainer(
    *,
    samples: int = 4096,
    global_batch_size: int = 32,
    epochs: int = 3,
    loader_workers: int = 0,
    output_dir: str | None = None,
    **elastic: Any,
) -> ElasticTrainer:
    """The tiny model, the data and the ``ElasticTrainer`` (``elastic``: its own options)."""
    torch.manual_seed(0)  # the same initial weights on every rank
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=LENGTH * 2,
        num_labels=2,
    )
    args = TrainingArguments(
        output_dir=output_dir or str(Path(os.environ.get("TMPDIR", "/tmp")) / "hf-trainer"),
        num_train_epochs=epochs,
        learning_rate=1e-3,
        save_strategy="no",  # trainscale checkpoints (exact at any world size)
        report_to="none",
        logging_steps=20,
        disable_tqdm=True,
        dataloader_num_workers=loader_workers,
        ddp_find_unused_parameters=False,
        use_cpu=not torch.cuda.is_available(),
        seed=0,
    )
    return ElasticTrainer(
        model=BertForSequenceClassification(config),
        args=args,
        train_dataset=FirstTokenTask(samples),
        global_batch_size=global_batch_size,
        **elastic,
    )


def main() -> None:
    trainer = build_trainer()
    result = trainer.train()
    if trainer.is_world_process_zero():
        print(f"done at step {result.global_step}, loss {result.training_loss:.4f}", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TRAINSCALE_CHECKPOINT_INTERVAL_SECONDS", "30")
    main()
