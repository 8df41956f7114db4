"""`trainscale operator` as a process, the way users run it: flags, /metrics, /healthz.

Covers: the CLI starts kopf with our handlers against $KUBECONFIG; it serves its own
Prometheus metrics (reconcile counts and latency, managed jobs and pods) and kopf's liveness
endpoint on 127.0.0.1; it refuses to start without a namespace scope; SIGTERM stops it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import kmock
import pytest

from tests.support.kmock import RealisticEmulator, create_job, eventually, workers
from trainscale.operator.observability import metric_names as operator_metrics

pytestmark = [pytest.mark.slow, pytest.mark.kmock(cls=RealisticEmulator)]

TRAINSCALE = str(Path(sys.executable).parent / "trainscale")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    metrics_port, liveness_port = _free_port(), _free_port()
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
