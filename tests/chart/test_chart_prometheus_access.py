"""The chart's Prometheus access values (prometheus.bearerToken, basicAuth, tls, headers).

Behaviours covered:

* each Secret named is mounted read-only into the operator and the flag the chart passes names
  a file inside that mount, so the operator re-reads what the kubelet updates; the username
  comes from the Secret through an environment variable; nothing secret is ever rendered;
* the rendered flags parse into the operator's access settings (the real CLI);
* ``serviceAccountToken`` uses the operator's own (rotated) ServiceAccount token;
* contradictory values fail with a message naming them; the schema refuses a header with a
  line break or a Secret name that is not an object name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.chart.test_chart_render import container, one
from trainscale.operator.adapters.prometheus_access import PrometheusAccess
from trainscale.operator.app.cli import build_parser, build_prometheus_access

SA_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
ALL_ACCESS = {
    "prometheus": {
        "url": "https://thanos-querier.example:9091",
        "basicAuth": {"secretName": "prom-basic", "passwordKey": "pw"},
        "tls": {"caSecretName": "prom-ca", "clientCertSecretName": "prom-client"},
        "headers": {"X-Scope-OrgID": "team-a"},
    }
}


def mounts(objects: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """mount path -> (volume name, Secret name) of every Secret volume of the operator."""
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    out = {}
    for mount in container(objects)["volumeMounts"]:
        if mount["name"] in secrets:
            assert mount["readOnly"] is True
            out[mount["mountPath"]] = (mount["name"], secrets[mount["name"]])
    return out


def secret_of(path: str, objects: list[dict[str, Any]]) -> tuple[str, str]:
    """(Secret, key) a flag's file comes from: the mount it lies in."""
    directory, key = os.path.split(path)
    return mounts(objects)[directory][1], key


def parsed_access(args: list[str], tmp_path: Path, env: dict[str, str]) -> PrometheusAccess:
    """The access the operator builds from the rendered args and environment, with every
    file it names created under tmp_path (the kubelet's mounts)."""
    moved = []
    for arg in args:
        local = tmp_path / arg.lstrip("/")
        if arg.startswith("/"):
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text("x")
        moved.append(str(local) if arg.startswith("/") else arg)
    namespace = build_parser().parse_args(moved)
    return build_prometheus_access(namespace, env)


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_default_values_send_no_credentials(render: Any) -> None:
    objects = render({})
    assert mounts(objects) == {}
    assert not [a for a in container(objects)["args"] if a.startswith("--prometheus-") and
                a != "--prometheus-url"]  # fmt: skip


def test_every_secret_is_mounted_and_each_flag_reads_from_its_mount(
    render: Any, tmp_path: Path
) -> None:
    objects = render(ALL_ACCESS)
    args = container(objects)["args"]
    assert secret_of(flag(args, "--prometheus-password-file"), objects) == ("prom-basic", "pw")
    assert secret_of(flag(args, "--prometheus-ca-file"), objects) == ("prom-ca", "ca.crt")
    assert secret_of(flag(args, "--prometheus-cert-file"), objects) == ("prom-client", "tls.crt")
    assert secret_of(flag(args, "--prometheus-key-file"), objects) == ("prom-client", "tls.key")
    env = {e["name"]: e for e in container(objects)["env"]}
    assert env["TRAINSCALE_PROMETHEUS_USERNAME"]["valueFrom"] == {
        "secretKeyRef": {"name": "prom-basic", "key": "username"}
    }
    access = parsed_access(args, tmp_path, {"TRAINSCALE_PROMETHEUS_USERNAME": "from-secret"})
    assert access.username == "from-secret"
    assert access.headers == (("X-Scope-OrgID", "team-a"),)
    assert not access.insecure_skip_verify
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert all(v["secret"]["defaultMode"] == 0o440 for v in pod["volumes"] if "secret" in v)


def test_a_bearer_token_secret_or_the_service_account_token(render: Any, tmp_path: Path) -> None:
    objects = render({"prometheus": {"bearerToken": {"secretName": "prom-token"}}})
    args = container(objects)["args"]
    assert secret_of(flag(args, "--prometheus-bearer-token-file"), objects) == (
        "prom-token",
        "token",
    )
    assert parsed_access(args, tmp_path, {}).bearer_token_file
    objects = render({"prometheus": {"bearerToken": {"serviceAccountToken": True}}})
    assert flag(container(objects)["args"], "--prometheus-bearer-token-file") == SA_TOKEN
    assert mounts(objects) == {}


def test_insecure_skip_verify_passes_the_flag(render: Any) -> None:
    args = container(render({"prometheus": {"tls": {"insecureSkipVerify": True}}}))["args"]
    assert "--prometheus-insecure-skip-verify" in args


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"bearerToken": {"serviceAccountToken": True, "secretName": "t"}}, "not both"),
        (
            {"bearerToken": {"secretName": "t"}, "basicAuth": {"secretName": "b"}},
            "a bearer token (prometheus.bearerToken) or basic auth",
        ),
        ({"tls": {"insecureSkipVerify": True, "caSecretName": "ca"}}, "give one of them"),
    ],
)
def test_contradictory_values_fail_naming_them(
    helm: Any, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(AssertionError) as failed:
        helm.template({"prometheus": values})
    assert message in str(failed.value)


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"headers": {"X-Org": "a\nInjected: 1"}}, "/prometheus/headers/X-Org"),
        ({"headers": {"Bad Name": "a"}}, "invalid propertyName 'Bad Name'"),
        ({"basicAuth": {"secretName": "Not_A_Name"}}, "/prometheus/basicAuth/secretName"),
        ({"tls": {"insecureSkipVerify": "maybe"}}, "/prometheus/tls/insecureSkipVerify"),
    ],
)
def test_the_schema_refuses_bad_access_values(
    helm: Any, values: dict[str, Any], where: str
) -> None:
    with pytest.raises(AssertionError) as failed:
        helm.template({"prometheus": values})
    assert "values don't meet the specifications of the schema" in str(failed.value)
    assert where in str(failed.value)
