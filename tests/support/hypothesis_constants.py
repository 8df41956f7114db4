"""Property tests that draw the same examples whichever tests are collected (a plugin the
root conftest registers for the whole suite: policy, arbiter, trainer and reconcile tests).

Why this exists: Hypothesis (6.1xx) also draws "local constants", numbers it collects from
the source of every non-library module loaded in the process, so the examples a
derandomized test draws depend on which other modules happen to be imported (collecting
``tests/policy`` alone, with ``tests/simulation``, or the whole suite drew different
examples, and one of them failed only in some of those runs). Hypothesis has no setting to
turn it off, so for every test the pool of local constants is empty (and the cache of
permitted constants cleared around each test): examples depend on the test's own code only.

It also loads one settings profile for every property test, so none can fail by chance or by
the machine's speed: ``derandomize`` (the same examples every run), no example database (a
failure found on one machine does not change what another runs), and no per-example
``deadline`` (a loaded 2-core CI machine once failed a reconcile property on Hypothesis's
200 ms default). A test's own ``@settings`` still overrides single fields.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import settings
from hypothesis.internal.conjecture import providers

PROFILE = "trainscale"
settings.register_profile(PROFILE, derandomize=True, database=None, deadline=None)
settings.load_profile(PROFILE)


@pytest.fixture(autouse=True)
def _no_module_constants(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    empty = providers.Constants()
    monkeypatch.setattr(providers, "_get_local_constants", lambda: empty)
    providers.CONSTANTS_CACHE.cache.clear()
    yield
    providers.CONSTANTS_CACHE.cache.clear()
