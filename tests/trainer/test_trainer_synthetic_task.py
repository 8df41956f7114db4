"""The synthetic task's dials: a per-batch delay, and one per worker beyond the first.

The reaction benchmark on the real loop (``benchmarks/realloop_reaction.py``) changes the
job's speedup curve while it trains by writing ``TRAINSCALE_SYNTHETIC_SYNC_FILE``: every
micro-batch then sleeps that many milliseconds for each worker beyond the first. Checked
here with torch's fake process group standing in for a world of 1 and of 3 (sleeps are
lower bounds: a slow machine only makes them longer).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch.distributed as dist
from torch.testing._internal.distributed.fake_pg import FakeStore

from trainscale.trainer.examples import synthetic


@pytest.fixture
def world(request: pytest.FixtureRequest) -> Iterator[int]:
    size: int = request.param
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=size)
    try:
        yield size
    finally:
        dist.destroy_process_group()


def _seconds_per_batch(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> float:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    task = synthetic.task()
    batch = synthetic.make_data(4, 32)[:4]
    began = time.perf_counter()
    task.loss(task.model, batch)
    return time.perf_counter() - began


@pytest.mark.parametrize("world", [1, 3], indirect=True)
def test_the_sync_file_costs_each_batch_its_milliseconds_per_extra_worker(
    world: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync, compute = tmp_path / "sync-ms", tmp_path / "delay-ms"
    sync.write_text("150")
    compute.write_text("100")
    env = {
        "TRAINSCALE_SYNTHETIC_SYNC_FILE": str(sync),
        "TRAINSCALE_SYNTHETIC_DELAY_FILE": str(compute),
    }
    took = _seconds_per_batch(monkeypatch, env)
    expected = 0.100 + 0.150 * (world - 1)
    assert expected <= took < expected + 0.2, (world, took)
    sync.write_text("0")  # read at every batch: the curve changes while the job runs
    assert 0.100 <= _seconds_per_batch(monkeypatch, env) < 0.3
