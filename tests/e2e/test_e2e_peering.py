"""Two operator replicas with kopf peering against the real control plane: one acts at a time.

Covers: with ``--peering``, the operator creates its KopfPeering object itself; of two
replicas the lower-priority one pauses, so each worker is created exactly once; when the
active replica dies (SIGKILL), the other takes over after the peering lifetime and keeps
reconciling (a later ``kubectl scale`` is carried out, and deleting the job completes).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.testbed import wait_for
from trainscale.testbed.cluster import REPO_ROOT, Testbed

pytestmark = [pytest.mark.testbed, pytest.mark.slow]

TRAINSCALE = Path(sys.executable).with_name("trainscale")
PEERING_CRDS = REPO_ROOT / "charts" / "trainscale" / "files" / "crds" / "kopf-peerings.yaml"
LIFETIME = 6


@pytest.fixture
def replicas(
    testbed: Testbed, namespace: str, tmp_path: Path
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start operator replicas (priority 200, then 100) for ``namespace``; stop them at the end."""
    procs: list[subprocess.Popen[bytes]] = []
    for priority in (200, 100):
        env = testbed.env()
        log = (tmp_path / f"operator-{priority}.log").open("wb")
        procs.append(
            subprocess.Popen(
                [
                    str(TRAINSCALE),
                    "operator",
                    "--namespace",
                    namespace,
                    "--peering",
                    "trainscale",
                    "--priority",
                    str(priority),
                    "--peering-lifetime",
                    str(LIFETIME),
                    "--metrics-port",
                    "0",
                    "--liveness-port",
                    "0",
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        )
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


def _workers(kubectl: Any, namespace: str) -> list[dict[str, Any]]:
    out = kubectl(
        "get", "pods", "-n", namespace, "-l", "app.kubernetes.io/component=worker", "-o", "json"
    )
    return [
        p for p in json.loads(out.stdout)["items"] if not p["metadata"].get("deletionTimestamp")
    ]


def test_two_replicas_one_acts_and_the_other_takes_over(
    kubectl: Any, crd: Any, namespace: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    kubectl("apply", "-f", str(PEERING_CRDS))
    kubectl("wait", "--for", "condition=established", "crd/kopfpeerings.kopf.dev", "--timeout=30s")
    procs = request.getfixturevalue("replicas")

    wait_for(
        lambda: (
            kubectl("get", "kopfpeering", "trainscale", "-n", namespace, check=False).returncode
            == 0
        ),
        timeout=30,
        what="the KopfPeering object the operator creates",
    )

    def peers() -> int:
        out = kubectl(
            "get", "kopfpeering", "trainscale", "-n", namespace, "-o", "json", check=False
        )
        return len(json.loads(out.stdout).get("status") or {}) if out.returncode == 0 else 0

    # kopf starts every replica paused until it has seen the peers; wait until both are known.
    wait_for(lambda: peers() == 2, timeout=30, what="both replicas in the peering object")

    job = {
        "apiVersion": "trainscale.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "ha", "namespace": namespace},
        "spec": {
            "replicas": 2,
            "maxReplicas": 4,
            "template": {
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [
                        {
                            "name": "t",
                            "image": "trainer:1",
                            "resources": {"limits": {"nvidia.com/gpu": 1}},
                        }
                    ],
                }
            },
        },
    }
    kubectl("apply", "-f", "-", input=json.dumps(job))
    wait_for(lambda: len(_workers(kubectl, namespace)) == 2, timeout=60, what="2 workers")
    names = sorted(p["metadata"]["name"] for p in _workers(kubectl, namespace))
    assert names == ["ha-worker-0", "ha-worker-1"]
    active_log = (tmp_path / "operator-200.log").read_text(errors="replace")
    paused_log = (tmp_path / "operator-100.log").read_text(errors="replace")
    assert "Handler 'trainingjob_event' succeeded" in active_log
    assert "Handler 'trainingjob" not in paused_log, "the paused replica must not act"

    # The active replica dies without a word; the other takes over after the lifetime.
    procs[0].send_signal(signal.SIGKILL)
    procs[0].wait(10)
    kubectl("scale", "tj/ha", "-n", namespace, "--replicas=3")
    wait_for(
        lambda: len(_workers(kubectl, namespace)) == 3,
        timeout=LIFETIME * 6,
        what="the survivor scaling to 3",
    )
    assert sorted(p["metadata"]["name"] for p in _workers(kubectl, namespace)) == [
        f"ha-worker-{i}" for i in range(3)
    ]

    # Deleting the job while only the survivor runs: it lifts kopf's finalizer, GC removes pods.
    kubectl("delete", "tj/ha", "-n", namespace, "--timeout=60s")
    wait_for(lambda: not _workers(kubectl, namespace), timeout=60, what="workers garbage-collected")
