"""``trainscale-testbed up|status|kubeconfig|env|down``, run as a developer runs it.

Covers:
- ``up`` starts a detached control plane and prints a kubeconfig with which kubectl sees the
  requested GPU nodes and ``kubectl get tj`` prints the printer columns;
- ``up`` again reports the running one instead of starting a second;
- ``status`` and ``env`` describe it; ``down`` stops every process and removes the state;
- bad sizes are refused with a message naming the flag.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.testbed import wait_for
from trainscale.testbed.cluster import COMPONENTS, CRD_PATH, STATE_FILE, crd_established

pytestmark = [pytest.mark.testbed, pytest.mark.slow]

TESTBED = Path(sys.executable).with_name("trainscale-testbed")


def run_testbed_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("KUBECONFIG", None)
    done = subprocess.run([str(TESTBED), *args], capture_output=True, text=True, env=env,
                          timeout=120, check=False)  # fmt: skip
    if check:
        assert done.returncode == 0, done.stderr
    return done


def test_up_status_down(tmp_path: Path) -> None:
    state = tmp_path / "bed"
    up = run_testbed_cli("up", "--nodes", "1", "--gpus-per-node", "2",
                    "--state-dir", str(state))  # fmt: skip
    try:
        kubeconfig = up.stdout.strip()
        assert kubeconfig == str(state / "kubeconfig")
        assert run_testbed_cli("kubeconfig", "--state-dir", str(state)).stdout.strip() \
            == kubeconfig  # fmt: skip
        pids = json.loads((state / STATE_FILE).read_text())["pids"]
        assert set(pids) == set(COMPONENTS)

        again = run_testbed_cli("up", "--state-dir", str(state))
        assert "already running" in again.stderr
        assert json.loads((state / STATE_FILE).read_text())["pids"] == pids

        status = run_testbed_cli("status", "--state-dir", str(state))
        assert "apiserver /readyz" in status.stdout and "ok" in status.stdout

        exports = run_testbed_cli("env", "--state-dir", str(state)).stdout
        env = dict(os.environ)
        for line in exports.splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = value.strip('"').replace("$PATH", os.environ["PATH"])
        assert env["KUBECONFIG"] == kubeconfig

        def kubectl(*args: str) -> str:
            done = subprocess.run(["kubectl", *args], capture_output=True, text=True, env=env,
                                  timeout=60, check=False)  # fmt: skip
            assert done.returncode == 0, done.stderr
            return done.stdout

        nodes = json.loads(kubectl("get", "nodes", "-o", "json"))["items"]
        assert [n["status"]["allocatable"]["nvidia.com/gpu"] for n in nodes] == ["2"]
        kubectl("apply", "-f", str(CRD_PATH))

        # Not `kubectl wait --for=condition=Established`, nor a jsonpath filter on the
        # conditions: both fail at once while the new CRD's status.conditions is still null
        # (Testbed.wait_established); on a loaded machine the first read can come that early.
        wait_for(lambda: crd_established(json.loads(kubectl("get", "crd/trainingjobs.trainscale.dev",
                                                            "-o", "json"))),
                 timeout=60, what="the CRD Established")  # fmt: skip
        job = {"apiVersion": "trainscale.dev/v1alpha1", "kind": "TrainingJob",
               "metadata": {"name": "demo", "namespace": "default"},
               "spec": {"maxReplicas": 2, "template": {"spec": {"containers": [
                   {"name": "t", "image": "example/t:1"}]}}}}  # fmt: skip
        done = subprocess.run(["kubectl", "apply", "-f", "-"], input=json.dumps(job),
                              capture_output=True, text=True, env=env, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        header = kubectl("get", "tj").splitlines()[0].split()
        assert header == ["NAME", "REPLICAS", "READY", "DESIRED", "SHARE", "MIN", "MAX", "GPU-UTIL",
                          "THROUGHPUT", "PHASE", "AGE"]  # fmt: skip
    finally:
        run_testbed_cli("down", "--state-dir", str(state))
    assert not (state / STATE_FILE).exists()
    for pid in pids.values():
        assert (
            not Path(f"/proc/{pid}").exists()
            or b"zombie" in Path(f"/proc/{pid}/status").read_bytes().lower()
        )
    assert run_testbed_cli("status", "--state-dir", str(state), check=False).returncode == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--nodes", "0"], "argument --nodes: must be >= 1, got 0", id="nodes"),
        pytest.param(["--gpus-per-node", "-2"], "argument --gpus-per-node: must be >= 0, got -2",
                     id="gpus"),
    ],
)  # fmt: skip
def test_up_refuses_bad_sizes(args: list[str], message: str, tmp_path: Path) -> None:
    done = run_testbed_cli("up", *args, "--state-dir", str(tmp_path), check=False)
    assert done.returncode == 2
    assert message in done.stderr
