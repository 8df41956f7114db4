"""The PromQL builders and their escaping, without a Prometheus server.

Covers:
- the exact text of the throughput, sync share and GPU queries for plain names (what docs and the
  dashboard show);
- label-value escaping (quotes, backslashes, newlines, control characters) and RE2 escaping
  (every metacharacter) on their own;
- for hostile namespace/job names (quotes, backslashes, newlines, regex metacharacters,
  unicode): the query keeps the structure of a plain name's query (nothing escapes its
  string literal), each literal decodes back to the intended value, and the pod regex
  matches exactly the job's worker pods;
- Prometheus' own parser (promtool) accepts every such query;
- bad windows, ages and empty names are refused with the field named;
- spec overrides get escaped ``{namespace}``/``{job}`` and regex-escaped ``*_regex`` values;
- which spec throughput queries are plainly the trainer's samples per second (the time left
  is asked only over those).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainscale.operator.adapters import promql
from trainscale.trainer.contract.metric_names import (
    COMMUNICATION_SECONDS_TOTAL,
    REMAINING_SAMPLES,
    SAMPLES_TOTAL,
    STEP_SECONDS_SUM,
    WORLD_SIZE,
)

PROPERTY = settings(derandomize=True, database=None, max_examples=200, deadline=None)

HOSTILE = [
    'a"b',
    "a\\b",
    "trailing\\",
    "new\nline",
    "tab\tand\rcr",
    'x"} or vector(1) or y{a="',
    'x",pod=~".*',
    ".*",
    "a.b",
    "a+b*c?",
    "(a|b)",
    "[a-z]{2}",
    "^a$",
    "a\\.b",
    "ünïcødé-名前",
    "\x00\x1f\x7f",
]

_SIMPLE_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
                   "\\": "\\", '"': '"', "'": "'"}  # fmt: skip


def read_string(text: str, start: int) -> tuple[str, int]:
    """Decode the PromQL (Go) double-quoted string literal at ``text[start]``; return its
    value and the index after its closing quote."""
    assert text[start] == '"'
    out, i = [], start + 1
    while text[i] != '"':
        ch = text[i]
        assert ch != "\n", "raw newline inside a string literal"
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        code = text[i + 1]
        if code in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[code])
            i += 2
        elif code == "x":
            out.append(chr(int(text[i + 2 : i + 4], 16)))
            i += 4
        else:
            raise AssertionError(f"unexpected escape \\{code} in {text!r}")
    return "".join(out), i + 1


def literals(query: str) -> tuple[str, list[str]]:
    """The query with every string literal emptied, and the literals' decoded values."""
    shape, values, i = [], [], 0
    while i < len(query):
        if query[i] == '"':
            value, i = read_string(query, i)
            values.append(value)
            shape.append('""')
        else:
            shape.append(query[i])
            i += 1
    return "".join(shape), values


def test_throughput_query_text() -> None:
    assert promql.build_throughput_query("team-a", "alpha") == (
        f'sum(rate({SAMPLES_TOTAL}{{namespace="team-a",pod=~"alpha-worker-[0-9]+"}}[1m]) or '
        f'rate({SAMPLES_TOTAL}{{exported_namespace="team-a",exported_pod=~"alpha-worker-[0-9]+"}}'
        "[1m]))"
    )
    assert promql.build_throughput_query("ns", "j", window="30s").count("[30s]") == 2


def test_sync_fraction_query_text() -> None:
    def summed_rate(metric: str) -> str:
        return (
            f'sum(rate({metric}{{namespace="team-a",pod=~"alpha-worker-[0-9]+"}}[1m]) or '
            f'rate({metric}{{exported_namespace="team-a",exported_pod=~"alpha-worker-[0-9]+"}}'
            "[1m]))"
        )

    assert STEP_SECONDS_SUM == "trainscale_trainer_step_seconds_sum"  # the histogram's _sum
    assert promql.build_sync_fraction_query("team-a", "alpha") == (
        f"{summed_rate(COMMUNICATION_SECONDS_TOTAL)} / ({summed_rate(STEP_SECONDS_SUM)} > 0)"
    )
    assert promql.build_sync_fraction_query("ns", "j", window="30s").count("[30s]") == 4


def test_world_size_query_text() -> None:
    assert promql.build_world_size_query("team-a", "a.b") == (
        f'max({WORLD_SIZE}{{namespace="team-a",pod=~"a\\\\.b-worker-[0-9]+"}} or '
        f'{WORLD_SIZE}{{exported_namespace="team-a",exported_pod=~"a\\\\.b-worker-[0-9]+"}})'
    )


def test_samples_left_query_text() -> None:
    # the least any worker reports, NaN (not stepped yet) filtered out: empty, not an error
    assert promql.build_remaining_samples_query("team-a", "a.b") == (
        f'min(({REMAINING_SAMPLES}{{namespace="team-a",pod=~"a\\\\.b-worker-[0-9]+"}} >= 0) or '
        f'({REMAINING_SAMPLES}{{exported_namespace="team-a",exported_pod=~"a\\\\.b-worker-[0-9]+"}} >= 0))'
    )


_S = SAMPLES_TOTAL
_SEL = '{namespace="{namespace}",pod=~"{job_regex}-worker-[0-9]+"}'


RATE_QUERIES = [
    pytest.param(promql.build_throughput_query("team-a", "a.b"), True, id="the-default"),
    pytest.param(f"sum(rate({_S}{_SEL}[5s]))", True, id="the-example's-own"),
    pytest.param(f"sum(irate({_S}{_SEL}[2m]))", True, id="irate"),
    pytest.param(f"sum by (namespace) (rate({_S}{_SEL}[1m]))", True, id="summed-by"),
    pytest.param(f"SUM BY (namespace) (rate({_S}{_SEL}[1m]))", True, id="keywords-in-capitals"),
    pytest.param(f"sum(rate({_S}{_SEL}[5m:30s]))", True, id="subquery"),
    pytest.param(f'sum(rate({_S}{{note="2048 * x / 60"}}[1m]))', True, id="arithmetic-in-a-string"),
    pytest.param(f"sum(rate({_S}{_SEL}[1m])) * 2048", False, id="tokens-per-sample"),
    pytest.param(f"2048 * sum(rate({_S}[1m]))", False, id="scaled-in-front"),
    pytest.param(f"sum(rate({_S}[1m])) / 60", False, id="per-minute"),
    pytest.param(f"avg(rate({_S}{_SEL}[1m]))", False, id="per-worker"),
    pytest.param(f"max(rate({_S}{_SEL}[1m]))", False, id="one-worker"),
    pytest.param(f"sum(increase({_S}[1m]))", False, id="per-window"),
    pytest.param(f"sum({_S})", False, id="the-counter-itself"),
    pytest.param("sum(rate(my_tokens_total[1m]))", False, id="another-metric"),
    pytest.param(f'sum(rate(my_tokens_total{{x="{_S}"}}[1m]))', False, id="named-only-in-a-label"),
    pytest.param(f"sum(rate({_S}[1m])) + sum(rate(my_tokens_total[1m]))", False, id="plus-another"),
    pytest.param(f"sum(rate({_S}[1m] offset 5m))", False, id="offset"),
    pytest.param("vector(150000)", False, id="a-constant"),
]


@pytest.mark.parametrize(("query", "plain"), RATE_QUERIES)
def test_which_throughput_queries_are_plainly_samples_per_second(query: str, plain: bool) -> None:
    # the samples left over any other unit would be a time 2,048 times too short, or days
    assert promql.reads_samples_rate(query) is plain


def check_with_promtool(rules: list[dict[str, str]], tmp_path: Path) -> None:
    """Prometheus' own parser (``promtool check rules``) accepts every rule's expression."""
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "q", "rules": rules}]}))  # JSON is YAML
    done = subprocess.run(
        ["promtool", "check", "rules", str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_prometheus_parses_every_query_read_as_samples_per_second(tmp_path: Path) -> None:
    # what is accepted is PromQL a user could write (placeholders rendered as the operator does)
    plain = [p.values[0] for p in RATE_QUERIES if p.values[1]]
    rules = [
        {"record": f"q{i}", "expr": promql.render_query_override(q, "team-a", "alpha")}
        for i, q in enumerate(plain)
    ]
    check_with_promtool(rules, tmp_path)


def test_gpu_query_text() -> None:
    query = promql.build_gpu_utilization_query("team-a", "alpha", max_sample_age_seconds=45)
    active = 'DCGM_FI_PROF_GR_ENGINE_ACTIVE{namespace="team-a",pod=~"alpha-worker-[0-9]+"}'
    assert query.startswith(f"avg(({active} and (time() - timestamp({active})) <= 45) or ")
    assert query.endswith(" / 100)")
    assert query.count("exported_pod=~") == 4 and query.count("DCGM_FI_DEV_GPU_UTIL") == 4


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("plain-name.1", "plain-name.1"),
        ('a"b', 'a\\"b'),
        ("a\\b", "a\\\\b"),
        ("a\nb", "a\\nb"),
        ("a\tb", "a\\x09b"),
        ("\x00\x7f", "\\x00\\x7f"),
        ("名前", "名前"),
    ],
)
def test_escape_label_value(raw: str, escaped: str) -> None:
    assert promql.escape_label_value(raw) == escaped
    assert read_string(f'"{escaped}"', 0)[0] == raw


def test_escape_regex_escapes_every_re2_metacharacter_only() -> None:
    assert promql.escape_regex("\\.+*?()|[]{}^$") == "\\\\\\.\\+\\*\\?\\(\\)\\|\\[\\]\\{\\}\\^\\$"
    assert promql.escape_regex("a-b_c/d 名") == "a-b_c/d 名"


@pytest.mark.parametrize("job", HOSTILE)
@pytest.mark.parametrize("namespace", ["team-a", 'ns"}) or vector(1) #', "ns\\\n.*"])
def test_hostile_names_stay_inside_their_literals(namespace: str, job: str) -> None:
    _check_query_scope(namespace, job)


@PROPERTY
@given(
    namespace=st.text(min_size=1, max_size=12),
    job=st.text(min_size=1, max_size=12),
)
def test_any_names_stay_inside_their_literals(namespace: str, job: str) -> None:
    _check_query_scope(namespace, job)


def _check_query_scope(namespace: str, job: str) -> None:
    plain_shape, _ = literals(promql.build_throughput_query("n", "j"))
    shape, values = literals(promql.build_throughput_query(namespace, job))
    assert shape == plain_shape
    assert values[0::2] == [namespace, namespace]  # namespace="..." / exported_namespace
    pattern = values[1]
    assert values[3] == pattern
    # PromQL's =~ is anchored like fullmatch; for escaped metacharacters Python's re and
    # RE2 agree.
    assert re.fullmatch(pattern, f"{job}-worker-0")
    assert re.fullmatch(pattern, f"{job}-worker-12")
    lookalike = re.sub(r"[^A-Za-z0-9]", "x", job)  # what an unescaped metacharacter admits
    decoys = (f"{job}x-worker-0", f"{job}-worker-0-debug", f"{job}-rdzv", "other-worker-0",
              f"{lookalike}-worker-0")  # fmt: skip
    for decoy in decoys:
        if decoy != f"{job}-worker-0":
            assert not re.fullmatch(pattern, decoy), decoy
    gpu_shape, _ = literals(promql.build_gpu_utilization_query("n", "j"))
    assert literals(promql.build_gpu_utilization_query(namespace, job))[0] == gpu_shape
    sync_shape, _ = literals(promql.build_sync_fraction_query("n", "j"))
    shape, sync_values = literals(promql.build_sync_fraction_query(namespace, job))
    assert shape == sync_shape
    assert sync_values == values + values  # the same scope for both counters
    left_shape, _ = literals(promql.build_remaining_samples_query("n", "j"))
    shape, left_values = literals(promql.build_remaining_samples_query(namespace, job))
    assert shape == left_shape
    assert left_values == values


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_prometheus_parses_every_hostile_query(tmp_path: Path) -> None:
    rules = [
        {"record": f"q{i}", "expr": build(ns, job)}
        for i, (ns, job, build) in enumerate(
            (ns, job, build)
            for ns in ("team-a", 'ns"}) or vector(1) #')
            for job in HOSTILE
            for build in (
                promql.build_throughput_query,
                promql.build_gpu_utilization_query,
                promql.build_sync_fraction_query,
                promql.build_remaining_samples_query,
            )
        )
    ]
    check_with_promtool(rules, tmp_path)


@pytest.mark.parametrize("window", ["", "1", "m", "0s", "1.5m", "-1m", "1m]", "5 m", "1mo"])
def test_bad_windows_are_refused(window: str) -> None:
    with pytest.raises(ValueError, match="window"):
        promql.build_throughput_query("ns", "job", window=window)
    with pytest.raises(ValueError, match="window"):
        promql.build_sync_fraction_query("ns", "job", window=window)


@pytest.mark.parametrize(("namespace", "job", "field"), [("", "j", "namespace"), ("n", "", "job")])
def test_empty_names_are_refused(namespace: str, job: str, field: str) -> None:
    for build in (
        promql.build_throughput_query,
        promql.build_gpu_utilization_query,
        promql.build_sync_fraction_query,
        promql.build_remaining_samples_query,
    ):
        with pytest.raises(ValueError, match=field):
            build(namespace, job)


@pytest.mark.parametrize("age", [0, -1.0, float("nan")])
def test_bad_max_age_is_refused(age: float) -> None:
    with pytest.raises(ValueError, match="max_sample_age_seconds"):
        promql.build_gpu_utilization_query("ns", "job", max_sample_age_seconds=age)


def test_override_placeholders_are_escaped() -> None:
    template = 'sum(x{namespace="{namespace}",pod=~"{job_regex}-worker-.*",j="{job}"}) + {other}'
    got = promql.render_query_override(template, 'n"s', "a.b\\")
    assert got == 'sum(x{namespace="n\\"s",pod=~"a\\\\.b\\\\\\\\-worker-.*",j="a.b\\\\"}) + {other}'
    _, values = literals(got)
    assert values == ['n"s', "a\\.b\\\\-worker-.*", "a.b\\"]
    assert re.fullmatch(values[1], "a.b\\-worker-3")
    assert not re.fullmatch(values[1], "axb\\-worker-3")
    with pytest.raises(ValueError, match="query"):
        promql.render_query_override("", "ns", "job")
