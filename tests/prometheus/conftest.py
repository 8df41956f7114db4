"""Fixtures of the Prometheus tests: the test exporter served on 127.0.0.1 and a real
Prometheus scraping it (helpers in tests/support/prometheus.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, start_http_server

from tests.support.prometheus import (
    RATE_WINDOW,
    DcgmTrainerExporter,
    free_port,
    start_prometheus,
    wait_for_series,
)
from trainscale.trainer.contract.metric_names import SAMPLES_TOTAL


@pytest.fixture(scope="session")
def exporter() -> Iterator[str]:
    """host:port of the test exporter."""
    registry = CollectorRegistry()
    registry.register(DcgmTrainerExporter())
    port = free_port()
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
