"""Where a worker's (re)start spends its time: the ``resize_phase_seconds`` and
``resize_steps_lost`` gauges.

Covers:
- marks -> phases is exact, leaves out a phase with an unknown end, never goes negative;
- steps lost: previous world's last step minus the resumed step, unknown without a previous
  world on this pod;
- a world-end mark is consumed by exactly one rendezvous (a later restart without a clean
  stop does not reuse it);
- the endpoint serves one series per known phase, refuses an unknown phase by name;
- a pod whose new ranks have not finished their first step keeps serving the previous
  restart's phases, then the new ones;
- real elastic torch (gloo, our agent, 1 -> 2 -> 1 pods): after each resize the surviving
  pod serves all seven phases with sane values and 0 steps lost, the joining pod its own
  phases and "unknown" steps lost; each pod's local rank 0 logs them (what benchmarks read).
"""

from __future__ import annotations

import math
import re
import signal
import time
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from tests.support.audit import read_audit
from tests.trainer.test_trainer_pod_metrics import _Job
from trainscale.trainer.contract import metric_names as names
from trainscale.trainer.launch.local import LocalCluster, find_free_port, find_free_ports
from trainscale.trainer.runtime.metrics import PodMetricsCollector, TrainerMetrics
from trainscale.trainer.runtime.phases import (
    RestartMarks,
    compute_restart_phases,
    compute_steps_lost,
    note_rendezvous,
    note_world_end,
    read_agent_marks,
)
from trainscale.trainer.runtime.settings import MetricsSettings

_MARKS = RestartMarks(
    world_end=100.0,
    rendezvous_started=100.5,
    rendezvous_done=102.0,
    process_created=101.0,
    runtime_ready=102.25,
    process_group_ready=103.0,
    setup_done=103.5,
    restore_done=104.0,
    first_step_done=105.5,
)


def test_marks_become_consecutive_phases() -> None:
    assert compute_restart_phases(_MARKS) == {
        "stop": 0.5,
        "rendezvous": 1.5,
        "process_start": 0.25,
        "process_group": 0.75,
        "setup": 0.5,
        "restore": 0.5,
        "first_step": 1.5,
    }
    assert tuple(compute_restart_phases(_MARKS)) == names.RESIZE_PHASES


def test_a_phase_with_an_unknown_end_is_left_out() -> None:
    # No agent (plain torchrun): no stop, no rendezvous; the process start counts from the
    # process's creation instead.
    plain = replace(_MARKS, world_end=None, rendezvous_started=None, rendezvous_done=None)
    phases = compute_restart_phases(plain)
    assert "stop" not in phases and "rendezvous" not in phases
    assert phases["process_start"] == 1.25
    skewed = replace(_MARKS, rendezvous_started=99.0)  # marks out of order: 0, not negative
    assert compute_restart_phases(skewed)["stop"] == 0.0


def test_steps_lost() -> None:
    assert compute_steps_lost(40, 40) == 0
    assert compute_steps_lost(47, 40) == 7
    assert compute_steps_lost(47, 0) == 47  # no checkpoint: everything again
    assert compute_steps_lost(None, 40) is None  # this pod was not in the previous world


def test_a_world_end_mark_serves_one_restart(tmp_path: Path) -> None:
    directory = str(tmp_path)
    note_world_end(directory, 12, when=50.0)
    note_rendezvous(directory, 51.0, 52.0)
    assert read_agent_marks(directory) == {
        "rendezvous_started": 51.0,
        "rendezvous_done": 52.0,
        "world_end": {"step": 12, "time": 50.0},
    }
    note_rendezvous(directory, 60.0, 61.0)  # the next restart came without a clean stop
    assert read_agent_marks(directory)["world_end"] == {}
    assert read_agent_marks(None) == {}
    note_world_end(None, 3)  # no metrics directory: nothing to do, no error


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def _phases(text: str) -> dict[str, float]:
    pattern = rf'^{names.RESIZE_PHASE_SECONDS}{{{names.RESIZE_PHASE_LABEL}="(\w+)"}} (\S+)$'
    return {m.group(1): float(m.group(2)) for m in re.finditer(pattern, text, re.M)}


def _steps_lost(text: str) -> float:
    return _gauge(text, names.RESIZE_STEPS_LOST)


def _gauge(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    assert match, text
    return float(match.group(1))


def test_endpoint_serves_one_series_per_known_phase() -> None:
    metrics = TrainerMetrics()
    port = metrics.serve(MetricsSettings(address="127.0.0.1"), find_free_port())
    assert port is not None
    try:
        before = _scrape(port)
        recorded = time.time()
        metrics.record_restart({"rendezvous": 1.5, "first_step": 0.25}, steps_lost=0)
        after = _scrape(port)
        metrics.record_restart({"rendezvous": 1.0}, steps_lost=0, ended=1234.5)
        told = _scrape(port)
    finally:
        metrics.shutdown()
    assert _phases(before) == {}
    assert math.isnan(_steps_lost(before))
    assert math.isnan(_gauge(before, names.RESIZE_END_TIME))
    assert _phases(after) == {"rendezvous": 1.5, "first_step": 0.25}
    assert _steps_lost(after) == 0.0
    # when it ended: the operator tells a rescale's restart from an older one by it
    assert recorded <= _gauge(after, names.RESIZE_END_TIME) <= time.time()
    assert _gauge(told, names.RESIZE_END_TIME) == 1234.5
    with pytest.raises(ValueError, match="warmup"):
        metrics.record_restart({"warmup": 1.0}, steps_lost=None)


def _pod_phases(pod: PodMetricsCollector) -> tuple[dict[str, float], float]:
    families = {f.name: f for f in pod.collect()}
    phases = {
        s.labels[names.RESIZE_PHASE_LABEL]: s.value
        for s in families[names.RESIZE_PHASE_SECONDS].samples
    }
    return phases, families[names.RESIZE_STEPS_LOST].samples[0].value


def _pod_end(pod: PodMetricsCollector) -> float:
    families = {f.name: f for f in pod.collect()}
    return float(families[names.RESIZE_END_TIME].samples[0].value)


def test_a_pod_serves_the_previous_restart_until_the_new_one_has_stepped(
    tmp_path: Path,
) -> None:
    old = TrainerMetrics()
    old.publish_to(tmp_path, 0)
    old.record_restart({"rendezvous": 2.0, "restore": 1.0}, steps_lost=0, ended=100.0)
    old.shutdown()  # the old world's rank exits (a restart under way)
    pod = PodMetricsCollector(tmp_path)
    assert _pod_phases(pod) == ({"rendezvous": 2.0, "restore": 1.0}, 0.0)
    new = TrainerMetrics()
    new.publish_to(tmp_path, 0)  # the new world's rank, before its first step
    assert _pod_phases(pod) == ({"rendezvous": 2.0, "restore": 1.0}, 0.0)
    assert _pod_end(pod) == 100.0  # and says it is the older restart
    new.record_restart({"rendezvous": 3.0, "restore": 0.5}, steps_lost=4, ended=200.0)
    assert _pod_phases(pod) == ({"rendezvous": 3.0, "restore": 0.5}, 4.0)
    assert _pod_end(pod) == 200.0
    other = TrainerMetrics()  # a second local rank, slower to restore: the pod's figure
    other.publish_to(tmp_path, 1)
    other.record_restart({"rendezvous": 3.0, "restore": 0.75}, steps_lost=4, ended=201.0)
    assert _pod_phases(pod) == ({"rendezvous": 3.0, "restore": 0.75}, 4.0)
    assert _pod_end(pod) == 201.0
    new.shutdown()
    other.shutdown()


# -- real elastic torch jobs --------------------------------------------------------------------


def _poll_metrics(
    port: int, what: str, pred: Callable[[str], object], logs: Path, timeout: float = 180
) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        try:
            text = _scrape(port)
        except OSError:
            text = ""  # endpoint not up yet
        if text and pred(text):
            return text
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; logs in {logs}; last scrape:\n{text}")


def _world(text: str) -> float:
    match = re.search(rf"^{names.WORLD_SIZE} (\S+)$", text, re.M)
    return float(match.group(1)) if match else math.nan


def _assert_sane(phases: dict[str, float], expected: tuple[str, ...]) -> None:
    assert tuple(phases) == expected, phases
    assert all(0.0 <= seconds < 120.0 for seconds in phases.values()), phases
    assert phases["rendezvous"] > 0.0 and phases["restore"] > 0.0, phases


@pytest.mark.slow  # real agents and gloo workers, two resizes (about 40 s)
def test_resizes_export_their_phases_and_lose_no_steps(tmp_path: Path) -> None:
    job = _Job(tmp_path, nproc=1)  # paced synthetic training, one metrics port per pod
    base_port = find_free_ports(2, consecutive=True)[0]  # pod i serves on base + i
    config = replace(job.config, metrics_base_port=base_port)
    logs = tmp_path / "logs"
    with LocalCluster(config, log_dir=logs) as cluster:
        cluster.start(1)
        first = _poll_metrics(base_port, "the first start", _phases, logs)
        # A first start: no previous world, so no stop phase and nothing to lose or restore
        # beyond looking for a checkpoint.
        assert "stop" not in _phases(first) and math.isnan(_steps_lost(first))
        cluster.add_worker()  # 1 -> 2: pod 0 stops at a step boundary, checkpoints, restarts
        up = _poll_metrics(
            base_port, "pod 0 at world 2", lambda t: _world(t) == 2 and "stop" in _phases(t), logs
        )
        joined = _poll_metrics(base_port + 1, "pod 1's phases", _phases, logs)
        _assert_sane(_phases(up), names.RESIZE_PHASES)
        assert _steps_lost(up) == 0.0
        _assert_sane(_phases(joined), names.RESIZE_PHASES[1:])  # a new pod: no stop
        assert math.isnan(_steps_lost(joined))  # nor a previous world of its own
        cluster.remove_worker(sig=signal.SIGTERM)  # 2 -> 1
        down = _poll_metrics(
            base_port,
            "pod 0 back at world 1",
            lambda t: _world(t) == 1 and _phases(t) != _phases(up),
            logs,
        )
        _assert_sane(_phases(down), names.RESIZE_PHASES)
        assert _steps_lost(down) == 0.0
        for _ in cluster.live_agents():
            cluster.remove_worker(sig=signal.SIGKILL)
    worlds = {e["world_size"] for e in read_audit(job.base / "audit")}
    assert worlds == {1, 2}, worlds
    # Each pod's local rank 0 also logs its view of every restart (what benchmarks read).
    for agent, expected in (("agent-0", ["1", "2", "1"]), ("agent-1", ["2"])):
        text = (logs / f"{agent}.log").read_text()
        assert re.findall(r"restart phases \(world (\d+)\): ", text) == expected, agent
