"""The metrics a worker serves: every documented name, with its type, over real HTTP.

Covers:
- each name in metric_names.ALL_METRICS (except CUDA-only ones on a CPU machine) is served
  on /metrics with the documented type and a unit-bearing name;
- recorded steps show up as values (samples counter, step histogram, gauges);
- the GPU collector degrades to absent without NVML/CUDA instead of failing the scrape.
"""

from __future__ import annotations

import re
import urllib.request

import pytest

from trainscale.trainer.contract import metric_names as names
from trainscale.trainer.launch.local import find_free_port
from trainscale.trainer.runtime.metrics import TrainerMetrics, open_nvml_handle
from trainscale.trainer.runtime.settings import MetricsSettings


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def assert_serves_every_documented_name(text: str) -> None:
    for metric in names.ALL_METRICS:
        if metric.name in names.CUDA_ONLY_METRICS:
            continue
        assert f"# TYPE {metric.name} {metric.type}" in text, metric.name
        sample = metric.name if metric.type != "histogram" else f"{metric.name}_count"
        assert re.search(rf"^{sample}(\{{[^}}]*\}})? ", text, re.M), metric.name


def test_names_have_units_and_are_unique() -> None:
    all_names = [m.name for m in names.ALL_METRICS]
    assert len(all_names) == len(set(all_names))
    for metric in names.ALL_METRICS:
        assert metric.name.startswith(names.PREFIX)
        assert metric.doc.endswith(".")
        assert (metric.type == "counter") == metric.name.endswith("_total"), metric.name
    assert names.SAMPLES_TOTAL == "trainscale_trainer_samples_total"


def test_endpoint_serves_every_documented_name() -> None:
    metrics = TrainerMetrics()
    port = metrics.serve(MetricsSettings(address="127.0.0.1"), find_free_port())
    assert port is not None
    try:
        metrics.record_resume(5)
        metrics.record_step(
            samples=32, step_seconds=0.02, compute_seconds=0.015, communication_seconds=0.004,
            data_seconds=0.001, global_step=7, epoch=1, epoch_progress=0.25, loss=0.5,
            remaining_samples=4096,
        )  # fmt: skip
        metrics.record_checkpoint(7, 0.3)
        metrics.record_world(3, agent_restarts=1)
        metrics.record_restart({"rendezvous": 1.25}, steps_lost=0)
        text = scrape(port)
    finally:
        metrics.shutdown()
    assert_serves_every_documented_name(text)
    assert f"{names.SAMPLES_TOTAL} 32.0" in text
    assert f"{names.GLOBAL_STEP} 7.0" in text
    assert f"{names.WORLD_SIZE} 3.0" in text
    assert f"{names.CHECKPOINT_SAVE_SECONDS}_count 1.0" in text
    assert f'{names.STEP_SECONDS}_bucket{{le="0.025"}} 1.0' in text
    assert f'{names.STEP_SECONDS}_bucket{{le="0.01"}} 0.0' in text
    assert f"{names.RESUMES_TOTAL} 1.0" in text
    assert f"{names.CHECKPOINT_STEP} 7.0" in text
    assert f'{names.RESIZE_PHASE_SECONDS}{{phase="rendezvous"}} 1.25' in text
    assert f"{names.RESIZE_STEPS_LOST} 0.0" in text
    assert f"{names.REMAINING_SAMPLES} 4096.0" in text


def test_gpu_metric_degrades_without_a_gpu() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this checks the CPU-only path")
    assert open_nvml_handle(0) is None
    assert TrainerMetrics().watch_gpu(0) is False
