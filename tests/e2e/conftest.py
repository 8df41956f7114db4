"""End-to-end fixtures: the shared test-bed plugin (tests/support/testbed.py), the
operator run as a separate process the way a user runs it, and job namespaces it watches."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.testbed import cleanup_namespace, make_namespace
from trainscale.testbed.cluster import Testbed


def arbitrated_job(
    name: str,
    replicas: int,
    min_r: int,
    max_r: int,
    *,
    priority: str = "",
    scheduling: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An autoscaled TrainingJob of one-GPU workers whose metrics are unreachable, so only
    cluster arbitration and its hard limits move it; ``scheduling``: extra pod spec fields
    (nodeSelector, affinity, tolerations)."""
    pod_spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": 0,
        "containers": [
            {
                "name": "trainer",
                "image": "ghcr.io/example/trainscale-train:latest",
                "resources": {"limits": {"nvidia.com/gpu": 1}},
            }
        ],
        **(scheduling or {}),
    }
    if priority:
        pod_spec["priorityClassName"] = priority
    return {
        "apiVersion": "trainscale.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "minReplicas": min_r,
            "maxReplicas": max_r,
            "template": {"spec": pod_spec},
            "autoscaling": {
                "enabled": True,
                "intervalSeconds": 1,
                "settleSeconds": 0,
                "scaleDownStabilizationSeconds": 0,
                "restartCostSeconds": 1,
                # Nothing listens there: no metrics, so only arbitration moves the jobs.
                "prometheus": {"url": "http://127.0.0.1:9"},
            },
        },
    }


# The session operator watches namespaces matching this glob; tests that run their own
# operator use another prefix so that two operators never act on one job.
SHARED_PREFIX = "e2e-"
TRAINSCALE = Path(sys.executable).with_name("trainscale")


class OperatorProcess:
    """``trainscale operator`` as a child process with the test-bed's KUBECONFIG."""

    def __init__(
        self, testbed: Testbed, namespaces: str, log_path: Path, extra_args: tuple[str, ...] = ()
    ) -> None:
        self.testbed = testbed
        self.namespaces = namespaces
        self.log_path = log_path
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        env = self.testbed.env()
        argv = [str(TRAINSCALE), "operator", "--namespace", self.namespaces,
                "--metrics-port", "0", "--liveness-port", "0", "--log-level", "INFO",
                *self.extra_args]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)  # fmt: skip
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup, as when a node dies or the pod is OOM-killed."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="session")
def operator_factory(
    testbed: Testbed, crd: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., OperatorProcess]]:
    """Start operators watching a namespace glob; all are stopped at the end of the session."""
    started: list[OperatorProcess] = []
    logs = tmp_path_factory.mktemp("operator-logs")
    counter = itertools.count()

    def start(namespaces: str, *extra_args: str) -> OperatorProcess:
        op = OperatorProcess(
            testbed, namespaces, logs / f"operator-{next(counter)}.log", tuple(extra_args)
        )
        started.append(op.start())
        return op

    yield start
    for op in started:
        op.stop()


@pytest.fixture(scope="session")
def operator(operator_factory: Callable[..., OperatorProcess]) -> OperatorProcess:
    """The session's operator, watching every ``e2e-*`` namespace."""
    return operator_factory(f"{SHARED_PREFIX}*")


@pytest.fixture
def private_operator(
    kubectl: Any, operator_factory: Callable[..., OperatorProcess]
) -> Iterator[tuple[str, Callable[..., OperatorProcess]]]:
    """A namespace no session operator watches, and a starter of operators for it alone.

    At teardown an operator runs while the namespace is cleaned (it lifts the job's
    finalizer), then every operator started for it is stopped.
    """
    name = make_namespace(kubectl, "restart-")
    mine: list[OperatorProcess] = []

    def start(*extra_args: str) -> OperatorProcess:
        mine.append(operator_factory(name, *extra_args))
        return mine[-1]

    yield name, start
    if not any(op.proc is not None and op.proc.poll() is None for op in mine):
        start()
    cleanup_namespace(kubectl, name)
    for op in mine:
        op.stop()


@pytest.fixture
def job_namespace(kubectl: Any, operator: OperatorProcess) -> Iterator[str]:
    """A fresh namespace watched by the session operator."""
    name = make_namespace(kubectl, f"{SHARED_PREFIX}{os.getpid()}-")
    yield name
    cleanup_namespace(kubectl, name)
