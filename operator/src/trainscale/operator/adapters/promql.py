"""PromQL for the autoscaler: the queries that read one job's GPU busy, throughput, sync share.

Why this module exists: a query is text built from user-controlled names (namespace and
job), so building it is where injection would happen; keeping the builders pure and in one
place makes the escaping testable and the queries readable in docs and dashboards.

Label values go into double-quoted PromQL strings through :func:`escape_label_value`; values
used inside a regular-expression matcher (``=~``) are first regex-escaped with
:func:`escape_regex` (Go RE2 ``QuoteMeta``), so a job named ``a.*`` never matches another
job's pods and a name containing ``"}`` can never close the selector.

GPU busy comes from NVIDIA dcgm-exporter: ``DCGM_FI_PROF_GR_ENGINE_ACTIVE`` (a 0..1 ratio, on
data-center GPUs with profiling metrics) is preferred, ``DCGM_FI_DEV_GPU_UTIL`` (a percent,
on every GPU) is the fallback. dcgm-exporter labels each GPU's series with the pod that uses
it: ``pod``/``namespace`` when Prometheus keeps the exporter's labels (``honor_labels``,
``honorLabels: true``), ``exported_pod``/``exported_namespace`` behind a ServiceMonitor
without ``honorLabels`` (Prometheus renames the clashing labels). Both are matched.
"""

from __future__ import annotations

import math
import re

from trainscale.operator.api.dcgm import DCGM_ENGINE_ACTIVE, DCGM_GPU_UTIL
from trainscale.trainer.contract.metric_names import (
    COMMUNICATION_SECONDS_TOTAL,
    REMAINING_SAMPLES,
    RESIZE_END_TIME,
    RESIZE_PHASE_LABEL,
    RESIZE_PHASE_SECONDS,
    RESIZE_STEPS_LOST,
    SAMPLES_TOTAL,
    STEP_SECONDS_COUNT,
    STEP_SECONDS_SUM,
    WORLD_SIZE,
)
from trainscale.trainer.contract.naming import worker_pod_pattern

DEFAULT_RATE_WINDOW = "1m"
"""``rate()`` window for counters: at least two scrapes of a 30 s scrape interval."""
DEFAULT_MAX_SAMPLE_AGE_SECONDS = 60.0
"""GPU gauges whose newest sample is older than this are ignored (stale)."""

_RE2_META = frozenset("\\.+*?()|[]{}^$")
_LABEL_STYLES = (("namespace", "pod"), ("exported_namespace", "exported_pod"))


def _require_name(field: str, value: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field} must be a non-empty string, got {value!r}")


def escape_label_value(value: str) -> str:
    """Escape ``value`` for use inside a double-quoted PromQL string.

    Backslash and double quote are backslash-escaped, control characters become ``\\xNN``
    escapes; everything else stays as it is (PromQL strings are UTF-8).
    """
    out = []
    for ch in value:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def escape_regex(value: str) -> str:
    """Escape RE2 metacharacters so ``value`` matches only itself (Go's ``QuoteMeta``)."""
    return "".join("\\" + ch if ch in _RE2_META else ch for ch in value)


def build_worker_pod_regex(job: str) -> str:
    """RE2 pattern (unquoted) matching exactly the job's worker pods ``{job}-worker-N``."""
    _require_name("job", job)
    return worker_pod_pattern(escape_regex(job))


def _selectors(metric: str, namespace: str, job: str) -> list[str]:
    """One selector per label style, matching the job's worker pods in its namespace."""
    _require_name("namespace", namespace)
    pods = escape_label_value(build_worker_pod_regex(job))
    ns = escape_label_value(namespace)
    return [
        f'{metric}{{{ns_label}="{ns}",{pod_label}=~"{pods}"}}'
        for ns_label, pod_label in _LABEL_STYLES
    ]


def _summed_rate(metric: str, namespace: str, job: str, window: str) -> str:
    """The ``rate()`` of ``metric`` over ``window``, summed over the job's worker pods."""
    parts = [f"rate({s}[{window}])" for s in _selectors(metric, namespace, job)]
    return "sum(" + " or ".join(parts) + ")"


def _fresh(selector: str, max_age_seconds: float) -> str:
    """Only the series of ``selector`` whose newest sample is at most ``max_age_seconds`` old."""
    return f"({selector} and (time() - timestamp({selector})) <= {max_age_seconds:g})"


def build_gpu_utilization_query(
    namespace: str, job: str, *, max_sample_age_seconds: float = DEFAULT_MAX_SAMPLE_AGE_SECONDS
) -> str:
    """Mean GPU busy fraction (0..1) over the job's worker GPUs.

    ``DCGM_FI_PROF_GR_ENGINE_ACTIVE`` when any of the job's GPUs report it, else
    ``DCGM_FI_DEV_GPU_UTIL / 100``; both label styles; series older than
    ``max_sample_age_seconds`` are ignored. Empty result means "unknown".

    Raises:
        ValueError: on an empty namespace or job, or a non-positive age.
    """
    if not max_sample_age_seconds > 0:
        raise ValueError(f"max_sample_age_seconds must be > 0, got {max_sample_age_seconds!r}")

    def mean(metric: str) -> str:
        parts = [_fresh(s, max_sample_age_seconds) for s in _selectors(metric, namespace, job)]
        return "avg(" + " or ".join(parts) + ")"

    return f"{mean(DCGM_ENGINE_ACTIVE)} or ({mean(DCGM_GPU_UTIL)} / 100)"


def build_throughput_query(namespace: str, job: str, *, window: str = DEFAULT_RATE_WINDOW) -> str:
    """Job throughput in samples per second: the summed ``rate()`` of the trainer's counter.

    Raises:
        ValueError: on an empty namespace or job, or a window that is not a PromQL duration.
    """
    _check_window(window)
    return _summed_rate(SAMPLES_TOTAL, namespace, job, window)


def build_sync_fraction_query(
    namespace: str, job: str, *, window: str = DEFAULT_RATE_WINDOW
) -> str:
    """The job's sync share: the fraction of its workers' step time spent blocked on
    gradient synchronisation (0..1).

    Seconds blocked on all-reduce (the trainer's communication counter) over seconds spent
    in steps (its step-time histogram's ``_sum``), each ``rate()`` summed over the job's
    worker pods before dividing: the job's share of time, each worker weighted by its time,
    not a mean of per-pod ratios. Both counters grow at the end of each step, so the two
    windows cover the same steps. A window in which no step finished (step rate 0) gives an
    empty result, "unknown", rather than NaN; so does a job that exports neither counter.

    Raises:
        ValueError: on an empty namespace or job, or a window that is not a PromQL duration.
    """
    _check_window(window)
    blocked = _summed_rate(COMMUNICATION_SECONDS_TOTAL, namespace, job, window)
    return f"{blocked} / ({_summed_rate(STEP_SECONDS_SUM, namespace, job, window)} > 0)"


def build_world_size_query(namespace: str, job: str) -> str:
    """The largest world size the job's worker pods report (the trainer's gauge).

    A pod reports its old world until its ranks train in the new one, and a new pod nothing
    until then, so the value changes when a resized job starts training at its new size:
    only from then on can a rate() window measure that size.

    Raises:
        ValueError: on an empty namespace or job.
    """
    return "max(" + " or ".join(_selectors(WORLD_SIZE, namespace, job)) + ")"


def build_remaining_samples_query(namespace: str, job: str) -> str:
    """The training samples the job has left until its configured end (the trainer's gauge).

    The smallest any worker pod reports: every rank reports the same count, and a pod that
    lags (a restart under way) reports an older, larger one. NaN (a trainer that has not
    stepped yet) is filtered out, so "not known" is an empty result, not an error.

    Raises:
        ValueError: on an empty namespace or job.
    """
    return (
        "min("
        + " or ".join(f"({s} >= 0)" for s in _selectors(REMAINING_SAMPLES, namespace, job))
        + ")"
    )


def _ended_after(namespace: str, job: str, since: float) -> list[str]:
    """Per label style: the job's pods whose latest restart ended after ``since`` (the
    trainer's :data:`RESIZE_END_TIME`)."""
    if not math.isfinite(since):
        raise ValueError(f"since must be a finite time, got {since!r}")
    return [f"({end} > {since:.3f})" for end in _selectors(RESIZE_END_TIME, namespace, job)]


def _restarted_since(metric: str, namespace: str, job: str, since: float) -> list[str]:
    """Per label style: the job's pods' ``metric`` series, only of pods whose latest restart
    ended after ``since``."""
    return [
        f"({series} and on({ns_label}, {pod_label}) {ended})"
        for series, ended, (ns_label, pod_label) in zip(
            _selectors(metric, namespace, job),
            _ended_after(namespace, job, since),
            _LABEL_STYLES,
            strict=True,
        )
    ]


def build_restarted_pods_query(namespace: str, job: str, since: float) -> str:
    """How many of the job's worker pods finished a restart after ``since`` (Unix seconds):
    their first step at the new size is done, so their restart figures are this restart's.

    Raises:
        ValueError: on an empty namespace or job, or a time that is not finite.
    """
    return "count(" + " or ".join(_ended_after(namespace, job, since)) + ")"


def build_restart_pause_query(namespace: str, job: str, since: float) -> str:
    """Seconds the job's training paused for the restart that ended after ``since``: each
    phase's slowest pod (every rank waits for the slowest), summed over the phases, from the
    old world's last step to the new world's first (the trainer's
    :data:`RESIZE_PHASE_SECONDS`). Pods whose latest restart ended before ``since`` are left
    out: they still serve an older restart's figures.

    Raises:
        ValueError: on an empty namespace or job, or a time that is not finite.
    """
    parts = _restarted_since(RESIZE_PHASE_SECONDS, namespace, job, since)
    return f"sum(max by ({RESIZE_PHASE_LABEL}) (" + " or ".join(parts) + "))"


def build_restart_retrained_query(
    namespace: str, job: str, since: float, *, window: str = DEFAULT_RATE_WINDOW
) -> str:
    """Seconds of training the restart that ended after ``since`` does again: the most steps
    any of its pods trains again (the trainer's :data:`RESIZE_STEPS_LOST`; NaN, a pod new to
    the job, left out) times the job's mean step seconds over ``window``. Empty where no pod
    knows its steps lost, or no step finished in the window.

    Raises:
        ValueError: on an empty namespace or job, a time that is not finite, or a window
            that is not a PromQL duration.
    """
    _check_window(window)
    lost = [f"({p} >= 0)" for p in _restarted_since(RESIZE_STEPS_LOST, namespace, job, since)]
    busy = _summed_rate(STEP_SECONDS_SUM, namespace, job, window)
    step = f"({busy} / ({_summed_rate(STEP_SECONDS_COUNT, namespace, job, window)} > 0))"
    return "max(" + " or ".join(lost) + f") * {step}"


_PROMQL_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_PROMQL_GROUPING = re.compile(r"\b(?:by|without)\s*\([^()]*\)", re.IGNORECASE)
_PROMQL_KEYWORDS = frozenset({"sum", "or"})  # PromQL reads its keywords in any case
_PROMQL_TOKEN = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*|\S")
_PLAIN_RATE_TOKENS = frozenset({"sum", "rate", "irate", "or", "(", ")", SAMPLES_TOTAL})
"""What a query may be made of to be plainly the trainer's samples per second (besides
label matchers, range selectors, ``by``/``without`` label lists and strings)."""


def reads_samples_rate(query: str) -> bool:
    """Whether ``query`` (a spec's override, placeholders and all) is plainly the trainer's
    samples per second: the (summed) ``rate()`` or ``irate()`` of :data:`SAMPLES_TOTAL`
    and nothing more.

    Why it is this strict: the samples the job has left are divided by the throughput to
    give its time left, and a query that scales the samples counter (``* 2048`` tokens per
    sample, ``/ 60`` per minute), averages it over pods (``avg``: per worker) or reads
    another metric is in another unit; the time left would be 2,048 times too short, and no
    restart would ever pay back within it. What is not plainly a rate of samples is not
    read as one (the job's age is the payback horizon then). The text inside strings
    (label values, placeholders) is not looked at, so a label value that names the counter
    does not count.
    """
    text = _PROMQL_STRING.sub('""', query)
    text = re.sub(r"\{[^{}]*\}", "", text)  # label matchers (strings already blanked)
    text = re.sub(r"\[[^\[\]]*\]", "", text)  # range selectors and subqueries
    text = _PROMQL_GROUPING.sub("", text)
    tokens = [
        t.lower() if t.lower() in _PROMQL_KEYWORDS else t for t in _PROMQL_TOKEN.findall(text)
    ]
    return (
        SAMPLES_TOTAL in tokens
        and ("rate" in tokens or "irate" in tokens)
        and all(t in _PLAIN_RATE_TOKENS for t in tokens)
    )


def _check_window(window: str) -> None:
    units = ("ms", "s", "m", "h", "d", "w", "y")
    number = window
    for unit in units:
        if window.endswith(unit):
            number = window[: -len(unit)]
            break
    if number == window or not number.isdigit() or int(number) == 0:
        raise ValueError(f"window must be a PromQL duration such as '1m' or '30s', got {window!r}")


def render_query_override(template: str, namespace: str, job: str) -> str:
    """Substitute a spec's query override: ``{namespace}``/``{job}`` get the escaped names.

    The placeholders belong inside double-quoted label values, e.g.
    ``avg(my_gpu_busy{namespace="{namespace}", pod=~"{job}-worker-.*"})``; for a regex
    matcher, ``{job_regex}``/``{namespace_regex}`` are also regex-escaped. Only these exact
    tokens are replaced, so PromQL's own braces stay as written.

    Raises:
        ValueError: on an empty template, namespace or job.
    """
    _require_name("query", template)
    _require_name("namespace", namespace)
    _require_name("job", job)
    replacements = {
        "{namespace_regex}": escape_label_value(escape_regex(namespace)),
        "{job_regex}": escape_label_value(escape_regex(job)),
        "{namespace}": escape_label_value(namespace),
        "{job}": escape_label_value(job),
    }
    out = []
    i = 0
    while i < len(template):
        for token, value in replacements.items():
            if template.startswith(token, i):
                out.append(value)
                i += len(token)
                break
        else:
            out.append(template[i])
            i += 1
    return "".join(out)
