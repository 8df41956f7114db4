"""Prometheus access: a real Prometheus behind TLS, client certificates and basic auth.

Covers:
- the right CA, client certificate and basic-auth password: the query works (the same job
  metrics as the plain server);
- a wrong or missing password: ``HTTP 401`` naming what was sent, never the password, and
  the autoscaler's ``MetricsUnavailable`` condition says so without the password either;
- no CA bundle: ``certificate verify failed`` (verification is on by default); with
  ``insecure_skip_verify`` the query works and a warning is logged;
- no client certificate: the TLS handshake is refused, an error and no value;
- the password file is re-read at every query: a rotated password is used at once;
- no secret ever reaches a log record or an error message.

The server is Debian's Prometheus 2.42 with ``--web.config.file`` (``tls_server_config`` with
``RequireAndVerifyClientCert``, ``basic_auth_users`` with a bcrypt hash), certificates made
by ``openssl`` in a temporary folder. It scrapes the same test exporter as the other
Prometheus tests.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.prometheus import start_prometheus
from trainscale.operator import api
from trainscale.operator.adapters.prometheus import FetchedObservation, fetch_observation
from trainscale.operator.adapters.prometheus_access import PrometheusAccess, warn_if_insecure
from trainscale.operator.autoscaling import JobAutoscaler
from trainscale.operator.autoscaling.status import decide_autoscale

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

USER = "alice"
PASSWORD = "correct horse battery"
# bcrypt of PASSWORD (cost 4, the least Prometheus accepts: the tests stay fast); made once
# with crypt.crypt(PASSWORD, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)).
PASSWORD_BCRYPT = "$2b$04$qv0DZ6c7bciJepqMl5uQCO8HQ/q530SE07Oa1rx0TIuMQzkKm6qii"
WRONG_PASSWORD = "tr0ub4dor&3-not-it"


def _openssl(*args: str) -> None:
    done = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"openssl {' '.join(args)}: {done.stderr}"


def _sign(pki: Path, name: str, subject: str, *extensions: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-days", "2", "-subj", subject, "-CA", str(pki / "ca.crt"), "-CAkey", str(pki / "ca.key"),
        "-keyout", str(pki / f"{name}.key"), "-out", str(pki / f"{name}.crt"),
        "-addext", "basicConstraints=critical,CA:FALSE", *extensions,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA, Prometheus' serving certificate (127.0.0.1) and a client certificate."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is missing: run scripts/install-system-deps.sh")
    pki = tmp_path_factory.mktemp("pki")
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-days", "2", "-subj", "/CN=trainscale-test-ca",
        "-keyout", str(pki / "ca.key"), "-out", str(pki / "ca.crt"),
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
    )  # fmt: skip
    _sign(pki, "server", "/CN=prometheus", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
          "-addext", "extendedKeyUsage=serverAuth")  # fmt: skip
    _sign(pki, "client", "/CN=trainscale-operator", "-addext", "extendedKeyUsage=clientAuth")
    (pki / "password").write_text(PASSWORD + "\n")
    (pki / "wrong-password").write_text(WRONG_PASSWORD + "\n")
    return pki


def right_access(pki: Path, **changes: object) -> PrometheusAccess:
    fields: dict[str, object] = {
        "username": USER,
        "password_file": str(pki / "password"),
        "ca_file": str(pki / "ca.crt"),
        "cert_file": str(pki / "client.crt"),
        "key_file": str(pki / "client.key"),
    }
    fields.update(changes)
    return PrometheusAccess(**fields)  # type: ignore[arg-type]


def fetch(url: str, access: PrometheusAccess) -> FetchedObservation:
    return fetch_observation(url, "team-a", "alpha", replicas=2, now=1000.0, access=access)


@pytest.fixture(scope="module")
def secure_prometheus(
    exporter: str, pki: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """https URL of a real Prometheus requiring a client certificate and basic auth, once it
    has GPU data for the job."""
    workdir = tmp_path_factory.mktemp("secure-prometheus")
    web = workdir / "web.yml"
    web.write_text(
        "tls_server_config:\n"
        f"  cert_file: {pki / 'server.crt'}\n  key_file: {pki / 'server.key'}\n"
        f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {pki / 'ca.crt'}\n"
        f"basic_auth_users:\n  {USER}: '{PASSWORD_BCRYPT}'\n"
    )
    server = start_prometheus(workdir, exporter, web_config=web)
    try:
        assert server.url.startswith("https://127.0.0.1:")
        deadline = time.monotonic() + 60
        while fetch(server.url, right_access(pki)).observation.gpu_utilization is None:
            assert server.process.poll() is None, (workdir / "prometheus.log").read_text()
            assert time.monotonic() < deadline, "the TLS Prometheus had no data within 60 s"
            time.sleep(0.25)
        yield server.url
    finally:
        server.stop()


def refusal(url: str, access: PrometheusAccess) -> str:
    """The GPU query's error; there must be no value."""
    got = fetch(url, access)
    assert got.observation.gpu_utilization is None
    assert got.errors
    return got.errors[0]


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert PASSWORD not in text
        assert WRONG_PASSWORD not in text


def test_the_right_ca_client_certificate_and_password_read_the_job(
    secure_prometheus: str, pki: Path
) -> None:
    got = fetch(secure_prometheus, right_access(pki))
    assert got.errors == ()
    assert got.observation.gpu_utilization == pytest.approx(0.7)


def test_a_wrong_password_is_a_401_naming_the_user_not_the_password(
    secure_prometheus: str, pki: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    got = fetch(secure_prometheus, right_access(pki, password_file=str(pki / "wrong-password")))
    assert got.observation.gpu_utilization is None
    (gpu_error, _, _) = got.errors  # GPU, throughput, sync share
    assert "HTTP 401 Unauthorized" in gpu_error
    assert "basic auth as user 'alice'" in gpu_error
    assert_no_secret(*got.errors, caplog.text)


def test_no_credentials_is_a_401_saying_none_were_sent(secure_prometheus: str, pki: Path) -> None:
    error = refusal(secure_prometheus, right_access(pki, username=None, password_file=None))
    assert "HTTP 401" in error
    assert "sent: no bearer token or basic auth" in error


def test_the_autoscaler_condition_names_the_401_without_the_password(
    secure_prometheus: str, pki: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What the autoscale daemon writes (status.autoscaling and MetricsUnavailable) for this
    pass's errors: the user sees the refusal there, never the secret."""
    caplog.set_level(logging.DEBUG)
    spec = api.TrainingJobSpec.model_validate(
        {
            "replicas": 2,
            "maxReplicas": 4,
            "template": {"spec": {"containers": [{"name": "t", "image": "t:1"}]}},
            "autoscaling": {"enabled": True},
        }
    )
    got = fetch(secure_prometheus, right_access(pki, password_file=str(pki / "wrong-password")))
    rec = JobAutoscaler(spec).decide([got.observation], current_replicas=2, now=1000.0)
    plan = decide_autoscale(spec, {}, got.observation, got.errors, rec, dt.datetime.now(dt.UTC))
    (metrics,) = [c for c in plan.status["conditions"] if c["type"] == "MetricsUnavailable"]
    assert (metrics["status"], metrics["reason"]) == ("True", "PrometheusError")
    assert "HTTP 401 Unauthorized" in metrics["message"]
    assert_no_secret(str(plan.status), str(plan.event), caplog.text)


def test_without_the_ca_bundle_the_certificate_is_not_trusted(
    secure_prometheus: str, pki: Path
) -> None:
    error = refusal(secure_prometheus, right_access(pki, ca_file=None))
    assert "certificate verify failed" in error
    assert "--prometheus-ca-file" in error


def test_insecure_skip_verify_works_without_the_ca_and_warns(
    secure_prometheus: str, pki: Path, caplog: pytest.LogCaptureFixture
) -> None:
    access = right_access(pki, ca_file=None, insecure_skip_verify=True)
    with caplog.at_level(logging.WARNING):
        warn_if_insecure(access)
    assert "NOT verified" in caplog.text
    got = fetch(secure_prometheus, access)
    assert got.errors == ()
    assert got.observation.gpu_utilization == pytest.approx(0.7)


def test_without_the_client_certificate_the_handshake_is_refused(
    secure_prometheus: str, pki: Path
) -> None:
    error = refusal(secure_prometheus, right_access(pki, cert_file=None, key_file=None))
    assert "HTTP" not in error  # refused in the handshake, before any HTTP answer
    assert error.startswith("gpu utilization: SSLError: ")
    assert "client certificate" in error


def test_a_rotated_password_file_is_used_at_the_next_query(
    secure_prometheus: str, pki: Path, tmp_path: Path
) -> None:
    rotating = tmp_path / "password"
    rotating.write_text(WRONG_PASSWORD)
    access = right_access(pki, password_file=str(rotating))
    assert "HTTP 401" in fetch(secure_prometheus, access).errors[0]
    rotating.write_text(PASSWORD)
    got = fetch(secure_prometheus, access)
    assert got.errors == ()
    assert got.observation.gpu_utilization == pytest.approx(0.7)
