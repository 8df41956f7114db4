"""Benchmark: training samples/s with a CPU-heavy dataset, 0 vs N DataLoader workers.

Why this script exists: with ``--loader-workers 0`` the runtime fetches every sample in the
training process, so a real input pipeline (decode, augment) starves the step. This runs the
real training loop (:func:`trainscale.trainer.runtime.worker.train`, one process, world 1)
over a dataset whose every item costs a few milliseconds of numpy work (an image-like array
"decoded" from its index, then blurred and normalised ``--augment-rounds`` times), with 0 and
with N loader workers (the elastic batch sampler + a standard DataLoader), interleaved over
``--rounds`` rounds to share the machine's noise, and reports the median samples/s of each
(steady state: the first steps of each run are skipped).

Usage::

    .venv/bin/python benchmarks/loader.py --workers 0 2 --rounds 2
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import numpy as np
import torch
from torch import nn

from trainscale.trainer.runtime.task import Task
from trainscale.trainer.runtime.worker import WorkerOptions, train

WARMUP_STEPS = 5
SIZE = 32  # a 3 x 32 x 32 "image" per sample
SETTINGS = {"samples": 4096, "rounds": 20}


class DecodeAugmentDataset(torch.utils.data.Dataset[tuple[torch.Tensor, int]]):
    """Each item: a pseudo-random image from its index, blurred and normalised repeatedly."""

    def __init__(self, samples: int, rounds: int) -> None:
        self.samples, self.rounds = samples, rounds

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = np.random.default_rng(index).random((3, SIZE, SIZE), dtype=np.float32)
        for _ in range(self.rounds):
            image = 0.2 * (
                image
                + np.roll(image, 1, axis=1)
                + np.roll(image, -1, axis=1)
                + np.roll(image, 1, axis=2)
                + np.roll(image, -1, axis=2)
            )
            image = (image - image.mean()) / (image.std() + 1e-6)
        return torch.from_numpy(image), index % 10


def _loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    images, labels = batch
    return nn.functional.cross_entropy(model(images), labels)


def task() -> Task:
    """The benchmark's task (``--task __main__:task``): a linear classifier on the images."""
    return Task(
        model=nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 10)),
        train_data=DecodeAugmentDataset(SETTINGS["samples"], SETTINGS["rounds"]),
        loss=_loss,
        optimizer=functools.partial(torch.optim.SGD, lr=0.01),
        global_batch_size=32,
        epochs=1,
    )


def measure(workers: int, steps: int, batch: int) -> float:
    """Median samples/s of one training run with ``workers`` loader workers."""
    step_times: list[float] = []
    options = WorkerOptions(
        task="__main__:task",
        max_steps=steps,
        global_batch_size=batch,
        no_metrics=True,
        log_interval=1e9,
        loader_workers=workers,
    )
    assert train(options, {}, step_times=step_times) == 0
    return batch / statistics.median(step_times[WARMUP_STEPS:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run")
    parser.add_argument("--batch", type=int, default=32, help="global batch")
    parser.add_argument("--augment-rounds", type=int, default=SETTINGS["rounds"])
    args = parser.parse_args()
    SETTINGS["rounds"] = args.augment_rounds
    SETTINGS["samples"] = max(SETTINGS["samples"], args.steps * args.batch)
    torch.set_num_threads(1)
    data = DecodeAugmentDataset(64, args.augment_rounds)
    started = time.perf_counter()
    for i in range(len(data)):
        data[i]
    item_ms = (time.perf_counter() - started) / len(data) * 1000
    print(f"dataset: {item_ms:.2f} ms of numpy per item; {args.steps} steps of {args.batch}")
    results: dict[int, list[float]] = {w: [] for w in args.workers}
    for _ in range(args.rounds):
        for workers in args.workers:
            results[workers].append(measure(workers, args.steps, args.batch))
    base = statistics.median(results[args.workers[0]])
    print(f"{'loader workers':>14} | {'samples/s (median)':>18} | {'runs':<24} | vs first")
    for workers, rates in results.items():
        rate = statistics.median(rates)
        runs = ", ".join(f"{r:.0f}" for r in rates)
        print(f"{workers:>14} | {rate:>18.0f} | {runs:<24} | x{rate / base:.2f}")


if __name__ == "__main__":
    main()
