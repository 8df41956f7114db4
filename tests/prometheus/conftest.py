"""Fixtures of the Prometheus tests: the test exporter served on 127.0.0.1 and a real
Prometheus scraping it (helpers in tests/support/prometheus.py); the discovery tests'
Prometheus with Kubernetes service discovery is built before any test runs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, start_http_server

from tests.support.prometheus import (
    RATE_WINDOW,
    DcgmTrainerExporter,
    start_prometheus,
    wait_for_series,
)
from trainscale.testbed.prometheus import fetch_prometheus_with_kubernetes_sd
from trainscale.trainer.contract.metric_names import SAMPLES_TOTAL
from trainscale.trainer.launch.local import find_free_port


@pytest.hookimpl(trylast=True)  # after -m/-k deselection: build only when a test needs it
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Build Prometheus with Kubernetes discovery before any test runs (a cold build takes
    minutes, longer than a test's timeout)."""
    if not any(
        item.get_closest_marker("testbed") and item.get_closest_marker("prometheus")
        for item in items
    ):
        return
    capture = config.pluginmanager.getplugin("capturemanager")
    ctx = capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()
    with ctx:
        print("[prometheus] building Prometheus with Kubernetes discovery (once)", flush=True)
        fetch_prometheus_with_kubernetes_sd(build=True)


@pytest.fixture(scope="session")
def exporter() -> Iterator[str]:
    """host:port of the test exporter."""
    registry = CollectorRegistry()
    registry.register(DcgmTrainerExporter())
    port = find_free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    yield f"127.0.0.1:{port}"
    server.shutdown()
    thread.join(timeout=5)


@pytest.fixture(scope="session")
def prometheus(exporter: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a real Prometheus that has scraped the exporter at least twice."""
    server = start_prometheus(tmp_path_factory.mktemp("prometheus"), exporter)
    try:
        # rate() needs its whole window filled before it reads the true rate
        wait_for_series(server.url, f"count_over_time({SAMPLES_TOTAL}[{RATE_WINDOW}]) >= 5")
        yield server.url
    finally:
        server.stop()
