"""ElasticLoader exports the trainer's metrics: what the autoscaling policy reads, over HTTP.

Covers (single process, a real ``/metrics`` endpoint scraped over HTTP):
- with ``TRAINSCALE_METRICS_PORT`` set (as in a TrainingJob pod) the loader serves every
  documented metric name with its type;
- the samples counter counts the samples of every completed step, the step-time histogram
  has one observation per completed step, progress, world size and checkpoints are set;
- a restarted loader counts its resume; ``metrics=False`` records nothing and serves nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from trainscale.trainer.contract import metric_names as names
from trainscale.trainer.launch.local import find_free_port
from trainscale.trainer.runtime.elastic import ElasticLoader
from trainscale.trainer.runtime.metrics import NullMetrics

from .test_trainer_metrics import assert_serves_every_documented_name, scrape

pytestmark = pytest.mark.usefixtures("restore_signals")


def _value(text: str, name: str) -> float:
    match = re.search(rf"^{name} ([-+.\deE]+|NaN)$", text, re.M)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def _model_state() -> dict:
    model = torch.nn.Linear(1, 1)
    return {"model": model, "optimizer": torch.optim.SGD(model.parameters(), lr=0.01)}


def serve_metrics_here(monkeypatch: pytest.MonkeyPatch, checkpoints: Path) -> int:
    """The environment of a single-process run serving /metrics on a free local port (which
    it returns) and checkpointing into ``checkpoints``."""
    port = find_free_port()
    monkeypatch.setenv("TRAINSCALE_METRICS_PORT", str(port))
    monkeypatch.setenv("TRAINSCALE_METRICS_ADDRESS", "127.0.0.1")
    monkeypatch.setenv("TRAINSCALE_CHECKPOINT_DIR", str(checkpoints))
    return port


@pytest.mark.slow  # real loader workers and a metrics endpoint, ~2.5 s
def test_elastic_loader_serves_the_policy_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = serve_metrics_here(monkeypatch, tmp_path)
    monkeypatch.setenv("TRAINSCALE_CHECKPOINT_EVERY_STEPS", "2")
    data = torch.utils.data.TensorDataset(torch.arange(40).float().unsqueeze(1))
    state = _model_state()

    loader = ElasticLoader(data, state=state, epochs=1, batch_size=8)
    try:
        for _ in range(4):  # 3 steps complete; the 4th batch is still being trained on
            next(loader)
        loader.session.wait_for_checkpoint()
        text = scrape(port)
    finally:
        loader.metrics.shutdown()
    assert_serves_every_documented_name(text)
    assert _value(text, names.SAMPLES_TOTAL) == 24
    assert _value(text, f"{names.STEP_SECONDS}_count") == 3
    assert _value(text, f"{names.STEP_SECONDS}_sum") > 0
    assert _value(text, names.GLOBAL_STEP) == 3
    assert _value(text, names.WORLD_SIZE) == 1
    assert _value(text, names.EPOCH_PROGRESS_RATIO) == pytest.approx(24 / 40)
    assert _value(text, names.REMAINING_SAMPLES) == 40 - 24  # one epoch of 40
    assert _value(text, names.CHECKPOINT_STEP) == 3  # saved after steps 1 and 3
    assert _value(text, names.RESUMES_TOTAL) == 0
    for phase in ("process_start", "restore", "first_step"):  # what a plain torchrun run knows
        assert f'{names.RESIZE_PHASE_SECONDS}{{phase="{phase}"}} ' in text, phase

    again = ElasticLoader(data, state=state, epochs=1, batch_size=8)  # a restarted process
    try:
        text = scrape(port)
    finally:
        again.metrics.shutdown()
    assert _value(text, names.RESUMES_TOTAL) == 1


def test_metrics_off_records_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINSCALE_CHECKPOINT_DIR", str(tmp_path))
    data = torch.utils.data.TensorDataset(torch.arange(16).float().unsqueeze(1))
    loader = ElasticLoader(data, state=_model_state(), epochs=1, batch_size=8, metrics=False)
    assert isinstance(loader.metrics, NullMetrics)
    assert sum(1 for _ in loader) == 2
