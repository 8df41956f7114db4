"""Reading a job's metrics from the Prometheus HTTP API: the autoscaler's only metrics I/O.

Why this module exists: the decision (:mod:`trainscale.operator.autoscaling.policy`) must never crash or
stall because Prometheus is slow, down, or returns nonsense, so this thin adapter turns
every failure (timeouts, connection errors, HTTP errors, bad JSON, NaN, empty or ambiguous
results, out-of-range values) into "no value" plus an error string the operator can count,
log and show in a condition. It uses only the standard library (``urllib.request``): one GET
of ``/api/v1/query`` per metric, each with its own timeout, authenticated as
:mod:`~trainscale.operator.adapters.prometheus_access` says (bearer token, basic auth, TLS,
headers), with every secret redacted from the errors.

The calls block; from an asyncio handler run them with ``asyncio.to_thread``.
"""

from __future__ import annotations

import json
import math
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from trainscale.operator.adapters.prometheus_access import (
    PreparedRequest,
    PrometheusAccess,
    PrometheusAccessFileError,
    prepare_request,
)
from trainscale.operator.adapters.promql import (
    DEFAULT_MAX_SAMPLE_AGE_SECONDS,
    DEFAULT_RATE_WINDOW,
    build_gpu_utilization_query,
    build_remaining_samples_query,
    build_restart_pause_query,
    build_restart_retrained_query,
    build_restarted_pods_query,
    build_sync_fraction_query,
    build_throughput_query,
    build_world_size_query,
    reads_samples_rate,
    render_query_override,
)
from trainscale.operator.api import PrometheusSpec
from trainscale.operator.autoscaling.autoscaler import RestartReading
from trainscale.operator.autoscaling.policy import Observation

_MAX_RESPONSE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class QueryResult:
    """One instant query's outcome.

    Attributes:
        query: The PromQL sent.
        value: The single sample's value; None when there is none (see ``error``).
        error: Why there is no value (None on success, and on an empty result, which is
            "no data" rather than a failure: see ``empty``).
        empty: True when Prometheus answered with no series.
        latency_seconds: Wall time of the HTTP round trip.
    """

    query: str
    value: float | None
    error: str | None
    empty: bool
    latency_seconds: float


@dataclass(frozen=True)
class FetchedObservation:
    """An :class:`Observation` and how getting it went, for operator metrics and conditions.

    Attributes:
        observation: GPU utilization / throughput / sync share set where known, None where
            not.
        gpu_utilization: The GPU query's result.
        throughput: The throughput query's result.
        sync_fraction: The sync share query's result (empty for a trainer that exports no
            communication or step-time counters).
        remaining_samples: The samples-left query's result (empty for a trainer that does
            not say how much it has left); None when it was not asked: without a
            throughput in samples per second (none read, or a spec's query that is not
            plainly the rate of the trainer's samples counter, :func:`counts_samples`) the
            samples left say nothing of the time left.
    """

    observation: Observation
    gpu_utilization: QueryResult
    throughput: QueryResult
    sync_fraction: QueryResult
    remaining_samples: QueryResult | None

    @property
    def results(self) -> tuple[QueryResult, ...]:
        """The result of every query made, in the order they were made."""
        asked = (self.gpu_utilization, self.throughput, self.sync_fraction, self.remaining_samples)
        return tuple(result for result in asked if result is not None)

    @property
    def errors(self) -> tuple[str, ...]:
        """Failures (not empty results), prefixed with the metric they concern."""
        out = []
        if self.gpu_utilization.error:
            out.append(f"gpu utilization: {self.gpu_utilization.error}")
        if self.throughput.error:
            out.append(f"throughput: {self.throughput.error}")
        if self.sync_fraction.error:
            out.append(f"sync share: {self.sync_fraction.error}")
        if self.remaining_samples is not None and self.remaining_samples.error:
            out.append(f"samples left: {self.remaining_samples.error}")
        return tuple(out)

    @property
    def latency_seconds(self) -> float:
        """Total time spent querying."""
        return sum(result.latency_seconds for result in self.results)


def fetch_query(
    base_url: str,
    query: str,
    *,
    timeout_seconds: float,
    access: PrometheusAccess | None = None,
) -> QueryResult:
    """Run one instant query and return its single value; never raises.

    A vector with several series, a matrix, a string result, NaN/Inf, an HTTP or
    connection error, a timeout, or a response that is not Prometheus JSON all give
    ``value=None`` and an ``error``. An empty vector gives ``value=None, empty=True``.
    ``access`` (credentials, TLS, headers) is used as given: :func:`fetch_observation`
    decides which URL gets which settings. No secret ever appears in the error.
    """
    url = base_url.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": query})
    started = time.monotonic()
    access = access or PrometheusAccess()

    def result(value: float | None, error: str | None, empty: bool = False) -> QueryResult:
        return QueryResult(query, value, error, empty, time.monotonic() - started)

    try:
        prepared = prepare_request(access, url)
    except PrometheusAccessFileError as e:
        return result(None, str(e))
    try:
        body = _send(url, prepared, timeout_seconds)
    except urllib.error.HTTPError as e:
        detail = _error_detail(e.read(4096) if e.fp else b"")
        return result(None, prepared.redact(_describe_http_error(e, detail, access)))
    except (urllib.error.URLError, OSError, ValueError) as e:
        return result(None, prepared.redact(_describe_connection_error(e)))
    try:
        payload = json.loads(body)
        if payload.get("status") != "success":
            return result(None, f"query failed: {payload.get('error', payload.get('status'))}")
        data = payload["data"]
        kind, series = data["resultType"], data["result"]
        if kind == "scalar":
            raw = series[1]
        elif kind == "vector":
            if not series:
                return result(None, None, empty=True)
            if len(series) > 1:
                return result(
                    None, f"query returned {len(series)} series; expected 1 (aggregate it)"
                )
            raw = series[0]["value"][1]
        else:
            return result(None, f"query returned a {kind}; expected an instant vector or scalar")
        value = float(raw)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
        return result(None, f"unexpected response: {type(e).__name__}: {e}")
    if not math.isfinite(value):
        return result(None, f"value is {value}")
    return result(value, None)


def _send(url: str, prepared: PreparedRequest, timeout_seconds: float) -> bytes:
    """GET ``url``; the secret headers are kept off redirects (urllib would forward them)."""
    request = urllib.request.Request(url, headers=prepared.headers)
    for name, value in prepared.secret_headers.items():
        request.add_unredirected_header(name, value)
    with urllib.request.urlopen(
        request, timeout=timeout_seconds, context=prepared.context
    ) as response:
        return bytes(response.read(_MAX_RESPONSE_BYTES))


def _describe_connection_error(e: Exception) -> str:
    # ssl.SSLError's own .reason is a bare code: report the exception itself.
    reason = e if isinstance(e, ssl.SSLError) else getattr(e, "reason", e)
    text = f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__
    if isinstance(reason, ssl.SSLCertVerificationError):
        text += " (give the CA bundle that signs Prometheus' certificate: --prometheus-ca-file)"
    elif isinstance(reason, ssl.SSLError) and "CERTIFICATE" in str(reason).upper():
        text += (
            " (Prometheus refused the TLS handshake: it may require a client certificate, "
            "--prometheus-cert-file)"
        )
    return text


def _describe_http_error(e: urllib.error.HTTPError, detail: str, access: PrometheusAccess) -> str:
    if e.code in (401, 403):
        word = "refused" if e.code == 403 else "did not accept"
        return (
            f"HTTP {e.code} {e.reason}{detail}: Prometheus {word} the operator's credentials "
            f"(sent: {access.describe_auth()})"
        )
    return f"HTTP {e.code}{detail}"


def _error_detail(body: bytes) -> str:
    try:
        return ": " + str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return ""


def fetch_observation(
    base_url: str,
    namespace: str,
    job: str,
    *,
    replicas: int,
    now: float,
    spec: PrometheusSpec | None = None,
    rate_window: str = DEFAULT_RATE_WINDOW,
    max_sample_age_seconds: float = DEFAULT_MAX_SAMPLE_AGE_SECONDS,
    access: PrometheusAccess | None = None,
) -> FetchedObservation:
    """Read one job's GPU utilization, throughput, sync share and samples left; never raises for
    Prometheus trouble.

    The sync share (:func:`build_sync_fraction_query`) has no spec override: it reads the
    trainer's own counters, and a job without them (a custom trainer) just has none.

    Args:
        base_url: Prometheus base URL (``spec.url`` wins when set).
        namespace: The job's namespace.
        job: The job's name.
        replicas: Workers running now, recorded in the observation.
        now: Timestamp to give the observation (the operator's clock).
        spec: ``spec.autoscaling.prometheus``: URL, query overrides, timeout.
        rate_window: ``rate()`` window of the default throughput query and of the sync
            share query.
        max_sample_age_seconds: GPU series older than this are stale (default query).
        access: The operator's credentials, TLS and headers for ``base_url``; a job whose
            ``spec.url`` names another server gets only the TLS verification settings.

    Returns:
        The observation (fields None where unknown) and the three query results.

    Raises:
        ValueError: on an empty namespace/job (a programming error, not a Prometheus one).
    """
    spec = spec or PrometheusSpec()
    ask = _asker(base_url, spec, access)
    if spec.gpu_utilization_query:
        gpu_query = render_query_override(spec.gpu_utilization_query, namespace, job)
    else:
        gpu_query = build_gpu_utilization_query(
            namespace, job, max_sample_age_seconds=max_sample_age_seconds
        )
    if spec.throughput_query:
        throughput_query = render_query_override(spec.throughput_query, namespace, job)
    else:
        throughput_query = build_throughput_query(namespace, job, window=rate_window)
    gpu = ask(gpu_query)
    if gpu.value is not None and not 0.0 <= gpu.value <= 1.0:
        gpu = _refused(gpu, "outside [0, 1]")
    rate = ask(throughput_query)
    if rate.value is not None and rate.value < 0:
        rate = _refused(rate, "is negative")
    sync = ask(build_sync_fraction_query(namespace, job, window=rate_window))
    left = None
    if rate.value and counts_samples(spec):  # time left: samples left / samples per second
        left = ask(build_remaining_samples_query(namespace, job))
    if sync.value is not None and not 0.0 <= sync.value < 1.0:
        sync = _refused(sync, "outside [0, 1)")
    observation = Observation(
        timestamp=now,
        replicas=replicas,
        gpu_utilization=gpu.value,
        samples_per_second=rate.value,
        sync_fraction=sync.value,
        remaining_samples=None if left is None else left.value,
    )
    return FetchedObservation(observation, gpu, rate, sync, left)


def counts_samples(spec: PrometheusSpec) -> bool:
    """Whether the job's throughput is in the trainer's samples per second: the default
    query, or a spec's own that is plainly the rate of the trainer's samples counter
    (:func:`~trainscale.operator.adapters.promql.reads_samples_rate`). Another (tokens,
    batches, the samples counter scaled, an exporter's own rate) would turn the samples the
    job has left into no time at all, or into days."""
    return not spec.throughput_query or reads_samples_rate(spec.throughput_query)


def _asker(
    base_url: str, spec: PrometheusSpec, access: PrometheusAccess | None
) -> Callable[[str], QueryResult]:
    """One query against the job's Prometheus (``spec.url`` wins), with the access settings
    that URL gets and the spec's timeout: what every fetch below asks through."""
    url = spec.url or base_url
    access = (access or PrometheusAccess()).for_url(url, base_url)

    def ask(query: str) -> QueryResult:
        return fetch_query(url, query, timeout_seconds=spec.timeout_seconds, access=access)

    return ask


def _refused(result: QueryResult, why: str) -> QueryResult:
    """``result`` with its value dropped as out of range: ``value 1.3 outside [0, 1]``."""
    return QueryResult(
        result.query, None, f"value {result.value} {why}", False, result.latency_seconds
    )


def fetch_world_size(
    base_url: str,
    namespace: str,
    job: str,
    *,
    spec: PrometheusSpec | None = None,
    access: PrometheusAccess | None = None,
) -> QueryResult:
    """The world size the job's workers report (:func:`build_world_size_query`); never raises
    for Prometheus trouble. ``value`` is None when the trainer exports no such gauge."""
    spec = spec or PrometheusSpec()
    return _asker(base_url, spec, access)(build_world_size_query(namespace, job))


def fetch_restart(
    base_url: str,
    namespace: str,
    job: str,
    *,
    since: float,
    spec: PrometheusSpec | None = None,
    access: PrometheusAccess | None = None,
    rate_window: str = DEFAULT_RATE_WINDOW,
) -> tuple[RestartReading | None, tuple[QueryResult, ...]]:
    """The trainer's measure of the restart that ended after ``since`` (the job's last
    rescale, Unix seconds), and every query made; never raises for Prometheus trouble.

    The reading is None until a pod reports a restart after ``since`` (a trainer that
    exports no restart figures never does), or when its pause cannot be read. The
    retrained seconds are 0 where no pod knows its steps lost (every pod new to the job) or
    no step finished in the window.
    """
    spec = spec or PrometheusSpec()
    ask = _asker(base_url, spec, access)
    pods = ask(build_restarted_pods_query(namespace, job, since))
    if not pods.value:
        return None, (pods,)
    pause = ask(build_restart_pause_query(namespace, job, since))
    retrained = ask(build_restart_retrained_query(namespace, job, since, window=rate_window))
    asked = (pods, pause, retrained)
    if pause.value is None or pause.value < 0:
        return None, asked
    again = retrained.value if retrained.value is not None and retrained.value >= 0 else 0.0
    return RestartReading(since, int(pods.value), pause.value, again), asked
