"""A workload trace row naming a measured curve file (:func:`workload.read_trace`).

Covers:
- a ``curve`` ending in ``.csv`` is a curve file in the simulator's format, resolved from the
  trace's directory: the job's throughput at every count is the file's (packed on the node
  size its rows imply), efficiency relative to one worker; a parametric row beside it is
  unchanged; the pure parser given the file's text gives the same jobs (and refuses a
  curve file whose text it was not given);
- a missing curve file, a bad curve CSV, or one that does not reach the row's
  ``max_replicas`` is refused through ``trainscale simulate --workload`` naming the trace's
  line, the curve (and the curve's own line, or the resolved path), exit 2, nothing printed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from trainscale.operator.app.cli import main
from trainscale.operator.autoscaling.workload import TraceError, parse_trace, read_trace

CURVE = """count,nodes,samples_per_second,gpu_utilization
1,1,100.0,0.99
2,1,190.0,0.98
3,1,270.0,0.97
4,1,340.0,0.95
5,2,300.0,0.8
6,2,420.0,0.85
"""

TRACE = """name,arrival_seconds,total_samples,curve,min_replicas,max_replicas,requested_replicas
vit,0,1000000,0.03:0.2:50,1,8,2
measured,60,2000000,curves/m.csv,1,6,4
"""


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    (tmp_path / "curves").mkdir()
    (tmp_path / "curves" / "m.csv").write_text(CURVE)
    path = tmp_path / "trace.csv"
    path.write_text(TRACE)
    return path


def test_a_row_can_name_a_measured_curve_file(trace: Path) -> None:
    vit, measured = read_trace(str(trace))
    assert measured.name == "measured"
    assert [measured.throughput(n, 4) for n in range(1, 7)] == [100, 190, 270, 340, 300, 420]
    assert measured.efficiency(5, 4) == pytest.approx(300 / 500)
    assert (measured.min_replicas, measured.max_replicas, measured.requested) == (1, 6, 4)
    assert (measured.arrival, measured.samples, measured.restart) == (60.0, 2e6, 60.0)
    assert (vit.rate, vit.serial, vit.cliff, vit.measured) == (50.0, 0.03, 0.2, ())
    parsed = parse_trace(TRACE, name="t", curves={"curves/m.csv": CURVE})
    assert parsed == [vit, measured]
    with pytest.raises(TraceError, match=r"line 3: curve 'curves/m\.csv': no such curve file"):
        parse_trace(TRACE, name="t", curves={})


@pytest.mark.parametrize(
    ("curve", "row", "message"),
    [
        pytest.param(
            None, "curves/m.csv,1,6,4", "line 3: curve 'curves/m.csv': cannot read ", id="missing"
        ),
        pytest.param(
            CURVE.replace("3,1,270.0", "3,1,fast"),
            "curves/m.csv,1,6,4",
            "line 3: curve 'curves/m.csv': curves/m.csv line 4: field 'samples_per_second'",
            id="bad-csv",
        ),
        pytest.param(
            CURVE,
            "curves/m.csv,1,8,4",
            "line 3: curve 'curves/m.csv': curve curves/m.csv: no point at or around 7 workers",
            id="short",
        ),
    ],
)
def test_a_bad_curve_file_names_the_line_and_the_curve(
    curve: str | None,
    row: str,
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if curve is not None:
        (tmp_path / "curves").mkdir()
        (tmp_path / "curves" / "m.csv").write_text(curve)
    path = tmp_path / "trace.csv"
    path.write_text(TRACE.replace("curves/m.csv,1,6,4", row))
    assert main(["simulate", "--workload", str(path)]) == 2
    captured = capsys.readouterr()
    assert message in captured.err, captured.err
    if curve is None:
        assert str(tmp_path / "curves" / "m.csv") in captured.err
        assert "No such file" in captured.err
    assert captured.out == ""
