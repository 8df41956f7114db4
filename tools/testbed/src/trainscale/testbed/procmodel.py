"""The process runtime's decisions, as pure functions: what a process node looks like, which
environment a container gets, what a pod's hosts file says, and which status a pod reports.

Why this module exists: :mod:`trainscale.testbed.procnode` plays kubelet, CNI, kube-proxy and
cluster DNS for local processes. Everything it decides from data (the pod object, the
Services, the state of its processes and the clock) lives here, free of processes, network
namespaces and HTTP, so each rule is tested on its own and the I/O stays a thin shell.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trainscale.testbed.cluster import KWOK_NODE_ANNOTATION, build_node

# Nodes of the process runtime carry this label (pin pods to them with a nodeSelector).
PROCESS_NODE_LABEL = "trainscale.dev/process-node"
CLUSTER_DOMAIN = "cluster.local"
# Container states, as in ContainerStatus.state.
WAITING = "waiting"
RUNNING = "running"
TERMINATED = "terminated"


class PodConfigError(ValueError):
    """A pod asks for something the process runtime cannot give (named in the message)."""


# ---------------------------------------------------------------------------------------------
# Nodes


def build_process_node(
    name: str, gpus: int, host_ip: str, *, cpu: str = "64", memory: str = "512Gi"
) -> dict[str, Any]:
    """Return the Node object of a process node: kwok's node shape without kwok's annotation
    (so kwok leaves it alone), labelled ``type: process`` and :data:`PROCESS_NODE_LABEL`,
    with ``host_ip`` (the bridge's address, reachable from every pod) as its InternalIP."""
    node = build_node(name, gpus, cpu=cpu, memory=memory)
    node["metadata"]["annotations"].pop(KWOK_NODE_ANNOTATION[0])
    node["metadata"]["labels"].update({"type": "process", PROCESS_NODE_LABEL: "true"})
    node["status"]["addresses"] = [
        {"type": "InternalIP", "address": host_ip},
        {"type": "Hostname", "address": name},
    ]
    return node


def build_node_conditions(now: str, since: str) -> list[dict[str, str]]:
    """The node's conditions: Ready, and no memory/disk/pid pressure, heartbeat ``now``."""

    def condition(kind: str, status: str, reason: str) -> dict[str, str]:
        return {"type": kind, "status": status, "reason": reason, "message": reason,
                "lastHeartbeatTime": now, "lastTransitionTime": since}  # fmt: skip

    return [
        condition("Ready", "True", "ProcessRuntimeReady"),
        condition("MemoryPressure", "False", "ProcessRuntimeHasSufficientMemory"),
        condition("DiskPressure", "False", "ProcessRuntimeHasNoDiskPressure"),
        condition("PIDPressure", "False", "ProcessRuntimeHasSufficientPID"),
    ]


# ---------------------------------------------------------------------------------------------
# Environment

_FIELD_LABEL = re.compile(r"^metadata\.(labels|annotations)\['([^']*)'\]$")
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")


def resolve_field(pod: Mapping[str, Any], path: str, pod_ip: str, host_ip: str) -> str:
    """The value of a ``valueFrom.fieldRef.fieldPath`` for ``pod``.

    Raises:
        PodConfigError: ``path`` is not one of the paths Kubernetes supports here.
    """
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    if path in simple:
        return str(simple[path])
    match = _FIELD_LABEL.match(path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    raise PodConfigError(f"env valueFrom.fieldRef.fieldPath {path!r} is not supported")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: a defined variable is replaced, an undefined reference
    stays as written, ``$$`` is a literal ``$``."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "$"
        return env.get(name, match.group(0))

    return _VAR_REF.sub(one, text)


def build_container_env(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    pod_ip: str,
    host_ip: str,
    base: Mapping[str, str],
) -> dict[str, str]:
    """The environment of ``container``: ``base``, then the container's ``env`` in order
    (``value`` with ``$(VAR)`` expansion, or ``valueFrom.fieldRef``).

    Raises:
        PodConfigError: an entry uses a source other than ``value``/``fieldRef``, or envFrom.
    """
    name = container.get("name", "?")
    if container.get("envFrom"):
        raise PodConfigError(f"container {name}: envFrom is not supported by the process runtime")
    env = dict(base)
    for item in container.get("env") or []:
        key = item["name"]
        source = item.get("valueFrom")
        if source is None:
            env[key] = expand(str(item.get("value", "")), env)
        elif "fieldRef" in source:
            env[key] = resolve_field(pod, source["fieldRef"]["fieldPath"], pod_ip, host_ip)
        else:
            kinds = ", ".join(sorted(source))
            raise PodConfigError(f"container {name}: env {key} valueFrom {kinds} is not supported")
    return env


def check_supported(pod: Mapping[str, Any], container: Mapping[str, Any]) -> None:
    """Refuse what the runtime would otherwise silently get wrong.

    Raises:
        PodConfigError: the pod has init containers, or a volume mount uses ``subPath``.
    """
    if (pod.get("spec") or {}).get("initContainers"):
        raise PodConfigError("initContainers are not supported by the process runtime")
    for mount in container.get("volumeMounts") or []:
        if mount.get("subPath") or mount.get("subPathExpr"):
            raise PodConfigError(f"container {container.get('name', '?')}: volumeMounts "
                                 f"{mount.get('name')!r} subPath is not supported")  # fmt: skip


def build_argv(container: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """``command + args`` with ``$(VAR)`` expansion.

    Raises:
        PodConfigError: the container has no ``command`` (images are ignored here, so there is
            no image entrypoint to fall back on).
    """
    command = list(container.get("command") or [])
    if not command:
        raise PodConfigError(
            f"container {container.get('name', '?')}: no command; the process runtime ignores "
            "images, so every container needs spec.containers[].command"
        )
    return [expand(str(word), env) for word in command + list(container.get("args") or [])]


# ---------------------------------------------------------------------------------------------
# Service names


def service_names(name: str, namespace: str) -> list[str]:
    """The names a Service answers to from inside its namespace, shortest first."""
    return [name, f"{name}.{namespace}", f"{name}.{namespace}.svc",
            f"{name}.{namespace}.svc.{CLUSTER_DOMAIN}"]  # fmt: skip


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def build_endpoints(
    services: Iterable[Mapping[str, Any]], pods: Sequence[Mapping[str, Any]]
) -> dict[tuple[str, str], list[str]]:
    """``(namespace, service) -> sorted pod IPs`` of the pods the Service selects that are
    Ready (or every pod with an IP when it publishes not-ready addresses), not deleted."""
    endpoints: dict[tuple[str, str], list[str]] = {}
    for svc in services:
        meta, spec = svc["metadata"], svc.get("spec") or {}
        selector = spec.get("selector") or {}
        any_ready = bool(spec.get("publishNotReadyAddresses"))
        ips = {
            pod["status"]["podIP"]
            for pod in pods
            if pod["metadata"].get("namespace") == meta["namespace"]
            and not pod["metadata"].get("deletionTimestamp")
            and (pod.get("status") or {}).get("podIP")
            and _selects(selector, pod["metadata"].get("labels") or {})
            and (any_ready or _pod_ready(pod))
        }
        endpoints[(meta["namespace"], meta["name"])] = sorted(ips)
    return endpoints


def pod_dns_name(ip: str, namespace: str) -> str:
    """A pod's DNS name in Kubernetes: ``10-241-0-7.ns.pod.cluster.local``."""
    return f"{ip.replace('.', '-')}.{namespace}.pod.{CLUSTER_DOMAIN}"


def build_pod_addresses(pods: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """``pod IP -> namespace`` of every pod with an IP (for reverse lookups of peers)."""
    return {
        pod["status"]["podIP"]: pod["metadata"]["namespace"]
        for pod in pods
        if (pod.get("status") or {}).get("podIP")
    }


def build_hosts(
    pod_name: str,
    pod_ip: str,
    namespace: str,
    endpoints: Mapping[tuple[str, str], list[str]],
    peers: Mapping[str, str] | None = None,
) -> str:
    """The pod's ``/etc/hosts``: loopback, the pod's own name, then every Service with
    endpoints under its qualified names (``name.ns``, ``name.ns.svc[.cluster.local]``), and
    the short ``name`` for the Services of the pod's own namespace; last, every pod's DNS name
    (``peers``: IP -> namespace), so a peer's IPv4 address resolves back to a name at once."""
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback",
             f"{pod_ip}\t{pod_name} {pod_dns_name(pod_ip, namespace)}"]  # fmt: skip
    for (ns, name), ips in sorted(endpoints.items()):
        names = service_names(name, ns)
        if ns != namespace:
            names = names[1:]
        lines += [f"{ip}\t{' '.join(names)}" for ip in ips]
    lines += [f"{ip}\t{pod_dns_name(ip, ns)}" for ip, ns in sorted((peers or {}).items())
              if ip != pod_ip]  # fmt: skip
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Pod status


@dataclass
class ContainerView:
    """What the runtime knows about one container, enough to report its status."""

    name: str
    image: str
    state: str = WAITING
    reason: str = "ContainerCreating"
    message: str = ""
    started_at: str = ""
    finished_at: str = ""
    exit_code: int | None = None
    restart_count: int = 0
    ready: bool = False
    pid: int | None = None
    last_terminated: dict[str, Any] = field(default_factory=dict)


def pod_phase(restart_policy: str, containers: Sequence[ContainerView]) -> str:
    """The pod phase for its containers under ``restart_policy`` (Never/OnFailure/Always)."""
    if any(c.state == WAITING and c.restart_count == 0 for c in containers):
        return "Pending"
    if not all(c.state == TERMINATED for c in containers):
        return "Running"
    failed = any(c.exit_code != 0 for c in containers)
    if restart_policy == "Never":
        return "Failed" if failed else "Succeeded"
    if restart_policy == "OnFailure" and not failed:
        return "Succeeded"
    return "Running"


def build_container_status(c: ContainerView) -> dict[str, Any]:
    """One entry of ``status.containerStatuses``."""
    if c.state == RUNNING:
        state: dict[str, Any] = {RUNNING: {"startedAt": c.started_at}}
    elif c.state == TERMINATED:
        state = {TERMINATED: {"exitCode": c.exit_code, "reason": c.reason, "message": c.message,
                              "startedAt": c.started_at, "finishedAt": c.finished_at}}  # fmt: skip
    else:
        state = {WAITING: {"reason": c.reason, "message": c.message}}
    status: dict[str, Any] = {
        "name": c.name,
        "image": c.image,
        "imageID": "",
        "containerID": f"process://{c.pid}" if c.pid else "",
        "ready": c.ready,
        "started": c.state == RUNNING,
        "restartCount": c.restart_count,
        "state": state,
    }
    if c.last_terminated:
        status["lastState"] = {TERMINATED: dict(c.last_terminated)}
    return status


def build_pod_status(
    *,
    restart_policy: str,
    containers: Sequence[ContainerView],
    pod_ip: str,
    host_ip: str,
    start_time: str,
    since: str,
) -> dict[str, Any]:
    """The pod's ``status``: phase, IPs, conditions and container statuses.

    ``since`` is the time the conditions last changed, as the runtime tracks it.
    """
    phase = pod_phase(restart_policy, containers)
    all_ready = bool(containers) and all(c.ready for c in containers)
    done = phase in ("Succeeded", "Failed")
    reason = "PodCompleted" if done else ("" if all_ready else "ContainersNotReady")

    def condition(kind: str, ok: bool, why: str = "") -> dict[str, Any]:
        cond: dict[str, Any] = {"type": kind, "status": "True" if ok else "False",
                                "lastProbeTime": None, "lastTransitionTime": since}  # fmt: skip
        if why:
            cond["reason"] = why
        return cond

    ready = all_ready and not done
    return {
        "phase": phase,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": start_time,
        "conditions": [
            condition("PodScheduled", True),
            condition("Initialized", True, "PodCompleted" if done else ""),
            condition("ContainersReady", ready, "" if ready else reason),
            condition("Ready", ready, "" if ready else reason),
        ],
        "containerStatuses": [build_container_status(c) for c in containers],
    }


# ---------------------------------------------------------------------------------------------
# Probes and restarts


def restart_wanted(restart_policy: str, exit_code: int) -> bool:
    """Whether a container that exited with ``exit_code`` is started again."""
    return restart_policy == "Always" or (restart_policy == "OnFailure" and exit_code != 0)


def restart_backoff(restart_count: int) -> float:
    """Seconds before restart number ``restart_count + 1``: 1, 2, 4, 8, then 10 s (kubelet
    starts at 10 s and caps at 5 min; a test-bed wants quick turns)."""
    return float(min(10, 2**restart_count))


def probe_port(port: int | str, container: Mapping[str, Any]) -> int:
    """A probe's port as a number: a number as is, a name looked up in the container's ports.

    Raises:
        PodConfigError: no container port has that name.
    """
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise PodConfigError(f"container {container.get('name', '?')}: probe port {port!r} is not a "
                         "named container port")  # fmt: skip


@dataclass(frozen=True)
class ProbeTiming:
    """A probe's timing fields with Kubernetes' defaults."""

    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3

    @classmethod
    def of(cls, probe: Mapping[str, Any]) -> ProbeTiming:
        return cls(
            initial_delay=float(probe.get("initialDelaySeconds", 0)),
            period=float(probe.get("periodSeconds", 10)),
            timeout=float(probe.get("timeoutSeconds", 1)),
            success_threshold=int(probe.get("successThreshold", 1)),
            failure_threshold=int(probe.get("failureThreshold", 3)),
        )
