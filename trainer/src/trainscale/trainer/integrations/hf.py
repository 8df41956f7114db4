"""Hugging Face ``Trainer`` on an elastic job (the ``trainscale[hf]`` extra).

Why this module exists: the stock ``Trainer`` is not safe to resize. Its training sampler is
sharded by accelerate for the world size of the moment, and its resume skips the first
``global_step % steps_per_epoch`` batches of the *new* world's shards, so a job that resumes
at another world size repeats some samples and never sees others; its checkpoints follow
its own schedule, so a SIGTERM from a scale-down loses the work since the last one.
:class:`ElasticTrainer` is a ``Trainer`` that gets all of it from the runtime
(:class:`~trainscale.trainer.integrations._common.ForeignLoop`):

* exact resume at any world size: one optimizer step is this rank's share of a constant
  global batch (``global_batch_size``) in the runtime's data order, from the position of
  the newest trainscale checkpoint (model, optimizer, scheduler, RNG, step, data position);
  a resize mid-epoch neither repeats nor skips a sample (written to the audit log under
  ``$TRAINSCALE_AUDIT_LOG_DIR`` like the runtime's);
* SIGTERM (torchrun restarting the workers for a resize, the kubelet deleting the pod)
  becomes a stop of all ranks at the next step boundary with an atomic checkpoint of that
  step, within the grace period torchrun gives (``PET_SHUTDOWN_TIMEOUT``, which the operator
  sets from the pod's ``terminationGracePeriodSeconds``); periodic checkpoints follow
  ``$TRAINSCALE_CHECKPOINT_*``;
* the trainer's metrics (samples, step time, progress, resumes, checkpoints) under the same
  names, served where the runtime serves them (``$TRAINSCALE_METRICS_PORT`` + local rank).

Usage: replace ``Trainer(...)`` by ``ElasticTrainer(..., global_batch_size=N)`` and run the
script with ``torchrun`` (see ``examples/hf_trainer.py``)::

    trainer = ElasticTrainer(model=model, args=TrainingArguments(..., save_strategy="no"),
                             train_dataset=dataset, global_batch_size=32)
    trainer.train()

Limits: ``gradient_accumulation_steps`` must be 1 (each rank's share is one batch;
``per_device_train_batch_size`` is not used for training); the dataset must have a length
and yield what the collator turns into a dict of model inputs (columns are not removed);
``train(resume_from_checkpoint=...)`` is refused (trainscale's checkpoints are the resume
points; set ``save_strategy="no"`` unless you also want HF's). DDP only (no FSDP/DeepSpeed).
Each rank's loss is its share's mean, averaged by DDP: the global batch's mean exactly when
the world size divides the global batch (otherwise shares differ by one sample).

Hooks used: public ones (``get_train_dataloader``, ``training_step`` and ``train``
overridden, a ``TrainerCallback`` for train begin, step begin/end and train end). Not public
API (transformers 5.23): after a resume the callback sets ``state.global_step`` and the
Trainer's ``_globalstep_last_logged``/``_initial_global_step`` so that its step count, loss
averages and speed figures continue from the resumed step.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any, cast

import torch
import torch.distributed as dist

try:
    from transformers import Trainer, TrainerCallback
    from transformers.trainer_callback import TrainerControl, TrainerState
    from transformers.training_args import TrainingArguments
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "trainscale.trainer.integrations.hf needs Hugging Face transformers: "
        "pip install 'trainscale[hf]'"
    ) from exc

from trainscale.trainer.integrations._common import ForeignLoop
from trainscale.trainer.runtime import data_order
from trainscale.trainer.runtime.sampler import build_loader
from trainscale.trainer.runtime.task import Dataset

__all__ = ["SAMPLE_IDS_KEY", "ElasticTrainer"]

#: The batch key that carries the sample indices from the loader to ``training_step``.
SAMPLE_IDS_KEY = "trainscale_sample_ids"


def _batch_with_ids(pair: tuple[torch.Tensor, Any]) -> dict[str, Any]:
    ids, batch = pair
    if not isinstance(batch, Mapping):
        raise TypeError(
            f"ElasticTrainer needs the data collator to return a dict of model inputs, got "
            f"{type(batch).__name__}"
        )
    return {**batch, SAMPLE_IDS_KEY: ids}


def job_steps(args: TrainingArguments, steps_per_epoch: int) -> int:
    """The job's optimizer steps, as the Trainer counts them (``max_steps`` or epochs)."""
    if args.max_steps > 0:
        return int(args.max_steps)
    return math.ceil(args.num_train_epochs * steps_per_epoch)


class ElasticTrainer(Trainer):
    """A ``Trainer`` whose training resumes exactly at any world size (see the module doc).

    Args:
        global_batch_size: samples per optimizer step over all ranks (constant through
            resizes; every step must give each rank at least one sample).
        checkpoint_dir: overrides ``$TRAINSCALE_CHECKPOINT_DIR`` (storage shared by all
            workers; without either, nothing is checkpointed or resumed).
        metrics: serve the trainer's metrics (None: where ``$TRAINSCALE_METRICS_PORT`` is set).
        *args, **kwargs: what ``Trainer`` takes.

    Raises:
        ValueError: naming the setting that cannot work (accumulation, dataset, batch).
    """

    def __init__(
        self,
        *args: Any,
        global_batch_size: int,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        metrics: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        training = self.args
        if training.gradient_accumulation_steps != 1:
            raise ValueError(
                "ElasticTrainer needs gradient_accumulation_steps=1 (got "
                f"{training.gradient_accumulation_steps}): a step is one batch per rank"
            )
        dataset = self.train_dataset
        if dataset is None or not hasattr(dataset, "__len__"):
            raise ValueError("ElasticTrainer needs a train_dataset with a length")
        self._elastic_dataset = cast(Dataset, dataset)
        steps_per_epoch = data_order.compute_steps_per_epoch(len(dataset), global_batch_size)
        steps = job_steps(training, steps_per_epoch)
        seed = training.data_seed if training.data_seed is not None else training.seed
        self.elastic = ForeignLoop(
            dataset_length=len(dataset),
            global_batch=global_batch_size,
            epochs=math.ceil(steps / steps_per_epoch),
            seed=seed,
            max_steps=steps,
            checkpoint_dir=checkpoint_dir,
            metrics=metrics,
            loader_workers=training.dataloader_num_workers,
        )
        self.add_callback(_ElasticCallback(self))

    def train(  # type: ignore[override]
        self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any
    ) -> Any:
        """``Trainer.train``; resumes by itself from trainscale's newest checkpoint."""
        if resume_from_checkpoint not in (None, False):
            raise ValueError(
                "ElasticTrainer resumes from trainscale's checkpoints by itself (exact at any "
                f"world size): drop resume_from_checkpoint={resume_from_checkpoint!r}"
            )
        return super().train(**kwargs)

    def get_train_dataloader(self) -> torch.utils.data.DataLoader[Any]:
        """This rank's batches in the exact data order (not sharded again by accelerate)."""
        training = self.args
        workers = training.dataloader_num_workers
        return build_loader(
            self._elastic_dataset,
            self.elastic.batch_sampler(),
            collate=self.data_collator,
            workers=workers,
            pin_memory=training.dataloader_pin_memory and torch.cuda.is_available(),
            prefetch_factor=training.dataloader_prefetch_factor if workers else None,
            combine=_batch_with_ids,
        )

    def training_step(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """``Trainer.training_step``, recording the batch's sample indices and loss."""
        ids = inputs.pop(SAMPLE_IDS_KEY)
        loss: torch.Tensor = super().training_step(model, inputs, num_items_in_batch)
        self.elastic.record_batch(ids.numpy(), float(loss) * len(ids), len(ids))
        return loss


class _ElasticCallback(TrainerCallback):
    """Drives the :class:`ForeignLoop` from the Trainer's events."""

    def __init__(self, trainer: ElasticTrainer) -> None:
        self._trainer = trainer

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        objects = {"model": kwargs["model"], "optimizer": kwargs["optimizer"]}
        if kwargs.get("lr_scheduler") is not None:
            objects["scheduler"] = kwargs["lr_scheduler"]
        nccl = dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl"
        loop = self._trainer.elastic
        loop.start(objects, device=args.device if nccl else None)
        state.global_step = loop.global_step
        # Not public API: the Trainer's loss averages and speed count from these.
        for name in ("_globalstep_last_logged", "_initial_global_step"):
            if hasattr(self._trainer, name):
                setattr(self._trainer, name, loop.global_step)

    def on_step_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        self._trainer.elastic.step_started()

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        loop = self._trainer.elastic
        loop.step_done()  # does not return when the job stops here (checkpoint first)
        session = loop.session
        state.epoch = session.epoch + session.position / session.dataset_length
        if session.finished:
            control.should_training_stop = True

    def on_train_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        self._trainer.elastic.finish()
