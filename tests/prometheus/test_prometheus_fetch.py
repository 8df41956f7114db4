"""The Prometheus adapter against a real Prometheus server.

Covers:
- GPU utilization from DCGM_FI_PROF_GR_ENGINE_ACTIVE with pod/namespace labels;
- the DCGM_FI_DEV_GPU_UTIL fallback (percent / 100) with exported_pod/exported_namespace;
- throughput as the summed rate of the trainer's samples counter over the job's workers only;
- the sync share as summed communication seconds over summed step seconds of the job's
  workers; none (and no error) for a job without those counters; refused when it is not
  below 1;
- the samples the job has left as the least any of its workers reports; none (and no
  error) for a trainer that does not say or has not stepped yet (NaN);
- decoys (other namespace, rendezvous pod, a job whose name extends this one) never counted;
- job names that try to inject PromQL or regex read nothing and break nothing;
- spec query overrides with escaped {namespace}/{job} placeholders;
- Prometheus stopped, unreachable, or not answering: no exception, no observation, an error;
- query errors (bad PromQL, several series) surface as errors, not values;
- the trainer's measure of the restart after a rescale: each phase's slowest pod summed,
  plus the steps lost at the job's mean step, from the job's pods whose restart ended after
  the rescale only (an old-world pod on its way out and decoys left out); none (and no
  error) before any pod restarted, or for a trainer that exports no restart figures.
"""

from __future__ import annotations

import contextlib
import socket
import threading

import pytest

from tests.support.prometheus import (
    ALPHA_RATES,
    DECOY_RATES,
    RATE_WINDOW,
    RESTART_SINCE,
    SAMPLES_LEFT,
    SYNC_RATES,
    start_prometheus,
)
from trainscale.operator.adapters.prometheus import fetch_observation, fetch_query, fetch_restart
from trainscale.operator.api import PrometheusSpec
from trainscale.trainer.contract.metric_names import SAMPLES_TOTAL

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]


def fetch(url: str, namespace: str, job: str, **kw: object):  # type: ignore[no-untyped-def]
    return fetch_observation(
        url, namespace, job, replicas=2, now=1000.0, rate_window=RATE_WINDOW, **kw
    )


def test_gpu_utilization_prefers_engine_active_with_pod_labels(prometheus: str) -> None:
    got = fetch(prometheus, "team-a", "alpha")
    assert got.errors == ()
    assert got.observation.gpu_utilization == pytest.approx(0.7)
    assert got.observation.timestamp == 1000.0
    assert got.observation.replicas == 2


def test_gpu_utilization_falls_back_to_percent_with_exported_labels(prometheus: str) -> None:
    got = fetch(prometheus, "team-a", "beta")
    assert got.observation.gpu_utilization == pytest.approx(0.5)
    # beta's workers export no trainer metrics: no throughput, and that is not an error
    assert got.observation.samples_per_second is None
    assert got.throughput.empty
    assert got.errors == ()


def test_throughput_sums_the_rate_over_the_jobs_workers_only(prometheus: str) -> None:
    got = fetch(prometheus, "team-a", "alpha")
    # 100 + 150 samples/s; a wrong scope adds at least one decoy of >= 300 samples/s
    expected = sum(ALPHA_RATES.values())
    assert min(DECOY_RATES.values()) > expected
    assert got.observation.samples_per_second == pytest.approx(expected, rel=0.05)
    assert got.latency_seconds > 0


def test_sync_share_is_communication_over_step_seconds_of_the_jobs_workers(
    prometheus: str,
) -> None:
    got = fetch(prometheus, "team-a", "alpha")
    alpha = [SYNC_RATES[pod] for pod in ALPHA_RATES]  # the job's worker pods
    expected = sum(c for c, _ in alpha) / sum(s for _, s in alpha)
    assert expected == pytest.approx(0.25)
    assert got.errors == ()
    assert got.sync_fraction.error is None and not got.sync_fraction.empty
    # a mean of the pods' shares (0.229) or any decoy (0.9 of its step time) is off by > 0.02
    assert got.observation.sync_fraction == pytest.approx(expected, abs=0.01)
    assert got.sync_fraction.latency_seconds > 0
    assert got.latency_seconds >= (
        got.gpu_utilization.latency_seconds
        + got.throughput.latency_seconds
        + got.sync_fraction.latency_seconds
    )


def test_a_job_without_the_trainers_counters_has_no_sync_share(prometheus: str) -> None:
    got = fetch(prometheus, "team-a", "beta")
    assert got.observation.gpu_utilization == pytest.approx(0.5)  # the job is there
    assert got.observation.sync_fraction is None
    assert got.sync_fraction.empty and got.sync_fraction.error is None
    assert got.errors == ()


def test_samples_left_is_the_least_any_of_the_jobs_workers_reports(prometheus: str) -> None:
    got = fetch(prometheus, "team-a", "alpha")
    assert got.errors == ()
    assert got.observation.remaining_samples == 48_000.0
    assert got.remaining_samples.latency_seconds > 0
    assert min(SAMPLES_LEFT.values()) == 100.0  # the decoys: a wrong scope reads them


@pytest.mark.parametrize("job", ["beta", "gamma"])
def test_a_trainer_that_does_not_say_has_no_samples_left(prometheus: str, job: str) -> None:
    # beta exports no such gauge; gamma's reads NaN (it has not stepped yet)
    got = fetch(prometheus, "team-a", job)
    assert got.observation.remaining_samples is None
    if job == "beta":  # no throughput either: not asked
        assert got.remaining_samples is None
    else:
        assert got.remaining_samples is not None
        assert got.remaining_samples.empty and got.remaining_samples.error is None


def test_a_sync_share_of_one_or_more_is_refused(prometheus: str) -> None:
    got = fetch(prometheus, "team-a", "gamma")  # 1.5 s blocked per second of steps
    assert got.observation.sync_fraction is None
    assert got.sync_fraction.value is None and not got.sync_fraction.empty
    (error,) = got.errors
    assert error.startswith("sync share: value ") and error.endswith(" outside [0, 1)"), error
    value = float(error.removeprefix("sync share: value ").removesuffix(" outside [0, 1)"))
    assert value == pytest.approx(1.5, abs=0.05)  # the error names the value


def test_the_other_namespace_sees_only_its_own_job(prometheus: str) -> None:
    got = fetch(prometheus, "team-b", "alpha")
    assert got.observation.gpu_utilization == pytest.approx(0.05)
    assert got.observation.samples_per_second == pytest.approx(
        DECOY_RATES["team-b", "alpha-worker-0"], rel=0.05
    )


@pytest.mark.parametrize(
    "job",
    [
        pytest.param('alpha"} or vector(1) or x{a="', id="close-selector-and-or"),
        pytest.param('alpha",pod=~".*', id="add-matcher"),
        pytest.param(".*", id="regex-wildcard"),
        pytest.param("alph.", id="regex-dot"),
        pytest.param("alpha-worker-[0-9]+|alpha", id="regex-alternation"),
        pytest.param("alpha\\", id="trailing-backslash"),
        pytest.param("alpha\n) or vector(1", id="newline"),
    ],
)
def test_job_names_cannot_inject(prometheus: str, job: str) -> None:
    got = fetch(prometheus, "team-a", job)
    assert got.errors == (), got.errors  # the query stays valid PromQL
    assert got.observation.gpu_utilization is None
    assert got.observation.samples_per_second is None
    assert got.observation.sync_fraction is None


def test_namespace_cannot_inject(prometheus: str) -> None:
    got = fetch(prometheus, 'team-a"} or vector(0.5) or x{a="', "alpha")
    assert got.errors == ()
    assert got.observation.gpu_utilization is None


def test_spec_overrides_substitute_escaped_placeholders(prometheus: str) -> None:
    spec = PrometheusSpec(
        gpu_utilization_query=(
            'max(DCGM_FI_DEV_GPU_UTIL{namespace="{namespace}",pod=~"{job_regex}-worker-.*"}) / 100'
        ),
        throughput_query=f'sum(rate({SAMPLES_TOTAL}{{namespace="{{namespace}}",pod="{{job}}-worker-1"}}[5s]))',
    )
    got = fetch(prometheus, "team-a", "alpha", spec=spec)
    assert got.observation.gpu_utilization == pytest.approx(0.75)
    assert got.observation.samples_per_second == pytest.approx(150.0, rel=0.05)
    # the spec's own throughput reads the trainer's samples counter: samples per second
    assert got.observation.remaining_samples == 48_000.0
    injected = fetch(prometheus, "team-a", 'alpha"}) or vector(1) #', spec=spec)
    assert injected.observation.gpu_utilization is None
    assert injected.observation.samples_per_second is None
    assert injected.observation.sync_fraction is None


def test_query_errors_are_reported_not_raised(prometheus: str) -> None:
    bad = fetch_query(prometheus, "sum(", timeout_seconds=5)
    assert bad.value is None and bad.error and "400" in bad.error
    several = fetch_query(prometheus, "DCGM_FI_DEV_GPU_UTIL", timeout_seconds=5)
    assert several.value is None and several.error and "series" in several.error
    nan = fetch_query(prometheus, "vector(0) / 0", timeout_seconds=5)
    assert nan.value is None and nan.error and "nan" in nan.error.lower()
    scalar = fetch_query(prometheus, "scalar(vector(0.25))", timeout_seconds=5)
    assert scalar.value == 0.25 and scalar.error is None


_WORKER_1 = f'{SAMPLES_TOTAL}{{namespace="{{namespace}}",pod="{{job}}-worker-1"}}'


@pytest.mark.parametrize(
    ("query", "value"),
    [
        pytest.param("vector(150000)", 150_000.0, id="an-exporter's-own"),
        pytest.param(f"sum(rate({_WORKER_1}[5s])) * 2048", 150.0 * 2048, id="samples-scaled"),
    ],
)
def test_a_throughput_of_another_unit_asks_no_samples_left(
    prometheus: str, query: str, value: float
) -> None:
    # tokens per second, say: samples left over it would be no time at all
    got = fetch(prometheus, "team-a", "alpha", spec=PrometheusSpec(throughput_query=query))
    assert got.observation.samples_per_second == pytest.approx(value, rel=0.05)
    assert got.remaining_samples is None and got.observation.remaining_samples is None


def test_out_of_range_utilization_from_an_override_is_dropped(prometheus: str) -> None:
    spec = PrometheusSpec(gpu_utilization_query="vector(75)")  # percent, not a ratio
    got = fetch(prometheus, "team-a", "alpha", spec=spec)
    assert got.observation.gpu_utilization is None
    assert any("outside [0, 1]" in e for e in got.errors)


def test_stopped_prometheus_gives_no_observation(exporter: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = start_prometheus(tmp_path / "short-lived", exporter)
    server.stop()
    got = fetch(server.url, "team-a", "alpha")
    assert got.observation.gpu_utilization is None
    assert got.observation.samples_per_second is None
    assert got.observation.sync_fraction is None
    assert got.observation.remaining_samples is None
    assert got.remaining_samples is None  # not asked: no throughput to divide it by
    assert len(got.errors) == 3
    assert all("Connection" in e or "refused" in e for e in got.errors), got.errors


def test_prometheus_that_never_answers_times_out() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        got = fetch(url, "team-a", "alpha", spec=PrometheusSpec(timeout_seconds=0.5))
        assert got.observation.gpu_utilization is None
        assert got.observation.samples_per_second is None
        assert all("timed out" in e.lower() or "timeout" in e.lower() for e in got.errors), (
            got.errors
        )
        assert got.latency_seconds < 5
    finally:
        stop.set()
        thread.join()
        for s in accepted:
            s.close()
        listener.close()


def test_the_restart_after_a_rescale_is_read_from_the_pods_that_made_it(prometheus: str) -> None:
    reading, asked = fetch_restart(
        prometheus, "team-a", "alpha", since=RESTART_SINCE, rate_window=RATE_WINDOW
    )
    assert all(result.error is None for result in asked), asked
    assert reading is not None and reading.since == RESTART_SINCE
    assert reading.pods == 2  # worker-2's restart ended before the rescale
    assert reading.pause_seconds == pytest.approx(6.0)  # stop 1 + rendezvous 4 + first step 1
    assert reading.retrained_seconds == pytest.approx(3.0, rel=0.05)  # 3 steps of 1 s
    assert reading.cost_seconds == pytest.approx(9.0, rel=0.02)
    # later: only worker-1 finished a restart after it, a pod new to the job (no steps lost)
    later, asked = fetch_restart(
        prometheus, "team-a", "alpha", since=RESTART_SINCE + 11, rate_window=RATE_WINDOW
    )
    assert later is not None and (later.pods, later.retrained_seconds) == (1, 0.0)
    assert all(result.error is None for result in asked), asked  # unknown, not NaN
    assert later.pause_seconds == pytest.approx(5.5)


@pytest.mark.parametrize(("job", "since"), [("alpha", RESTART_SINCE + 100), ("beta", 0.0)])
def test_no_restart_yet_or_none_exported_reads_nothing(
    prometheus: str, job: str, since: float
) -> None:
    reading, asked = fetch_restart(prometheus, "team-a", job, since=since)
    assert reading is None
    assert [result.error for result in asked] == [None] and asked[0].empty
