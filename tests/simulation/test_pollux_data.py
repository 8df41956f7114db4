"""The measured Pollux step times, and the curves built from them, are what was published.

Covers:
- the transcribed files hold the rows we meant to keep (row counts per model, the packed and
  the fully spread placements) and spot rows read back from petuum/adaptdl at commit
  de25dcc9 match digit for digit;
- the committed curve files equal a fresh regeneration (``benchmarks/pollux_curves.py``);
- the converter's rules: placement names are the smallest rotation, step times interpolate
  linearly in the local batch and never extrapolate below it, gradient accumulation above the
  largest measured batch, throughput and the utilization estimate, packed placements;
- bad data gets an error naming the file, line and field;
- every generated curve loads as a simulator curve on 4-GPU nodes with counts 1..16;
- the scatter of the measured step times about their neighbours in the batch (what
  ``benchmarks/pollux_noise.py`` reports): zero on a line, the noise put into a line, one
  spike exactly, inversions counted.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from trainscale.operator.autoscaling.placement import Placement
from trainscale.operator.autoscaling.simulation import load_curve
from trainscale.testbed.pollux import (
    CURVES_DIR,
    DATA_DIR,
    MAX_COUNT,
    PolluxApp,
    PolluxDataError,
    Step,
    benchmark_curves,
    placement_key,
    read_app,
    step_time_scatter,
)

PACKED = ["1", "2", "3", "4", "14", "24", "34", "44", "144", "244", "344", "444"]
PACKED += ["1444", "2444", "3444", "4444"]
SPREAD = ["11", "111", "1111"]

ROWS = {"cifar10": 206, "bert": 95, "imagenet": 152, "yolov3": 95}
"""Data rows transcribed per model: every local batch of the 19 placements above (cifar10's
2444, 3444 and 4444 have no 1024 row in the source)."""

SPOT_ROWS = {
    "cifar10": [
        "1,32,0.0427886962890625,0.0004995360016822816",
        "144,257,0.27605113983154295,0.08329568099975586",
        "244,1024,0.850117047627767,0.11804281616210938",
        "4444,725,0.6043588320414225,0.004757919947306315",
    ],
    "bert": [
        "14,4,2.1085379868745804,1.712163719177246",
        "4444,12,1.8881946355104446,0.9953583183288576",
    ],
    "imagenet": [
        "1,200,0.923530888557434,0.0012039680004119874",
        "24,115,0.7234748363494873,0.15738294792175295",
    ],
    "yolov3": [
        "4,16,0.7603336274623871,0.0845970237404108",
        "2444,6,1.365431323647499,0.9247716560363769",
    ],
}
"""Rows copied again from the source pages (read_file on petuum/adaptdl), not from our files."""


def data_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()[1:]


@pytest.mark.parametrize("app", sorted(ROWS))
def test_transcribed_rows_are_the_intended_subset(app: str) -> None:
    lines = data_lines(DATA_DIR / app / "placements.csv")
    assert len(lines) == ROWS[app]
    assert {line.split(",")[0] for line in lines} == set(PACKED + SPREAD)
    for row in SPOT_ROWS[app]:
        assert row in lines


def test_deepspeech2_scalability_is_the_whole_file() -> None:
    path = DATA_DIR / "deepspeech2" / "scalability.csv"
    # the source file is 9233 characters; ours is a full copy
    assert len(path.read_text(encoding="utf-8")) == 9233
    lines = data_lines(path)
    assert len(lines) == 198
    assert lines[0] == "6,6,10,0.8355938792228699,0.2727739515304565"
    assert lines[-1] == "16,64,14,1.3767738342285156,0.4785972493489583"


def test_committed_curves_equal_a_regeneration() -> None:
    expected = benchmark_curves()
    committed = {p.name: p.read_text(encoding="utf-8") for p in CURVES_DIR.glob("pollux-*.csv")}
    assert committed == expected


def test_placement_names_are_the_smallest_rotation() -> None:
    assert placement_key((4, 1)) == "14"
    assert placement_key((4, 4, 1)) == "144"
    assert placement_key((1, 1, 1, 1)) == "1111"
    assert placement_key((3, 1, 2)) == "123"
    assert [
        placement_key(Placement.packed(n, workers_per_node_max=4).workers_per_node)
        for n in range(1, MAX_COUNT + 1)
    ] == PACKED
    with pytest.raises(PolluxDataError, match="1-9 workers"):
        placement_key((10,))


APP = PolluxApp("t", {"1": {10: Step(1.0, 0.1), 20: Step(2.0, 0.3)}, "2": {10: Step(1.5, 0.5)}})


def test_step_interpolates_in_the_batch_and_never_below_it() -> None:
    assert APP.step((1,), 15) == Step(pytest.approx(1.5), pytest.approx(0.2))
    assert APP.step((1,), 10) == Step(1.0, 0.1)
    assert APP.step((1,), 9) is None
    assert APP.step((1, 1), 10) is None  # placement not measured


def test_step_accumulates_gradients_above_the_largest_batch() -> None:
    # 50 = 3 micro-batches of 16.67: t, s interpolated there, then t + 2 (t - s)
    t = 1.0 + (50 / 3 - 10) / 10 * 1.0
    s = 0.1 + (50 / 3 - 10) / 10 * 0.2
    step = APP.step((1,), 50)
    assert step is not None
    assert step.step_time == pytest.approx(t + 2 * (t - s))
    assert step.sync_time == pytest.approx(s)
    # exactly twice the largest: two micro-batches of it
    assert APP.step((1,), 40) == Step(pytest.approx(2.0 + 1.7), pytest.approx(0.3))


def test_throughput_and_estimated_utilization() -> None:
    x, u = APP.throughput((2,), 10) or (0.0, 0.0)
    assert x == pytest.approx(2 * 10 / 1.5)
    assert u == pytest.approx((1.5 - 0.5) / 1.5)
    assert APP.strong_curve(20, 2)[1].samples_per_second == pytest.approx(20 / 1.5)
    assert [p.replicas for p in APP.weak_curve(10, 3)] == [1, 2]  # 3 has no measured placement


def test_bad_data_names_file_line_and_field(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    path = tmp_path / "m" / "placements.csv"
    path.write_text("placement,local_bsz,step_time,sync_time\n1,4,fast,0.1\n")
    with pytest.raises(PolluxDataError, match=r"line 2: field 'step_time' is 'fast'"):
        read_app("m", tmp_path)
    path.write_text("placement,local_bsz,step_time\n1,4,1.0\n")
    with pytest.raises(PolluxDataError, match="missing column"):
        read_app("m", tmp_path)
    path.write_text("placement,local_bsz,step_time,sync_time\n1,4,1.0,2.0\n")
    with pytest.raises(PolluxDataError, match="sync_time <= step_time"):
        read_app("m", tmp_path)
    with pytest.raises(PolluxDataError, match="cannot read"):
        read_app("absent", tmp_path)


@pytest.mark.parametrize("name", sorted(benchmark_curves()))
def test_generated_curves_load_as_simulator_curves(name: str) -> None:
    curve = load_curve(str(CURVES_DIR / name))
    assert curve.gpus_per_node == 4
    points = [curve.point(n) for n in range(1, MAX_COUNT + 1)]
    assert [p.nodes for p in points] == [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4
    assert all(p.samples_per_second > 0 and 0 < p.gpu_utilization <= 1 for p in points)


def _app(steps: dict[str, dict[int, float]]) -> PolluxApp:
    return PolluxApp("t", {k: {b: Step(t, 0.0) for b, t in v.items()} for k, v in steps.items()})


BATCHES = [32, 45, 64, 91, 129, 182, 257, 363, 513, 725, 1024]  # cifar10's, unevenly spaced


def test_step_times_on_a_line_in_the_batch_have_no_scatter() -> None:
    # slopes 0 (the batch costs nothing: no pair inverted) to 0.0105 s per sample
    line = {k: {b: 0.05 + 0.0007 * b * i for b in BATCHES} for i, k in enumerate(PACKED)}
    scatter = step_time_scatter(_app(line))
    assert scatter is not None
    assert scatter.points == len(PACKED) * (len(BATCHES) - 2)
    assert scatter.relative == pytest.approx(0.0, abs=1e-12)
    assert (scatter.inversions, scatter.pairs) == (0, len(PACKED) * (len(BATCHES) - 1))


def test_scatter_recovers_the_noise_put_into_a_line() -> None:
    rng = random.Random(20261203)  # fixed: the estimate is a statistic of these draws
    noisy = {
        f"{k}{r}": {b: (0.05 + 0.0007 * b) * (1.0 + rng.gauss(0.0, 0.05)) for b in BATCHES}
        for k in PACKED
        for r in range(3)
    }
    scatter = step_time_scatter(_app(noisy))
    assert scatter is not None
    assert 0.045 < scatter.relative < 0.055
    assert scatter.inversions > 0


def test_one_spike_is_measured_exactly_and_inverts_its_pair() -> None:
    # 1.1, 1.2 (measured 20 % slow), 1.4 at batches 10, 20, 40: the line through the outer
    # two gives 1.2 at a third of the way; the deviation 0.2 is one measurement's error
    # plus the outer two's, sqrt(1 + (2/3)^2 + (1/3)^2) of it.
    scatter = step_time_scatter(_app({"4": {10: 1.1, 20: 1.2 * 1.2, 40: 1.4}}))
    assert scatter is not None
    assert scatter.points == 1
    assert scatter.relative == pytest.approx(1.4826 * 0.2 / math.sqrt(14 / 9))
    assert scatter.p90 == pytest.approx(0.2 / math.sqrt(14 / 9))
    assert (scatter.inversions, scatter.pairs) == (1, 2)


def test_no_scatter_without_three_batches_of_one_placement() -> None:
    assert step_time_scatter(_app({"4": {10: 1.0, 20: 1.1}, "44": {10: 2.0}})) is None
