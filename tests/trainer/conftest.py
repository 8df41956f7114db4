"""Fixtures of the trainer tests: signal-handler hygiene (audit helpers: tests/support/audit.py)."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest


@pytest.fixture
def restore_signals() -> Iterator[None]:
    """The runtime installs SIGTERM/SIGINT handlers; give pytest its own back afterwards."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
