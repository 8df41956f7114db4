"""A process runtime for the test-bed: nodes whose pods really run, as local processes.

Why this module exists: kwok's nodes run nothing, so the operator and the trainer never meet on
the test-bed. This runtime does for local processes what kubelet, the CNI plugin, kube-proxy
and cluster DNS do for containers, and nothing more, so the operator and the trainer cannot
tell which runtime runs them. Its decisions are pure functions in
:mod:`trainscale.testbed.procmodel`; this module is the I/O around them. Dev tooling only.

What it does, and what it chose:

- **Nodes.** It registers its own nodes (``proc-node-N``, labelled ``type: process`` and
  ``trainscale.dev/process-node: "true"``) without kwok's annotation, so kwok (which manages
  only annotated nodes) leaves them alone. It keeps them Ready: node conditions and the node
  Lease are renewed every 10 s. They advertise cpu/memory/pods and a fake ``nvidia.com/gpu``
  count, so pods asking for GPUs schedule there (they get no GPU).
- **Network.** One bridge (``tsbr0``, 10.241.0.1/16 on the host side) and, per pod, a network
  namespace ``tsbr0-<uid>`` with a veth on the bridge and its own address from 10.241.0.0/16.
  The node's InternalIP (``status.hostIP``) is the bridge address. Pods reach each other and
  the host reaches them; the apiserver (127.0.0.1) is not reachable from pods.
- **Names.** Each pod's ``/etc/netns/<netns>/hosts`` (bind-mounted over ``/etc/hosts`` by
  ``ip netns exec``) maps every Service to its endpoints, the Ready pods its selector picks
  (all pods with an IP when ``publishNotReadyAddresses``): ``name`` in the pod's namespace,
  ``name.ns``, ``name.ns.svc`` and ``name.ns.svc.cluster.local`` everywhere, and every pod IP to
  its ``a-b-c-d.ns.pod.cluster.local`` name (so peers resolve back at once). It is rewritten in
  place (truncate + write, same inode) as pods come and go. There is no cluster IP and no port
  translation: a Service's ``port`` must equal its ``targetPort``. ``resolv.conf`` names no
  server, so other names fail at once instead of timing out.
- **Processes.** Each container's ``command + args`` (``$(VAR)`` expanded) runs as a process in
  the pod's network namespace, its own mount and UTS namespace (hostname = pod name) and its own
  process group, with the pod's ``env`` (``value`` and ``valueFrom.fieldRef``), PATH, HOME and
  HOSTNAME, in ``workingDir``. **The image is ignored**: commands must exist on the host; PATH
  starts with the test-bed's and this Python's bin folders, so ``python``,
  ``trainscale-train`` and ``kubectl`` resolve. stdout/stderr go to
  ``<state>/logs/<namespace>_<pod>_<container>.log`` (there is no ``kubectl logs``).
- **Volumes.** ``emptyDir`` is ``<state>/pods/<uid>/volumes/<name>``; a
  ``persistentVolumeClaim`` is ``<state>/claims/<namespace>/<claim>``, one folder shared by every
  pod that mounts the claim (like RWX storage; the claim must still exist and be bound for the
  scheduler). Both are bind-mounted at the container's ``mountPath`` inside the pod's private
  mount namespace (``readOnly`` honoured); a ``mountPath`` missing on the host is created
  there first and removed (if empty) when no pod uses it any more. Other volume kinds (the
  service-account token's ``projected`` volume, configMap, secret, ...) are not mounted.
- **Probes and status.** Readiness probes (exec in the container's namespaces; tcpSocket and
  httpGet from the host to the pod IP, as kubelet does) gate ``Ready``; liveness and startup
  probes are not run. It reports phase, podIP(s), hostIP, the conditions PodScheduled,
  Initialized, ContainersReady and Ready, container states with exit codes, reasons and restart
  counts, and startTime. ``restartPolicy`` Never/OnFailure/Always restart exited containers
  after 1, 2, 4, 8, then 10 s. A pod with init containers, volume subPaths, envFrom or env
  from configMaps/secrets, or a container without ``command``, is refused: the container
  waits with reason CreateContainerConfigError and a message naming what is missing.
- **Deletion.** On ``deletionTimestamp`` it sends SIGTERM to each container's main process
  (as a container runtime signals the container's PID 1: processes it started learn of the
  stop from it, not from the kubelet), waits ``metadata.deletionGracePeriodSeconds``, sends
  SIGKILL to whatever is left in the pod's network namespace, cleans up (namespace, veth,
  hosts files, emptyDirs) and finishes the delete with ``gracePeriodSeconds: 0`` and a uid
  precondition, like kubelet.
- **Stop.** On SIGTERM/SIGINT it kills every pod (SIGTERM, 2 s, SIGKILL), removes every network
  namespace, hosts folder and the bridge. A runtime that died without cleaning up is cleaned up
  by the next one at start (a lock file makes one runtime per bridge at a time).

Needs root, ``ip`` (iproute2), ``unshare``, ``nsenter`` and ``mount`` (util-linux).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import fcntl
import ipaddress
import json
import os
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from trainscale.testbed import procmodel as model

BRIDGE = "tsbr0"
SUBNET = "10.241.0.0/16"
HEARTBEAT_SECONDS = 10.0
LEASE_SECONDS = 40
TICK_SECONDS = 0.25
STOP_GRACE_SECONDS = 2.0
NETNS_DIR = Path("/etc/netns")
TOOLS = ("ip", "unshare", "nsenter", "mount", "sh")


class ProcessRuntimeError(RuntimeError):
    """The process runtime cannot run here, or the API refused it."""


def check_host() -> None:
    """Raise :class:`ProcessRuntimeError` unless this process is root and has the tools it needs."""
    if os.geteuid() != 0:
        raise ProcessRuntimeError(
            "the process runtime needs root (network namespaces, bind mounts)"
        )
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise ProcessRuntimeError(
            f"the process runtime needs {', '.join(missing)} on PATH: install iproute2 and "
            "util-linux (scripts/install-system-deps.sh)"
        )


def build_runtime_command(
    kubeconfig: Path, state_dir: Path, nodes: Sequence[str], gpus: int, bin_dirs: Sequence[Path]
) -> list[str]:
    """The argv that starts a runtime for ``nodes`` (used by the test-bed)."""
    argv = [sys.executable, "-m", "trainscale.testbed.procnode", "--kubeconfig", str(kubeconfig),
            "--state-dir", str(state_dir), "--gpus", str(gpus)]  # fmt: skip
    for node in nodes:
        argv += ["--node", node]
    for folder in bin_dirs:
        argv += ["--bin-dir", str(folder)]
    return argv


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _log(message: str) -> None:
    print(f"[procnode {_now()}] {message}", file=sys.stderr, flush=True)


def _run(*argv: str, check: bool = True, input: str | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, input=input)
    if check and done.returncode != 0:
        raise ProcessRuntimeError(
            f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}"
        )
    return done.stdout


# ---------------------------------------------------------------------------------------------
# The apiserver


class Api:
    """JSON over HTTPS to the apiserver, with the kubeconfig's CA and bearer token."""

    def __init__(self, kubeconfig: Path) -> None:
        config = json.loads(kubeconfig.read_text())
        cluster = config["clusters"][0]["cluster"]
        self.server = cluster["server"]
        ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
        self._ssl = ssl.create_default_context(cadata=ca)
        self._token = config["users"][0]["user"]["token"]

    def request(
        self, method: str, path: str, body: Any = None, kind: str = "application/json"
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self._token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", kind)
        try:
            with urllib.request.urlopen(req, context=self._ssl, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(errors="replace")

    def get(self, path: str) -> Any:
        status, reply = self.request("GET", path)
        if status != 200:
            raise ProcessRuntimeError(f"GET {path} answered {status}: {reply}")
        return reply

    def merge_patch(self, path: str, body: Any) -> int:
        return self.request("PATCH", path, body, "application/merge-patch+json")[0]


# ---------------------------------------------------------------------------------------------
# Host network: one bridge, a namespace + veth per pod


@dataclass
class Network:
    """The bridge and the pod addresses it hands out."""

    bridge: str = BRIDGE
    subnet: ipaddress.IPv4Network = field(default_factory=lambda: ipaddress.IPv4Network(SUBNET))
    used: set[str] = field(default_factory=set)

    @property
    def host_ip(self) -> str:
        return str(self.subnet.network_address + 1)

    def netns_name(self, uid: str) -> str:
        return f"{self.bridge}-{uid.replace('-', '')[:12]}"

    def setup(self) -> None:
        """Remove what a dead runtime left, then create the bridge."""
        self.teardown()
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{self.host_ip}/{self.subnet.prefixlen}", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")

    def teardown(self) -> None:
        """Kill everything in this bridge's namespaces, delete them and the bridge."""
        for line in _run("ip", "netns", "list", check=False).splitlines():
            name = line.split()[0] if line.split() else ""
            if name.startswith(f"{self.bridge}-"):
                self.delete(name)
        _run("ip", "link", "del", self.bridge, check=False)

    def allocate(self) -> str:
        for host in self.subnet.hosts():
            ip = str(host)
            if ip != self.host_ip and ip not in self.used:
                self.used.add(ip)
                return ip
        raise ProcessRuntimeError(f"no free address left in {self.subnet}")

    def create(self, netns: str, ip: str) -> None:
        """The pod's namespace with ``eth0`` (``ip``) on the bridge and a default route."""
        suffix = netns.rsplit("-", 1)[1]
        host_end, pod_end = f"tsv{suffix}"[:15], f"tsp{suffix}"[:15]
        _run("ip", "netns", "add", netns)
        _run("ip", "-batch", "-", input="\n".join([
            f"link add {host_end} type veth peer name {pod_end}",
            f"link set {pod_end} netns {netns}",
            f"link set {host_end} master {self.bridge} up",
        ]) + "\n")  # fmt: skip
        _run("ip", "-n", netns, "-batch", "-", input="\n".join([
            f"link set {pod_end} name eth0",
            f"addr add {ip}/{self.subnet.prefixlen} dev eth0",
            "link set eth0 up",
            "link set lo up",
            f"route add default via {self.host_ip}",
        ]) + "\n")  # fmt: skip

    def delete(self, netns: str) -> None:
        """SIGKILL every process left in ``netns``; delete it (its veth goes with it) and its
        /etc/netns folder."""
        kill_netns_processes(netns)
        _run("ip", "netns", "del", netns, check=False)
        shutil.rmtree(NETNS_DIR / netns, ignore_errors=True)

    def release(self, ip: str) -> None:
        self.used.discard(ip)


def kill_netns_processes(netns: str) -> None:
    for pid in _run("ip", "netns", "pids", netns, check=False).split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def kill_pod_processes(uid: str, bridge: str = BRIDGE) -> None:
    """SIGKILL every process of the pod ``uid`` (a crash: no SIGTERM, no grace period); the
    runtime then reports its containers as exited with 137, as kubelet does."""
    kill_netns_processes(Network(bridge=bridge).netns_name(uid))


def write_in_place(path: Path, text: str) -> None:
    """Rewrite ``path`` keeping its inode: ``ip netns exec`` bind-mounted this very file into
    the running pods, and a rename would leave them reading the old one."""
    with path.open("w") as out:  # O_TRUNC on the existing inode
        out.write(text)


# ---------------------------------------------------------------------------------------------
# Volumes


@dataclass
class MountPoints:
    """Folders created on the host as mount points, and the pods using each."""

    users: dict[Path, set[str]] = field(default_factory=dict)

    def ensure(self, target: Path, uid: str) -> None:
        """Create ``target`` (and missing parents) on the host, recording what was created."""
        missing = [p for p in (target, *target.parents) if not p.exists()]
        target.mkdir(parents=True, exist_ok=True)
        for path in missing:
            self.users.setdefault(path, set())
        for path in (target, *target.parents):
            if path in self.users:
                self.users[path].add(uid)

    def release(self, uid: str) -> None:
        """Drop ``uid``; remove (deepest first, only if empty) folders no pod uses any more."""
        for path in sorted(self.users, key=lambda p: len(p.parts), reverse=True):
            self.users[path].discard(uid)
            if not self.users[path]:
                del self.users[path]
                with contextlib.suppress(OSError):
                    path.rmdir()


def claim_dir(state_dir: Path, namespace: str, claim: str) -> Path:
    """The host folder of a persistentVolumeClaim (shared by every pod mounting it)."""
    return state_dir / "claims" / namespace / claim


def build_claim_manifests(namespace: str, claim: str) -> list[dict[str, Any]]:
    """A PersistentVolume pre-bound to claim ``claim`` in ``namespace``, and the claim (RWX,
    1 Gi): the claim this runtime backs with :func:`claim_dir` (the volume's hostPath is never
    mounted), Bound at once without a provisioner."""
    volume = f"{namespace}-{claim}"
    return [
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": volume},
         "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"],
                  "storageClassName": "", "hostPath": {"path": "/nonexistent"},
                  "claimRef": {"namespace": namespace, "name": claim}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
         "metadata": {"name": claim, "namespace": namespace},
         "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "",
                  "volumeName": volume, "resources": {"requests": {"storage": "1Gi"}}}},
    ]  # fmt: skip


def container_log(state_dir: Path, namespace: str, pod: str, container: str) -> Path:
    """The file receiving a container's stdout and stderr (kept after the pod is gone)."""
    return state_dir / "logs" / f"{namespace}_{pod}_{container}.log"


# ---------------------------------------------------------------------------------------------
# Pods


@dataclass
class Container:
    """One container: its spec, its process and its readiness probe's state."""

    spec: dict[str, Any]
    view: model.ContainerView
    proc: subprocess.Popen[bytes] | None = None
    restart_at: float | None = None
    probe_due: float = 0.0
    probe: Future[bool] | None = None
    successes: int = 0
    failures: int = 0


@dataclass
class Pod:
    """A pod bound to one of our nodes, and what was made for it."""

    obj: dict[str, Any]
    netns: str
    ip: str
    folder: Path
    containers: list[Container] = field(default_factory=list)
    started: bool = False
    start_time: str = ""
    since: str = ""
    hosts: str = ""
    reported: dict[str, Any] = field(default_factory=dict)
    terminating_since: float | None = None

    @property
    def uid(self) -> str:
        return str(self.obj["metadata"]["uid"])

    @property
    def key(self) -> str:
        meta = self.obj["metadata"]
        return f"{meta['namespace']}/{meta['name']}"

    @property
    def api_path(self) -> str:
        meta = self.obj["metadata"]
        return f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"

    @property
    def restart_policy(self) -> str:
        return str(self.obj["spec"].get("restartPolicy", "Always"))

    def running(self) -> list[Container]:
        return [c for c in self.containers if c.proc is not None and c.proc.poll() is None]


def _signal_group(proc: subprocess.Popen[bytes] | None, signum: int) -> None:
    if proc is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signum)


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


# Loaded before any fork: the child of a threaded parent must not load libraries.
_LIBC = ctypes.CDLL("libc.so.6", use_errno=True)


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child
    """SIGKILL the container when the runtime dies without cleaning up."""
    _LIBC.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class ProcessRuntime:
    """The runtime's state and its reconcile loop (one thread; probes in a small pool)."""

    def __init__(
        self,
        api: Api,
        state_dir: Path,
        nodes: Sequence[str],
        gpus: int,
        bin_dirs: Sequence[Path] = (),
        network: Network | None = None,
    ) -> None:
        self.api = api
        self.state_dir = state_dir
        self.nodes = list(nodes)
        self.gpus = gpus
        self.network = network or Network()
        self.mounts = MountPoints()
        self.pods: dict[str, Pod] = {}
        self.path = os.pathsep.join([*map(str, bin_dirs), os.environ.get("PATH", "/usr/bin:/bin")])
        self.probes = ThreadPoolExecutor(max_workers=4, thread_name_prefix="probe")
        self.stopping = False
        self._next_heartbeat = 0.0
        self._node_since = _now()
        self._lock: IO[str] | None = None  # held while this runtime owns the bridge

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        check_host()
        for sub in ("pods", "claims", "logs"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        lock_path = Path("/run") / f"trainscale-procnode-{self.network.bridge}.lock"
        self._lock = lock_path.open("a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise ProcessRuntimeError(
                f"another process runtime holds {lock_path} (bridge {self.network.bridge})"
            ) from None
        self.network.setup()
        for name in self.nodes:
            self._register(name)
        _log(f"nodes {', '.join(self.nodes)} registered; pods on {self.network.subnet}")

    def run(self) -> None:
        while not self.stopping:
            began = time.monotonic()
            try:
                self.tick()
            except (OSError, ProcessRuntimeError, ValueError, KeyError) as err:
                _log(f"tick failed: {err!r}")
            time.sleep(max(0.0, TICK_SECONDS - (time.monotonic() - began)))

    def shutdown(self) -> None:
        """Kill every pod (SIGTERM, a short grace, SIGKILL) and remove everything made."""
        self.probes.shutdown(wait=False, cancel_futures=True)
        if self._lock is None:
            return  # another runtime owns the bridge: touch nothing
        for pod in self.pods.values():
            for c in pod.containers:
                _signal_group(c.proc, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while any(p.running() for p in self.pods.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pod in list(self.pods.values()):
            self._cleanup(pod)
        self.pods.clear()
        self.network.teardown()
        self._lock.close()
        self._lock = None
        _log("stopped; every pod killed and cleaned up")

    # -- nodes -----------------------------------------------------------------------------

    def _register(self, name: str) -> None:
        node = model.build_process_node(name, self.gpus, self.network.host_ip)
        status, reply = self.api.request("POST", "/api/v1/nodes", node)
        if status not in (201, 409):
            raise ProcessRuntimeError(f"registering node {name} answered {status}: {reply}")
        if status == 409:  # left by an earlier runtime: make it ours again
            self.api.merge_patch(f"/api/v1/nodes/{name}", {"metadata": node["metadata"]})
        self._heartbeat(name, node["status"])

    def _heartbeat(self, name: str, status: dict[str, Any] | None = None) -> None:
        patch = dict(status or {})
        patch["conditions"] = model.build_node_conditions(_now(), self._node_since)
        self.api.merge_patch(f"/api/v1/nodes/{name}/status", {"status": patch})
        leases = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
        spec = {"holderIdentity": name, "leaseDurationSeconds": LEASE_SECONDS,
                "renewTime": _now_micro()}  # fmt: skip
        if self.api.merge_patch(f"{leases}/{name}", {"spec": spec}) == 404:
            lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                     "metadata": {"name": name, "namespace": "kube-node-lease"}, "spec": spec}  # fmt: skip
            self.api.request("POST", leases, lease)

    # -- the loop --------------------------------------------------------------------------

    def tick(self) -> None:
        if time.monotonic() >= self._next_heartbeat:
            for name in self.nodes:
                self._heartbeat(name)
            self._next_heartbeat = time.monotonic() + HEARTBEAT_SECONDS
        pods = self.api.get("/api/v1/pods")["items"]
        services = self.api.get("/api/v1/services")["items"]
        mine = {p["metadata"]["uid"]: p for p in pods if p["spec"].get("nodeName") in self.nodes}
        for uid in [u for u in self.pods if u not in mine]:  # force-deleted under our feet
            pod = self.pods.pop(uid)
            _log(f"{pod.key} is gone from the API: killing it")
            self._cleanup(pod)
        endpoints = model.build_endpoints(services, pods)
        peers = model.build_pod_addresses(pods)
        for uid, obj in mine.items():
            pod = self.pods.get(uid) or self._admit(obj)
            pod.obj = obj
            try:
                self._sync(pod, endpoints, peers)
            except (OSError, ProcessRuntimeError, ValueError, KeyError) as err:
                # One broken pod must not stop the others; it is tried again next tick.
                _log(f"{pod.key}: {err!r}")

    def _admit(self, obj: dict[str, Any]) -> Pod:
        uid = obj["metadata"]["uid"]
        pod = Pod(obj=obj, netns=self.network.netns_name(uid), ip="",
                  folder=self.state_dir / "pods" / uid)  # fmt: skip
        self.pods[uid] = pod
        # A pod that finished before this runtime started is not run again.
        pod.started = obj.get("status", {}).get("phase") in ("Succeeded", "Failed")
        return pod

    def _sync(
        self, pod: Pod, endpoints: Mapping[tuple[str, str], list[str]], peers: Mapping[str, str]
    ) -> None:
        if pod.obj["metadata"].get("deletionTimestamp"):
            self._terminate(pod)
            return
        if not pod.started:
            self._start_pod(pod)
        if not pod.ip:
            return
        meta = pod.obj["metadata"]
        hosts = model.build_hosts(meta["name"], pod.ip, meta["namespace"], endpoints, peers)
        if hosts != pod.hosts:
            write_in_place(NETNS_DIR / pod.netns / "hosts", hosts)
            pod.hosts = hosts
        for c in pod.containers:
            self._poll(pod, c)
            self._probe(pod, c)
        self._report(pod)

    # -- starting --------------------------------------------------------------------------

    def _start_pod(self, pod: Pod) -> None:
        pod.started = True
        pod.start_time = pod.since = _now()
        pod.ip = self.network.allocate()
        pod.folder.mkdir(parents=True, exist_ok=True)
        self.network.create(pod.netns, pod.ip)
        netns_dir = NETNS_DIR / pod.netns
        netns_dir.mkdir(parents=True, exist_ok=True)
        (netns_dir / "hosts").touch()
        (netns_dir / "resolv.conf").write_text(
            "# trainscale process runtime: names come from /etc/hosts; no DNS server\n"
            "options attempts:1 timeout:1\n"
        )
        for spec in pod.obj["spec"]["containers"]:
            view = model.ContainerView(name=spec["name"], image=spec.get("image", ""))
            pod.containers.append(Container(spec=spec, view=view))
        # _sync fills the hosts file right after this, before any container starts.
        _log(f"{pod.key}: netns {pod.netns}, ip {pod.ip}")

    def _volume_sources(self, pod: Pod) -> dict[str, Path]:
        """Host folder per mountable volume name (emptyDir, persistentVolumeClaim)."""
        meta = pod.obj["metadata"]
        sources: dict[str, Path] = {}
        for vol in pod.obj["spec"].get("volumes") or []:
            if "emptyDir" in vol:
                sources[vol["name"]] = pod.folder / "volumes" / vol["name"]
            elif "persistentVolumeClaim" in vol:
                claim = vol["persistentVolumeClaim"]["claimName"]
                sources[vol["name"]] = claim_dir(self.state_dir, meta["namespace"], claim)
        for folder in sources.values():
            folder.mkdir(parents=True, exist_ok=True)
        return sources

    def _launch_argv(self, pod: Pod, c: Container, argv: list[str]) -> list[str]:
        """``ip netns exec`` (network, and a private mount namespace with the pod's hosts file)
        > ``unshare --uts`` (hostname) > ``sh`` that bind-mounts the volumes, enters the
        working directory and execs the command: one process from start to end."""
        sources = self._volume_sources(pod)
        steps = ["set -e", f"hostname {shlex.quote(pod.obj['metadata']['name'][:63])}"]
        for mount in c.spec.get("volumeMounts") or []:
            source = sources.get(mount["name"])
            if source is None:
                continue  # projected/configMap/secret/...: not provided (see the docstring)
            target = Path(mount["mountPath"])
            self.mounts.ensure(target, pod.uid)
            src, dst = shlex.quote(str(source)), shlex.quote(str(target))
            steps.append(f"mkdir -p {dst} && mount --bind {src} {dst}")
            if mount.get("readOnly"):
                steps.append(f"mount -o remount,bind,ro {dst}")
        workdir = c.spec.get("workingDir")
        if workdir:
            steps.append(f"mkdir -p {shlex.quote(workdir)} && cd {shlex.quote(workdir)}")
        steps.append('exec "$@"')
        script = "\n".join(steps)
        which = {tool: shutil.which(tool) or tool for tool in ("ip", "unshare", "sh")}
        return [which["ip"], "netns", "exec", pod.netns, which["unshare"], "--uts",
                which["sh"], "-c", script, "sh", *argv]  # fmt: skip

    def _base_env(self, pod: Pod) -> dict[str, str]:
        home = pod.folder / "home"
        home.mkdir(parents=True, exist_ok=True)
        return {"PATH": self.path, "HOME": str(home),
                "HOSTNAME": pod.obj["metadata"]["name"][:63]}  # fmt: skip

    def _start_container(self, pod: Pod, c: Container) -> None:
        view = c.view
        try:
            model.check_supported(pod.obj, c.spec)
            env = model.build_container_env(
                pod.obj, c.spec, pod.ip, self.network.host_ip, self._base_env(pod)
            )
            argv = self._launch_argv(pod, c, model.build_argv(c.spec, env))
        except model.PodConfigError as err:
            view.state, view.reason, view.message = (model.WAITING,
                                                     "CreateContainerConfigError", str(err))  # fmt: skip
            return
        meta = pod.obj["metadata"]
        log_path = container_log(self.state_dir, meta["namespace"], meta["name"], view.name)
        with log_path.open("ab") as log:
            c.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,
                preexec_fn=_set_pdeathsig,  # noqa: PLW1509 - one prctl, libc loaded before
            )  # fmt: skip
        view.state, view.reason, view.message = model.RUNNING, "", ""
        view.started_at, view.pid, view.ready = _now(), c.proc.pid, False
        c.successes = c.failures = 0
        c.probe_due = (
            time.monotonic()
            + model.ProbeTiming.of(c.spec.get("readinessProbe") or {}).initial_delay
        )

    # -- running ---------------------------------------------------------------------------

    def _poll(self, pod: Pod, c: Container) -> None:
        """Start a container that is due; notice one that exited; schedule its restart."""
        view = c.view
        if c.proc is None:
            due = c.restart_at is None or time.monotonic() >= c.restart_at
            if (
                view.reason != "CreateContainerConfigError"
                and due
                and view.state != model.TERMINATED
            ):
                self._start_container(pod, c)
            return
        code = c.proc.poll()
        if code is None:
            return
        _signal_group(c.proc, signal.SIGKILL)  # what the container left behind in its group
        c.proc = None
        view.state, view.exit_code, view.ready = model.TERMINATED, _exit_code(code), False
        view.reason = "Completed" if view.exit_code == 0 else "Error"
        view.finished_at = _now()
        _log(f"{pod.key}/{view.name} exited {view.exit_code}")
        if pod.terminating_since is None and model.restart_wanted(pod.restart_policy,
                                                                  view.exit_code):  # fmt: skip
            view.last_terminated = model.build_container_status(view)["state"][model.TERMINATED]
            c.restart_at = time.monotonic() + model.restart_backoff(view.restart_count)
            view.restart_count += 1
            view.state, view.reason = model.WAITING, "CrashLoopBackOff"

    def _probe(self, pod: Pod, c: Container) -> None:
        """Run the readiness probe when due; count results against the thresholds."""
        probe = c.spec.get("readinessProbe")
        if c.view.state != model.RUNNING:
            return
        if not probe:
            c.view.ready = True
            return
        timing = model.ProbeTiming.of(probe)
        if c.probe is not None and c.probe.done():
            ok, c.probe = c.probe.result(), None
            c.successes, c.failures = (c.successes + 1, 0) if ok else (0, c.failures + 1)
            if c.successes >= timing.success_threshold:
                c.view.ready = True
            elif c.failures >= timing.failure_threshold:
                c.view.ready = False
        if c.probe is None and time.monotonic() >= c.probe_due:
            c.probe_due = time.monotonic() + timing.period
            c.probe = self.probes.submit(run_probe, probe, c.spec, pod.ip, c.view.pid,
                                         timing.timeout)  # fmt: skip

    def _report(self, pod: Pod) -> None:
        status = model.build_pod_status(
            restart_policy=pod.restart_policy,
            containers=[c.view for c in pod.containers],
            pod_ip=pod.ip,
            host_ip=self.network.host_ip,
            start_time=pod.start_time,
            since=pod.since,
        )
        summary = (status["phase"], status["conditions"][-1]["status"])
        if summary != (pod.reported.get("phase"), _ready_of(pod.reported)):
            pod.since = _now()
            status = {**status, "conditions": [{**cond, "lastTransitionTime": pod.since}
                                               for cond in status["conditions"]]}  # fmt: skip
        if status != pod.reported:
            code = self.api.merge_patch(f"{pod.api_path}/status", {"status": status})
            if code == 200:
                pod.reported = status

    # -- deletion --------------------------------------------------------------------------

    def _terminate(self, pod: Pod) -> None:
        """SIGTERM, the grace period, SIGKILL, clean up, finish the delete (uid precondition)."""
        meta = pod.obj["metadata"]
        grace = float(meta.get("deletionGracePeriodSeconds")
                      or pod.obj["spec"].get("terminationGracePeriodSeconds", 30))  # fmt: skip
        if pod.terminating_since is None:
            pod.terminating_since = time.monotonic()
            _log(f"{pod.key}: deleted, SIGTERM (grace {grace:.0f} s)")
            for c in pod.containers:
                if c.proc is not None and c.proc.poll() is None:
                    c.proc.send_signal(signal.SIGTERM)  # the main process only, like runc
                c.restart_at = None
        for c in pod.containers:
            if c.proc is not None:
                self._poll(pod, c)
        if pod.running() and time.monotonic() < pod.terminating_since + grace:
            return
        if pod.running():
            _log(f"{pod.key}: grace period over, SIGKILL")
        self._cleanup(pod)
        self.pods.pop(pod.uid, None)
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": pod.uid}}
        status, _ = self.api.request("DELETE", pod.api_path, body)
        _log(f"{pod.key}: removed (DELETE answered {status})")

    def _cleanup(self, pod: Pod) -> None:
        """SIGKILL what is left, remove the namespace, hosts folder, emptyDirs, mount points."""
        for c in pod.containers:
            _signal_group(c.proc, signal.SIGKILL)
        if pod.ip:
            self.network.delete(pod.netns)
            self.network.release(pod.ip)
        for c in pod.containers:
            if c.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    c.proc.wait(5)
        self.mounts.release(pod.uid)
        shutil.rmtree(pod.folder, ignore_errors=True)


def _ready_of(status: Mapping[str, Any]) -> str | None:
    for cond in status.get("conditions") or []:
        if cond["type"] == "Ready":
            return str(cond["status"])
    return None


def run_probe(
    probe: Mapping[str, Any], container: Mapping[str, Any], pod_ip: str, pid: int | None,
    timeout: float,
) -> bool:  # fmt: skip
    """One readiness probe: exec inside the container's namespaces, or tcpSocket/httpGet from
    the host to the pod's IP. True when it passed."""
    try:
        if "exec" in probe:
            argv = ["nsenter", "-t", str(pid), "-m", "-n", "-u", "--", *probe["exec"]["command"]]
            return subprocess.run(argv, capture_output=True, timeout=timeout,
                                  check=False).returncode == 0  # fmt: skip
        if "tcpSocket" in probe:
            port = model.probe_port(probe["tcpSocket"]["port"], container)
            with socket.create_connection((pod_ip, port), timeout=timeout):
                return True
        if "httpGet" in probe:
            get = probe["httpGet"]
            port = model.probe_port(get["port"], container)
            url = f"http://{get.get('host') or pod_ip}:{port}{get.get('path', '/')}"
            req = urllib.request.Request(url)
            for header in get.get("httpHeaders") or []:
                req.add_header(header["name"], header["value"])
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                code: int = resp.status
                return 200 <= code < 400
    except (OSError, subprocess.TimeoutExpired, model.PodConfigError):
        return False
    return False


# ---------------------------------------------------------------------------------------------
# Command line: python -m trainscale.testbed.procnode


@contextlib.contextmanager
def _stop_on_signals(runtime: ProcessRuntime) -> Iterator[None]:
    def stop(signum: int, frame: object) -> None:
        runtime.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    yield


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainscale.testbed.procnode",
                                     description="Run the test-bed's pods as local processes.")  # fmt: skip
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--node", action="append", required=True, help="node name (repeat)")
    parser.add_argument("--gpus", type=int, default=0, help="fake nvidia.com/gpu per node")
    parser.add_argument("--bin-dir", type=Path, action="append", default=[],
                        help="folders put first on the containers' PATH (repeat)")  # fmt: skip
    parser.add_argument("--bridge", default=BRIDGE)
    parser.add_argument("--subnet", default=SUBNET)
    args = parser.parse_args(argv)
    network = Network(bridge=args.bridge, subnet=ipaddress.IPv4Network(args.subnet))
    runtime = ProcessRuntime(Api(args.kubeconfig), args.state_dir, args.node, args.gpus,
                             args.bin_dir, network)  # fmt: skip
    with _stop_on_signals(runtime):
        try:
            runtime.start()
            runtime.run()
        except ProcessRuntimeError as err:
            print(f"procnode: {err}", file=sys.stderr)
            return 1
        finally:
            runtime.shutdown()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
