"""What the Prometheus adapter sends: headers, tokens, and what it never lets out.

Covers, against a tiny local HTTP server that records every request's headers:
- custom headers (``X-Scope-OrgID``) and the bearer token are sent with every query;
- the bearer token file is re-read at every query (a rotated projected token is used at once);
- a missing or empty token file is an error naming the file, and no query is sent;
- the credentials and headers go only to the operator's own Prometheus: a job whose
  ``spec.url`` names another server is queried without them;
- a redirect never carries the credentials on;
- a server that echoes the token in its 401 answer: the error says ``<redacted>``; no log
  record holds the token either;
- contradictory settings and malformed headers are refused with a message naming them, at the
  command line too (flags and their TRAINSCALE_PROMETHEUS_* environment variables);
- ``trainscale operator`` refuses a credential file that does not exist, and logs a warning
  at start-up when certificate verification is off.
"""

from __future__ import annotations

import argparse
import http.server
import json
import logging
import os
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from trainscale.operator.adapters.prometheus import fetch_observation, fetch_query
from trainscale.operator.adapters.prometheus_access import (
    PrometheusAccess,
    PrometheusAccessError,
    parse_header,
    warn_if_insecure,
)
from trainscale.operator.api import PrometheusSpec
from trainscale.operator.app.cli import build_parser, build_prometheus_access

TOKEN = "eyJhbGciOiJSUzI1NiJ9.secret-token-1"
ROTATED = "eyJhbGciOiJSUzI1NiJ9.secret-token-2"
ANSWER = {"status": "success", "data": {"resultType": "vector", "result": [
    {"metric": {}, "value": [1000, "0.5"]}]}}  # fmt: skip


class Recorder(http.server.ThreadingHTTPServer):
    """Answers /ok with one sample, /echo401 with a 401 quoting the Authorization header,
    /redirect with a 302 to /ok on the same server; keeps every request's path and headers."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Recorder

    def do_GET(self) -> None:
        # header names are case-insensitive (urllib sends X-scope-orgid): keep them lower-case
        self.server.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        route = urllib.parse.urlsplit(self.path).path.split("/")[1]
        if route == "redirect":
            self.send_response(302)
            self.send_header("Location", self.path.replace("/redirect/", "/ok/", 1))
            self.end_headers()
            return
        code, body = 200, ANSWER
        if route == "echo401":
            code = 401
            body = {"status": "error", "error": f"refused {self.headers.get('Authorization')}"}
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:  # quiet
        pass


def _serve() -> Iterator[Recorder]:
    server = Recorder()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


recorder = pytest.fixture(_serve)
other_server = pytest.fixture(_serve)


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


def query(url: str, access: PrometheusAccess) -> str | None:
    result = fetch_query(url, "up", timeout_seconds=5, access=access)
    assert result.error is None or result.value is None
    return result.error


def test_headers_and_the_bearer_token_go_with_every_query(
    recorder: Recorder, token_file: Path
) -> None:
    access = PrometheusAccess(
        bearer_token_file=str(token_file), headers=(("X-Scope-OrgID", "team-a"),)
    )
    assert query(recorder.url + "/ok", access) is None
    (_, headers) = recorder.seen[-1]
    assert headers["x-scope-orgid"] == "team-a"
    assert headers["authorization"] == f"Bearer {TOKEN}"
    assert headers["accept"] == "application/json"


def test_basic_auth_is_sent_from_the_password_file(recorder: Recorder, tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("hunter2\n")
    access = PrometheusAccess(username="bob", password_file=str(tmp_path / "pw"))
    assert query(recorder.url + "/ok", access) is None
    assert recorder.seen[-1][1]["authorization"] == "Basic Ym9iOmh1bnRlcjI="  # bob:hunter2


def test_a_rotated_token_is_sent_at_the_next_query(recorder: Recorder, token_file: Path) -> None:
    access = PrometheusAccess(bearer_token_file=str(token_file))
    query(recorder.url + "/ok", access)
    token_file.write_text(ROTATED)
    query(recorder.url + "/ok", access)
    assert [h["authorization"] for _, h in recorder.seen] == [
        f"Bearer {TOKEN}",
        f"Bearer {ROTATED}",
    ]


def test_a_missing_or_empty_token_file_is_named_and_nothing_is_sent(
    recorder: Recorder, tmp_path: Path
) -> None:
    missing = tmp_path / "absent"
    error = query(recorder.url + "/ok", PrometheusAccess(bearer_token_file=str(missing)))
    assert error == f"cannot read the bearer token file {missing}: No such file or directory"
    (tmp_path / "empty").write_text("\n")
    error = query(recorder.url + "/ok", PrometheusAccess(bearer_token_file=str(tmp_path / "empty")))
    assert error == f"the bearer token file {tmp_path / 'empty'} is empty"
    assert recorder.seen == []


def test_credentials_go_only_to_the_operators_own_prometheus(
    recorder: Recorder, other_server: Recorder, token_file: Path
) -> None:
    access = PrometheusAccess(
        bearer_token_file=str(token_file), headers=(("X-Scope-OrgID", "team-a"),)
    )

    def observe(job_url: str | None) -> None:
        got = fetch_observation(
            recorder.url + "/ok", "ns", "job", replicas=1, now=0.0,
            spec=PrometheusSpec(url=job_url), access=access,
        )  # fmt: skip
        assert got.errors == ()

    observe(recorder.url + "/ok/")  # the operator's server, named by the job: credentials go
    assert all(h.get("authorization") == f"Bearer {TOKEN}" for _, h in recorder.seen)
    observe(other_server.url + "/ok")  # a server of the job's choosing: nothing secret
    assert len(other_server.seen) == 4  # GPU, throughput, sync share, samples left
    for _, headers in other_server.seen:
        assert "authorization" not in headers
        assert "x-scope-orgid" not in headers


def test_a_redirect_does_not_carry_the_credentials_on(recorder: Recorder, token_file: Path) -> None:
    access = PrometheusAccess(bearer_token_file=str(token_file))
    assert query(recorder.url + "/redirect", access) is None
    (first, followed) = recorder.seen
    assert first[1]["authorization"] == f"Bearer {TOKEN}"
    assert followed[0].startswith("/ok/")
    assert "authorization" not in followed[1]


def test_a_token_echoed_by_the_server_is_redacted_and_never_logged(
    recorder: Recorder, token_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    access = PrometheusAccess(bearer_token_file=str(token_file))
    error = query(recorder.url + "/echo401", access)
    assert error is not None
    assert error.startswith("HTTP 401 Unauthorized: refused Bearer <redacted>")
    assert f"sent: a bearer token from {token_file}" in error
    assert TOKEN not in error
    assert TOKEN not in caplog.text
    assert TOKEN not in repr(access)


def test_credentials_over_plain_http_are_warned_about(
    token_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    access = PrometheusAccess(bearer_token_file=str(token_file))
    with caplog.at_level(logging.WARNING):
        warn_if_insecure(access, "https://prometheus.example:9090")
        warn_if_insecure(PrometheusAccess(), "http://prometheus.example:9090")
    assert caplog.records == []
    with caplog.at_level(logging.WARNING):
        warn_if_insecure(access, "http://prometheus.example:9090")
    assert "sent in clear to http://prometheus.example:9090" in caplog.text


def test_header_values_stay_out_of_the_repr() -> None:
    access = PrometheusAccess(headers=(("X-Api-Key", "k3y-value"),))
    assert "k3y-value" not in repr(access)
    assert "X-Api-Key" in repr(access)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"bearer_token_file": "/t", "username": "u", "password_file": "/p"}, "not both"),
        ({"username": "u"}, "needs both a username and a password file"),
        ({"password_file": "/p"}, "needs both a username and a password file"),
        ({"key_file": "/k"}, "needs a client certificate file"),
        ({"headers": (("Authorization", "x"),)}, "set by the operator itself"),
        ({"headers": (("X-Org", "a\r\nInjected: 1"),)}, "line break"),
        ({"headers": (("Bad Name", "a"),)}, "not a valid HTTP header name"),
    ],
)
def test_contradictory_settings_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(PrometheusAccessError, match=message):
        PrometheusAccess(**fields)  # type: ignore[arg-type]


def test_parse_header_takes_name_equals_value() -> None:
    assert parse_header("X-Scope-OrgID=team-a") == ("X-Scope-OrgID", "team-a")
    assert parse_header("X-Scope-OrgID: a=b") == ("X-Scope-OrgID", "a=b")
    with pytest.raises(PrometheusAccessError, match="expected NAME=VALUE"):
        parse_header("X-Scope-OrgID")


def operator_args(*flags: str) -> argparse.Namespace:
    return build_parser().parse_args(["operator", "-A", *flags])


def test_the_command_line_builds_the_access_and_falls_back_to_the_environment(
    token_file: Path,
) -> None:
    access = build_prometheus_access(
        operator_args("--prometheus-header", "X-Scope-OrgID=team-a"),
        {
            "TRAINSCALE_PROMETHEUS_BEARER_TOKEN_FILE": str(token_file),
            "TRAINSCALE_PROMETHEUS_INSECURE_SKIP_VERIFY": "true",
        },
    )
    assert access == PrometheusAccess(
        bearer_token_file=str(token_file),
        insecure_skip_verify=True,
        headers=(("X-Scope-OrgID", "team-a"),),
    )
    assert build_prometheus_access(operator_args(), {}) == PrometheusAccess()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--prometheus-username", "u"], "needs both a username and a password file"),
        (["--prometheus-header", "X-Scope-OrgID"], "expected NAME=VALUE"),
        (["--prometheus-ca-file", "/nonexistent/ca.crt"], "CA file /nonexistent/ca.crt does not"),
    ],
)
def test_the_command_line_names_a_wrong_setting(flags: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        build_prometheus_access(operator_args(*flags), {})


TRAINSCALE = str(Path(sys.executable).parent / "trainscale")


def test_the_operator_refuses_a_missing_credential_file_at_start() -> None:
    done = subprocess.run(
        [TRAINSCALE, "operator", "-A", "--prometheus-bearer-token-file", "/nonexistent/token"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "the Prometheus bearer token file /nonexistent/token does not exist" in done.stderr


@pytest.mark.slow
def test_the_operator_process_warns_when_verification_is_off(tmp_path: Path) -> None:
    """The warning is logged at start-up, before kopf connects to anything."""
    log_path = tmp_path / "operator.log"
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "no-cluster"),
           "TRAINSCALE_PROMETHEUS_INSECURE_SKIP_VERIFY": "true"}  # fmt: skip
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [TRAINSCALE, "operator", "-A", "--metrics-port", "0", "--liveness-port", "0"],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "NOT verified" not in log_path.read_text():
            assert time.monotonic() < deadline, log_path.read_text()[-2000:]
            time.sleep(0.2)
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert "WARNING" in log_path.read_text()
