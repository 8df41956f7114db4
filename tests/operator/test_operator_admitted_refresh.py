"""How many expired admitted pod specs an arbitration pass reads again, and which.

A burst of jobs admitted together holds specs that expire together; a pass that read every
expired one made a dry-run create per job at once every TTL (1,000 for 1,000 jobs). The
passes now read ``compute_refresh_budget`` of them each, the longest expired first
(``choose_refreshes``); the test-bed test of the pass is
``tests/testbed/test_testbed_arbitration_pass.py``.

Covers: the budget's table (at least one round trip's worth, twice the rate the specs
expire, every spec where the TTL or the interval is not positive); the choice (the longest
expired first, ties by job, no more than the budget, none for a budget of 0); and that the
budget over the passes of one TTL refreshes a burst's specs within half of it.
"""

from __future__ import annotations

import math

import pytest

from trainscale.operator.daemons.common import (
    REFRESH_CATCH_UP,
    REFRESH_MIN_PER_PASS,
    choose_refreshes,
    compute_refresh_budget,
)


@pytest.mark.parametrize(
    ("jobs", "interval", "ttl", "budget"),
    [
        (0, 10.0, 600.0, REFRESH_MIN_PER_PASS),  # nothing held: the floor
        (12, 10.0, 600.0, REFRESH_MIN_PER_PASS),  # a few jobs: one round trip's worth
        (240, 10.0, 600.0, 8),  # exactly the floor: 2 * 240 * 10 / 600
        (241, 10.0, 600.0, 9),  # above it, rounded up
        (1000, 10.0, 600.0, 34),  # 2 * 1000 * 10 / 600 = 33.3
        (1000, 30.0, 600.0, 100),  # slower passes read more each
        (1000, 10.0, 3600.0, REFRESH_MIN_PER_PASS),  # a long TTL: 5.6, the floor
        (1000, 10.0, 0.0, 1000),  # no TTL: every spec, as before
        (1000, 0.0, 600.0, 1000),  # no interval: every spec
    ],
)
def test_the_refresh_budget(jobs: int, interval: float, ttl: float, budget: int) -> None:
    assert compute_refresh_budget(jobs, interval, ttl) == budget


@pytest.mark.parametrize(
    ("expired", "budget", "chosen"),
    [
        ({}, 8, []),
        ({("a", "x"): 5.0, ("a", "y"): 3.0, ("b", "z"): 4.0}, 2, [("a", "y"), ("b", "z")]),
        ({("a", "x"): 5.0, ("a", "y"): 3.0}, 8, [("a", "y"), ("a", "x")]),  # all, in order
        ({("b", "y"): 1.0, ("a", "y"): 1.0, ("a", "x"): 1.0}, 2, [("a", "x"), ("a", "y")]),
        ({("a", "x"): 1.0}, 0, []),
        ({("a", "x"): 1.0}, -1, []),
    ],
)
def test_the_longest_expired_are_read_first(
    expired: dict[tuple[str, str], float], budget: int, chosen: list[tuple[str, str]]
) -> None:
    assert choose_refreshes(expired, budget) == chosen


@pytest.mark.parametrize("jobs", [12, 240, 1000, 5000])
def test_a_burst_is_read_again_within_half_a_ttl(jobs: int) -> None:
    """Every spec of a burst, expiring together, is read again within 1 / REFRESH_CATCH_UP
    of a TTL of passes after it expired, at most the budget each pass."""
    interval, ttl = 10.0, 600.0
    budget = compute_refresh_budget(jobs, interval, ttl)
    expired = {("team", f"job-{i}"): 0.0 for i in range(jobs)}
    passes = 0
    while expired:
        chosen = choose_refreshes(expired, budget)
        assert 0 < len(chosen) <= budget
        for job in chosen:
            del expired[job]
        passes += 1
    assert passes <= max(1, math.ceil(ttl / interval / REFRESH_CATCH_UP))
