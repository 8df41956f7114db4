"""The dashboard's "Where resizes spend their time" and "Steps lost per resize" panels.

Covers: one stacked series per resize phase, in the order of a restart, built from the
trainer's ``resize_phase_seconds`` gauge; evaluated by Prometheus' engine (``promtool test
rules``) on series shaped like the worker pods' endpoints, each phase of a job is its slowest
pod's, other jobs and namespaces stay apart, and a pod new to the job (steps lost unknown,
NaN) does not hide the survivors' figure.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chart.test_chart_dashboard import _expect, _panel
from trainscale.trainer.contract import metric_names as tr

PHASES_PANEL = "Where resizes spend their time"


def test_one_stacked_series_per_phase_in_restart_order() -> None:
    panel = _panel(PHASES_PANEL)
    assert panel["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"
    assert panel["fieldConfig"]["defaults"]["unit"] == "s"
    legends = [t["legendFormat"].split()[0] for t in panel["targets"]]
    assert tuple(legends) == tr.RESIZE_PHASES
    for target, phase in zip(panel["targets"], tr.RESIZE_PHASES, strict=True):
        assert tr.RESIZE_PHASE_SECONDS in target["expr"]
        assert f'{tr.RESIZE_PHASE_LABEL}="{phase}"' in target["expr"]


def _phase_series(pod: str, namespace: str, seconds: dict[str, float]) -> dict[str, str]:
    return {
        f'{tr.RESIZE_PHASE_SECONDS}{{namespace="{namespace}",pod="{pod}",phase="{p}"}}': f"{v}x10"
        for p, v in seconds.items()
    }


@pytest.mark.parametrize(("index", "phase"), list(enumerate(tr.RESIZE_PHASES)))
def test_each_phase_is_the_slowest_pods(tmp_path: Path, index: int, phase: str) -> None:
    series = {
        # digits: two pods; the survivor knows every phase, the new pod all but "stop".
        **_phase_series(
            "digits-worker-0", "ml", {p: 1.0 + i for i, p in enumerate(tr.RESIZE_PHASES)}
        ),
        **_phase_series("digits-worker-1", "ml", {p: 2.5 for p in tr.RESIZE_PHASES[1:]}),
        # another job, and the same job name in another namespace: kept apart / ignored
        **_phase_series("big-worker-0", "ml", {p: 0.25 for p in tr.RESIZE_PHASES}),
        **_phase_series("digits-worker-0", "other", {p: 99.0 for p in tr.RESIZE_PHASES}),
    }
    survivor = 1.0 + index
    slowest = survivor if phase == "stop" else max(survivor, 2.5)
    expected = {'{trainingjob="digits"}': slowest, '{trainingjob="big"}': 0.25}
    _expect(tmp_path, PHASES_PANEL, series, expected, target=index)


def test_steps_lost_ignores_a_pod_new_to_the_job(tmp_path: Path) -> None:
    series = {
        f'{tr.RESIZE_STEPS_LOST}{{namespace="ml",pod="digits-worker-0"}}': "3x10",
        f'{tr.RESIZE_STEPS_LOST}{{namespace="ml",pod="digits-worker-1"}}': " ".join(["NaN"] * 11),
    }
    _expect(tmp_path, "Steps lost per resize", series, {'{trainingjob="digits"}': 3})
