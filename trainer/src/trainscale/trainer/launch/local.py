"""Local elastic jobs: a rendezvous store and N agent processes on 127.0.0.1, like pods.

Why this module exists: laptops, tests and benchmarks need the same moving parts as a
Kubernetes job (a standalone c10d store that outlives every worker, one elastic agent per
"pod", configured through the same ``PET_*``/``TRAINSCALE_*`` environment) without a cluster.
:class:`LocalCluster` is the Python API (start, ``add_worker()``, ``remove_worker(signal)``,
wait); ``trainscale-train --local`` and ``trainscale-train --join`` are its command line.

The settings are the ones measured with torch 2.13 on CPU: an unshared rendezvous TCP store
(``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``, else a joining node hangs), a 1 s last call, 2 s x 3
keep-alive, restarts allowed (losing a node counts as a failure), gloo on loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from trainscale.trainer.contract import environment as env_names
from trainscale.trainer.contract import rendezvous

CONFIG_KEY = "trainscale/local/config"
INDEX_KEY = "trainscale/local/next-index"


class LocalClusterError(RuntimeError):
    """A local cluster request that cannot be carried out."""


@dataclass(frozen=True)
class LocalClusterConfig:
    """How the local job runs.

    Attributes:
        worker_args: the training flags every worker gets (``--task ...`` and friends).
        min_workers / max_workers: the elastic range (torchrun ``--nnodes min:max``).
        checkpoint_dir: shared checkpoint directory of all agents.
        metrics_base_port: agent ``i`` serves its pod's metrics on ``base + i`` (None: off).
        nproc_per_node: worker processes per agent (a pod's GPUs; torchrun
            ``--nproc-per-node``).
        host: address everything binds to.
        last_call_timeout: rendezvous last call (seconds).
        max_restarts: torchrun restarts per agent (each scale-down uses one).
        start_method: ``forkserver`` (fast restarts) or ``spawn``.
        env: extra environment for every agent.
        job_name: shown in progress lines.
    """

    worker_args: tuple[str, ...]
    min_workers: int = 1
    max_workers: int = 8
    checkpoint_dir: Path | None = None
    metrics_base_port: int | None = None
    nproc_per_node: int = 1
    host: str = "127.0.0.1"
    last_call_timeout: int = rendezvous.DEFAULT_LAST_CALL_TIMEOUT_SECONDS
    max_restarts: int = 100
    start_method: str = "forkserver"
    env: Mapping[str, str] = field(default_factory=dict)
    job_name: str = "local"


def build_agent_env(
    config: LocalClusterConfig, endpoint: str, run_id: str, index: int
) -> dict[str, str]:
    """Return the environment of agent ``index``: what the operator gives a worker pod."""
    env = {
        env_names.PET_NNODES: f"{config.min_workers}:{config.max_workers}",
        env_names.PET_NPROC_PER_NODE: str(config.nproc_per_node),
        env_names.PET_RDZV_BACKEND: rendezvous.BACKEND,
        env_names.PET_RDZV_ENDPOINT: endpoint,
        env_names.PET_RDZV_ID: run_id,
        env_names.PET_RDZV_CONF: rendezvous.build_rdzv_conf(config.last_call_timeout),
        env_names.PET_MAX_RESTARTS: str(config.max_restarts),
        env_names.PET_LOCAL_ADDR: config.host,
        env_names.PET_MONITOR_INTERVAL: "0.1",
        env_names.TORCH_DISABLE_SHARE_RDZV_TCP_STORE: "1",
        "GLOO_SOCKET_IFNAME": "lo" if config.host.startswith("127.") else "",
        env_names.ENV_AGENT_START_METHOD: config.start_method,
        env_names.ENV_JOB_NAME: config.job_name,
        env_names.ENV_REPLICA_INDEX: str(index),
        env_names.ENV_METRICS_ADDRESS: config.host,
        env_names.ENV_METRICS_PORT: (
            str(config.metrics_base_port + index) if config.metrics_base_port else "0"
        ),
        "PYTHONUNBUFFERED": "1",
        # All agents share this machine's cores: one intra-op thread each unless told
        # otherwise (torch's default of one per core oversubscribes N workers N-fold).
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    if not env["GLOO_SOCKET_IFNAME"]:
        del env["GLOO_SOCKET_IFNAME"]
    if config.checkpoint_dir is not None:
        env[env_names.ENV_CHECKPOINT_DIR] = str(config.checkpoint_dir)
    env.update(config.env)
    return env


def _check_config(config: LocalClusterConfig) -> None:
    if config.nproc_per_node < 1:
        raise LocalClusterError(f"nproc_per_node must be >= 1, got {config.nproc_per_node}")


def _descendants(pid: int) -> list[int]:
    """All processes below ``pid`` (workers live in their own sessions under torchrun)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@dataclass
class AgentProcess:
    """One local agent ("pod") of a :class:`LocalCluster`."""

    index: int
    process: subprocess.Popen[bytes]
    log: IO[bytes] | None = None
    started_at: float = field(default_factory=time.monotonic)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


class LocalCluster:
    """A local elastic job: one rendezvous store and agent processes you can add and remove.

    Usage::

        with LocalCluster(LocalClusterConfig(worker_args=("--task", "pkg.mod:task"))) as c:
            c.start(2)
            c.add_worker()
            c.remove_worker(sig=signal.SIGTERM)
            c.wait()

    Agent output goes to this process's stdout, or to ``log_dir/agent-<i>.log`` when a
    ``log_dir`` is given (tests).
    """

    def __init__(self, config: LocalClusterConfig, log_dir: Path | None = None) -> None:
        from torch.distributed import TCPStore  # type: ignore[attr-defined]

        _check_config(config)
        self.config = config
        self.log_dir = log_dir
        self.run_id = f"local-{uuid.uuid4().hex[:8]}"
        self.store = TCPStore(
            config.host, 0, is_master=True, wait_for_workers=False, use_libuv=True
        )
        self.endpoint = f"{config.host}:{self.store.port}"
        self.agents: list[AgentProcess] = []
        self.removed: set[int] = set()
        self.store.set(
            CONFIG_KEY,
            json.dumps({"run_id": self.run_id, "config": _config_to_json(config)}),
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, workers: int) -> None:
        """Start ``workers`` agents."""
        if not 1 <= workers <= self.config.max_workers:
            raise LocalClusterError(
                f"--workers {workers} must be in 1..{self.config.max_workers} (--max-workers)"
            )
        for _ in range(workers):
            self.add_worker()

    def add_worker(self) -> AgentProcess:
        """Start one more agent (a scale-up, like the operator creating a pod)."""
        index = int(self.store.add(INDEX_KEY, 1)) - 1
        env = {**os.environ, **build_agent_env(self.config, self.endpoint, self.run_id, index)}
        log = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log = open(self.log_dir / f"agent-{index}.log", "ab")  # noqa: SIM115
        process = subprocess.Popen(
            [sys.executable, "-m", "trainscale.trainer", *self.config.worker_args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT if log else None,
            start_new_session=True,  # Ctrl-C reaches us only; we stop agents in order
        )
        agent = AgentProcess(index=index, process=process, log=log)
        self.agents.append(agent)
        return agent

    def live_agents(self) -> list[AgentProcess]:
        """The agents still running, oldest first."""
        return [a for a in self.agents if a.alive]

    def remove_worker(
        self, index: int | None = None, sig: signal.Signals = signal.SIGTERM, timeout: float = 60
    ) -> AgentProcess:
        """Stop one agent (a scale-down): the newest live one unless ``index`` is given.

        SIGTERM is what the kubelet sends a deleted pod: the agent leaves the rendezvous and
        its worker checkpoints at the next step boundary. SIGKILL kills the agent and its
        workers at once, like a node failure.
        """
        live = [a for a in self.live_agents() if index is None or a.index == index]
        if not live:
            raise LocalClusterError(f"no live agent {'' if index is None else index}".strip())
        agent = live[-1]
        self.removed.add(agent.index)
        if sig == signal.SIGKILL:
            for pid in [*_descendants(agent.process.pid), agent.process.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        else:
            agent.process.send_signal(sig)
        agent.process.wait(timeout)
        return agent

    def wait(self, timeout: float | None = None) -> int:
        """Wait until every agent has exited; return the worst exit code (0 = finished) of
        the agents that were not removed.

        Raises:
            subprocess.TimeoutExpired: when ``timeout`` passes first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        codes = []
        for agent in list(self.agents):
            left = None if deadline is None else max(deadline - time.monotonic(), 0.01)
            code = agent.process.wait(left)
            if agent.index not in self.removed:
                codes.append(code)
        return max((abs(c) for c in codes), default=0)

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM every live agent (workers checkpoint first), then SIGKILL what is left."""
        for agent in self.live_agents():
            with contextlib.suppress(ProcessLookupError):
                agent.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for agent in self.agents:
            with contextlib.suppress(subprocess.TimeoutExpired):
                agent.process.wait(max(deadline - time.monotonic(), 0.01))
            if agent.alive:
                for pid in [*_descendants(agent.process.pid), agent.process.pid]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                agent.process.wait()
            if agent.log is not None:
                agent.log.close()


def _config_to_json(config: LocalClusterConfig) -> dict[str, Any]:
    return {
        "worker_args": list(config.worker_args),
        "min_workers": config.min_workers,
        "max_workers": config.max_workers,
        "checkpoint_dir": str(config.checkpoint_dir) if config.checkpoint_dir else None,
        "metrics_base_port": config.metrics_base_port,
        "nproc_per_node": config.nproc_per_node,
        "host": config.host,
        "last_call_timeout": config.last_call_timeout,
        "max_restarts": config.max_restarts,
        "start_method": config.start_method,
        "env": dict(config.env),
        "job_name": config.job_name,
    }


def _config_from_json(data: Mapping[str, Any]) -> LocalClusterConfig:
    values = dict(data)
    values["worker_args"] = tuple(values["worker_args"])
    if values.get("checkpoint_dir"):
        values["checkpoint_dir"] = Path(values["checkpoint_dir"])
    return LocalClusterConfig(**values)


def join_local_cluster(endpoint: str) -> int:
    """Run one more agent of the local job whose store is at ``host:port`` (``--join``).

    The job's settings are read from the store, so the command needs nothing else. The
    agent runs in this process: Ctrl-C removes it again (it leaves the rendezvous at once).
    """
    from datetime import timedelta

    from torch.distributed import TCPStore  # type: ignore[attr-defined]

    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit():
        raise LocalClusterError(f"--join needs HOST:PORT of a local job, got {endpoint!r}")
    store = TCPStore(host, int(port), is_master=False, timeout=timedelta(seconds=10))
    document = json.loads(store.get(CONFIG_KEY))
    config = _config_from_json(document["config"])
    index = int(store.add(INDEX_KEY, 1)) - 1
    os.environ.update(build_agent_env(config, endpoint, document["run_id"], index))
    from trainscale.trainer.launch.agent import run_agent
    from trainscale.trainer.launch.cli import task_of

    print(f"[{config.job_name}] joining {endpoint} as worker {index}; Ctrl-C leaves", flush=True)
    return run_agent(config.worker_args, task_of(config.worker_args), config.start_method)


def serve_rendezvous(host: str, port: int) -> int:
    """Run a standalone c10d rendezvous store until SIGTERM/SIGINT (the rendezvous pod)."""
    from torch.distributed import TCPStore  # type: ignore[attr-defined]

    stop: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.append(signum))
    store = TCPStore(host, port, is_master=True, wait_for_workers=False, use_libuv=True)
    print(f"trainscale rendezvous store listening on {host}:{store.port}", flush=True)
    while not stop:
        time.sleep(0.2)
    return 0


PORT_FLOOR = 10000
"""Lowest port :func:`find_free_ports` hands out (below it: well-known services)."""

_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _ephemeral_low() -> int:
    """The first port the kernel gives outgoing connections and ``bind(0)`` (Linux: 32768)."""
    try:
        return int(_EPHEMERAL_RANGE.read_text(encoding="ascii").split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def find_free_ports(
    count: int = 1, host: str = "127.0.0.1", *, consecutive: bool = False
) -> list[int]:
    """``count`` TCP ports free right now on ``host`` (tests, benchmarks, the test-bed).

    Why not ``bind(0)``: that hands out a port from the kernel's ephemeral range, the same
    range every outgoing connection and every other ``bind(0)`` on the machine draws from;
    between our release of the port and the server's bind, a gloo pair, an apiserver-etcd
    connection or another test's listener could take it (and the port after it, for a job
    whose pod ``i`` serves on ``base + i``, was never checked at all). So ports are drawn at
    random below that range, where the kernel never allocates, and each is bound once to
    check it. ``consecutive``: ``base, base + 1, ...`` (returned in that order).

    Raises:
        RuntimeError: no such ports found (a machine with almost every port taken).
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    high = _ephemeral_low()
    room = high - PORT_FLOOR > 2 * count  # else the kernel chooses (bind(0))
    pick = random.SystemRandom()
    for _ in range(1000):
        if not room:
            candidates = [0] * count
        elif consecutive:
            start = pick.randrange(PORT_FLOOR, high - count)
            candidates = list(range(start, start + count))
        else:
            candidates = pick.sample(range(PORT_FLOOR, high), count)
        socks: list[socket.socket] = []
        try:
            for port in candidates:
                sock = socket.socket()
                socks.append(sock)
                sock.bind((host, port))
            ports = [int(s.getsockname()[1]) for s in socks]
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
        if not consecutive or ports == list(range(ports[0], ports[0] + count)):
            return ports
    raise RuntimeError(f"no {count} free {'consecutive ' if consecutive else ''}ports on {host}")


def find_free_port(host: str = "127.0.0.1") -> int:
    """One TCP port free right now on ``host`` (see :func:`find_free_ports`)."""
    return find_free_ports(1, host)[0]
