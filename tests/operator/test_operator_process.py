"""`trainscale operator` as a process, the way users run it: flags, /metrics, /healthz.

Covers: the CLI starts kopf with our handlers against $KUBECONFIG; it serves its own
Prometheus metrics (reconcile counts and latency, managed jobs and pods, its resident memory
and its container's memory limit) and kopf's liveness
endpoint on 127.0.0.1; it refuses to start without a namespace scope; SIGTERM stops it;
``--version`` is the installed distribution's; ``--help`` shows every default; ``--log-format
json`` writes one JSON object per line (kopf's formatter, naming the job a line is about).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import math
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import kmock
import pytest

from tests.support.kmock import RealisticEmulator, create_job, eventually, workers
from trainscale.operator.observability import metric_names as operator_metrics
from trainscale.operator.observability.container import memory_limit_bytes
from trainscale.trainer.launch.local import find_free_ports

pytestmark = [pytest.mark.slow, pytest.mark.kmock(cls=RealisticEmulator)]

TRAINSCALE = str(Path(sys.executable).parent / "trainscale")


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except OSError:
        return 0, ""


def test_operator_needs_a_namespace_scope() -> None:
    done = subprocess.run([TRAINSCALE, "operator"], capture_output=True, text=True, check=False)
    assert done.returncode != 0
    assert "--all-namespaces" in done.stderr


async def test_operator_process_serves_metrics_and_liveness(
    kmock: kmock.KubernetesEmulator, cluster: Any, tmp_path: Path
) -> None:
    metrics_port, liveness_port = find_free_ports(2)
    log = (tmp_path / "operator.log").open("w")
    process = subprocess.Popen(  # noqa: ASYNC220 - Popen returns at once
        [
            TRAINSCALE,
            "operator",
            "--all-namespaces",
            "--metrics-address",
            "127.0.0.1",
            "--metrics-port",
            str(metrics_port),
            "--liveness-address",
            "127.0.0.1",
            "--liveness-port",
            str(liveness_port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ),
    )
    try:
        job = {
            "apiVersion": "trainscale.dev/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": "proc", "namespace": "default"},
            "spec": {
                "replicas": 3,
                "maxReplicas": 3,
                "template": {"spec": {"containers": [{"name": "t", "image": "i"}]}},
            },
        }
        await create_job(kmock, job)
        await eventually(lambda: len(workers(kmock)) == 3, within=30, what="3 workers")

        def scraped() -> str:
            status, text = _get(f"http://127.0.0.1:{metrics_port}/metrics")
            ok = (
                status == 200
                and 'trainscale_operator_managed_pods{namespace="default",trainingjob="proc"}'
                in text
            )
            return text if ok else ""

        text = await eventually(scraped, within=20, what="operator metrics")
        assert f'{operator_metrics.RECONCILE_TOTAL_NAME}{{outcome="ok"}}' in text
        assert f"{operator_metrics.RECONCILE_DURATION_NAME}_count" in text
        assert f'{operator_metrics.MANAGED_JOBS_NAME}{{phase="Pending"}} 1.0' in text
        assert (
            f'{operator_metrics.DESIRED_REPLICAS_NAME}{{namespace="default",trainingjob="proc"}} 3.0'
            in text
        )
        # Its memory and its container's limit, for TrainScaleOperatorMemoryHigh: the limit
        # this machine's cgroup says (the test runs in the same container).
        values = {
            line.split()[0]: float(line.split()[1])
            for line in text.splitlines()
            if line and not line.startswith("#")
        }
        limit, expected = values[operator_metrics.MEMORY_LIMIT_NAME], memory_limit_bytes()
        assert limit == expected or (math.isnan(limit) and math.isnan(expected)), limit
        assert values[operator_metrics.RESIDENT_MEMORY_NAME] > 10 * 2**20
        status, _ = await asyncio.to_thread(_get, f"http://127.0.0.1:{liveness_port}/healthz")
        assert status == 200
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(process.wait, 20)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        log.close()
    assert code == 0, (tmp_path / "operator.log").read_text()[-3000:]


def test_version_is_the_installed_distributions() -> None:
    done = subprocess.run([TRAINSCALE, "--version"], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == f"trainscale {importlib.metadata.version('trainscale')}"


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        pytest.param(["operator"], ["(default: 8080)", "(default: INFO)", "(default: text)",
                                    "(default: 10.0)"], id="operator"),
        pytest.param(["simulate"], ["(default: efficiency)", "(default: 0.05)"], id="simulate"),
        pytest.param([], ["--version"], id="top"),
    ],
)  # fmt: skip
def test_help_shows_the_defaults(argv: list[str], shown: list[str]) -> None:
    done = subprocess.run([TRAINSCALE, *argv, "--help"], capture_output=True, text=True,
                          check=True)  # fmt: skip
    text = " ".join(done.stdout.split())  # argparse wraps lines
    for default in shown:
        assert default in text, text
    assert "(default: None)" not in text and "(default: True)" not in text


def test_a_bad_log_format_is_refused() -> None:
    done = subprocess.run([TRAINSCALE, "operator", "-A", "--log-format", "xml"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 2 and "invalid choice: 'xml'" in done.stderr


async def test_operator_logs_one_json_object_per_line(
    kmock: kmock.KubernetesEmulator, cluster: Any, tmp_path: Path
) -> None:
    log_path = tmp_path / "operator.log"
    log = log_path.open("w")
    process = subprocess.Popen(  # noqa: ASYNC220 - Popen returns at once
        [TRAINSCALE, "operator", "--all-namespaces", "--metrics-port", "0",
         "--liveness-port", "0", "--log-format", "json"],
        stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ),
    )  # fmt: skip
    try:
        job = {
            "apiVersion": "trainscale.dev/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": "logs", "namespace": "default"},
            "spec": {"replicas": 1, "maxReplicas": 1,
                     "template": {"spec": {"containers": [{"name": "t", "image": "i"}]}}},
        }  # fmt: skip
        await create_job(kmock, job)
        await eventually(lambda: len(workers(kmock)) == 1, within=30, what="1 worker")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, 20)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        log.close()
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    assert lines
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all(isinstance(r, dict) and "message" in r for r in records), records[:5]
    about_the_job = [r for r in records if (r.get("object") or {}).get("name") == "logs"]
    assert about_the_job, records[:20]
