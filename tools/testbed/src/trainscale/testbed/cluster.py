"""A real Kubernetes control plane on this machine: etcd, kube-apiserver, scheduler,
controller-manager and kwok GPU nodes.

Why this module exists: trainscale lives on the Kubernetes API — CRD schemas and CEL rules,
the scale subresource, label selectors, watches, owner-reference garbage collection and
scheduling against ``nvidia.com/gpu`` capacity. A mock of the API can check none of that, so
the end-to-end tests (and developers, through ``trainscale-testbed up``) run against the real
components, built once from Go modules by ``scripts/testbed/build.sh``. kwok plays the
kubelet: it keeps the fake GPU nodes Ready and marks scheduled pods Running without running
containers, so the scheduler's decisions (placed, or Pending/Unschedulable past capacity) are
real while nothing heavy runs. With ``process_nodes`` (``--process-nodes``), the process runtime
(:mod:`trainscale.testbed.procnode`, needs root) adds nodes whose pods really run, as local
processes with their own network namespace and IP.

Everything listens on 127.0.0.1 on ports chosen at start; certificates, tokens and etcd's data
live in one state directory. The pure parts (:func:`build_node`, :func:`build_kubeconfig`,
:func:`build_commands`) are separate from the process and HTTP plumbing in :class:`Testbed`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from trainscale.trainer.launch.local import find_free_ports

# tools/testbed/src/trainscale/testbed/cluster.py -> the repository root.
REPO_ROOT = Path(__file__).resolve().parents[5]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "testbed" / "build.sh"
CRD_PATH = REPO_ROOT / "manifests" / "crd" / "trainingjobs.trainscale.dev.yaml"
CRD_NAME = "trainingjobs.trainscale.dev"
GPU_RESOURCE = "nvidia.com/gpu"
ADMIN_USER = "trainscale-admin"
# The scheduler moves a pod left in its unschedulable pool back to the queue after this long.
UNSCHEDULABLE_FLUSH_S = 10

# kwok manages only the nodes carrying this annotation (the ones we register).
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IPS = ("10.96.0.1",)
POD_CIDR = "10.244.0.0/16"
# Order matters: start in this order, stop in reverse.
COMPONENTS = ("etcd", "kube-apiserver", "kube-scheduler", "kube-controller-manager", "kwok")
# The process runtime (trainscale.testbed.procnode), a component only with process nodes.
PROCNODE = "procnode"
STATE_FILE = "state.json"
# kwok's lifecycle stages, written next to the binaries by build.sh.
KWOK_STAGES = "kwok-stages.yaml"


def crd_established(crd: dict[str, Any]) -> bool:
    """Whether a CustomResourceDefinition object (as ``kubectl get -o json`` returns it) has
    ``Established=True``; False while its ``status.conditions`` is still null."""
    conditions = (crd.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)


class TestbedError(RuntimeError):
    """The test-bed could not be built, started, found or stopped."""

    __test__ = False  # not a pytest test class despite the name


@dataclass(frozen=True)
class Ports:
    """Loopback ports of one test-bed, chosen at start."""

    etcd_client: int
    etcd_peer: int
    apiserver: int
    scheduler: int
    controller_manager: int
    kwok: int


@dataclass(frozen=True)
class Paths:
    """Files of one test-bed inside its state directory."""

    root: Path

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def ca_cert(self) -> Path:
        return self.pki / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.pki / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.pki / "apiserver.crt"

    @property
    def server_key(self) -> Path:
        return self.pki / "apiserver.key"

    @property
    def sa_key(self) -> Path:
        return self.pki / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.pki / "sa.pub"

    @property
    def tokens(self) -> Path:
        return self.pki / "tokens.csv"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def etcd_data(self) -> Path:
        return self.root / "etcd"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def home(self) -> Path:
        """A writable HOME for helm and kubectl caches."""
        return self.root / "home"

    @property
    def state(self) -> Path:
        return self.root / STATE_FILE

    @property
    def procnode(self) -> Path:
        """The process runtime's folder: claims, pod folders, container logs."""
        return self.root / PROCNODE


# ---------------------------------------------------------------------------------------------
# Pure builders


def build_node(name: str, gpus: int, *, cpu: str = "64", memory: str = "512Gi") -> dict[str, Any]:
    """Return a Node object that kwok will keep Ready, advertising ``gpus`` NVIDIA GPUs.

    Raises:
        ValueError: ``gpus`` is negative.
    """
    if gpus < 0:
        raise ValueError(f"gpus_per_node must be >= 0, got {gpus}")
    resources = {"cpu": cpu, "memory": memory, "pods": "110", GPU_RESOURCE: str(gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION[0]: KWOK_NODE_ANNOTATION[1]},
            "labels": {
                "type": "kwok",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.count": str(gpus),
            },
        },
        "status": {
            "capacity": dict(resources),
            "allocatable": dict(resources),
            "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux"},
        },
    }


def build_kubeconfig(server: str, ca_pem: str, token: str) -> dict[str, Any]:
    """Return a kubeconfig for ``server`` that trusts ``ca_pem`` and presents ``token``."""
    import base64

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "trainscale-testbed",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_pem.encode()).decode(),
                },
            }
        ],
        "users": [{"name": ADMIN_USER, "user": {"token": token}}],
        "contexts": [
            {
                "name": "trainscale-testbed",
                "context": {
                    "cluster": "trainscale-testbed",
                    "user": ADMIN_USER,
                    "namespace": "default",
                },
            }
        ],
        "current-context": "trainscale-testbed",
    }


def build_commands(bin_dir: Path, paths: Paths, ports: Ports) -> dict[str, list[str]]:
    """Return the argv of each component, every listener bound to 127.0.0.1."""
    loop = "127.0.0.1"
    etcd_client = f"http://{loop}:{ports.etcd_client}"
    etcd_peer = f"http://{loop}:{ports.etcd_peer}"
    kubeconfig = str(paths.kubeconfig)
    delegated = [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        f"--bind-address={loop}",
        "--leader-elect=false",
    ]
    return {
        "etcd": [
            str(bin_dir / "etcd"),
            "--name=testbed",
            f"--data-dir={paths.etcd_data}",
            f"--listen-client-urls={etcd_client}",
            f"--advertise-client-urls={etcd_client}",
            f"--listen-peer-urls={etcd_peer}",
            f"--initial-advertise-peer-urls={etcd_peer}",
            f"--initial-cluster=testbed={etcd_peer}",
            # A throw-away store: durability buys nothing and fsync costs seconds.
            "--unsafe-no-fsync",
            "--log-level=warn",
        ],
        "kube-apiserver": [
            str(bin_dir / "kube-apiserver"),
            f"--etcd-servers={etcd_client}",
            f"--bind-address={loop}",
            f"--advertise-address={loop}",
            f"--secure-port={ports.apiserver}",
            f"--tls-cert-file={paths.server_cert}",
            f"--tls-private-key-file={paths.server_key}",
            f"--client-ca-file={paths.ca_cert}",
            f"--token-auth-file={paths.tokens}",
            "--authorization-mode=Node,RBAC",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={paths.sa_pub}",
            f"--service-account-signing-key-file={paths.sa_key}",
            # No real network: the `kubernetes` Service's endpoints would be a loopback
            # address, which Endpoints validation rejects.
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            # As GKE's: a pod requesting nvidia.com/gpu gets a toleration of the taint GPU
            # nodes carry there (nvidia.com/gpu=present:NoSchedule), which its template lacks.
            "--enable-admission-plugins=ExtendedResourceToleration",
            "--profiling=false",
            f"--cert-dir={paths.pki}",
        ],
        "kube-scheduler": [
            str(bin_dir / "kube-scheduler"),
            *delegated,
            f"--secure-port={ports.scheduler}",
            # Async preemption (default since 1.33) can park a preemptor in the unschedulable
            # pool for the whole flush period when its victim is gone within milliseconds, as
            # kwok's pods are (kubernetes/kubernetes#141694): a higher-priority job's last
            # worker then waits 5 minutes beside a free GPU. A 10 s flush bounds that wait and
            # keeps the default preemption path under test.
            f"--pod-max-in-unschedulable-pods-duration={UNSCHEDULABLE_FLUSH_S}s",
        ],
        "kube-controller-manager": [
            str(bin_dir / "kube-controller-manager"),
            *delegated,
            f"--secure-port={ports.controller_manager}",
            f"--service-account-private-key-file={paths.sa_key}",
            f"--root-ca-file={paths.ca_cert}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--controllers=*",
            "--use-service-account-credentials=false",
        ],
        "kwok": [
            str(bin_dir / "kwok"),
            f"--kubeconfig={kubeconfig}",
            # Only our stages file: a developer's ~/.kwok/kwok.yaml must not change the tests.
            f"--config={bin_dir / KWOK_STAGES}",
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector="
            f"{KWOK_NODE_ANNOTATION[0]}={KWOK_NODE_ANNOTATION[1]}",
            f"--cidr={POD_CIDR}",
            f"--node-ip={loop}",
            f"--server-address={loop}:{ports.kwok}",
            # kwok renews each node's Lease only when given a lease duration; without it the
            # node-lifecycle controller marks the nodes NotReady after ~50 s and then evicts.
            "--node-lease-duration-seconds=40",
        ],
    }


# ---------------------------------------------------------------------------------------------
# I/O helpers


def _log(message: str) -> None:
    print(f"[testbed] {message}", file=sys.stderr, flush=True)


def fetch_bin_dir(build: bool = True) -> Path:
    """Return the folder holding the test-bed's binaries, building them first if needed.

    ``TRAINSCALE_TESTBED_BIN`` overrides the location (binaries built elsewhere).

    Raises:
        TestbedError: the build failed or the binaries are missing.
    """
    override = os.environ.get("TRAINSCALE_TESTBED_BIN")
    if override:
        return Path(override)
    if not BUILD_SCRIPT.exists():
        raise TestbedError(
            f"{BUILD_SCRIPT} not found: the test-bed needs a source checkout of trainscale, "
            "or TRAINSCALE_TESTBED_BIN pointing at prebuilt binaries"
        )
    args = ["bash", str(BUILD_SCRIPT)] + ([] if build else ["--print-bin-dir"])
    # The build prints progress on stderr (passed through) and the bin folder last on stdout.
    done = subprocess.run(args, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise TestbedError(f"{BUILD_SCRIPT} failed with exit status {done.returncode}")
    return Path(done.stdout.strip().splitlines()[-1])


def _openssl(*args: str) -> None:
    if shutil.which("openssl") is None:
        raise TestbedError("openssl not found: the test-bed makes its certificates with it")
    done = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise TestbedError(f"openssl {' '.join(args)} failed: {done.stderr.strip()}")


def apply_pki(paths: Paths) -> str:
    """Create the CA, the apiserver's serving certificate, the service-account key pair and
    the admin token file; return the admin token."""
    paths.pki.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    _openssl(
        "req", "-x509", *ec, "-days", "3650", "-subj", "/CN=trainscale-testbed-ca",
        "-keyout", str(paths.ca_key), "-out", str(paths.ca_cert),
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
    )  # fmt: skip
    sans = ",".join(
        ["IP:127.0.0.1", "DNS:localhost", "DNS:kubernetes", "DNS:kubernetes.default",
         "DNS:kubernetes.default.svc", "DNS:kubernetes.default.svc.cluster.local"]
        + [f"IP:{ip}" for ip in SERVICE_IPS]
    )  # fmt: skip
    _openssl(
        "req", "-x509", *ec, "-days", "3650", "-subj", "/CN=kube-apiserver",
        "-CA", str(paths.ca_cert), "-CAkey", str(paths.ca_key),
        "-keyout", str(paths.server_key), "-out", str(paths.server_cert),
        "-addext", f"subjectAltName={sans}",
        "-addext", "basicConstraints=critical,CA:FALSE",
        "-addext", "extendedKeyUsage=serverAuth",
    )  # fmt: skip
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", str(paths.sa_key))  # fmt: skip
    _openssl("pkey", "-in", str(paths.sa_key), "-pubout", "-out", str(paths.sa_pub))
    token = secrets.token_hex(24)
    # token,user,uid,"groups": system:masters is cluster-admin, bound by bootstrap RBAC.
    paths.tokens.write_text(f'{token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n')
    for key in (paths.ca_key, paths.server_key, paths.sa_key, paths.tokens):
        key.chmod(0o600)
    return token


def _set_parent_death_signal() -> None:  # pragma: no cover - runs in the child
    """Ask Linux to SIGTERM this child when the process that started it dies."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int, exe: str) -> bool:
    """True if ``pid`` runs ``exe`` (guards against a recycled pid)."""
    return _cmdline(pid).startswith(exe)


# ---------------------------------------------------------------------------------------------
# The test-bed


class Testbed:
    """One control plane: start it, use :attr:`kubeconfig` or :meth:`kubectl`, stop it.

    Use as a context manager (stopped on exit), or with ``detach=True`` for a control plane
    that outlives this process (``trainscale-testbed up``); :meth:`attach` finds it again.
    ``nodes`` kwok nodes run nothing; ``process_nodes`` nodes (``proc-node-N``, needs root) run
    their pods as local processes through :mod:`trainscale.testbed.procnode`.
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(
        self,
        state_dir: Path | str | None = None,
        *,
        nodes: int = 2,
        gpus_per_node: int = 8,
        bin_dir: Path | str | None = None,
        detach: bool = False,
        build: bool = True,
        process_nodes: int = 0,
    ) -> None:
        if nodes < 1:
            raise ValueError(f"nodes must be >= 1, got {nodes}")
        if gpus_per_node < 0:
            raise ValueError(f"gpus_per_node must be >= 0, got {gpus_per_node}")
        if process_nodes < 0:
            raise ValueError(f"process_nodes must be >= 0, got {process_nodes}")
        self._own_dir = state_dir is None
        root = Path(state_dir) if state_dir else Path(tempfile.mkdtemp(prefix="trainscale-tb-"))
        self.paths = Paths(root)
        self.nodes = nodes
        self.gpus_per_node = gpus_per_node
        self.process_nodes = process_nodes
        self.detach = detach
        self._build = build
        self.bin_dir = Path(bin_dir) if bin_dir else None
        self.ports: Ports | None = None
        self.pids: dict[str, int] = {}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._token = ""
        self.startup_seconds: float | None = None

    # -- public API --------------------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        """Path of the admin kubeconfig (valid once started)."""
        return self.paths.kubeconfig

    @property
    def server(self) -> str:
        """The apiserver's URL."""
        if self.ports is None:
            raise TestbedError("the test-bed is not started")
        return f"https://127.0.0.1:{self.ports.apiserver}"

    @property
    def node_names(self) -> list[str]:
        """The kwok nodes (they run nothing)."""
        return [f"gpu-node-{i}" for i in range(self.nodes)]

    @property
    def process_node_names(self) -> list[str]:
        """The process runtime's nodes (their pods run as local processes)."""
        return [f"proc-node-{i}" for i in range(self.process_nodes)]

    @property
    def components(self) -> tuple[str, ...]:
        """The components of this test-bed, in start order."""
        return COMPONENTS + ((PROCNODE,) if self.process_nodes else ())

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Return an environment for kubectl/helm/the operator aimed at this control plane."""
        env = dict(os.environ if base is None else base)
        env["KUBECONFIG"] = str(self.kubeconfig)
        if self.bin_dir is not None:
            env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        # helm insists on writable config/cache/data folders.
        env["HELM_CONFIG_HOME"] = str(self.paths.home / "helm-config")
        env["HELM_CACHE_HOME"] = str(self.paths.home / "helm-cache")
        env["HELM_DATA_HOME"] = str(self.paths.home / "helm-data")
        env["KUBECACHEDIR"] = str(self.paths.home / "kube-cache")
        return env

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this control plane; raise on failure when ``check``."""
        return self._run_tool("kubectl", args, input, check, timeout)

    def apply_crd(self) -> None:
        """Apply the generated TrainingJob CRD and wait until it is Established."""
        self.kubectl("apply", "--server-side", "-f", str(CRD_PATH))
        self.wait_established(CRD_NAME)

    def wait_established(self, crd: str, timeout: float = 60) -> None:
        """Wait until CustomResourceDefinition ``crd`` has ``Established=True``.

        Not ``kubectl wait --for=condition=Established``: right after the create the CRD's
        ``status.conditions`` is null, and kubectl then fails at once ("accessor error: <nil>
        is of the type <nil>") instead of waiting.

        Raises:
            TestbedError: when it is not Established within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        conditions: list[dict[str, str]] = []
        while time.monotonic() < deadline:
            found = json.loads(self.kubectl("get", f"crd/{crd}", "-o", "json").stdout)
            conditions = (found.get("status") or {}).get("conditions") or []
            if crd_established(found):
                return
            time.sleep(0.1)
        raise TestbedError(f"CRD {crd} not Established after {timeout:g} s: {conditions}")

    def helm(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run helm against this control plane; raise on failure when ``check``."""
        return self._run_tool("helm", args, input, check, timeout)

    def start(self) -> Testbed:
        """Build (if needed) and start every component; return once all are ready.

        Raises:
            TestbedError: a component failed to start (its log's tail is in the message).
        """
        if self.bin_dir is None:
            self.bin_dir = fetch_bin_dir(build=self._build)
        for name in (*COMPONENTS, KWOK_STAGES, "kubectl"):
            if not (self.bin_dir / name).exists():
                raise TestbedError(
                    f"{self.bin_dir / name} is missing: run scripts/testbed/build.sh"
                )
        if self.process_nodes:
            from trainscale.testbed import procnode

            try:
                procnode.check_host()
            except procnode.ProcessRuntimeError as err:
                raise TestbedError(f"process nodes: {err}") from None
        began = time.monotonic()
        try:
            self._start_components()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        _log(f"ready in {self.startup_seconds:.1f} s; KUBECONFIG={self.kubeconfig}")
        return self

    def stop(self) -> None:
        """Stop every component (reverse start order) and remove an own temporary folder."""
        exes = self._exes()
        # The leaves first, together; then the apiserver; then etcd.
        for group in ((PROCNODE, "kwok", "kube-controller-manager", "kube-scheduler"),
                      ("kube-apiserver",), ("etcd",)):  # fmt: skip
            waiting = []
            for name in group:
                pid = self.pids.get(name)
                if pid is None:
                    continue
                proc = self._procs.get(name)
                if proc is not None:
                    if proc.poll() is None:
                        proc.terminate()
                    waiting.append((name, pid))
                elif _alive(pid, exes.get(name, "")):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
                    waiting.append((name, pid))
            for name, pid in waiting:
                self._wait_gone(name, pid, exes.get(name, ""))
            for name in group:
                self.pids.pop(name, None)
                self._procs.pop(name, None)
        with contextlib.suppress(FileNotFoundError):
            self.paths.state.unlink()
        if self._own_dir or self.detach:
            shutil.rmtree(self.paths.root, ignore_errors=True)

    @contextlib.contextmanager
    def control_plane_down(self) -> Iterator[None]:
        """Kill kube-apiserver, kube-scheduler and kube-controller-manager (SIGKILL: a crashed
        control plane; a graceful stop drains the apiserver's watches for longer than a test
        should wait) for the ``with`` block, then start them again on the same ports and wait
        until they are ready; etcd and kwok (the nodes) keep running.

        A watch then resumes from a resource version older than the restarted apiserver's
        watch cache, which answers 410 Gone: its client must list afresh, and whatever went
        while the apiserver was down (:meth:`etcd_delete_prefix`) is in no event, as after a
        control-plane upgrade. The scheduler restarts too: its cache, resumed across pods
        deleted behind it, finds a pod "updated on a different node" and exits.

        Raises:
            TestbedError: a component is not ready again within 90 s.
        """
        if self.bin_dir is None or self.ports is None:
            raise TestbedError("the test-bed is not started")
        names = ("kube-apiserver", "kube-scheduler", "kube-controller-manager")
        exes = self._exes()
        for name in names:
            pid = self.pids.get(name)
            proc = self._procs.get(name)
            if pid is None or proc is None:
                raise TestbedError(f"{name} was not started by this process")
            proc.kill()
            self._wait_gone(name, pid, exes.get(name, ""))
            del self._procs[name], self.pids[name]  # not "exited" while the others start
        try:
            yield
        finally:
            commands = build_commands(self.bin_dir, self.paths, self.ports)
            self._spawn("kube-apiserver", commands["kube-apiserver"])
            self._save_state()
            self._wait_ready("kube-apiserver", timeout=90)
            for name in names[1:]:
                self._spawn(name, commands[name])
            self._save_state()
            for name in names[1:]:
                self._wait_ready(name, timeout=90)

    def etcd_delete_prefix(self, prefix: str) -> int:
        """Delete every etcd key that starts with ``prefix`` (``/registry/pods/<ns>/<name>``),
        straight in etcd through its JSON gateway: no apiserver sees it, so no watch event
        tells of it. Returns the number of keys deleted.

        Raises:
            TestbedError: etcd refused the request.
        """
        if self.ports is None:
            raise TestbedError("the test-bed is not started")
        key = prefix.encode()
        range_end = key[:-1] + bytes([key[-1] + 1])  # the keys with ``prefix``, no others
        body = {"key": base64.b64encode(key).decode(),
                "range_end": base64.b64encode(range_end).decode()}  # fmt: skip
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.ports.etcd_client}/v3/kv/deleterange",
            data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                reply = json.loads(resp.read() or b"{}")
        except (OSError, ValueError) as err:
            raise TestbedError(f"etcd deleterange {prefix!r}: {err}") from None
        return int(reply.get("deleted", 0))

    def __enter__(self) -> Testbed:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @classmethod
    def attach(cls, state_dir: Path | str) -> Testbed:
        """Return the detached test-bed recorded in ``state_dir``.

        Raises:
            TestbedError: no test-bed was started there.
        """
        paths = Paths(Path(state_dir))
        try:
            state = json.loads(paths.state.read_text())
        except FileNotFoundError:
            raise TestbedError(f"no test-bed is running in {state_dir}") from None
        bed = cls(paths.root, nodes=state["nodes"], gpus_per_node=state["gpus_per_node"],
                  bin_dir=state["bin_dir"], detach=True,
                  process_nodes=state.get("process_nodes", 0))  # fmt: skip
        bed.ports = Ports(**state["ports"])
        bed.pids = {k: int(v) for k, v in state["pids"].items()}
        return bed

    def component_status(self) -> dict[str, bool]:
        """Return, per component, whether its process is alive."""
        exes = self._exes()
        return {
            name: name in self.pids and _alive(self.pids[name], exes.get(name, ""))
            for name in self.components
        }

    def _exes(self) -> dict[str, str]:
        """Each component's executable (how a recorded pid is recognised)."""
        exes = {name: str(self.bin_dir / name) for name in COMPONENTS} if self.bin_dir else {}
        exes[PROCNODE] = sys.executable
        return exes

    def fetch_json(self, path: str) -> Any:
        """GET an API path (e.g. ``/api/v1/nodes``) as the admin; the parsed reply.

        Much faster than a kubectl process, for tests that must observe quick changes.

        Raises:
            TestbedError: the apiserver answered with an error status.
        """
        status, reply = self._get(path)
        if status >= 300:
            raise TestbedError(f"GET {path} answered {status}: {reply}")
        return reply

    def fetch_ready(self) -> bool:
        """True if the apiserver answers /readyz with 200."""
        try:
            return self._get("/readyz")[0] == 200
        except (OSError, TestbedError):
            return False

    # -- plumbing ----------------------------------------------------------------------------

    def _run_tool(
        self, tool: str, args: Sequence[str], input: str | None, check: bool, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        assert self.bin_dir is not None
        done = subprocess.run(
            [str(self.bin_dir / tool), *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise TestbedError(
                f"{tool} {' '.join(args)} exited {done.returncode}:\n{done.stderr}{done.stdout}"
            )
        return done

    def _start_components(self) -> None:
        assert self.bin_dir is not None
        p = self.paths
        for folder in (p.root, p.logs, p.home):
            folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(p.etcd_data, ignore_errors=True)
        self.ports = Ports(*find_free_ports(6))
        self._token = apply_pki(p)
        kubeconfig = build_kubeconfig(self.server, p.ca_cert.read_text(), self._token)
        p.kubeconfig.write_text(json.dumps(kubeconfig, indent=2))
        p.kubeconfig.chmod(0o600)
        commands = build_commands(self.bin_dir, p, self.ports)

        t0 = time.monotonic()
        self._spawn("etcd", commands["etcd"])
        self._spawn("kube-apiserver", commands["kube-apiserver"])
        self._save_state()
        self._wait(
            "etcd", lambda: self._http_ok(f"http://127.0.0.1:{self.ports_.etcd_client}/health")
        )
        _log(f"etcd ready ({time.monotonic() - t0:.1f} s)")
        self._wait_ready("kube-apiserver", timeout=90)
        _log(f"kube-apiserver ready ({time.monotonic() - t0:.1f} s)")
        for name in ("kube-scheduler", "kube-controller-manager", "kwok"):
            self._spawn(name, commands[name])
        if self.process_nodes:
            self._spawn(PROCNODE, self._procnode_command())
        self._save_state()
        for name in self.node_names:
            self._post("/api/v1/nodes", build_node(name, self.gpus_per_node))
        self._wait_ready("kube-scheduler")
        self._wait_ready("kube-controller-manager")
        self._wait("kwok", self._nodes_ready, timeout=60)
        _log(f"{self.nodes} kwok nodes x {self.gpus_per_node} GPUs Ready "
             f"({time.monotonic() - t0:.1f} s)")  # fmt: skip
        if self.process_nodes:
            self._wait(PROCNODE, lambda: self._nodes_ready(self.process_node_names), timeout=60)
            _log(f"{self.process_nodes} process nodes Ready ({time.monotonic() - t0:.1f} s)")
        # Pods need the namespace's default ServiceAccount, made by the controller-manager.
        self._wait("kube-controller-manager", lambda: self._get(
            "/api/v1/namespaces/default/serviceaccounts/default")[0] == 200, timeout=60)  # fmt: skip

    def _procnode_command(self) -> list[str]:
        from trainscale.testbed import procnode

        assert self.bin_dir is not None
        # Containers find this Python's scripts (trainscale-train, python) and kubectl first.
        bin_dirs = [Path(sys.executable).parent, self.bin_dir]
        return procnode.build_runtime_command(self.kubeconfig, self.paths.procnode,
                                              self.process_node_names, self.gpus_per_node,
                                              bin_dirs)  # fmt: skip

    @property
    def ports_(self) -> Ports:
        if self.ports is None:
            raise TestbedError("the test-bed is not started")
        return self.ports

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = (self.paths.logs / f"{name}.log").open("ab")
        env = dict(os.environ)
        env["HOME"] = str(self.paths.home)  # kwok and friends read ~/.kube, ~/.kwok
        env.pop("KUBECONFIG", None)
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.paths.root,
            # Detached: survive the terminal's Ctrl-C. Attached: die with this process.
            start_new_session=self.detach,
            # Only async-signal-safe work (one prctl) runs between fork and exec.
            preexec_fn=None if self.detach else _set_parent_death_signal,  # noqa: PLW1509
        )
        log.close()
        self._procs[name] = proc
        self.pids[name] = proc.pid

    def _save_state(self) -> None:
        state = {
            "pids": self.pids,
            "ports": asdict(self.ports_),
            "bin_dir": str(self.bin_dir),
            "kubeconfig": str(self.kubeconfig),
            "server": self.server,
            "nodes": self.nodes,
            "gpus_per_node": self.gpus_per_node,
            "process_nodes": self.process_nodes,
        }
        self.paths.state.write_text(json.dumps(state, indent=2))

    def _wait(self, name: str, ready: Callable[[], bool], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for comp, proc in self._procs.items():
                if proc.poll() is not None:
                    raise TestbedError(
                        f"{comp} exited with status {proc.returncode} while waiting for "
                        f"{name}:\n{self._log_tail(comp)}"
                    )
            try:
                if ready():
                    return
            except (OSError, TestbedError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise TestbedError(
                    f"{name} not ready after {timeout:.0f} s:\n{self._log_tail(name)}"
                )
            time.sleep(0.1)

    def _wait_ready(self, name: str, timeout: float = 30) -> None:
        """Wait until control-plane component ``name`` answers its health check (at the start
        and after :meth:`control_plane_down`)."""
        checks: dict[str, Callable[[], bool]] = {
            "kube-apiserver": lambda: self._get("/readyz")[0] == 200,
            "kube-scheduler": lambda: self._http_ok(
                f"https://127.0.0.1:{self.ports_.scheduler}/healthz"),
            "kube-controller-manager": lambda: self._http_ok(
                f"https://127.0.0.1:{self.ports_.controller_manager}/healthz"),
        }  # fmt: skip
        self._wait(name, checks[name], timeout)

    def _wait_gone(self, name: str, pid: int, exe: str, timeout: float = 15) -> None:
        proc = self._procs.get(name)
        if proc is not None:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            return
        deadline = time.monotonic() + timeout
        while _alive(pid, exe):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)

    def _log_tail(self, name: str, lines: int = 30) -> str:
        try:
            text = (self.paths.logs / f"{name}.log").read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _ssl(self, verify: bool = True) -> ssl.SSLContext:
        if not verify:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        return ssl.create_default_context(cafile=str(self.paths.ca_cert))

    def _token_value(self) -> str:
        if not self._token:
            config = json.loads(self.paths.kubeconfig.read_text())
            self._token = config["users"][0]["user"]["token"]
        return self._token

    def _request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self._token_value()}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, context=self._ssl(), timeout=10) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as err:
            raw = err.read()
            status = err.code
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def _get(self, path: str) -> tuple[int, Any]:
        return self._request("GET", path)

    def _post(self, path: str, body: Any) -> Any:
        status, reply = self._request("POST", path, body)
        if status >= 300:
            raise TestbedError(f"POST {path} answered {status}: {reply}")
        return reply

    def _http_ok(self, url: str) -> bool:
        ctx = self._ssl(verify=False) if url.startswith("https") else None
        with urllib.request.urlopen(url, context=ctx, timeout=5) as resp:
            return bool(resp.status == 200)

    def _nodes_ready(self, names: Sequence[str] | None = None) -> bool:
        status, reply = self._get("/api/v1/nodes")
        if status != 200:
            return False
        ready = {
            n["metadata"]["name"]
            for n in reply["items"]
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in n.get("status", {}).get("conditions", [])
            )
        }
        return set(self.node_names if names is None else names) <= ready


# ---------------------------------------------------------------------------------------------
# Command line: trainscale-testbed up|down|kubeconfig|status|env|prometheus-config


def default_state_dir() -> Path:
    """Where ``trainscale-testbed up`` keeps a developer's control plane."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "trainscale" / "testbed" / "run"


@contextlib.contextmanager
def _errors_to_exit_code() -> Iterator[None]:
    try:
        yield
    except TestbedError as err:
        print(f"trainscale-testbed: {err}", file=sys.stderr)
        raise SystemExit(1) from None


def _running(state_dir: Path) -> Testbed | None:
    try:
        bed = Testbed.attach(state_dir)
    except TestbedError:
        return None
    return bed if any(bed.component_status().values()) else None


def _cmd_up(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir)
    existing = _running(state_dir)
    if existing is not None:
        print(f"trainscale-testbed: already running at {existing.server}", file=sys.stderr)
        print(existing.kubeconfig)
        return 0
    bed = Testbed(state_dir, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                  detach=not args.foreground, process_nodes=args.process_nodes)  # fmt: skip
    bed.start()
    print(bed.kubeconfig, flush=True)
    if not args.foreground:
        flag = "" if state_dir == default_state_dir() else f" --state-dir {state_dir}"
        print(f'use it with: eval "$(trainscale-testbed env{flag})"',
              file=sys.stderr)  # fmt: skip
        return 0
    stop = {"now": False}

    def _on_signal(signum: int, frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        while not stop["now"] and all(bed.component_status().values()):
            time.sleep(0.5)
    finally:
        bed.stop()
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    try:
        bed = Testbed.attach(args.state_dir)
    except TestbedError:
        print("trainscale-testbed: not running", file=sys.stderr)
        return 0
    bed.stop()
    print("trainscale-testbed: stopped", file=sys.stderr)
    return 0


def _cmd_kubeconfig(args: argparse.Namespace) -> int:
    bed = _running(Path(args.state_dir))
    if bed is None:
        raise TestbedError(f"not running (state dir {args.state_dir}); run `trainscale-testbed up`")
    print(bed.kubeconfig)
    return 0


def _cmd_env(args: argparse.Namespace) -> int:
    bed = _running(Path(args.state_dir))
    if bed is None:
        raise TestbedError(f"not running (state dir {args.state_dir}); run `trainscale-testbed up`")
    env = bed.env(base={"PATH": "$PATH"})
    for key in ("KUBECONFIG", "HELM_CONFIG_HOME", "HELM_CACHE_HOME", "HELM_DATA_HOME"):
        print(f"export {key}={env[key]}")
    print(f'export PATH="{bed.bin_dir}:$PATH"')
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    try:
        bed = Testbed.attach(args.state_dir)
    except TestbedError:
        print("not running")
        return 1
    alive = bed.component_status()
    for name, ok in alive.items():
        print(f"{name:<24} {'running' if ok else 'stopped'} (pid {bed.pids.get(name, '-')})")
    ready = bed.fetch_ready()
    print(f"{'apiserver /readyz':<24} {'ok' if ready else 'not ready'} ({bed.server})")
    print(f"{'kubeconfig':<24} {bed.kubeconfig}")
    return 0 if ready and all(alive.values()) else 1


def _cmd_prometheus_config(args: argparse.Namespace) -> int:
    # Imported here: both modules import this one.
    from trainscale.testbed.chart_readme import CHART_DIR
    from trainscale.testbed.prometheus import (
        build_podmonitor_scrape_configs,
        render_chart_podmonitor,
        render_prometheus_config,
    )

    bed = _running(Path(args.state_dir))
    if bed is None:
        raise TestbedError(f"not running (state dir {args.state_dir}); run `trainscale-testbed up`")
    monitor = render_chart_podmonitor(bed.helm, CHART_DIR, args.namespace)
    print(render_prometheus_config(build_podmonitor_scrape_configs(monitor, bed.kubeconfig)))
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    print(fetch_bin_dir(build=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of ``trainscale-testbed``."""
    parser = argparse.ArgumentParser(
        prog="trainscale-testbed",
        description="A local Kubernetes control plane (etcd, apiserver, scheduler, "
        "controller-manager, kwok GPU nodes) on 127.0.0.1.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_state_dir(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--state-dir", default=str(default_state_dir()),
                       help="folder for certificates, etcd data, logs (default: %(default)s)")  # fmt: skip
        return p

    up = with_state_dir(sub.add_parser("up", help="build if needed, start, print the kubeconfig"))
    up.add_argument("--nodes", type=_positive_int, default=2, help="fake GPU nodes (default 2)")
    up.add_argument("--gpus-per-node", type=_non_negative_int, default=8,
                    help="nvidia.com/gpu capacity of each node (default 8)")  # fmt: skip
    up.add_argument("--process-nodes", type=_non_negative_int, default=0,
                    help="nodes whose pods run as local processes (needs root; default 0)")  # fmt: skip
    up.add_argument("--foreground", action="store_true",
                    help="stay in the foreground and stop on Ctrl-C")  # fmt: skip
    up.set_defaults(func=_cmd_up)
    with_state_dir(sub.add_parser("down", help="stop it and delete its state")).set_defaults(
        func=_cmd_down
    )
    with_state_dir(sub.add_parser("kubeconfig", help="print the kubeconfig path")).set_defaults(
        func=_cmd_kubeconfig
    )
    with_state_dir(sub.add_parser("env", help="print shell exports (KUBECONFIG, PATH, helm)")) \
        .set_defaults(func=_cmd_env)  # fmt: skip
    with_state_dir(sub.add_parser("status", help="show each component")).set_defaults(
        func=_cmd_status
    )
    prom_help = "print a prometheus.yml that scrapes worker pods as the chart's PodMonitor does"
    prom = with_state_dir(sub.add_parser("prometheus-config", help=prom_help))
    prom.add_argument("-n", "--namespace", action="append", required=True,
                      help="namespace whose worker pods are scraped (repeatable)")  # fmt: skip
    prom.set_defaults(func=_cmd_prometheus_config)
    sub.add_parser("build", help="build the cached binaries; print their folder").set_defaults(
        func=_cmd_build
    )
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def cli(argv: Sequence[str] | None = None) -> int:
    """``trainscale-testbed ...``: the arguments after ``testbed``; returns the exit status."""
    args = build_parser().parse_args(argv)
    with _errors_to_exit_code():
        return int(args.func(args))
    return 1  # pragma: no cover - _errors_to_exit_code raises


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli(sys.argv[1:]))
