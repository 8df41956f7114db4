"""``trainscale-testbed up --process-nodes 1`` as a developer runs it: detached, a pod runs on
the process node, ``status`` lists the runtime, ``down`` leaves no namespace or bridge.

Covers:
- the detached test-bed starts the process runtime as one of its components and records it;
- a pod pinned to the process node runs its command and Succeeds;
- ``down`` stops the runtime with the rest: no network namespace, bridge or process is left.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.testbed.test_procnode import skip_unless_process_runtime_can_run
from trainscale.testbed import procnode
from trainscale.testbed.cluster import PROCNODE, STATE_FILE, Testbed

pytestmark = [pytest.mark.testbed, pytest.mark.slow]

TESTBED = Path(sys.executable).with_name("trainscale-testbed")


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(TESTBED), *args], capture_output=True, text=True, timeout=120,
                          check=False)  # fmt: skip
    assert not check or done.returncode == 0, done.stderr
    return done


def _ours(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"{procnode.BRIDGE}-")]


def test_up_with_process_nodes_then_down(tmp_path: Path) -> None:
    skip_unless_process_runtime_can_run()
    state = tmp_path / "bed"
    _cli("up", "--nodes", "1", "--process-nodes", "1", "--state-dir", str(state))
    try:
        pids = json.loads((state / STATE_FILE).read_text())["pids"]
        assert PROCNODE in pids
        status = _cli("status", "--state-dir", str(state)).stdout
        assert f"{PROCNODE:<24} running" in status
        bed = Testbed.attach(state)
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hello"},
               "spec": {"nodeSelector": {"type": "process"}, "restartPolicy": "Never",
                        "containers": [{"name": "main", "image": "ignored",
                                        "command": ["sh", "-c", "echo hi from $HOSTNAME"]}]}}  # fmt: skip
        bed.kubectl("apply", "-f", "-", input=json.dumps(pod))
        bed.kubectl("wait", "--for=jsonpath={.status.phase}=Succeeded", "pod/hello",
                    "--timeout=60s")  # fmt: skip
        log = procnode.container_log(state / PROCNODE, "default", "hello", "main")
        assert log.read_text() == "hi from hello\n"
        namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                    check=True).stdout  # fmt: skip
        assert len(_ours(namespaces)) == 1
    finally:
        _cli("down", "--state-dir", str(state))
    runtime = Path(f"/proc/{pids[PROCNODE]}")
    # Gone, or a zombie whose parent (the `up` process) exited before reaping it.
    assert not runtime.exists() or b"zombie" in (runtime / "status").read_bytes().lower()
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                check=True).stdout  # fmt: skip
    assert not _ours(namespaces)
    link = subprocess.run(["ip", "link", "show", procnode.BRIDGE], capture_output=True,
                          check=False)  # fmt: skip
    assert link.returncode != 0
