"""A real Prometheus for tests, benchmarks and demos: Debian's binary on a free 127.0.0.1
port, scraping every second either one static target with ``honor_labels`` (as
dcgm-exporter's own ServiceMonitor recommends, so the labels arrive as the exporter wrote
them), or what a PodMonitor selects, discovered in a cluster as prometheus-operator would.

Why this module exists: the Prometheus tests, the autoscaling end-to-end tests and the
reaction benchmark all need the same server; it is dev tooling, so it lives with the
test-bed, not in the product.

:func:`build_podmonitor_scrape_configs` turns a PodMonitor (the chart's, as rendered) into
the scrape configs prometheus-operator generates for it: ``kubernetes_sd_configs`` (role
``pod``, against any apiserver through a kubeconfig file) with the same namespace selection,
the same ``keep`` rules for the selector's labels and the endpoint's port name, and the same
target labels (``namespace``, ``pod``, ``container``, ``job``, ``endpoint``). The chart's
PodMonitor is the one source: nothing here restates its labels or port. Fields the
translation does not cover are refused by name, so the chart cannot grow a setting that the
test Prometheus silently ignores.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from trainscale.operator.adapters.promql import escape_regex
from trainscale.trainer.launch.local import find_free_port


@dataclass
class PrometheusServer:
    """A running Prometheus: its base URL, process and working folder."""

    url: str
    process: subprocess.Popen[bytes]
    workdir: Path

    def stop(self) -> None:
        """Terminate it (then kill it if it does not exit within 10 s)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


#: Prometheus' Go module version (v0.3XX.Y is Prometheus v3.XX.Y) built by
#: :func:`fetch_prometheus_with_kubernetes_sd`.
PROMETHEUS_MODULE_VERSION = "v0.316.0"
_PROMETHEUS_MODULE = "github.com/prometheus/prometheus"
_PROMETHEUS_BUILD_TAGS = "remove_all_sd,enable_kubernetes_sd"


def fetch_prometheus_with_kubernetes_sd(build: bool = True) -> Path:
    """A Prometheus binary with Kubernetes service discovery; built once and cached.

    Debian's ``prometheus`` is built without ``kubernetes_sd_configs``, so this one is built
    from Prometheus' Go module at :data:`PROMETHEUS_MODULE_VERSION` with only that discovery
    compiled in (build tags ``remove_all_sd,enable_kubernetes_sd``; a few minutes cold, like
    the test-bed's other binaries). ``TRAINSCALE_PROMETHEUS`` names any other such binary.

    Raises:
        FileNotFoundError: ``build`` is False and it is not built, or no Go toolchain.
        RuntimeError: the build failed (the message has the end of its log).
    """
    override = os.environ.get("TRAINSCALE_PROMETHEUS")
    if override:
        return Path(override)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    root = cache / "trainscale" / "testbed" / f"prometheus-{PROMETHEUS_MODULE_VERSION}-k8s-sd"
    binary = root / "bin" / "prometheus"
    if binary.exists():
        return binary
    if not build:
        raise FileNotFoundError(f"{binary} is not built yet")
    go = shutil.which("go")
    if go is None:
        raise FileNotFoundError("building Prometheus with Kubernetes discovery needs Go")
    src = root / "src"
    src.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent sessions build once
        if binary.exists():
            return binary
        (src / "go.mod").write_text(
            "module trainscale.dev/testbed/prometheus\n\ngo 1.26\n\n"
            f"require {_PROMETHEUS_MODULE} {PROMETHEUS_MODULE_VERSION}\n"
        )
        env = dict(os.environ, GOFLAGS="-trimpath -buildvcs=false -mod=mod", CGO_ENABLED="0")
        env.setdefault("GOTOOLCHAIN", "local")
        tmp = root / "bin" / "prometheus.tmp"
        done = subprocess.run(
            [go, "build", "-tags", _PROMETHEUS_BUILD_TAGS, "-o", str(tmp),
             f"{_PROMETHEUS_MODULE}/cmd/prometheus"],
            cwd=src, env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"building Prometheus failed:\n{done.stderr[-4000:]}")
        tmp.rename(binary)
    return binary


def build_static_scrape_config(target: str) -> dict[str, Any]:
    """A 1 s scrape of one ``host:port`` with ``honor_labels`` (the test exporters)."""
    return {
        "job_name": "dcgm-and-trainer",
        "honor_labels": True,
        "static_configs": [{"targets": [target]}],
    }


def render_prometheus_config(scrape_configs: Sequence[Mapping[str, Any]]) -> str:
    """prometheus.yml (as JSON, which is YAML) with a 1 s scrape and evaluation interval."""
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": list(scrape_configs),
    }
    return json.dumps(config, indent=2)


def start_prometheus(
    workdir: Path,
    scrape_target: str | None = None,
    *,
    scrape_configs: Sequence[Mapping[str, Any]] = (),
    binary: Path | None = None,
    web_config: Path | None = None,
) -> PrometheusServer:
    """Start ``prometheus`` (``binary``, default the one on PATH) on a free 127.0.0.1 port,
    scraping ``scrape_target`` (a static ``host:port``, 1 s, ``honor_labels``) and/or the
    given ``scrape_configs``.

    ``web_config``: a ``--web.config.file`` (TLS, basic auth); with ``tls_server_config`` in it
    the URL is ``https://``."""
    binary = binary or (Path(found) if (found := shutil.which("prometheus")) else None)
    if binary is None:
        raise FileNotFoundError(
            "the prometheus binary is missing: run scripts/install-system-deps.sh"
        )
    configs = list(scrape_configs)
    if scrape_target is not None:
        configs.insert(0, build_static_scrape_config(scrape_target))
    if not configs:
        raise ValueError("start_prometheus needs a scrape_target or scrape_configs")
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(render_prometheus_config(configs))
    port = find_free_port()  # on 127.0.0.1: nothing listens beyond the loopback
    log = (workdir / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
         *([f"--web.config.file={web_config}"] if web_config else [])],
        stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ),
    )  # fmt: skip
    tls = web_config is not None and "tls_server_config" in web_config.read_text()
    return PrometheusServer(f"{'https' if tls else 'http'}://127.0.0.1:{port}", process, workdir)


# -- PodMonitor -> kubernetes_sd_configs, as prometheus-operator generates it -----------------

_POD_MONITOR_SPEC_FIELDS = {"selector", "namespaceSelector", "podMetricsEndpoints", "jobLabel"}
_ENDPOINT_FIELDS = {"port", "path", "interval", "scheme", "honorLabels"}


def sanitize_label_name(name: str) -> str:
    """A Kubernetes label name as Prometheus' SD meta labels spell it (``[^a-zA-Z0-9_]`` -> _)."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _unsupported(where: str, fields: Mapping[str, Any], known: set[str]) -> None:
    extra = sorted(set(fields) - known)
    if extra:
        raise ValueError(f"PodMonitor {where} has fields this translation does not cover: {extra}")


def _namespaces(monitor: Mapping[str, Any]) -> dict[str, Any] | None:
    """The SD ``namespaces`` block: any namespace, the listed ones, or the PodMonitor's own."""
    selector = monitor["spec"].get("namespaceSelector") or {}
    _unsupported("spec.namespaceSelector", selector, {"any", "matchNames"})
    if selector.get("any"):
        return None
    names = selector.get("matchNames") or [monitor["metadata"]["namespace"]]
    return {"names": list(names)}


def build_podmonitor_relabel_configs(
    monitor: Mapping[str, Any], endpoint: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The relabelling prometheus-operator generates for one ``podMetricsEndpoints`` entry:
    drop finished pods, keep the selector's labels and the endpoint's port, then set the
    ``namespace``, ``container``, ``pod``, ``job`` and ``endpoint`` target labels.

    Raises:
        ValueError: naming a selector or endpoint field the translation does not cover.
    """
    spec, meta = monitor["spec"], monitor["metadata"]
    selector = spec.get("selector") or {}
    _unsupported("spec.selector", selector, {"matchLabels"})
    if not isinstance(endpoint.get("port"), str):
        raise ValueError(f"PodMonitor endpoint needs a named port, got {endpoint!r}")
    rules: list[dict[str, Any]] = [
        {"action": "drop", "source_labels": ["__meta_kubernetes_pod_phase"],
         "regex": "(Failed|Succeeded)"},
    ]  # fmt: skip
    for key, value in sorted((selector.get("matchLabels") or {}).items()):
        label = sanitize_label_name(key)
        rules.append(
            {
                "action": "keep",
                "source_labels": [
                    f"__meta_kubernetes_pod_label_{label}",
                    f"__meta_kubernetes_pod_labelpresent_{label}",
                ],
                "regex": f"({escape_regex(str(value))});true",
            }
        )
    job = f"{meta['namespace']}/{meta['name']}"
    job_label = spec.get("jobLabel")
    rules += [
        {"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_name"],
         "regex": escape_regex(endpoint["port"])},
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"target_label": "job", "replacement": job},
    ]  # fmt: skip
    if job_label:
        rules.append(
            {
                "source_labels": [f"__meta_kubernetes_pod_label_{sanitize_label_name(job_label)}"],
                "target_label": "job",
                "regex": "(.+)",
                "replacement": "${1}",
            }
        )
    rules.append({"target_label": "endpoint", "replacement": endpoint["port"]})
    return rules


def render_chart_podmonitor(
    helm: Callable[..., subprocess.CompletedProcess[str]],
    chart_dir: Path,
    namespaces: Sequence[str],
) -> dict[str, Any]:
    """The worker PodMonitor the chart renders (``helm template``, worker PodMonitor on,
    the operator watching ``namespaces``); ``helm`` runs helm (``Testbed.helm``)."""
    rendered = helm(
        "template", "trainscale", str(chart_dir), "--namespace", "trainscale-system",
        "--set", "metrics.workerPodMonitor.enabled=true",
        "--set-json", f"operator.watchNamespaces={json.dumps(list(namespaces))}",
    ).stdout  # fmt: skip
    (monitor,) = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "PodMonitor"]
    return dict(monitor)


def build_podmonitor_scrape_configs(
    monitor: Mapping[str, Any], kubeconfig: Path, *, scrape_interval: str | None = "1s"
) -> list[dict[str, Any]]:
    """The scrape configs prometheus-operator generates for ``monitor`` (a PodMonitor
    object), discovering pods through the apiserver of ``kubeconfig``.

    ``scrape_interval`` replaces the endpoints' intervals (tests scrape every second); None
    keeps the PodMonitor's.

    Raises:
        ValueError: for a field the translation does not cover, named.
    """
    if monitor.get("kind") != "PodMonitor":
        raise ValueError(f"expected a PodMonitor, got kind {monitor.get('kind')!r}")
    spec, meta = monitor["spec"], monitor["metadata"]
    _unsupported("spec", spec, _POD_MONITOR_SPEC_FIELDS)
    sd: dict[str, Any] = {"role": "pod", "kubeconfig_file": str(kubeconfig)}
    namespaces = _namespaces(monitor)
    if namespaces is not None:
        sd["namespaces"] = namespaces
    configs = []
    for i, endpoint in enumerate(spec.get("podMetricsEndpoints") or []):
        _unsupported(f"spec.podMetricsEndpoints[{i}]", endpoint, _ENDPOINT_FIELDS)
        config: dict[str, Any] = {
            "job_name": f"podMonitor/{meta['namespace']}/{meta['name']}/{i}",
            "honor_labels": bool(endpoint.get("honorLabels", False)),
            "kubernetes_sd_configs": [sd],
            "metrics_path": endpoint.get("path", "/metrics"),
            "scheme": endpoint.get("scheme", "http"),
            "relabel_configs": build_podmonitor_relabel_configs(monitor, endpoint),
        }
        interval = scrape_interval or endpoint.get("interval")
        if interval:
            config["scrape_interval"] = interval
        configs.append(config)
    if not configs:
        raise ValueError("PodMonitor spec.podMetricsEndpoints is empty")
    return configs


def fetch_targets(url: str, state: str = "any") -> dict[str, list[dict[str, Any]]]:
    """Prometheus' ``/api/v1/targets``: ``activeTargets`` and ``droppedTargets``."""
    full = f"{url}/api/v1/targets?" + urllib.parse.urlencode({"state": state})
    with urllib.request.urlopen(full, timeout=5) as response:
        data: dict[str, list[dict[str, Any]]] = json.loads(response.read())["data"]
    return data


def wait_for_series(url: str, query: str, timeout: float = 30.0) -> None:
    """Poll until ``query`` returns data (the first scrapes take a few seconds)."""
    deadline = time.monotonic() + timeout
    full = url + "/api/v1/query?" + urllib.parse.urlencode({"query": query})
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(full, timeout=2) as response:
                if b'"result":[{' in response.read():
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"Prometheus at {url} had no data for {query} within {timeout} s")
