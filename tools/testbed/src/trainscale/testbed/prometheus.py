"""A real Prometheus for tests, benchmarks and demos: Debian's binary on a free 127.0.0.1
port with a 1 s scrape of one target and ``honor_labels`` (as dcgm-exporter's own
ServiceMonitor recommends), so the labels arrive as the exporter wrote them.

Why this module exists: the Prometheus tests, the autoscaling end-to-end tests and the
reaction benchmark all need the same server; it is dev tooling, so it lives with the
test-bed, not in the product.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (nothing listens beyond the loopback)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def start_prometheus(
    workdir: Path, scrape_target: str, web_config: Path | None = None
) -> PrometheusServer:
    """Start ``prometheus`` on a free 127.0.0.1 port with a 1 s scrape of ``scrape_target``.

    ``web_config``: a ``--web.config.file`` (TLS, basic auth); with ``tls_server_config`` in it
    the URL is ``https://``."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise FileNotFoundError(
            "the prometheus binary is missing: run scripts/install-system-deps.sh"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: dcgm-and-trainer\n    honor_labels: true\n"
        f"    static_configs:\n      - targets: ['{scrape_target}']\n"
    )
    port = free_port()
    log = (workdir / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
         *([f"--web.config.file={web_config}"] if web_config else [])],
        stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ),
    )  # fmt: skip
    tls = web_config is not None and "tls_server_config" in web_config.read_text()
    return PrometheusServer(f"{'https' if tls else 'http'}://127.0.0.1:{port}", process, workdir)


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
