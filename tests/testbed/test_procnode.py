"""The process runtime runs pods for real: own IPs, Service names, shared claims, probes, exit
codes, graceful deletion, and a clean stop.

Covers:
- a pod's ``valueFrom.fieldRef`` environment (``status.podIP`` and friends) equals what the
  runtime reports in the pod's status;
- two pods in different network namespaces talk through a Service name (a TCP echo server and
  a client that exits 0 only when its echo comes back);
- a persistentVolumeClaim is one folder shared by two pods; a created mount point is removed
  once no pod uses it;
- readiness probes (tcpSocket, httpGet, exec) keep the pod un-Ready until they pass;
- exit 3 gives phase Failed with exitCode 3, exit 0 gives Succeeded; OnFailure restarts;
- deletion: a process that traps SIGTERM writes its file and exits early; one that ignores
  SIGTERM is SIGKILLed when the grace period is over, not before;
- stopping the runtime kills every process it started and leaves no namespace or bridge; what
  a SIGKILLed runtime left behind is removed by the next one.

These tests use their own control plane (module scope) with one process node and one kwok
node, not the session's: the session test-bed's tests count its nodes, and the process runtime
needs root, which only these tests require.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.testbed import cleanup_namespace, make_namespace, wait_for
from trainscale.testbed import procnode
from trainscale.testbed.cluster import Testbed

pytestmark = [pytest.mark.testbed, pytest.mark.slow]

ON_PROCESS_NODE = {"type": "process"}


def skip_unless_process_runtime_can_run() -> None:
    try:
        procnode.check_host()
    except procnode.ProcessRuntimeError as err:
        pytest.skip(str(err))


@contextlib.contextmanager
def process_testbed() -> Iterator[Testbed]:
    """A test-bed with one kwok node and one process node (skips where it cannot run)."""
    skip_unless_process_runtime_can_run()
    with Testbed(nodes=1, gpus_per_node=8, process_nodes=1) as testbed:
        yield testbed


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    with process_testbed() as testbed:
        yield testbed


@pytest.fixture
def ns(bed: Testbed, request: pytest.FixtureRequest) -> Iterator[str]:
    base = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    name = make_namespace(bed.kubectl, f"{base}-")
    yield name
    cleanup_namespace(bed.kubectl, name)


def pod(
    name: str,
    script: str,
    *,
    restart: str = "Never",
    labels: dict[str, str] | None = None,
    **container: Any,
) -> dict[str, Any]:
    """A pod on the process node running ``python -c script``."""
    spec: dict[str, Any] = {
        "nodeSelector": ON_PROCESS_NODE,
        "restartPolicy": restart,
        "containers": [
            {"name": "main", "image": "ignored", "command": ["python", "-u", "-c", script]}
            | container
        ],
    }
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels or {}}, "spec": spec}  # fmt: skip


def apply(bed: Testbed, ns: str, *objects: dict[str, Any]) -> None:
    for obj in objects:
        bed.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(obj))


def get_pod(bed: Testbed, ns: str, name: str) -> dict[str, Any]:
    reply: dict[str, Any] = bed.fetch_json(f"/api/v1/namespaces/{ns}/pods/{name}")
    return reply


def wait_phase(bed: Testbed, ns: str, name: str, *phases: str, timeout: float = 60) -> Any:
    return wait_for(
        lambda: (p := get_pod(bed, ns, name))["status"].get("phase") in phases and p,
        timeout=timeout,
        what=f"pod {name} in {phases}",
        describe=lambda: json.dumps(get_pod(bed, ns, name)["status"], indent=1),
    )


def is_ready(pod_obj: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in pod_obj["status"].get("conditions", []))  # fmt: skip


def log_of(bed: Testbed, ns: str, name: str, container: str = "main") -> str:
    path = procnode.container_log(bed.paths.procnode, ns, name, container)
    return path.read_text() if path.exists() else ""


def pod_gone(bed: Testbed, ns: str, name: str) -> Callable[[], bool]:
    return lambda: bed.kubectl("get", "pod", name, "-n", ns, check=False).returncode != 0


def make_claim(bed: Testbed, ns: str, claim: str) -> None:
    """A PersistentVolume pre-bound to a claim ``claim`` in ``ns``; wait until Bound."""
    for manifest in procnode.build_claim_manifests(ns, claim):
        bed.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    wait_for(
        lambda: (
            bed.fetch_json(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}")["status"].get(
                "phase"
            )
            == "Bound"
        ),
        timeout=60,
        what=f"claim {claim} Bound",
    )


# ---------------------------------------------------------------------------------------------


def test_field_ref_env_matches_reported_status(bed: Testbed, ns: str) -> None:
    refs = {"POD_IP": "status.podIP", "HOST_IP": "status.hostIP", "POD_NAME": "metadata.name",
            "POD_NS": "metadata.namespace", "POD_UID": "metadata.uid", "NODE": "spec.nodeName",
            "SA": "spec.serviceAccountName", "ROLE": "metadata.labels['role']",
            "NOTE": "metadata.annotations['note']"}  # fmt: skip
    env = [{"name": k, "valueFrom": {"fieldRef": {"fieldPath": v}}} for k, v in refs.items()]
    env.append({"name": "GREETING", "value": "hello $(POD_NAME)"})
    script = "import json, os; print(json.dumps(dict(os.environ)))"
    obj = pod("env", script, labels={"role": "worker"}, env=env)
    obj["metadata"]["annotations"] = {"note": "n1"}
    apply(bed, ns, obj)
    done = wait_phase(bed, ns, "env", "Succeeded", "Failed")
    seen = json.loads(log_of(bed, ns, "env").strip().splitlines()[-1])
    status, meta = done["status"], done["metadata"]
    assert status["phase"] == "Succeeded"
    assert seen["POD_IP"] == status["podIP"] == status["podIPs"][0]["ip"]
    assert seen["POD_IP"].startswith("10.241.")
    assert seen["HOST_IP"] == status["hostIP"] == "10.241.0.1"
    assert (seen["POD_NAME"], seen["POD_NS"], seen["POD_UID"]) == ("env", ns, meta["uid"])
    assert seen["NODE"] == done["spec"]["nodeName"] == "proc-node-0"
    assert (seen["SA"], seen["ROLE"], seen["NOTE"]) == ("default", "worker", "n1")
    assert seen["GREETING"] == "hello env"
    assert seen["HOSTNAME"] == "env"


ECHO_SERVER = """
import socket
srv = socket.create_server(("0.0.0.0", 7000))
while True:
    conn, _ = srv.accept()
    with conn:
        conn.sendall(conn.recv(100))
"""

ECHO_CLIENT = """
import socket, sys, time
deadline = time.monotonic() + 45
for host in sys.argv[1:]:
    while True:
        try:
            with socket.create_connection((host, 7000), timeout=2) as s:
                s.sendall(b"ping " + host.encode())
                assert s.recv(100) == b"ping " + host.encode()
                print("echo from", host, s.getpeername()[0], flush=True)
                break
        except OSError as err:
            if time.monotonic() > deadline:
                print("no echo from", host, err, flush=True)
                sys.exit(1)
            time.sleep(0.3)
"""


def test_pods_talk_through_a_service_name(bed: Testbed, ns: str) -> None:
    server = pod("echo-server", ECHO_SERVER, labels={"app": "echo"},
                 readinessProbe={"tcpSocket": {"port": 7000}, "periodSeconds": 1})  # fmt: skip
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo"},
               "spec": {"selector": {"app": "echo"},
                        "ports": [{"port": 7000, "targetPort": 7000}]}}  # fmt: skip
    names = ["echo", f"echo.{ns}", f"echo.{ns}.svc.cluster.local"]
    client = pod("echo-client", ECHO_CLIENT)
    client["spec"]["containers"][0]["command"] += names
    apply(bed, ns, server, service, client)
    done = wait_phase(bed, ns, "echo-client", "Succeeded", "Failed", timeout=90)
    assert done["status"]["phase"] == "Succeeded", log_of(bed, ns, "echo-client")
    server_ip = get_pod(bed, ns, "echo-server")["status"]["podIP"]
    assert server_ip != done["status"]["podIP"]
    assert log_of(bed, ns, "echo-client").count(f" {server_ip}\n") == len(names)


def test_claim_is_one_folder_shared_by_two_pods(bed: Testbed, ns: str) -> None:
    make_claim(bed, ns, "shared")
    mount = "/mnt/trainscale-procnode-test/claim"
    assert not Path(mount).parent.exists()
    volume = {"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "shared"}}]}
    mounts = [{"name": "data", "mountPath": mount}]
    writer = pod("writer", f"open('{mount}/from-writer', 'w').write('hello')",
                 volumeMounts=mounts)  # fmt: skip
    reader = pod("reader", f"""
import pathlib, time
path = pathlib.Path('{mount}/from-writer')
while not path.exists():
    time.sleep(0.2)
pathlib.Path('{mount}/from-reader').write_text('reader saw ' + path.read_text())
""", volumeMounts=mounts)  # fmt: skip
    for obj in (writer, reader):
        obj["spec"].update(volume)
    apply(bed, ns, reader, writer)
    for name in ("reader", "writer"):
        assert wait_phase(bed, ns, name, "Succeeded", "Failed")["status"]["phase"] == "Succeeded"
    folder = procnode.claim_dir(bed.paths.procnode, ns, "shared")
    assert (folder / "from-reader").read_text() == "reader saw hello"
    # Inside the pods only: the host's mount point stays empty, and goes with the last pod.
    assert not any(Path(mount).iterdir())
    bed.kubectl("delete", "pod", "reader", "writer", "-n", ns)
    wait_for(lambda: not Path(mount).parent.exists(), timeout=30, what=f"{mount} removed")


READY_LATE = """
import http.server, pathlib, socket, threading, time
time.sleep(4)
pathlib.Path('/probe/ready').write_text('yes')
srv = socket.create_server(("0.0.0.0", 7001))
threading.Thread(target=lambda: [srv.accept() for _ in iter(int, 1)], daemon=True).start()
http.server.HTTPServer(("0.0.0.0", 7002), http.server.SimpleHTTPRequestHandler).serve_forever()
"""


def test_readiness_probes_gate_ready(bed: Testbed, ns: str) -> None:
    obj = pod("late", READY_LATE, workingDir="/probe",
              volumeMounts=[{"name": "scratch", "mountPath": "/probe"}],
              ports=[{"name": "http", "containerPort": 7002}])  # fmt: skip
    obj["spec"]["volumes"] = [{"name": "scratch", "emptyDir": {}}]
    probes = [{"tcpSocket": {"port": 7001}}, {"httpGet": {"port": "http", "path": "/ready"}},
              {"exec": {"command": ["cat", "/probe/ready"]}}]  # fmt: skip
    # One container per probe kind; each is ready only once its probe passes.
    base = obj["spec"]["containers"][0]
    obj["spec"]["containers"] = [
        base | {"name": f"c{i}", "readinessProbe": probe | {"periodSeconds": 1}}
        for i, probe in enumerate(probes)
    ]
    for i, c in enumerate(obj["spec"]["containers"]):
        c["command"] = ["python", "-u", "-c", READY_LATE.replace("700", f"70{i}")]
        c["ports"] = [{"name": "http", "containerPort": int(f"70{i}2")}]
    apply(bed, ns, obj)
    running = wait_phase(bed, ns, "late", "Running")
    assert not is_ready(running)
    ready = wait_for(lambda: is_ready(p := get_pod(bed, ns, "late")) and p,
                     timeout=60, what="pod late Ready")  # fmt: skip

    def stamp(text: str) -> float:
        return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))

    started = max(stamp(c["state"]["running"]["startedAt"])
                  for c in ready["status"]["containerStatuses"])  # fmt: skip
    became = next(c["lastTransitionTime"] for c in ready["status"]["conditions"]
                  if c["type"] == "Ready")  # fmt: skip
    # The processes listen (and write the file) 4 s after they start.
    assert stamp(became) - started >= 3
    assert all(c["ready"] for c in ready["status"]["containerStatuses"])


def test_exit_codes_and_restart_policies(bed: Testbed, ns: str) -> None:
    flaky = """
import os, sys
first = not os.path.exists('/scratch/ran')
open('/scratch/ran', 'w').close()
sys.exit(1 if first else 0)
"""
    retried = pod("retried", flaky, restart="OnFailure",
                  volumeMounts=[{"name": "scratch", "mountPath": "/scratch"}])  # fmt: skip
    retried["spec"]["volumes"] = [{"name": "scratch", "emptyDir": {}}]
    no_command = pod("no-command", "")
    del no_command["spec"]["containers"][0]["command"]
    apply(bed, ns, pod("three", "raise SystemExit(3)"), pod("zero", "pass"), retried, no_command)
    three = wait_phase(bed, ns, "three", "Succeeded", "Failed")["status"]
    assert three["phase"] == "Failed"
    state = three["containerStatuses"][0]["state"]["terminated"]
    assert (state["exitCode"], state["reason"]) == (3, "Error")
    zero = wait_phase(bed, ns, "zero", "Succeeded", "Failed")["status"]
    assert zero["phase"] == "Succeeded"
    assert zero["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    again = wait_phase(bed, ns, "retried", "Succeeded", "Failed")["status"]
    assert again["phase"] == "Succeeded"
    assert again["containerStatuses"][0]["restartCount"] == 1
    assert again["containerStatuses"][0]["lastState"]["terminated"]["exitCode"] == 1
    for status in (three, zero):
        assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "False"
    # Images are ignored: a container without a command cannot run, and says why.
    refused = wait_for(
        lambda: (s := get_pod(bed, ns, "no-command")["status"]).get("containerStatuses") and s,
        timeout=30, what="no-command's container status")  # fmt: skip
    assert refused["phase"] == "Pending"
    waiting = refused["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "CreateContainerConfigError"
    assert "no command" in waiting["message"]


TRAPS_TERM = """
import pathlib, signal, sys, time
def on_term(signum, frame):
    pathlib.Path('/ckpt/checkpoint').write_text('saved')
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
print('started', flush=True)
while True:
    time.sleep(0.1)
"""

IGNORES_TERM = """
import signal, time
signal.signal(signal.SIGTERM, lambda s, f: print('TERM', time.time(), flush=True))
while True:
    print('alive', time.time(), flush=True)
    time.sleep(0.1)
"""

# The main process starts a child that reports any SIGTERM it gets: a container runtime
# signals the container's main process only (the child dies by SIGKILL with the rest).
IGNORES_TERM_WITH_A_CHILD = (
    "import subprocess, sys\n"
    'CHILD = "import signal, time\\n"\\\n'
    "    \"signal.signal(signal.SIGTERM, lambda s, f: print('child TERM', flush=True))\\n\"\\\n"
    "    \"print('child ready', flush=True); time.sleep(600)\"\n"
    "subprocess.Popen([sys.executable, '-u', '-c', CHILD])\n"
) + IGNORES_TERM


def test_delete_sends_sigterm_then_sigkill_after_grace(bed: Testbed, ns: str) -> None:
    make_claim(bed, ns, "ckpt")
    grace = 4
    polite = pod("polite", TRAPS_TERM, volumeMounts=[{"name": "ckpt", "mountPath": "/ckpt"}])
    polite["spec"]["volumes"] = [{"name": "ckpt", "persistentVolumeClaim": {"claimName": "ckpt"}}]
    polite["spec"]["terminationGracePeriodSeconds"] = 60
    stubborn = pod("stubborn", IGNORES_TERM_WITH_A_CHILD)
    stubborn["spec"]["terminationGracePeriodSeconds"] = grace
    apply(bed, ns, polite, stubborn)
    for name in ("polite", "stubborn"):
        wait_phase(bed, ns, name, "Running")
    wait_for(lambda: "started" in log_of(bed, ns, "polite"), timeout=30, what="polite started")
    wait_for(lambda: "child ready" in log_of(bed, ns, "stubborn"), timeout=30,
             what="stubborn's child handling SIGTERM")  # fmt: skip

    status = get_pod(bed, ns, "stubborn")["status"]["containerStatuses"][0]
    process = Path(f"/proc/{status['containerID'].removeprefix('process://')}")
    asked = time.monotonic()
    bed.kubectl("delete", "pod", "polite", "stubborn", "-n", ns, "--wait=false")
    # The stubborn one lives through its grace period (it only logs SIGTERM)...
    while time.monotonic() < asked + grace - 0.5:
        assert process.exists(), f"killed {time.monotonic() - asked:.1f} s after the delete"
        time.sleep(0.1)
    # ...and is SIGKILLed once it is over.
    wait_for(lambda: not process.exists(), timeout=10, what="stubborn killed")
    assert time.monotonic() - asked < grace + 5
    wait_for(pod_gone(bed, ns, "stubborn"), timeout=30, what="stubborn gone")
    assert log_of(bed, ns, "stubborn").count("TERM") == 1
    assert "child TERM" not in log_of(bed, ns, "stubborn")  # the main process only
    # The polite one checkpoints and exits at once: gone long before its 60 s grace.
    wait_for(pod_gone(bed, ns, "polite"), timeout=20, what="polite gone")
    checkpoint = procnode.claim_dir(bed.paths.procnode, ns, "ckpt") / "checkpoint"
    assert checkpoint.read_text() == "saved"
    assert time.monotonic() - asked < 30


@contextlib.contextmanager
def second_runtime(
    bed: Testbed, ns: str, bridge: str, subnet: str, node: str
) -> Iterator[subprocess.Popen[bytes]]:
    """Another process runtime on its own bridge and node; its pods are force-deleted after."""
    argv = procnode.build_runtime_command(bed.kubeconfig, bed.paths.root / bridge, [node], 0,
                                          [Path(sys.executable).parent])  # fmt: skip
    argv += ["--bridge", bridge, "--subnet", subnet]
    log = (bed.paths.logs / f"procnode-{bridge}.log").open("ab")
    runtime = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield runtime
    finally:
        if runtime.poll() is None:
            runtime.kill()
            runtime.wait()
        log.close()
        # No kubelet is left to finish these deletions.
        bed.kubectl("delete", "pods", "--all", "-n", ns, "--force", "--grace-period=0",
                    check=False)  # fmt: skip
        bed.kubectl("delete", "node", node, "--wait=false", check=False)


def namespaces_of(bridge: str) -> list[str]:
    return [line.split()[0] for line in _ip("netns", "list").splitlines()
            if line.startswith(f"{bridge}-")]  # fmt: skip


def run_two_pods(bed: Testbed, ns: str, node: str, bridge: str) -> list[int]:
    """One pod that ignores SIGTERM, one whose process started a child; the pids of every
    process in their namespaces once all three run."""
    stubborn = pod("stubborn", IGNORES_TERM)
    forked = pod("forked", "import subprocess; subprocess.Popen(['sleep', '600']).wait()")
    for obj in (stubborn, forked):
        obj["spec"] = obj["spec"] | {"nodeName": node, "nodeSelector": {}}
    apply(bed, ns, stubborn, forked)
    for name in ("stubborn", "forked"):
        wait_phase(bed, ns, name, "Running")
    netns = namespaces_of(bridge)
    assert len(netns) == 2

    def netns_pids() -> list[int]:
        return [int(p) for n in netns for p in _ip("netns", "pids", n).split()]

    found: list[int] = wait_for(lambda: len(pids := netns_pids()) >= 3 and pids, timeout=30,
                                what="three processes in the pods' namespaces")  # fmt: skip
    return found


def assert_nothing_left(bridge: str, pids: list[int]) -> None:
    assert not namespaces_of(bridge)
    assert not [pid for pid in pids if _running(pid)]
    link = subprocess.run(["ip", "link", "show", bridge], capture_output=True, check=False)
    assert link.returncode != 0
    assert not list(Path("/etc/netns").glob(f"{bridge}-*"))


def test_runtime_stop_kills_and_removes_everything(bed: Testbed, ns: str) -> None:
    """A second runtime on its own bridge and node, stopped with SIGTERM mid-flight."""
    bridge, node = "tsbr9", "proc-stop-0"
    with second_runtime(bed, ns, bridge, "10.242.0.0/16", node) as runtime:
        pids = run_two_pods(bed, ns, node, bridge)
        runtime.send_signal(signal.SIGTERM)
        assert runtime.wait(30) == 0
    assert_nothing_left(bridge, pids)


def test_a_killed_runtime_is_cleaned_up_by_the_next(bed: Testbed, ns: str) -> None:
    """SIGKILL leaves namespaces (and a container's children) behind; the next runtime on the
    same bridge removes them when it starts."""
    bridge, subnet = "tsbr8", "10.243.0.0/16"
    with second_runtime(bed, ns, bridge, subnet, "proc-kill-0") as runtime:
        pids = run_two_pods(bed, ns, "proc-kill-0", bridge)
        runtime.kill()
        runtime.wait()
    assert len(namespaces_of(bridge)) == 2
    with second_runtime(bed, ns, bridge, subnet, "proc-kill-1") as again:
        wait_for(lambda: not namespaces_of(bridge), timeout=30, what=f"{bridge}-* removed")
        again.send_signal(signal.SIGTERM)
        assert again.wait(30) == 0
    assert_nothing_left(bridge, pids)


def _running(pid: int) -> bool:
    """Alive, and not a zombie (whose parent, a killed runtime, cannot reap it any more)."""
    try:
        return b"zombie" not in Path(f"/proc/{pid}/status").read_bytes().lower()
    except FileNotFoundError:
        return False


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout
